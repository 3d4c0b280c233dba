"""The benchmark: ours, the naive design and Nchan side by side, in one run.

    make bench                               # = .venv/bin/python -m bench.run
    .venv/bin/python -m bench.run --quick    # a tiny run that checks the harness
    .venv/bin/python -m bench.run --scenarios held --servers ours --baseline main
                                             # one scenario, ours against a commit

Starts a private Redis and the load generators (pinned to core 1, with this process,
which publishes), then for each run and scenario each server in turn (pinned to core
0); installs Nchan with apt when it is missing (`--no-install` skips it instead).
Prints the Markdown tables and writes them into docs/benchmarks.md between its markers
(not with `--quick`, unless `--docs` says so), and the raw figures to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
import uvloop

from bench import document
from bench.fleet import Fleet
from bench.held import held_streams
from bench.machine import LOAD_CORE, load_average, pin_to, raise_open_files_limit
from bench.nchan import Nchan, find_nchan
from bench.profiler import Profiler, py_spy, summarize
from bench.scenarios import FULL, QUICK, Context, Sizes, fanout, idle_capacity, make_driver
from bench.servers import SERVERS, Backend, ServerFailed, export_tree, start_server
from progress_streamer.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
STREAMS_PER_LOADGEN = 5_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness")
    parser.add_argument("--runs", type=int, default=None, help="runs (default 2; quick: 1)")
    parser.add_argument(
        "--servers", default="ours,naive,nchan", help="comma-separated subset of ours,naive,nchan"
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run ours as of this commit (e.g. main), side by side with the work tree",
    )
    parser.add_argument(
        "--scenarios", default="idle,fanout,held", help="idle,fanout,held (or some of them)"
    )
    sizes = parser.add_argument_group("sizes (default: the issue's; --quick: tiny)")
    sizes.add_argument("--idle-streams", type=_ints, help="e.g. 1000,5000,10000")
    sizes.add_argument("--idle-jobs", type=int)
    sizes.add_argument("--idle-hold", type=float, help="seconds each size is held")
    sizes.add_argument("--fanout-clients", type=int)
    sizes.add_argument("--fanout-jobs", type=int)
    sizes.add_argument("--fanout-rates", type=_ints, help="published events/s, e.g. 100,500")
    sizes.add_argument("--step-seconds", type=float)
    sizes.add_argument("--latency-rate", type=int, help="published events/s")
    sizes.add_argument("--latency-seconds", type=float)
    sizes.add_argument("--held-streams", type=int, help="idle streams held (held scenario)")
    sizes.add_argument("--held-jobs", type=int)
    sizes.add_argument("--live-clients", type=int, help="timed live streams (held scenario)")
    sizes.add_argument("--live-jobs", type=int)
    sizes.add_argument("--live-rate", type=int, help="published events/s (held scenario)")
    sizes.add_argument("--held-seconds", type=float, help="seconds per step (held scenario)")
    parser.add_argument("--no-install", action="store_true", help="skip Nchan if missing")
    parser.add_argument("--worker-calls", type=int, default=None, help="worker-cost loop size")
    parser.add_argument("--no-worker-cost", action="store_true")
    parser.add_argument("--no-group", action="store_true", help="skip bench.group")
    parser.add_argument("--docs", type=Path, default=None, help="Markdown file to write into")
    parser.add_argument("--no-docs", action="store_true", help="print only")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy on ours (and the baseline) during fan-out and held (perturbs them)",
    )
    return parser.parse_args(argv)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    fields = [f.name for f in dataclasses.fields(Sizes)]
    changes = {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
    return dataclasses.replace(base, **changes)


def ours_missing() -> str:
    """Why the real app cannot be benchmarked here ('' when it can)."""
    try:
        spec = importlib.util.find_spec("app.main")
    except ImportError as exc:
        return f"app.main cannot be imported: {exc}"
    if spec is None:
        return "app.main does not exist yet"
    return ""


@dataclasses.dataclass(slots=True)
class Plan:
    sizes: Sizes
    runs: int
    servers: list[str]
    scenarios: list[str]
    skipped: dict[str, str]
    command: str
    load_at_start: str
    baseline: str = ""  # the baseline's ref and commit, when measured
    profile_dir: Path | None = None
    profiles: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (what, table)


async def run_one(
    name: str, scenario: str, plan: Plan, backend: Backend, fleet: Fleet, redis_pid: int
) -> Any:
    """One scenario against one freshly started server; any failure becomes the result."""
    prefix = f"b{uuid.uuid4().hex[:8]}"
    backend = dataclasses.replace(backend, key_prefix=prefix)
    try:
        server = await asyncio.to_thread(start_server, name, backend)
    except ServerFailed as exc:
        return {"error": str(exc)[:500]}
    driver = make_driver(server, backend, prefix)
    monitor = redis.asyncio.Redis.from_url(backend.redis_url)
    ctx = Context(server, driver, fleet, backend, monitor, redis_pid)
    profiler = None
    if plan.profile_dir is not None and name in ("ours", "baseline") and scenario != "idle":
        output = plan.profile_dir / f"py-spy-{name}-{scenario}-{prefix}.txt"
        profiler = Profiler(server.process.pid, output)
    try:
        if scenario == "idle":
            return await idle_capacity(ctx, plan.sizes, prefix)
        if scenario == "held":
            return await held_streams(ctx, plan.sizes, prefix)
        return await fanout(ctx, plan.sizes, prefix)
    except Exception as exc:  # whatever went wrong, the other servers still get measured
        return {"error": f"{type(exc).__name__}: {exc}"[:500], "log": server.log_tail(800)}
    finally:
        if profiler is not None:
            await asyncio.to_thread(profiler.stop)
            if profiler.output.exists():
                plan.profiles.append((f"{name}, {scenario}", summarize(profiler.output)))
        await fleet.close_streams()
        await driver.close()
        await monitor.aclose()
        await asyncio.to_thread(server.stop)


async def run_all(plan: Plan, backend: Backend, redis_pid: int) -> list[dict[str, Any]]:
    sizes = plan.sizes
    biggest = max(max(sizes.idle_streams), sizes.fanout_clients, sizes.held_streams)
    fleet = Fleet(1 + max(1, -(-biggest // STREAMS_PER_LOADGEN)))  # + the timed one
    await fleet.start()
    runs: list[dict[str, Any]] = []
    try:
        for number in range(1, plan.runs + 1):
            run: dict[str, Any] = {name: {} for name in plan.servers}
            for scenario in plan.scenarios:
                for name in plan.servers:
                    started = time.monotonic()
                    result = await run_one(name, scenario, plan, backend, fleet, redis_pid)
                    run[name][scenario] = result
                    took = time.monotonic() - started
                    note = f" ERROR {result['error'][:200]}" if "error" in result else ""
                    print(f"run {number}: {scenario} {name} {took:.0f} s{note}", file=sys.stderr)
            runs.append(run)
    finally:
        await fleet.close()
    return runs


def worker_cost(calls: int, publishes: int) -> dict[str, float] | str:
    """bench.worker_cost's figures, measured in a process of its own on both cores."""
    code = (
        "import json; from bench.worker_cost import measure; "
        f"print(json.dumps(measure({calls}, {publishes})))"
    )
    done = subprocess.run(
        ["taskset", "-c", "0-1", sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        return f"bench.worker_cost failed: {done.stderr.strip()[-300:]}"
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def group_cost(quick: bool) -> str:
    """bench.group's table (a group of 1,000 children), in a process of its own."""
    sizes = ["--children", "50", "--groups", "2"] if quick else []
    done = subprocess.run(
        ["taskset", "-c", "0-1", sys.executable, "-m", "bench.group", *sizes],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        return f"bench.group failed: {done.stderr.strip()[-300:]}"
    return done.stdout.strip()


def plan_from(args: argparse.Namespace, argv: list[str]) -> Plan:
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        raise SystemExit(f"unknown servers: {', '.join(sorted(unknown))}")
    if args.baseline and "baseline" not in servers:
        servers.append("baseline")
    if "baseline" in servers and not args.baseline:
        raise SystemExit("the baseline server needs --baseline REF")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := set(scenarios) - {"idle", "fanout", "held"}:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return Plan(
        sizes=sizes_from(args),
        runs=args.runs or (1 if args.quick else 2),
        servers=servers,
        scenarios=scenarios,
        skipped={},
        command=" ".join(["python -m bench.run", *argv]).strip(),
        load_at_start=load_average(),
    )


def check_servers(plan: Plan, args: argparse.Namespace) -> Nchan | None:
    """Drop the servers that cannot run here (saying why); install Nchan if allowed."""
    nchan = None
    if "nchan" in plan.servers:
        nchan, why = find_nchan(install=not args.no_install)
        if nchan is None:
            plan.skipped["nchan"] = why
    if "ours" in plan.servers and (why := ours_missing()):
        plan.skipped["ours"] = why
    plan.servers = [s for s in plan.servers if s not in plan.skipped]
    for name, why in plan.skipped.items():
        print(f"skipping {name}: {why}", file=sys.stderr)
    return nchan


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    plan = plan_from(args, argv)
    if args.profile:
        if py_spy() is None:
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        plan.profile_dir = args.results
        args.results.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C, so every server, load generator and Redis is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    open_files = raise_open_files_limit()
    pin_to(LOAD_CORE)
    nchan = check_servers(plan, args)
    started = time.time()
    baseline = None
    if args.baseline:
        baseline, plan.baseline = export_tree(args.baseline)
    with RedisServer() as redis_server, _removed(baseline):
        # The naive design needs a Redis connection per client: let Redis take them all.
        redis_version = redis_server_config(redis_server.url, open_files)
        backend = Backend(
            redis_url=redis_server.url,
            redis_port=redis_server.port,
            key_prefix="bench",
            open_files=open_files,
            nchan=nchan,
            baseline=baseline,
        )
        assert redis_server.process is not None
        runs = uvloop.run(run_all(plan, backend, redis_server.process.pid))
    costs: dict[str, float] | str | None = None
    if not args.no_worker_cost:
        calls = args.worker_calls or (20_000 if args.quick else 1_000_000)
        costs = worker_cost(calls, 200 if args.quick else 5_000)
    block = document.block(plan, runs, costs, redis_version, nchan, started)
    if not args.no_group:
        group = group_cost(args.quick)
        block += f"\n\n#### One parent job for a group (`python -m bench.group`)\n\n{group}"
    print(block)
    save(args.results, plan, runs, costs, started)
    docs = args.docs or (None if args.quick else ROOT / "docs" / "benchmarks.md")
    if docs is not None and not args.no_docs:
        document.write_docs(docs, block)
        print(f"written into {docs}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _removed(directory: str | None) -> Iterator[None]:
    """Remove the baseline's exported tree at the end, whatever happened."""
    try:
        yield
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def redis_server_config(url: str, open_files: int) -> str:
    """Raise Redis's client limit as far as the open-files limit allows; its version."""
    client = redis.Redis.from_url(url)
    try:
        client.config_set("maxclients", open_files - 64)
        info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
        return f"Redis {info['redis_version']}"
    finally:
        client.close()


def save(directory: Path, plan: Plan, runs: list[Any], costs: Any, started: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
    payload = {
        "command": plan.command,
        "sizes": dataclasses.asdict(plan.sizes),
        "skipped": plan.skipped,
        "runs": runs,
        "worker_cost": costs,
    }
    (directory / f"{stamp}.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    sys.exit(main())
