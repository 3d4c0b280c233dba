"""One parent job for a big group: what a child event costs, and how fast the parent ends.

    .venv/bin/python -m bench.group [--children 1000] [--groups 10] [--seconds 1]

Starts its own redis-server. Each group has `--children` children; every child reports
progress every 10 ms for `--seconds` and then succeeds. The children's reports go through
the worker's own coalescing (`PROGRESS_THROTTLE_MS`, 100 ms: a child reporting every
10 ms publishes about every 100 ms), so each child is published in rounds of 100 ms:
progress, ..., success, through the real `Publisher` (the publish script, then the
family script in the parent's slot), from `--processes` publishing processes. A Redis
pub/sub subscriber on the parent's channel (what each web process's hub reads) records
every parent event with its arrival time.

Figures: Redis round trips and Redis commands (counted by Redis, scripts' own calls
included) per child event; the child events per second achieved; the parent's events
per second (its throttle allows about 10 a second plus its status changes); and, per
group, the time from the last child's terminal publish being sent to the parent's
terminal event at the subscriber (the median and the worst of `--groups` groups: with a
few groups, the worst stands for the p99).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import threading
import time
import uuid
from typing import Any

import redis

from progress_streamer.protocol.event import EventDraft, decode_event
from progress_streamer.protocol.family import ChildPlan, FamilyKind, FamilyPlan, record_family
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer

ROUND_SECONDS = 0.1  # what the worker's throttle lets through of a child reporting every 10 ms


def _publish_children(url: str, prefix: str, ids: list[str], rounds: int, out: Any) -> None:
    """One publishing process: its children, round after round; then their ends."""
    client = redis.Redis.from_url(url)
    publisher = Publisher(client, Settings(redis_url=url, key_prefix=prefix))
    events = 0
    for job_id in ids:
        publisher.publish(EventDraft(job_id=job_id, status=JobStatus.STARTED))
        events += 1
    next_round = time.monotonic()
    for number in range(1, rounds):
        for job_id in ids:
            draft = EventDraft(
                job_id=job_id, status=JobStatus.PROGRESS, percent=100.0 * number / rounds
            )
            publisher.publish(draft)
            events += 1
        next_round += ROUND_SECONDS
        time.sleep(max(0.0, next_round - time.monotonic()))
    sent = 0.0
    for job_id in ids:
        sent = time.time()  # the parent's end goes out within this call: time it from here
        publisher.publish(EventDraft(job_id=job_id, status=JobStatus.SUCCESS, result=1))
        events += 1
    out.put({"events": events, "last_terminal": sent})
    publisher.families.close()
    client.close()


def _listen(client: redis.Redis, channel: str, arrivals: list[tuple[float, str]],
            ready: threading.Event) -> None:  # fmt: skip
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    ready.set()
    while True:
        message = pubsub.get_message(timeout=30)
        if message is None:
            break
        if message["type"] != "message":
            continue
        event = decode_event(message["data"])
        arrivals.append((time.time(), event.status.value))
        if event.is_terminal:
            break
    pubsub.close()


def _commands(client: redis.Redis) -> tuple[int, int]:
    """(all commands Redis ran, EVALSHA calls) so far."""
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    total = sum(int(v["calls"]) for v in stats.values())
    return total, int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def one_group(url: str, children: int, seconds: float, processes: int) -> dict[str, Any]:
    prefix = f"g{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    settings = Settings(redis_url=url, key_prefix=prefix)
    publisher = Publisher(client, settings)
    ids = [uuid.uuid4().hex for _ in range(children)]
    plan = FamilyPlan(
        parent_id=uuid.uuid4().hex,
        kind=FamilyKind.GROUP,
        children=tuple(ChildPlan(job_id=i, name="bench.child") for i in ids),
    )
    record_family(publisher, plan)
    arrivals: list[tuple[float, str]] = []
    ready = threading.Event()
    channel = KeySpace(prefix).job(plan.parent_id).channel
    listener = threading.Thread(target=_listen, args=(client, channel, arrivals, ready))
    listener.start()
    ready.wait(10)
    rounds = max(2, round(seconds / ROUND_SECONDS))
    before = _commands(client)
    started = time.time()
    out: Any = multiprocessing.get_context("fork").Queue()
    share = -(-children // processes)
    workers = [
        multiprocessing.get_context("fork").Process(
            target=_publish_children, args=(url, prefix, ids[i : i + share], rounds, out)
        )
        for i in range(0, children, share)
    ]
    for worker in workers:
        worker.start()
    reports = [out.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(60)
    listener.join(60)
    took = time.time() - started
    after = _commands(client)
    publisher.families.close()
    client.close()
    events = sum(r["events"] for r in reports)
    last_terminal = max(r["last_terminal"] for r in reports)
    terminal_at = next((t for t, status in arrivals if status in ("success", "failure")), None)
    busy = [t for t, _ in arrivals if started <= t <= last_terminal]
    return {
        "child_events": events,
        "child_events_per_s": events / took,
        "round_trips_per_child_event": (after[1] - before[1]) / events,
        "commands_per_child_event": (after[0] - before[0]) / events,
        "parent_events": len(arrivals),
        "parent_events_per_s": len(busy) / max(last_terminal - started, 1e-9),
        "parent_max_events_in_a_second": _max_per_second(busy),
        "last_child_to_parent_end_s": None if terminal_at is None else terminal_at - last_terminal,
    }


def _max_per_second(times: list[float]) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] < t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def measure(children: int = 1000, groups: int = 10, seconds: float = 1.0,
            processes: int = 2) -> dict[str, Any]:  # fmt: skip
    with RedisServer() as server:
        results = [one_group(server.url, children, seconds, processes) for _ in range(groups)]
    ends = [r["last_child_to_parent_end_s"] for r in results]
    done = [e for e in ends if e is not None]
    return {
        "children": children,
        "groups": groups,
        "seconds": seconds,
        "child_events_per_s": statistics.median(r["child_events_per_s"] for r in results),
        "round_trips_per_child_event": statistics.median(
            r["round_trips_per_child_event"] for r in results
        ),
        "commands_per_child_event": statistics.median(
            r["commands_per_child_event"] for r in results
        ),
        "parent_events_per_s": statistics.median(r["parent_events_per_s"] for r in results),
        "parent_max_events_in_a_second": max(r["parent_max_events_in_a_second"] for r in results),
        "parent_end_median_s": statistics.median(done) if done else None,
        "parent_end_worst_s": max(done) if done else None,
        "parents_not_ended": len(ends) - len(done),
    }


def table(figures: dict[str, Any]) -> str:
    def seconds(value: float | None) -> str:
        return "never" if value is None else f"{value * 1000:.1f} ms"

    rows = [
        ("children per group, groups", f"{figures['children']:,}, {figures['groups']}"),
        ("child events per second achieved (2 publishing processes)",
         f"{figures['child_events_per_s']:,.0f}"),
        ("Redis round trips per child event", f"{figures['round_trips_per_child_event']:.2f}"),
        ("Redis commands per child event (scripts' calls included)",
         f"{figures['commands_per_child_event']:.1f}"),
        ("parent events per second (median of groups)", f"{figures['parent_events_per_s']:.1f}"),
        ("parent events in the busiest second", str(figures["parent_max_events_in_a_second"])),
        ("last child's terminal -> parent's terminal at the subscriber, median",
         seconds(figures["parent_end_median_s"])),
        ("... worst of the groups (stands for the p99)", seconds(figures["parent_end_worst_s"])),
    ]  # fmt: skip
    lines = ["| group of children reporting every 10 ms | |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    if figures["parents_not_ended"]:
        lines.append(f"| parents that never ended | {figures['parents_not_ended']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.group",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=1.0, help="each child's run time")
    parser.add_argument("--processes", type=int, default=2, help="publishing processes")
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    args = parser.parse_args()
    figures = measure(args.children, args.groups, args.seconds, args.processes)
    print(json.dumps(figures) if args.json else table(figures))


if __name__ == "__main__":
    main()
