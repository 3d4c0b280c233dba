"""The wheel as a new user gets it: built from a clean clone, installed into a new venv.

The editable install the other tests run against puts the whole repository on sys.path,
so it hides the two ways a wheel goes wrong: a file the package needs that is not in the
wheel (the JS client and the demo page are force-included from the repository's
`static/`), and the reference deployment (`app/`, `workers/`) shipping as top-level
packages that would shadow a user's own `app` package.

How the test keeps that honest and fast:

- the wheel is built from a `git clone` of HEAD, so uncommitted files cannot leak in, and
  without build isolation (hatchling is in the dev extra), so no index is needed;
- the new venv has no pip (ensurepip costs seconds): the dev venv's pip installs the
  wheel into it with `--python`, before the venv can see anything else, so pip never
  mistakes the dev venv's editable install for one to replace;
- the dependencies come from the dev venv through a `deps.pth` naming its site-packages.
  A path listed in a .pth joins sys.path, but the .pth files inside it are not
  processed, so the dev venv's editable-install .pth (which names the repository) stays
  inert; `test_the_repository_stays_out_of_the_new_venv` checks exactly that.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from progress_streamer.protocol.settings import Settings
from tests.support import ROOT

pytestmark = [pytest.mark.packaging, pytest.mark.slow, pytest.mark.timeout(300)]

PACKAGE = "progress_streamer"
STATIC_FILES = ("progress.js", "index.html", "demo.js", "demo.css")
# What the repository holds beside the package; none of it may be installed.
NOT_SHIPPED = ("app", "workers", "static", "tests", "bench", "docs")
# JavaScript MIME types a browser runs a `<script type="module">` from.
JAVASCRIPT_TYPES = ("text/javascript", "application/javascript")

BUILD_TIMEOUT = 180  # seconds: a cold hatchling build on a slow CI disk
RUN_TIMEOUT = 90  # seconds: one interpreter start importing Starlette, Celery and ARQ


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltWheel:
    path: Path
    clone: Path  # the committed tree the wheel was built from

    @property
    def dist_info(self) -> str:
        name, version = self.path.name.split("-")[:2]
        return f"{name}-{version}.dist-info"


@dataclass(frozen=True, slots=True, kw_only=True)
class InstalledVenv:
    python: Path
    site_packages: Path


def clean_env() -> dict[str, str]:
    """The environment without anything that would put the repository on sys.path."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONSTARTUP", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(
    args: Sequence[str | Path], *, cwd: Path, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; on failure, fail the test with everything it printed."""
    command = [str(a) for a in args]
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{command} (cwd {cwd}) ran over {timeout} s\n"
            f"--- stdout\n{exc.stdout!r}\n--- stderr\n{exc.stderr!r}"
        )
    if done.returncode != 0:
        pytest.fail(
            f"{command} (cwd {cwd}) exited {done.returncode}\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )
    return done


def run_json(python: Path, script: str, *args: str, cwd: Path) -> dict[str, Any]:
    """Run `script` with `python` and read the JSON object its last line prints."""
    done = run([python, "-c", textwrap.dedent(script), *args], cwd=cwd)
    lines = done.stdout.strip().splitlines()
    assert lines, f"the script printed nothing\n--- stderr\n{done.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def is_within(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> BuiltWheel:
    work = tmp_path_factory.mktemp("wheel")
    clone = work / "clone"
    run(["git", "clone", "--quiet", ROOT, clone], cwd=work, timeout=BUILD_TIMEOUT)
    dist = work / "dist"
    run(
        [
            sys.executable,
            *("-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index"),
            *("--no-build-isolation", "--wheel-dir", dist, clone),
        ],
        cwd=work,
        timeout=BUILD_TIMEOUT,
    )
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {dist}, found {wheels}"
    return BuiltWheel(path=wheels[0], clone=clone)


@pytest.fixture(scope="module")
def venv(wheel: BuiltWheel, tmp_path_factory: pytest.TempPathFactory) -> InstalledVenv:
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], cwd=root)
    python = root / "venv" / "bin" / "python"
    run(
        [
            sys.executable,
            *("-m", "pip", "--python", python, "install", "--quiet"),
            *("--no-deps", "--no-index", wheel.path),
        ],
        cwd=root,
        timeout=BUILD_TIMEOUT,
    )
    found = run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root
    )
    site_packages = Path(found.stdout.strip())
    dev_paths = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site_packages / "deps.pth").write_text("".join(f"{p}\n" for p in dev_paths))
    return InstalledVenv(python=python, site_packages=site_packages)


@pytest.fixture(scope="module")
def user_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's project with its own `app` and `workers` packages, as many projects have."""
    project = tmp_path_factory.mktemp("user_project")
    (project / "app").mkdir()
    (project / "app" / "__init__.py").write_text('"""The user\'s own app."""\n')
    (project / "app" / "main.py").write_text('OWNER = "the user project"\n')
    (project / "workers").mkdir()
    (project / "workers" / "__init__.py").write_text('"""The user\'s own workers."""\n')
    return project


def test_the_wheel_holds_the_package_and_its_metadata_only(wheel: BuiltWheel) -> None:
    with zipfile.ZipFile(wheel.path) as archive:
        names = set(archive.namelist())
        record = archive.read(f"{wheel.dist_info}/RECORD").decode()
    stray = sorted(n for n in names if n.split("/")[0] not in (PACKAGE, wheel.dist_info))
    assert not stray, f"files outside {PACKAGE}/ and {wheel.dist_info}/: {stray}"
    recorded = {row[0] for row in csv.reader(io.StringIO(record)) if row}
    assert recorded == names, (
        f"RECORD and the archive differ: only in RECORD {sorted(recorded - names)}, "
        f"only in the archive {sorted(names - recorded)}"
    )


def test_the_wheel_holds_every_committed_module_and_static_file(wheel: BuiltWheel) -> None:
    committed = run(["git", "ls-files", PACKAGE], cwd=wheel.clone).stdout.split()
    modules = {p for p in committed if p.endswith(".py")}
    with zipfile.ZipFile(wheel.path) as archive:
        names = set(archive.namelist())
        missing = sorted(modules - names)
        assert not missing, f"committed modules missing from the wheel: {missing}"
        for name in STATIC_FILES:
            shipped = f"{PACKAGE}/static/{name}"
            assert shipped in names, f"{shipped} is not in the wheel: {sorted(names)}"
            assert archive.read(shipped) == (wheel.clone / "static" / name).read_bytes(), (
                f"{shipped} differs from the committed static/{name}"
            )


def test_site_packages_holds_the_package_and_nothing_of_the_repository(
    venv: InstalledVenv, wheel: BuiltWheel
) -> None:
    entries = {p.name for p in venv.site_packages.iterdir()}
    assert PACKAGE in entries, f"no {PACKAGE} in {venv.site_packages}: {sorted(entries)}"
    leaked = sorted(entries & set(NOT_SHIPPED))
    assert not leaked, f"installed as top-level names: {leaked}"
    for name in STATIC_FILES:
        assert (venv.site_packages / PACKAGE / "static" / name).is_file(), name
    record = (venv.site_packages / wheel.dist_info / "RECORD").read_text()
    paths = [Path(row[0]) for row in csv.reader(io.StringIO(record)) if row]
    # The console script is the only file outside site-packages (`../../../bin/...`).
    scripts = [p for p in paths if p.parts[0] == ".."]
    assert [p.name for p in scripts] == ["progress-streamer"], scripts
    tops = {p.parts[0] for p in paths if p.parts[0] != ".."}
    assert tops == {PACKAGE, wheel.dist_info}, f"pip installed under {sorted(tops)}"


def test_the_repository_stays_out_of_the_new_venv(venv: InstalledVenv, tmp_path: Path) -> None:
    # A neutral cwd: neither the repository nor a user project is on sys.path from here.
    result = run_json(
        venv.python,
        """
        import importlib.util, json, os, sys
        import progress_streamer, starlette
        print(json.dumps({
            "missing": [n for n in sys.argv[1:] if importlib.util.find_spec(n) is None],
            "package": progress_streamer.__file__,
            "starlette": starlette.__file__,
            "path": [os.path.abspath(p) for p in sys.path],
        }))
        """,
        *NOT_SHIPPED,
        cwd=tmp_path,
    )
    assert result["missing"] == list(NOT_SHIPPED), (
        f"importable in the new venv: {sorted(set(NOT_SHIPPED) - set(result['missing']))}; "
        f"sys.path={result['path']}"
    )
    assert is_within(str(result["package"]), venv.site_packages), result
    # The dependencies do come from the dev venv, through deps.pth.
    assert not is_within(str(result["starlette"]), venv.site_packages), result
    from_repo = [
        p for p in result["path"] if is_within(p, ROOT) and not is_within(p, ROOT / ".venv")
    ]
    assert not from_repo, f"the repository is on the new venv's sys.path: {result['path']}"


def test_a_user_project_imports_the_library_and_keeps_its_own_app(
    venv: InstalledVenv, user_project: Path
) -> None:
    result = run_json(
        venv.python,
        """
        import json, sys
        import progress_streamer.web, progress_streamer.celery, progress_streamer.arq
        import progress_streamer.protocol
        import app.main, workers
        print(json.dumps({
            "app_main": app.main.__file__,
            "owner": app.main.OWNER,
            "workers": workers.__file__,
            "web": progress_streamer.web.__file__,
            "loaded": sorted(
                f for m in list(sys.modules.values())
                if isinstance(f := getattr(m, "__file__", None), str)
            ),
        }))
        """,
        cwd=user_project,
    )
    assert Path(str(result["app_main"])).resolve() == (user_project / "app" / "main.py").resolve()
    assert result["owner"] == "the user project"
    assert is_within(str(result["workers"]), user_project), result["workers"]
    assert is_within(str(result["web"]), venv.site_packages), result["web"]
    from_repo = [
        f for f in result["loaded"] if is_within(f, ROOT) and not is_within(f, ROOT / ".venv")
    ]
    assert not from_repo, f"modules loaded from the repository: {from_repo}"


# Serves the installed app with uvicorn, as a user would, and fetches `sys.argv[3:]`.
# The socket listens before the server starts, so the requests need no readiness wait:
# they queue in the backlog. A server that stops early (a failed lifespan) ends the race.
SERVE_SCRIPT = """
import asyncio, hashlib, json, mimetypes, socket, sys, urllib.error, urllib.request
import uvicorn
from progress_streamer.web import Settings, create_app
from progress_streamer.web.routes.pages import STATIC_DIR


# No proxy: a host's http_proxy would otherwise take the requests to 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url):
    try:
        with OPENER.open(url, timeout=30) as response:
            return response.status, response.headers.get("content-type"), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type"), error.read()


async def fetch_all(base, paths):
    responses = {}
    for path in paths:
        status, content_type, body = await asyncio.to_thread(fetch, base + path)
        responses[path] = {
            "status": status,
            "type": content_type,
            "sha256": hashlib.sha256(body).hexdigest(),
            "text": body.decode(errors="replace")[:2000],
        }
    return responses


async def main():
    settings = Settings(redis_url=sys.argv[1], key_prefix=sys.argv[2], auth="none")
    sock = socket.create_server(("127.0.0.1", 0))
    base = "http://127.0.0.1:%d" % sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    fetching = asyncio.create_task(fetch_all(base, sys.argv[3:]))
    await asyncio.wait([serving, fetching], return_when=asyncio.FIRST_COMPLETED)
    if not fetching.done():
        sys.exit("uvicorn stopped before the requests were answered")
    server.should_exit = True
    await serving
    return fetching.result()


responses = asyncio.run(main())
print(json.dumps({
    "static_dir": str(STATIC_DIR),
    "guessed_js": mimetypes.guess_type("progress.js")[0],
    "responses": responses,
}))
"""


def test_the_installed_app_serves_the_client_and_the_demo_page(
    venv: InstalledVenv, wheel: BuiltWheel, user_project: Path, settings: Settings
) -> None:
    assets = [f"/static/{name}" for name in STATIC_FILES]
    result = run_json(
        venv.python,
        SERVE_SCRIPT,
        settings.redis_url,
        settings.key_prefix,
        *assets,
        "/",
        "/readyz",
        cwd=user_project,
    )
    static_dir = Path(str(result["static_dir"]))
    assert static_dir == venv.site_packages / PACKAGE / "static", static_dir
    responses: dict[str, dict[str, Any]] = result["responses"]
    with zipfile.ZipFile(wheel.path) as archive:
        for path in assets:
            shipped = archive.read(f"{PACKAGE}{path}")
            response = responses[path]
            assert response["status"] == 200, (path, response)
            assert response["sha256"] == hashlib.sha256(shipped).hexdigest(), (path, response)
        index = archive.read(f"{PACKAGE}/static/index.html")

    # StaticFiles takes the type from the interpreter's `mimetypes`: Python 3.12+ says
    # text/javascript, 3.11 says so only where the host's /etc/mime.types does, else
    # application/javascript. Both run module scripts; the header must be exactly that one.
    js_type = str(responses["/static/progress.js"]["type"])
    assert result["guessed_js"] in JAVASCRIPT_TYPES, result["guessed_js"]
    assert js_type.split(";")[0].strip() == result["guessed_js"], js_type

    page = responses["/"]
    assert page["status"] == 200, page
    assert str(page["type"]).startswith("text/html"), page
    assert "is not installed" not in str(page["text"]), page["text"]
    assert page["sha256"] == hashlib.sha256(index).hexdigest(), "/ is not static/index.html"
    assert 'id="start-report"' in str(page["text"])
    assert responses["/readyz"]["status"] == 200, responses["/readyz"]
