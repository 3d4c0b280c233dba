"""The report: Markdown tables with the three servers side by side, and their ratios.

Every cell is the median over the runs (with the range across runs when there are
several); `ours/naive` and `ours/Nchan` divide our median by theirs. `bench.document`
assembles the tables into the block that goes into docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Any

LATENCY_TARGET_MS = 50.0

Runs = list[dict[str, Any]]  # per run: {server: {"idle": [...], "fanout": {...}}}


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def cell(values: list[float | None], digits: int = 0, unit: str = "") -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    text = fmt(statistics.median(present), digits) + unit
    if len(present) > 1 and min(present) != max(present):
        text += f" ({fmt(min(present), digits)}..{fmt(max(present), digits)})"
    return text


def ratio(ours: float | None, other: float | None) -> str:
    if ours is None or other is None or other == 0:
        return "n/a"
    return f"{ours / other:.2f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


class Figures:
    """Look-ups into the runs: one value per run for a server, a scenario and a key."""

    def __init__(self, runs: Runs, servers: list[str]) -> None:
        self.runs = runs
        self.servers = servers

    def compared(self) -> list[str]:
        """The servers ours is divided by: those measured, when ours was too."""
        if "ours" not in self.servers:
            return []
        return [s for s in ("naive", "nchan", "baseline") if s in self.servers]

    def idle(self, server: str, streams: int, key: str) -> list[Any]:
        found = []
        for run in self.runs:
            for row in _rows(run.get(server, {}).get("idle")):
                if row["streams"] == streams:
                    found.append(row.get(key))
        return found

    def step(self, server: str, rate: int, key: str) -> list[Any]:
        found = []
        for run in self.runs:
            fan = run.get(server, {}).get("fanout")
            for row in fan.get("steps", []) if isinstance(fan, dict) else []:
                if row["rate"] == rate:
                    found.append(row.get(key))
        return found

    def latency(self, server: str, key: str) -> list[Any]:
        found = []
        for run in self.runs:
            fan = run.get(server, {}).get("fanout")
            if isinstance(fan, dict) and "latency" in fan:
                found.append(fan["latency"].get(key))
        return found

    def most_delivered(self, server: str) -> list[float | None]:
        """Per run: the most deliveries/s of any step, however late (past the knee)."""
        found: list[float | None] = []
        for run in self.runs:
            fan = run.get(server, {}).get("fanout")
            steps = fan.get("steps", []) if isinstance(fan, dict) else []
            found.append(max((s["delivered_per_s"] for s in steps), default=None))
        return found

    def sustained(self, server: str) -> list[float | None]:
        """Per run: the most deliveries/s of a step with p99 <= 50 ms and nothing lost."""
        return self._best_good_step(server, lambda s: s["delivered_per_s"])

    def sustained_step(self, server: str) -> list[float | None]:
        """Per run: the highest load asked (deliveries/s) of a step with p99 <= 50 ms and
        nothing lost. The delivered rate of that step reads a little lower, since it is
        counted up to the last delivery, after the publishing ended."""
        return self._best_good_step(server, lambda s: s["rate"] * s["expected"] / s["published"])

    def _best_good_step(
        self, server: str, value: Callable[[dict[str, Any]], float]
    ) -> list[float | None]:
        found: list[float | None] = []
        for run in self.runs:
            fan = run.get(server, {}).get("fanout")
            if not isinstance(fan, dict) or "steps" not in fan:
                continue
            good = [
                value(s)
                for s in fan["steps"]
                if s["lost"] == 0
                and s["published"]
                and s["p99_ms"] is not None
                and s["p99_ms"] <= LATENCY_TARGET_MS
            ]
            found.append(max(good) if good else None)
        return found

    def errors(self) -> list[str]:
        out = []
        for i, run in enumerate(self.runs, 1):
            for server, parts in run.items():
                for name, part in parts.items():
                    if isinstance(part, dict) and "error" in part:
                        out.append(f"run {i}, {server}, {name}: {part['error']}")
        return out


def _rows(part: Any) -> list[dict[str, Any]]:
    return part if isinstance(part, list) else []


def _side_by_side(
    fig: Figures,
    label: str,
    values: Callable[[str], list[Any]],
    digits: int = 0,
    unit: str = "",
    ratios: bool = True,
) -> list[str]:
    cells = [cell(values(s), digits, unit) for s in fig.servers]
    row = [label, *cells]
    for other in fig.compared():
        row.append(ratio(median(values("ours")), median(values(other))) if ratios else "")
    return row


NAMES = {"ours": "ours", "naive": "naive", "nchan": "Nchan", "baseline": "baseline"}


def header(fig: Figures, first: list[str], ratios: bool = True) -> list[str]:
    compared = [f"ours/{NAMES[other]}" for other in fig.compared()] if ratios else []
    return [*first, *(NAMES[s] for s in fig.servers), *compared]


def idle_table(fig: Figures, sizes: tuple[int, ...]) -> str:
    kib, mib = 1 / 1024, 1 / 2**20
    measures = [  # label, key, scale, digits, with ratios
        ("streams established", "established", 1.0, 0, False),
        ("RSS per stream (KiB)", "rss_per_stream", kib, 1, True),
        ("server RSS (MiB)", "rss_bytes", mib, 0, True),
        ("Redis connections held by the server", "redis_connections", 1.0, 0, False),
        ("of which pub/sub (as Redis counts them)", "redis_pubsub", 1.0, 0, False),
        ("hold events delivered (%)", "hold_delivered_pct", 1.0, 1, False),
    ]
    rows = []
    for n in sizes:
        for label, key, scale, digits, ratios in measures:
            values = _idle_values(fig, n, key, scale)
            rows.append(
                [f"{n:,}", *_side_by_side(fig, label, values.__getitem__, digits, "", ratios)]
            )
        failures = [_failures(fig.idle(s, n, "failed")) for s in fig.servers]
        if any(failures):
            blanks = [""] * len(fig.compared())
            rows.append([f"{n:,}", "failed to open so far, per run", *failures, *blanks])
    return table(header(fig, ["streams", "measure"]), rows)


def _failures(per_run: list[dict[str, int] | None]) -> str:
    """`{'HTTP 500': 103, 'errno 104': 3}` per run -> `103 HTTP 500, 3 errno 104 / ...`."""
    texts = []
    for failed in per_run:
        items = sorted((failed or {}).items(), key=lambda item: -item[1])
        texts.append(", ".join(f"{n:,} {why}" for why, n in items) or "0")
    return " / ".join(texts) if any(t != "0" for t in texts) else ""


def _idle_values(fig: Figures, n: int, key: str, scale: float) -> dict[str, list[Any]]:
    values: dict[str, list[Any]] = {}
    for server in fig.servers:
        if key == "hold_delivered_pct":
            got = fig.idle(server, n, "hold_delivered")
            want = fig.idle(server, n, "hold_expected")
            values[server] = [100 * g / w if w else None for g, w in zip(got, want, strict=True)]
        else:
            values[server] = [None if v is None else v * scale for v in fig.idle(server, n, key)]
    return values


def fanout_tables(fig: Figures, rates: tuple[int, ...], clients: int, jobs: int) -> str:
    per_job = clients // jobs

    def label(rate: int) -> str:
        return f"{rate:,}/s ({rate * per_job:,}/s)"

    def rows(key: str, digits: int = 0, ratios: bool = True) -> list[list[str]]:
        return [
            _side_by_side(fig, label(r), _StepValues(fig, r, key), digits, "", ratios)
            for r in rates
        ]

    delivered = rows("delivered_per_s")
    published = [
        _side_by_side(fig, label(r), _PublishedShare(fig, r), 0, " %", False) for r in rates
    ]
    lost = rows("lost", ratios=False)
    p50 = rows("p50_ms", 1)
    p99 = rows("p99_ms", 1)
    cpu = rows("cpu_us_per_delivery", 1)
    with_redis = rows("cpu_us_per_delivery_with_redis", 1)
    redis_per_publish = rows("redis_cpu_us_per_publish", 1, ratios=False)
    core = rows("server_cpu_pct")
    script = rows("script_cpu_pct", 1, ratios=False)
    per_call = rows("script_us_per_call", 1, ratios=False)
    load = [_load_row(fig, label(r), r) for r in rates]
    first = ["published (deliveries asked)"]
    return "\n\n".join(
        [
            "Deliveries per second received by the clients:",
            table(header(fig, first), delivered),
            "Events published, % of the rate asked (under 90 %: the load side limits the step, "
            "and two such steps in a row end the steps):",
            table(header(fig, first), published),
            "Deliveries lost (expected minus received, after a 3 s drain):",
            table(header(fig, first), lost),
            "Latency p50, ms (publish to client read):",
            table(header(fig, first), p50),
            "Latency p99, ms:",
            table(header(fig, first), p99),
            "Server CPU per delivery, µs (server core time / deliveries):",
            table(header(fig, first), cpu),
            "Server CPU plus Redis's CPU, per delivery, µs (both from /proc; Nchan publishes "
            "inside its server, so its server CPU already covers what Redis does for ours):",
            table(header(fig, first), with_redis),
            "Server core busy, % of one core:",
            table(header(fig, first), core),
            "Redis time in the publish script, % of one core (`INFO commandstats` usec of "
            "EVALSHA: wall time inside Redis, so at most its CPU plus any wait for the core):",
            table(header(fig, first), script),
            "Redis time per publish-script call, µs (the same `usec`, per call):",
            table(header(fig, first), per_call),
            "Redis CPU per publish, µs (/proc: the script, the PUBLISH to the hub and the "
            "network I/O of both):",
            table(header(fig, first), redis_per_publish),
            "Load core, % of one core: load generator + publisher + Redis (not the server):",
            table(header(fig, first, ratios=False), load),
        ]
    )


class _StepValues:
    """One value per run of a fan-out step's `key`, for any server."""

    def __init__(self, fig: Figures, rate: int, key: str) -> None:
        self.fig, self.rate, self.key = fig, rate, key

    def __call__(self, server: str) -> list[Any]:
        return self.fig.step(server, self.rate, self.key)


