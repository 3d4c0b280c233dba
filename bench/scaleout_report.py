"""The scale-out report: `bench.scaleout`'s results as the Markdown block that goes into
docs/benchmarks.md between its own markers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bench.machine import machine_info

if TYPE_CHECKING:
    from bench.scaleout import Sizes


def _f(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def best_step(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest step with p99 <= 50 ms and nothing lost."""
    good = [s for s in steps if not s["lost"] and (s["p99_ms"] or 1e9) <= 50]
    return max(good, key=lambda s: s["delivered_per_s"], default=None)


def fanout_table(results: dict[str, dict[str, Any]], sizes: Sizes) -> str:
    names = list(results)
    rows = [
        "| measure | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]

    def row(label: str, pick: Any) -> None:
        cells = []
        for name in names:
            result = results[name]
            cells.append("error" if "error" in result else pick(result))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    def at_best(key: str, digits: int = 0) -> Any:
        return lambda r: _f((best_step(r["steps"]) or {}).get(key), digits)

    latency = sizes.latency_rate * sizes.clients // sizes.jobs
    row("streams per web process", lambda r: " / ".join(map(str, r["streams_per_process"])))
    row("highest deliveries/s with p99 <= 50 ms, none lost", at_best("delivered_per_s"))
    row("  its p99 ms", at_best("p99_ms", 1))
    row("  web processes' CPU % (of one core)", at_best("web_cpu_pct"))
    row("  nginx CPU %", at_best("nginx_cpu_pct"))
    row("  load generators + publisher + Redis CPU %", lambda r: _f(_load(best_step(r["steps"]))))
    row(f"{latency:,} deliveries/s: p50 ms", lambda r: _f(r["latency"]["p50_ms"], 1))
    row(f"{latency:,} deliveries/s: p99 ms", lambda r: _f(r["latency"]["p99_ms"], 1))
    row(
        "job channels subscribed per process",
        lambda r: " / ".join(_f(v) for v in r["latency"]["watched_jobs"]),
    )
    row(
        "Redis pub/sub deliveries per published event",
        lambda r: _f(r["latency"]["redis_deliveries"] / max(r["latency"]["published"], 1), 2),
    )
    row("Redis output bytes per pub/sub delivery", at_best("redis_bytes_per_redis_delivery"))
    row("bytes written per client delivery: web processes", at_best("web_bytes_per_delivery"))
    row("bytes written per client delivery: nginx", at_best("nginx_bytes_per_delivery"))
    steps = [
        "",
        "Every step: delivered/s, lost, p99 ms, CPU % of the web processes / nginx / the load",
        "",
    ]
    steps += ["| published/s | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for rate in sizes.rates:
        cells = []
        for name in names:
            found = [s for s in results[name].get("steps", []) if s["rate"] == rate]
            if not found:
                cells.append("")
                continue
            s = found[0]
            cells.append(
                f"{_f(s['delivered_per_s'])}/s, {s['lost']:,} lost, {_f(s['p99_ms'], 1)} ms, "
                f"{_f(s['web_cpu_pct'])} / {_f(s['nginx_cpu_pct'])} / {_f(_load(s))} %"
            )
        steps.append(f"| {rate:,} | " + " | ".join(cells) + " |")
    return "\n".join(rows + steps)


def _load(s: dict[str, Any] | None) -> float | None:
    if s is None:
        return None
    return s["loadgen_cpu_pct"] + s["publisher_cpu_pct"] + s["redis_cpu_pct"]


def streams_table(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"Error: {result['error']}"
    rows = [
        "| measure | value |",
        "| --- | --- |",
        f"| streams held (through nginx, on one web process) | {result['streams']:,} of "
        f"{result['asked']:,} asked{_failures(result['failed'])} |",
        f"| web process RSS per stream | {_f(result['web_rss_per_stream'])} bytes |",
        f"| nginx RSS per stream | {_f(result['nginx_rss_per_stream'])} bytes |",
    ]
    for side, mem in result["socket_buffers"].items():
        per = mem["buffer_bytes"] / max(mem["sockets"], 1)
        rows.append(
            f"| kernel buffers per socket, {side} ({mem['sockets']:,} sockets) | {_f(per)} bytes |"
        )
    slab = result["slab_object_bytes"]
    if slab:
        parts = " + ".join(f"{name} {size}" for name, size in slab.items())
        rows.append(f"| kernel objects per socket ({parts}) | {sum(slab.values()):,} bytes |")
    wmem, rmem = result["tcp_wmem"], result["tcp_rmem"]
    rows.append(f"| buffer limits of this kernel (min default max): tcp_wmem | {' '.join(wmem)} |")
    rows.append(f"| tcp_rmem | {' '.join(rmem)} |")
    return "\n".join(rows)


def _failures(failed: dict[str, int]) -> str:
    return "".join(f"; {n:,} failed: {why}" for why, n in failed.items())


def jobs_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| PROGRESS_HISTORY | events kept | bytes per stored event | state hash | history list "
        "| used_memory per job |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['history']:,} | {r['events_kept']:,} | {_f(r['event_bytes'])} | "
            f"{r['state_bytes']:,} B | {r['history_bytes']:,} B | "
            f"{_f(r['used_memory_per_job'])} B |"
        )
    return "\n".join(lines)


def block(results: dict[str, Any], sizes: Sizes, command: str, load: str, started: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    parts = [
        "### Scale-out figures",
        f"Run of {when} ({(time.time() - started) / 60:.0f} min), command: `{command}`; "
        f"one run. Machine: {machine_info().describe()}; load average at the start: {load}.",
        "Placement: the web processes and nginx (one worker) may use both cores; the load "
        "generators, the publishing harness and Redis are pinned to core 1. So with 2 web "
        "processes the second one shares a core with the whole load: these figures show "
        "what nginx and a second process cost and change, not how far 2 processes scale "
        "(that needs the load on other machines).",
    ]
    if "fanout" in results:
        parts += [
            f"#### 1 vs 2 web processes behind nginx: {sizes.clients:,} clients over "
            f"{sizes.jobs} jobs, {sizes.step_seconds:g} s per rate",
            fanout_table(results["fanout"], sizes),
        ]
    if "streams" in results:
        parts += [
            f"#### Memory per stream: {sizes.idle_streams:,} idle streams over "
            f"{sizes.idle_jobs:,} jobs",
            streams_table(results["streams"]),
        ]
    if "jobs" in results:
        parts += [
            f"#### Redis memory per job: {sizes.memory_jobs} jobs, each with a full history "
            "of progress events (step, percent, current/total, message)",
            jobs_table(results["jobs"]),
        ]
    return "\n\n".join(parts) + "\n"
