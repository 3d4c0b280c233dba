"""The subscription hub: one pub/sub connection for everything, and Redis going away."""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import redis

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.history import CatchUp
from progress_streamer.protocol.keys import JobKeys, KeySpace
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer, free_port
from tests.support.server import (
    SSEEvent,
    eventually,
    hub_connections,
    numsub,
    open_sse,
    publisher,
    read_all,
    running_server,
)


async def test_200_clients_on_20_jobs_share_one_pubsub_connection(
    settings: Settings, sync_redis: redis.Redis, keyspace: KeySpace, prefix: str
) -> None:
    pub = publisher(settings)
    jobs = [uuid.uuid4().hex for _ in range(20)]
    for job in jobs:
        pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    roomy = settings.replace(max_streams_per_client=1000)
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=0)
    with running_server(roomy) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=20, limits=limits) as client,
            AsyncExitStack() as stack,
        ):
            streams = []
            for i in range(200):
                url = f"/api/v1/jobs/{jobs[i % 20]}/events"
                streams.append(await stack.enter_async_context(open_sse(client, url)))
            firsts = await asyncio.gather(*(anext(events) for _, events in streams))
            assert {json.loads(e.data)["status"] for e in firsts} == {"started"}
            assert hub_connections(sync_redis, prefix) == 1
            assert all(numsub(sync_redis, keyspace, job) == 1 for job in jobs)
            for job in jobs:
                pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))

            async def rest(events: object) -> list[SSEEvent]:
                return [e async for e in events]  # type: ignore[attr-defined]

            ends = await asyncio.gather(*(rest(events) for _, events in streams))
            assert all([json.loads(e.data)["status"] for e in end] == ["success"] for end in ends)
            assert server.services.metrics.events_relayed._value.get() == 20
    pub.redis.close()


async def _stream_across_restart(tmp_path: Path, *, appendonly: bool) -> list[dict[str, object]]:
    port = free_port()
    first = RedisServer(port=port, appendonly=appendonly, directory=str(tmp_path))
    first.start()
    settings = Settings(redis_url=first.url, key_prefix="r", auth="none")
    job = uuid.uuid4().hex
    pub = publisher(settings)
    received: list[dict[str, object]] = []
    try:
        pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
        with running_server(settings) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
                url = f"/api/v1/jobs/{job}/events"
                async with open_sse(client, url) as (_, events):
                    received.append(json.loads((await anext(events)).data))
                    pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=10.0))
                    received.append(json.loads((await anext(events)).data))
                    first.stop()
                    second = RedisServer(port=port, appendonly=appendonly, directory=str(tmp_path))
                    second.start()
                    try:
                        pub.redis.connection_pool.disconnect()
                        if appendonly:  # published before the hub is back: from history
                            for percent in (20.0, 30.0):
                                draft = EventDraft(
                                    job_id=job, status=JobStatus.PROGRESS, percent=percent
                                )
                                pub.publish(draft)
                            pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
                        received += [json.loads(e.data) async for e in events]
                        reconnects = server.services.metrics.redis_reconnects._value.get()
                        assert reconnects >= 1
                    finally:
                        second.stop(remove_data=False)
    finally:
        first.stop()
        pub.redis.close()
    return received


async def test_after_a_restart_with_persistence_streams_resume_to_the_terminal(
    tmp_path: Path,
) -> None:
    received = await _stream_across_restart(tmp_path, appendonly=True)
    assert [e["seq"] for e in received] == [1, 2, 3, 4, 5]
    assert received[-1]["status"] == "success"


async def test_after_a_restart_without_persistence_streams_end_with_state_lost(
    tmp_path: Path,
) -> None:
    received = await _stream_across_restart(tmp_path, appendonly=False)
    assert [e["seq"] for e in received] == [1, 2, 3]
    assert received[-1]["status"] == "failure"
    error = received[-1]["error"]
    assert isinstance(error, dict) and error["type"] == "StateLost"


async def test_a_killed_pubsub_connection_loses_nothing(
    settings: Settings, sync_redis: redis.Redis, prefix: str
) -> None:
    pub = publisher(settings)
    job = uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with open_sse(client, f"/api/v1/jobs/{job}/events") as (_, events):
                await anext(events)
                hub = [c for c in sync_redis.client_list(_type="pubsub")
                       if c["name"] == f"progress-hub-{prefix}"]  # fmt: skip
                sync_redis.client_kill_filter(_id=hub[0]["id"])
                for percent in range(1, 20):  # some before, some after the hub is back
                    pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=percent))
                pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
                rest = [json.loads(e.data)["seq"] async for e in events]
            assert rest == list(range(2, 22))
            assert server.services.metrics.redis_reconnects._value.get() == 1
    pub.redis.close()


