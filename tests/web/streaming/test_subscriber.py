"""A client's bounded queue (`streaming/subscriber.py`) and a client that stops reading."""

from __future__ import annotations

import socket
import uuid

import pytest

from progress_streamer.protocol.event import EventDraft, decode_event, encode_event
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.web.streaming.catch_up import state_lost
from progress_streamer.web.streaming.subscriber import Delivery, Subscriber, frame_of
from tests.support.server import eventually, publisher, running_server

JOB = "job1"


def delivery(
    seq: int, status: JobStatus = JobStatus.PROGRESS, job: str = JOB, epoch: int = 0
) -> Delivery:
    draft = EventDraft(job_id=job, status=status, percent=None)
    return frame_of(decode_event(encode_event(draft, seq, 1, epoch)))


def replayed(sub: Subscriber, *jobs: str, epoch: int = 0) -> Subscriber:
    """As the stream's opening leaves it: each job's replay (here, empty) from `epoch`."""
    for job in jobs or sub.job_ids:
        sub.hold(job)
        assert sub.release(job, [], epoch)
    return sub


async def drain(sub: Subscriber) -> list[int]:
    out = []
    while (batch := await sub.next()) is not None:
        out.extend(d.event.seq for d in batch)
    return out


async def test_a_full_queue_coalesces_progress_but_keeps_every_status_change() -> None:
    counted: list[None] = []  # the process's `progress_frames_coalesced` in the app
    sub = Subscriber([JOB], capacity=3, lifetime=60, on_coalesce=lambda: counted.append(None))
    replayed(sub)
    sub.offer(delivery(1, JobStatus.STARTED))
    for seq in range(2, 10):
        sub.offer(delivery(seq))
    sub.offer(delivery(10, JobStatus.SUCCESS))
    sub.offer(delivery(11))  # nothing after a terminal event
    assert await drain(sub) == [1, 2, 9, 10]
    assert sub.coalesced == len(counted) == 6 and sub.ended


async def test_repeats_are_dropped_and_a_replay_goes_before_held_live_events() -> None:
    sub = Subscriber([JOB], capacity=10, lifetime=60)
    sub.hold(JOB)
    sub.offer(delivery(4))
    sub.offer(delivery(5))
    assert sub.release(JOB, [delivery(2, JobStatus.STARTED), delivery(3), delivery(4)], 0)
    sub.offer(delivery(5))
    sub.offer(delivery(6, JobStatus.REVOKED))
    assert await drain(sub) == [2, 3, 4, 5, 6]


async def test_frames_queued_meanwhile_go_out_together_in_order() -> None:
    sub = replayed(Subscriber([JOB], capacity=10, lifetime=60))
    for seq in range(1, 6):
        sub.offer(delivery(seq))
    batch = await sub.next()
    assert batch is not None and [d.event.seq for d in batch] == [1, 2, 3, 4, 5]


async def test_a_watch_ends_when_every_job_did() -> None:
    sub = replayed(Subscriber([JOB, "job2"], capacity=10, lifetime=60), JOB)
    sub.offer(delivery(1, JobStatus.SUCCESS))
    sub.offer(delivery(3, JobStatus.FAILURE, job="other"))  # not watched
    first = await sub.next()
    assert first is not None and [d.event.seq for d in first] == [1]
    assert not sub.ended
    sub.hold("job2")  # as the hub does: the history said the job's state is gone
    sub.release("job2", [state_lost("job2", 7, 2, 0)], None)
    batch = await sub.next()
    assert batch is not None and len(batch) == 1
    final = batch[0]
    assert final.event.seq == 8 and final.event.attempt == 2
    assert final.event.error is not None and final.event.error.type == "StateLost"
    assert sub.ended


async def test_only_an_event_that_follows_is_taken_without_a_check() -> None:
    """Issue 14, items 3 and 9: a gap in seq or another epoch is refused (the hub then
    reads the history); a repeat is dropped; a finished job takes nothing more."""
    sub = replayed(Subscriber([JOB], capacity=10, lifetime=60), epoch=5)
    assert sub.offer(delivery(1, JobStatus.STARTED, epoch=5))
    assert not sub.offer(delivery(10**15, epoch=5))  # a gap: not delivered
    assert not sub.offer(delivery(2, epoch=6))  # another incarnation of the job's state
    assert sub.offer(delivery(1, epoch=5))  # a repeat: dropped quietly
    assert sub.offer(delivery(2, JobStatus.SUCCESS, epoch=5))
    assert sub.offer(delivery(9, epoch=6))  # finished: nothing to check
    assert await drain(sub) == [1, 2]


async def test_a_replay_of_another_incarnation_than_the_client_s_is_refused() -> None:
    sub = replayed(Subscriber([JOB], capacity=10, lifetime=60), epoch=5)
    assert sub.offer(delivery(1, JobStatus.STARTED, epoch=5))
    sub.hold(JOB)
    assert not sub.release(JOB, [delivery(2, epoch=6)], 6)
    assert sub.last_seq[JOB] == 1 and sub.epoch[JOB] == 5


async def test_live_events_held_during_a_replay_are_bounded() -> None:
    """Issue 14, item 10: a replay that never came let live events pile up unbounded."""
    sub = replayed(Subscriber([JOB], capacity=3, lifetime=60))
    sub.hold(JOB)
    for seq in range(1, 10):
        assert sub.offer(delivery(seq))
    assert sub.closed == "lagging"
    assert len(sub._held[JOB]) == 3
    assert await sub.next() is None  # the stream ends; the client resumes with its id


@pytest.mark.slow
async def test_a_client_that_reads_nothing_is_dropped(settings: Settings) -> None:
    job = uuid.uuid4().hex
    pub = publisher(settings)
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    with running_server(settings.replace(send_timeout=0.5)) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        try:
            sock.sendall(f"GET /api/v1/jobs/{job}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await eventually(lambda: server.services.limiter.open == 1)
            for _ in range(600):  # ~9 MB: more than the socket buffers hold
                pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, message="x" * 15000))
            dropped = server.services.metrics.slow_clients_dropped
            await eventually(lambda: dropped._value.get() == 1, within=10)
            await eventually(lambda: server.services.limiter.open == 0)
        finally:
            sock.close()
            pub.redis.close()
