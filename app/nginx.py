"""The nginx in front of many web processes: `deploy/nginx.conf`, made runnable here.

`deploy/nginx.conf` is what docs/deploy.md shows and a deployment copies. The test of
that set-up (tests/integration/test_deploy_nginx.py) and the benchmark of 1 vs 2 web
processes (bench/scaleout.py) run this same file through `site_config`, which only puts
in their ports (and drops the optional per-job affinity when asked), and `main_config`,
which wraps it in a main configuration that runs without root from a temporary folder.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

NGINX_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"
# The example's `server 127.0.0.1:8001;` ... lines of each upstream, and the affinity parts.
EXAMPLE_SERVERS = re.compile(
    r"^( *)server 127\.0\.0\.1:8001;\n(?: *server 127\.0\.0\.1:\d+;\n)*", re.M
)
AFFINITY = re.compile(
    r"^ *# (?:Optional per-job affinity|affinity:).*?^ *# affinity end\n", re.M | re.S
)


def find_nginx() -> str | None:
    """The nginx binary (PATH, or Debian's /usr/sbin/nginx), or None."""
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


def site_config(
    ports: Sequence[int], *, listen: int, affinity: bool = True, path: Path = NGINX_CONF
) -> str:
    """The file's upstreams and server, on `ports` (one per web process) and listening
    on `listen` on the loopback; without the per-job affinity unless `affinity`."""
    text = path.read_text()
    if not affinity:
        text, removed = AFFINITY.subn("", text)
        _expect(removed == 2, path, "the two affinity blocks between their markers")
    text, replaced = EXAMPLE_SERVERS.subn(
        lambda m: "".join(f"{m[1]}server 127.0.0.1:{port};\n" for port in ports), text
    )
    _expect(replaced == (2 if affinity else 1), path, "`server 127.0.0.1:8001;` in each upstream")
    _expect("listen 80;" in text, path, "`listen 80;`")
    return text.replace("listen 80;", f"listen 127.0.0.1:{listen} backlog=4096;")


def _expect(found: bool, path: Path, what: str) -> None:
    """The file is edited by hand: say what moved, rather than run something else."""
    if not found:
        raise ValueError(f"{path} no longer has {what}, which app/nginx.py fills in")


def main_config(folder: Path, site: str, *, connections: int = 1024) -> Path:
    """`site` inside a main configuration that keeps its pid, logs and temporary files
    in `folder` (so it runs unprivileged), one worker process taking `connections`
    (a proxied stream takes two: the client's and the upstream's)."""
    temp = " ".join(
        f"{kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = folder / "nginx.conf"
    conf.write_text(
        f"worker_processes 1;\nworker_rlimit_nofile {connections + 64};\n"
        f"error_log {folder / 'error.log'} warn;\npid {folder / 'nginx.pid'};\n"
        f"events {{ worker_connections {connections}; }}\n"
        f"http {{\n access_log off;\n {temp}\n{site}\n}}\n"
    )
    return conf


def nginx_command(nginx: str, folder: Path, conf: Path) -> list[str]:
    """nginx in the foreground on `conf`, its prefix and early errors in `folder`."""
    return [nginx, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf),
            "-g", "daemon off;"]  # fmt: skip
