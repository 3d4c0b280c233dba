"""Jobs fed while a Redis Cluster changes under them: a publisher thread per job that
keeps publishing through failovers (each event gets out, once), and what its stream
received. Shared by the cluster hub tests and `bench.reroute`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import redis
from redis.exceptions import RedisClusterException

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from tests.support.server import publisher

# What the sync cluster client of redis-py 5.3 raises while a primary is away: besides
# RedisError, RedisClusterException (no seed answered its refresh) and AttributeError (a
# command whose connection its refresh closed). The publishers here try again.
PUBLISH_PASSING = (redis.RedisError, RedisClusterException, AttributeError)


@dataclass
class Feed:
    """One job: a publisher thread and the events its stream received."""

    job_id: str
    received: list[dict[str, object]] = field(default_factory=list)
    published: int = 1  # its `started`, before the stream opens


class Publishers:
    """A thread per job publishing `count` progress events (every 20 ms) then `success`;
    a publish refused while a primary is away is tried again (every event gets out).
    `pause` returns once every thread is parked between two publishes."""

    def __init__(self, settings: Settings, feeds: list[Feed], count: int) -> None:
        self.settings, self.feeds, self.count = settings, feeds, count
        self.errors: list[BaseException] = []
        self._cond = threading.Condition()
        self._paused = False
        self._parked = 0
        self._active = len(feeds)
        self._threads = [threading.Thread(target=self._run, args=(f,), daemon=True) for f in feeds]

    def _run(self, feed: Feed) -> None:
        pub = publisher(self.settings)  # one each: the sync cluster client is not thread-safe
        try:
            for i in range(self.count + 1):
                status = JobStatus.SUCCESS if i == self.count else JobStatus.PROGRESS
                draft = EventDraft(job_id=feed.job_id, status=status, percent=i * 90 / self.count)
                self._park()
                deadline = time.monotonic() + 30
                while True:
                    try:
                        pub.publish(draft)
                        break
                    except PUBLISH_PASSING:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
                feed.published += 1
                time.sleep(0.02)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            pub.redis.close()
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def _park(self) -> None:
        with self._cond:
            if self._paused:
                self._parked += 1
                self._cond.notify_all()
                self._cond.wait_for(lambda: not self._paused, 30)
                self._parked -= 1

    def pause(self) -> None:
        with self._cond:
            self._paused = True
            assert self._cond.wait_for(lambda: self._parked == self._active, 30)

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def __enter__(self) -> Publishers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.resume()
        for thread in self._threads:
            thread.join(60)
        assert not self.errors, self.errors