async def test_malformed_messages_on_a_channel_are_skipped(
    settings: Settings, sync_redis: redis.Redis, keyspace: KeySpace
) -> None:
    pub = publisher(settings)
    job = uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with open_sse(client, f"/api/v1/jobs/{job}/events") as (stream, events):
                await anext(events)
                channel = keyspace.job(job).channel
                for junk in (b"not json", b'{"job_id":"other","seq":9}', b'{"a":\n1}'):
                    sync_redis.publish(channel, junk)
                pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
                rest = [json.loads(e.data)["seq"] async for e in events]
    assert rest == [2]
    assert b"not json" not in stream.raw
    pub.redis.close()


async def test_no_message_content_ends_the_shared_reader(
    settings: Settings, sync_redis: redis.Redis, keyspace: KeySpace
) -> None:
    """Regression (issue 14, item 4): a 5 KB nested JSON array on a job's channel raised
    RecursionError in the reader, dropping the one pub/sub connection of the process."""
    pub = publisher(settings)
    job = uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    nested = b"[" * 2500 + b"]" * 2500
    with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with open_sse(client, f"/api/v1/jobs/{job}/events") as (_, events):
                assert json.loads((await anext(events)).data)["status"] == "started"
                channel = keyspace.job(job).channel
                for bad in (nested, b"not json", b'{"job_id": "other"}'):
                    sync_redis.publish(channel, bad)
                pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result=1))
                rest = [json.loads(e.data)["status"] async for e in events]
        metrics = server.services.metrics
        assert rest == ["success"]
        assert metrics.bad_messages._value.get() == 3
        assert metrics.redis_reconnects._value.get() == 0
    pub.redis.close()


async def test_events_of_a_new_incarnation_end_the_old_one_s_streams_at_once(
    settings: Settings, sync_redis: redis.Redis, keyspace: KeySpace
) -> None:
    """Regression (issue 14, item 3): the job's state vanished under open streams (here
    with the pub/sub connection untouched, as after a failover to an empty replica) and a
    publisher that never saw it recreated the job from seq 1; the hub dropped those
    events as already seen, and the streams stayed open with no terminal event."""
    pub = publisher(settings)
    job = uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    for percent in (10.0, 20.0):
        pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=percent))
    with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            url = f"/api/v1/jobs/{job}/events"
            async with open_sse(client, url) as (_, a), open_sse(client, url) as (_, b):
                assert [json.loads((await anext(s)).data)["seq"] for s in (a, b)] == [3, 3]
                sync_redis.delete(*keyspace.job(job).all_keys)
                for status in (JobStatus.STARTED, JobStatus.PROGRESS):  # seqs 1 and 2 again
                    pub.publish(EventDraft(job_id=job, status=status))
                async with asyncio.timeout(10):
                    ends = [[json.loads(e.data) async for e in s] for s in (a, b)]
            for end in ends:
                assert [(e["seq"], e["status"], e["error"]["type"]) for e in end] == [
                    (4, "failure", "StateLost")
                ]
            # The loss wins: the new incarnation ended StateLost too, for new viewers.
            status = (await client.get(f"/api/v1/jobs/{job}")).json()
            assert (status["status"], status["error"]["type"]) == ("failure", "StateLost")
            fresh = await read_all(client, url)
            assert [json.loads(e.data)["error"]["type"] for e in fresh.events] == ["StateLost"]
        assert server.services.metrics.rechecks._value.get() >= 1
    assert pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS)).reason == "terminal"
    pub.redis.close()


