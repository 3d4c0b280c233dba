"""The process's Prometheus metrics, one registry per app (so tests can build many apps)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """Counters the hub and the streams bump; gauges read live values when scraped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_relayed = Counter(
            "progress_events_relayed", "Events read from Redis pub/sub and fanned out", registry=r
        )
        self.frames_coalesced = Counter(
            "progress_frames_coalesced", "Progress frames replaced in full queues", registry=r
        )
        self.slow_clients_dropped = Counter(
            "progress_slow_clients_dropped", "Streams ended because the client read nothing",
            registry=r,
        )  # fmt: skip
        self.redis_reconnects = Counter(
            "progress_redis_reconnects", "Times a pub/sub connection was lost", registry=r
        )
        # One connection in standalone mode; one per primary in use in cluster mode.
        self.pubsub_connections = Gauge(
            "progress_pubsub_connections",
            "Pub/sub connections up, per Redis node (host:port)",
            ["node"],
            registry=r,
        )
        self.reroutes = Counter(
            "progress_reroutes",
            "Job channels re-subscribed on their slot's owner after MOVED, a slot "
            "migration, a failover or a lost connection (cluster mode), per node left",
            ["node"],
            registry=r,
        )
        self.bad_messages = Counter(
            "progress_bad_messages",
            "Pub/sub messages skipped as not an event of their channel's job",
            registry=r,
        )
        self.rechecks = Counter(
            "progress_rechecks",
            "History reads for a live event that did not follow a client's last one "
            "(a gap in seq, or another incarnation of the job's state)",
            registry=r,
        )
        self.streams_refused = Counter(
            "progress_streams_refused", "Streams answered 503 too_many_streams", registry=r
        )
        self._open_streams = Gauge("progress_open_streams", "Open SSE streams", registry=r)
        self._watched_jobs = Gauge(
            "progress_watched_jobs", "Job channels subscribed by the hub", registry=r
        )
        # Leak detection: the task count must return to its baseline once streams close.
        self._tasks = Gauge("progress_asyncio_tasks", "Live asyncio tasks", registry=r)
        self._tasks.set_function(_task_count)

    def track(self, open_streams: Callable[[], int], watched_jobs: Callable[[], int]) -> None:
        self._open_streams.set_function(open_streams)
        self._watched_jobs.set_function(watched_jobs)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _task_count() -> int:
    """Tasks of the running loop (0 when scraped outside one, e.g. from a test thread)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0