class _PublishedShare:
    """One value per run: the events published per second, as a % of the rate asked."""

    def __init__(self, fig: Figures, rate: int) -> None:
        self.fig, self.rate = fig, rate

    def __call__(self, server: str) -> list[Any]:
        per_s = self.fig.step(server, self.rate, "published_per_s")
        return [None if p is None else 100 * p / self.rate for p in per_s]


def _load_row(fig: Figures, label: str, rate: int) -> list[str]:
    row = [label]
    for s in fig.servers:
        parts = [
            median(fig.step(s, rate, key))
            for key in ("loadgen_cpu_pct", "publisher_cpu_pct", "redis_cpu_pct")
        ]
        row.append(" + ".join(fmt(p) for p in parts))
    return row


def summary_table(fig: Figures, latency_label: str) -> str:
    rows = [
        _side_by_side(fig, "highest deliveries/s with p99 <= 50 ms, none lost", fig.sustained),
        _side_by_side(fig, "most deliveries/s at any step (however late)", fig.most_delivered),
        _side_by_side(fig, f"{latency_label}: p50 ms", lambda s: fig.latency(s, "p50_ms"), 1),
        _side_by_side(fig, f"{latency_label}: p99 ms", lambda s: fig.latency(s, "p99_ms"), 1),
        _side_by_side(
            fig, f"{latency_label}: server CPU %", lambda s: fig.latency(s, "server_cpu_pct"), 1
        ),
        _side_by_side(
            fig,
            f"{latency_label}: CPU µs per delivery",
            lambda s: fig.latency(s, "cpu_us_per_delivery"),
            1,
        ),
    ]
    return table(header(fig, ["measure"]), rows)