async def test_events_of_a_publisher_that_predates_epochs_do_not_end_streams(
    settings: Settings, sync_redis: redis.Redis, keyspace: KeySpace
) -> None:
    """During a rolling upgrade an older worker's events carry no `epoch` (it decodes as
    0) while the job's state has one: the stream rechecks and goes on, no `StateLost`."""
    pub = publisher(settings)
    job = uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    keys = keyspace.job(job)
    old_style = b'{"job_id":"%s","seq":2,"attempt":1,"status":"progress","percent":50.0}' % (
        job.encode()
    )
    with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with open_sse(client, f"/api/v1/jobs/{job}/events") as (_, events):
                assert json.loads((await anext(events)).data)["seq"] == 1
                with sync_redis.pipeline(transaction=True) as multi:  # the old script's writes
                    multi.hset(keys.state, mapping={"seq": 2, "status": "progress"})
                    multi.hset(keys.state, "event", old_style)
                    multi.rpush(keys.history, old_style)
                    multi.publish(keys.channel, old_style)
                    multi.execute()
                async with asyncio.timeout(10):
                    rest = [json.loads((await anext(events)).data)]
                    pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result=1))
                    rest += [json.loads(e.data) async for e in events]
    assert [(e["seq"], e["status"]) for e in rest] == [(2, "progress"), (3, "success")]
    pub.redis.close()


async def test_a_job_whose_seq_went_back_under_a_stream_ends_it_with_state_lost(
    settings: Settings, sync_redis: redis.Redis, keyspace: KeySpace, prefix: str
) -> None:
    # A failover to a replica that missed the last writes (or a restart from an older
    # file) leaves the job's state a few seqs back, same epoch: the events the client saw
    # are gone, and the next publishes would reuse their seqs with other content.
    pub = publisher(settings)
    job = uuid.uuid4().hex
    keys = keyspace.job(job)
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with open_sse(client, f"/api/v1/jobs/{job}/events") as (_, events):
                await anext(events)
                for percent in (10.0, 20.0):
                    pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=percent))
                    await anext(events)  # seq 2, then 3
                sync_redis.rpop(keys.history)  # seq 3 is lost: the state is back at 2
                second = sync_redis.lindex(keys.history, -1)
                sync_redis.hset(keys.state, mapping={"seq": 2, "event": second})  # type: ignore[arg-type]
                hub = [c for c in sync_redis.client_list(_type="pubsub")
                       if c["name"] == f"progress-hub-{prefix}"]  # fmt: skip
                sync_redis.client_kill_filter(_id=hub[0]["id"])  # the hub catches up
                rest = [json.loads(e.data) async for e in events]
    assert [(e["seq"], e["status"], e["error"]["type"]) for e in rest] == [
        (4, "failure", "StateLost")
    ]
    pub.redis.close()


async def test_a_reconnect_while_a_stream_opens_neither_repeats_nor_skips(
    settings: Settings, sync_redis: redis.Redis, keyspace: KeySpace, prefix: str
) -> None:
    """The hub re-subscribes (here: its connection killed; on a cluster: a moved slot)
    between a new stream's subscription and its replay. The replay, read before, misses
    what was published meanwhile, and the hub's catch-up must not release the stream
    ahead of it: the client still gets every seq once, in order."""
    pub = publisher(settings)
    job = uuid.uuid4().hex
    keys = keyspace.job(job)
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=10.0))
    with running_server(settings) as server:
        hub, reader = server.services.hub, server.services.reader
        read = reader.events_since
        interrupted = False

        async def events_since(job_keys: JobKeys, after: int | None) -> CatchUp | None:
            nonlocal interrupted
            caught = await read(job_keys, after)
            if job_keys != keys or interrupted:
                return caught
            interrupted = True  # the stream's own read is done: the hub reconnects now
            (conn,) = [c for c in sync_redis.client_list(_type="pubsub")
                       if c["name"] == f"progress-hub-{prefix}"]  # fmt: skip
            sync_redis.client_kill_filter(_id=conn["id"])
            for percent in (20.0, 30.0):  # seq 3 and 4: in neither the replay nor pub/sub
                pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=percent))
            channel = hub._channels[keys.channel]

            def resubscribed() -> bool:
                reconnected = server.services.metrics.redis_reconnects._value.get() == 1
                return reconnected and channel.confirmed.is_set() and not hub.catch_ups.running

            await eventually(resubscribed, within=10)
            return caught

        reader.events_since = events_since  # type: ignore[method-assign]
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            url = f"/api/v1/jobs/{job}/events"
            async with open_sse(client, url, last_event_id="1") as (_, events):
                assert json.loads((await anext(events)).data)["seq"] == 2
                pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
                rest = [json.loads(e.data)["seq"] async for e in events]
        assert interrupted
        assert rest == [3, 4, 5]
    pub.redis.close()
