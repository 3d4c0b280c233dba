"""The document: the whole benchmark block (machine, versions, command, every table),
and writing it into docs/benchmarks.md between its markers, leaving the rest untouched.
"""

from __future__ import annotations

import sys
import time
from argparse import ArgumentParser, Namespace, RawDescriptionHelpFormatter
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.held import held_section
from bench.machine import machine_info
from bench.report import Figures, Runs, fanout_tables, idle_table, summary_table
from bench.targets import targets_table
from bench.worker_cost import table as worker_table

BEGIN = "<!-- bench:begin (written by `make bench`; edits inside are overwritten) -->"
END = "<!-- bench:end -->"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def versions() -> str:
    names = ["starlette", "sse-starlette", "uvicorn", "uvloop", "httptools", "redis", "hiredis"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


METHOD = (
    "Method (see above): server pinned to core 0; load generators, the publishing harness "
    "and Redis to core 1; latency from each event's publish time to its read on a timed "
    "stream (one in ten); server CPU and RSS from /proc."
)


def block(
    plan: Any,
    runs: Runs,
    costs: dict[str, float] | str | None,
    redis_version: str,
    nchan: Any,
    started: float,
) -> str:
    fig = Figures(runs, plan.servers)
    sizes = plan.sizes
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    took = (time.time() - started) / 60
    latency_label = (
        f"{sizes.fanout_clients:,} clients, "
        f"{sizes.latency_rate * sizes.fanout_clients // sizes.fanout_jobs:,} deliveries/s"
    )
    parts = [
        "### Figures",
        f"Run of {when} ({took:.0f} min), command: `{plan.command}` "
        f"(`make bench` runs `python -m bench.run`). Every cell is the median of "
        f"{plan.runs} run(s), with the range across runs in brackets where they differ.",
        f"Machine: {machine_info().describe()}; load average at the start: {plan.load_at_start}.",
        f"Versions: {versions()}; {redis_version}"
        + (f"; {nchan.version}" if nchan is not None else "")
        + ".",
        METHOD,
    ]
    if plan.baseline:
        parts.append(f"`baseline`: ours as of commit {plan.baseline}, in the same run.")
    for name, why in plan.skipped.items():
        parts.append(f"**Not measured: {name}** ({why}).")
    if plan.profiles:
        parts.append("**Profiled run**: py-spy sampled ours as it ran (costs it a little).")
    parts += [f"Error: {e}" for e in fig.errors()]
    if "fanout" in plan.scenarios:
        parts += ["#### Summary", summary_table(fig, latency_label)]
    if "fanout" in plan.scenarios and "idle" in plan.scenarios:
        targets = targets_table(fig, sizes, costs)
        if targets:
            parts += ["#### Targets of the issue", targets]
    if "idle" in plan.scenarios:
        parts += [
            f"#### Idle capacity: streams held over {sizes.idle_jobs:,} jobs, "
            f"one event per job every {sizes.idle_hold:g} s",
            idle_table(fig, sizes.idle_streams),
        ]
    if "fanout" in plan.scenarios:
        parts += [
            f"#### Fan-out: {sizes.fanout_clients:,} clients over {sizes.fanout_jobs} jobs, "
            f"{sizes.step_seconds:g} s per rate",
            fanout_tables(fig, sizes.fanout_rates, sizes.fanout_clients, sizes.fanout_jobs),
        ]
    if "held" in plan.scenarios:
        parts += held_section(fig, sizes)
    for number, (what, profile) in enumerate(plan.profiles, 1):
        parts += [f"#### Profile {number}: {what} (py-spy)", profile]
    if isinstance(costs, dict):
        parts += ["#### Worker cost (`python -m bench.worker_cost`)", worker_table(costs)]
    elif isinstance(costs, str):
        parts += ["#### Worker cost", costs]
    return "\n\n".join(parts) + "\n"


def write_docs(path: Path, block: str, *, begin: str = BEGIN, end: str = END) -> None:
    """Replace what is between the markers (or append a section with them)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{begin}\n{block.strip()}\n{end}"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def save(
    text: str, raw: str, args: Namespace, *, name: str, started: float, markers: tuple[str, str]
) -> None:
    """Print a module's block, keep its raw figures in `args.results`
    (`name-<start>.json`), and write the block between the module's `markers` into
    `args.docs`, by default docs/benchmarks.md, except with `--quick` or `--no-docs`."""
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
    (args.results / f"{name}-{stamp}.json").write_text(raw)
    docs = args.docs or (None if args.quick else DOCS)
    if docs is not None and not args.no_docs:
        write_docs(docs, text, begin=markers[0], end=markers[1])
        print(f"written into {docs}", file=sys.stderr)


def parse_args(
    argv: list[str],
    command: str,
    doc: str,
    scenarios: str,
    extra: Sequence[tuple[str, dict[str, Any]]] = (),
) -> Namespace:
    """The options every module that writes its own section takes (`save` reads them),
    and the module's own (`extra`: a flag and `add_argument`'s keywords each)."""
    parser = ArgumentParser(
        prog=command, description=doc, formatter_class=RawDescriptionHelpFormatter
    )
    for flag, options in extra:
        parser.add_argument(flag, **options)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness")
    parser.add_argument("--scenarios", default=scenarios)
    parser.add_argument("--docs", type=Path, default=None, help="Markdown file to write into")
    parser.add_argument("--no-docs", action="store_true", help="print only")
    parser.add_argument("--results", type=Path, default=DOCS.parent.parent / "bench" / "results")
    return parser.parse_args(argv)
