"""The publish script and the publishers, against a real redis-server."""

from __future__ import annotations

import json
import os
import threading
import uuid

import pytest
import redis
import redis.asyncio

from progress_streamer.protocol.connections import sync_client
from progress_streamer.protocol.event import (
    EventDraft,
    EventNotSerializable,
    EventTooLarge,
    decode_event,
)
from progress_streamer.protocol.history import JobReader, SyncJobReader
from progress_streamer.protocol.incarnation import SeenState
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import AsyncPublisher, Publisher, publish_call
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus

# Each test runs on one Redis and again on a Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.both_redis_modes


def new_job() -> str:
    return uuid.uuid4().hex


def draft(job_id: str, status: JobStatus, **fields: object) -> EventDraft:
    return EventDraft(job_id=job_id, status=status, **fields)  # type: ignore[arg-type]


def history(client: redis.Redis, keyspace: KeySpace, job_id: str) -> list[bytes]:
    return client.lrange(keyspace.job(job_id).history, 0, -1)  # type: ignore[return-value]


def test_seq_has_no_gaps_or_repeats_under_concurrent_publishers(
    sync_redis: redis.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    job = new_job()
    Publisher(sync_redis, settings).publish(draft(job, JobStatus.STARTED))

    def run() -> None:
        publisher = Publisher(sync_client(settings, max_connections=1), settings)
        for _ in range(200):
            publisher.publish(draft(job, JobStatus.PROGRESS, message="x"))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = [decode_event(raw).seq for raw in history(sync_redis, keyspace, job)]
    assert seqs == list(range(1, 802))


def test_nothing_is_accepted_after_a_terminal_event(
    sync_redis: redis.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    publisher = Publisher(sync_redis, settings)
    job = new_job()
    publisher.publish(draft(job, JobStatus.STARTED))
    assert publisher.publish(draft(job, JobStatus.SUCCESS, result={"ok": True})).accepted
    for status in (JobStatus.PROGRESS, JobStatus.FAILURE, JobStatus.REVOKED, JobStatus.STARTED):
        outcome = publisher.publish(draft(job, status, attempt=9))
        assert (outcome.accepted, outcome.reason, outcome.seq) == (False, "terminal", 2)
    assert len(history(sync_redis, keyspace, job)) == 2


def test_illegal_transitions_and_falling_percent_are_refused(
    sync_redis: redis.Redis, settings: Settings
) -> None:
    publisher = Publisher(sync_redis, settings)
    job = new_job()
    assert publisher.publish(draft(job, JobStatus.PENDING)).accepted
    assert publisher.publish(draft(job, JobStatus.PROGRESS)).reason == "illegal_transition"
    assert publisher.publish(draft(job, JobStatus.STARTED)).accepted
    assert publisher.publish(draft(job, JobStatus.PENDING)).reason == "illegal_transition"
    assert publisher.publish(draft(job, JobStatus.PROGRESS, percent=50.0)).accepted
    assert publisher.publish(draft(job, JobStatus.PROGRESS, percent=49.5)).reason == (
        "percent_decreased"
    )
    assert publisher.publish(draft(job, JobStatus.PROGRESS, percent=50)).accepted


def test_a_retry_starts_a_new_attempt_whose_percent_starts_over(
    sync_redis: redis.Redis, settings: Settings
) -> None:
    publisher = Publisher(sync_redis, settings)
    job = new_job()
    first = publisher.publish(draft(job, JobStatus.STARTED, attempt=1))
    publisher.publish(draft(job, JobStatus.PROGRESS, attempt=1, percent=80))
    second = publisher.publish(draft(job, JobStatus.STARTED, attempt=1))
    assert (first.attempt, second.attempt) == (1, 2)
    assert publisher.publish(draft(job, JobStatus.PROGRESS, attempt=1, percent=90)).reason == (
        "stale_attempt"
    )
    assert publisher.publish(draft(job, JobStatus.PROGRESS, attempt=2, percent=10)).accepted


def test_history_is_trimmed_to_its_bound(
    sync_redis: redis.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    publisher = Publisher(sync_redis, settings.replace(history=5))
    job = new_job()
    publisher.publish(draft(job, JobStatus.STARTED))
    for i in range(20):
        publisher.publish(draft(job, JobStatus.PROGRESS, percent=float(i)))
    assert [decode_event(raw).seq for raw in history(sync_redis, keyspace, job)] == [
        17, 18, 19, 20, 21,
    ]  # fmt: skip


def test_every_key_of_the_job_gets_the_ttl(
    sync_redis: redis.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    publisher = Publisher(sync_redis, settings.replace(job_ttl=777))
    job = new_job()
    keys = keyspace.job(job)
    sync_redis.hset(keys.file, "name", "report.csv")
    publisher.publish(draft(job, JobStatus.STARTED))
    for key in keys.all_keys:
        assert 770 <= sync_redis.ttl(key) <= 777, key


def test_snapshot_is_the_last_event_byte_for_byte_as_published(
    sync_redis: redis.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    publisher = Publisher(sync_redis, settings)
    job = new_job()
    keys = keyspace.job(job)
    # On a cluster the script ends in SPUBLISH: only a sharded subscription, on the
    # primary owning the job's slot, hears it.
    sharded = settings.cluster
    listener = sync_redis
    if sharded:
        owner = sync_redis.get_node_from_key(keys.channel)  # type: ignore[attr-defined]
        listener = redis.Redis(host=owner.host, port=owner.port)
    pubsub = listener.pubsub()
    (pubsub.ssubscribe if sharded else pubsub.subscribe)(keys.channel)
    receive = pubsub.get_message
    assert receive(timeout=5)["type"] == ("ssubscribe" if sharded else "subscribe")  # type: ignore[index]
    publisher.publish(draft(job, JobStatus.STARTED))
    publisher.publish(
        draft(job, JobStatus.PROGRESS, percent=75.0, step="rendering", current=3, total=4)
    )
    published = [receive(timeout=5)["data"] for _ in range(2)]  # type: ignore[index]
    pubsub.close()
    if listener is not sync_redis:
        listener.close()
    assert history(sync_redis, keyspace, job) == published
    assert sync_redis.hget(keys.state, "event") == published[-1]
    event = json.loads(published[-1])
    assert list(event)[:5] == ["job_id", "seq", "epoch", "attempt", "status"]
    assert b'"percent":75.0' in published[-1]  # not re-encoded by Lua's cjson


def test_results_keep_their_json_shape(sync_redis: redis.Redis, settings: Settings) -> None:
    publisher = Publisher(sync_redis, settings)
    job = new_job()
    publisher.publish(draft(job, JobStatus.STARTED))
    publisher.publish(draft(job, JobStatus.SUCCESS, result={"rows": [], "ratio": 1.0, "m": {}}))
    raw = SyncJobReader(sync_redis).snapshot(KeySpace(settings.key_prefix).job(job))
    assert raw is not None
    assert b'"result":{"rows":[],"ratio":1.0,"m":{}}' in raw.raw


def test_script_is_reloaded_after_script_flush(sync_redis: redis.Redis, settings: Settings) -> None:
    publisher = Publisher(sync_redis, settings)
    job = new_job()
    publisher.publish(draft(job, JobStatus.STARTED))
    sync_redis.script_flush()
    assert publisher.publish(draft(job, JobStatus.PROGRESS)).seq == 2


def test_oversized_and_unencodable_events_are_refused_before_redis(
    sync_redis: redis.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    publisher = Publisher(sync_redis, settings.replace(max_event_bytes=1024))
    job = new_job()
    with pytest.raises(EventTooLarge, match="PROGRESS_MAX_EVENT_BYTES"):
        publisher.publish(draft(job, JobStatus.PROGRESS, message="x" * 2000))
    with pytest.raises(EventNotSerializable):
        publisher.publish(draft(job, JobStatus.SUCCESS, result={"when": object()}))
    with pytest.raises(EventNotSerializable):
        publisher.publish(draft(job, JobStatus.SUCCESS, result=float("nan")))
    with pytest.raises(ValueError, match="percent"):
        publisher.publish(draft(job, JobStatus.PROGRESS, percent=101))
    assert not sync_redis.exists(*keyspace.job(job).all_keys)


def test_the_sweeper_condition_wins_only_over_an_expired_lease(
    sync_redis: redis.Redis, settings: Settings
) -> None:
    publisher = Publisher(sync_redis, settings.replace(lease_seconds=30))
    job = new_job()
    publisher.publish(draft(job, JobStatus.STARTED), lease_seconds=30)
    lost = draft(job, JobStatus.FAILURE)
    assert publisher.publish(lost, condition="lease_expired").reason == "lease_active"
    publisher.publish(draft(job, JobStatus.PROGRESS), lease_seconds=-1)  # lease now in the past
    assert publisher.publish(lost, condition="lease_expired").accepted


def test_touch_lease_indexes_running_jobs_and_forgets_finished_ones(
    sync_redis: redis.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    publisher = Publisher(sync_redis, settings)
    job = new_job()
    publisher.publish(draft(job, JobStatus.STARTED))
    deadline = publisher.touch_lease(job, attempt=1)
    assert deadline is not None
    assert sync_redis.zscore(keyspace.leases, job) == pytest.approx(deadline)
    assert publisher.touch_lease(job, attempt=2) is None  # another attempt runs
    publisher.publish(draft(job, JobStatus.SUCCESS))
    assert publisher.touch_lease(job, attempt=1) is None
    assert sync_redis.zscore(keyspace.leases, job) is None


async def test_async_publisher_and_reader_share_the_script(
    async_redis: redis.asyncio.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    publisher = AsyncPublisher(async_redis, settings.replace(history=3))
    reader = JobReader(async_redis)
    job = new_job()
    keys = keyspace.job(job)
    assert await reader.events_since(keys, None) is None
    await publisher.publish(draft(job, JobStatus.STARTED))
    for percent in (10, 20, 30, 40):
        await publisher.publish(draft(job, JobStatus.PROGRESS, percent=percent))
    since = await reader.events_since(keys, 3)
    assert since is not None and not since.from_snapshot
    assert [e.seq for e in since.events] == [4, 5]
    too_old = await reader.events_since(keys, 1)
    assert too_old is not None and too_old.from_snapshot
    assert [e.seq for e in too_old.events] == [5]
    ahead = await reader.events_since(keys, 99)
    assert ahead is not None and ahead.from_snapshot
    caught_up = await reader.events_since(keys, 5)
    assert caught_up is not None and caught_up.events == () and not caught_up.is_terminal


def lost_state(client: redis.Redis, keyspace: KeySpace, job_id: str) -> None:
    """What a Redis restart without persistence does to one job."""
    client.delete(*keyspace.job(job_id).all_keys)


def test_every_event_carries_its_state_s_epoch_and_a_new_state_gets_a_new_one(
    sync_redis: redis.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    pub, job = Publisher(sync_redis, settings), new_job()
    first = [pub.publish(draft(job, status)) for status in (JobStatus.PENDING, JobStatus.STARTED)]
    events = [decode_event(raw) for raw in history(sync_redis, keyspace, job)]
    assert first[0].epoch == first[1].epoch > 10**15  # Redis time in microseconds
    assert [e.epoch for e in events] == [first[0].epoch] * 2
    assert b'"seq":1,"epoch":%d,"attempt":1,' % first[0].epoch in events[0].raw
    lost_state(sync_redis, keyspace, job)
    again = pub.publish(draft(job, JobStatus.STARTED))
    assert again.accepted and again.seq == 1 and again.epoch > first[0].epoch


def test_a_publisher_whose_state_vanished_is_refused_and_the_loss_is_stored(
    sync_redis: redis.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    pub, job = Publisher(sync_redis, settings), new_job()
    pub.publish(draft(job, JobStatus.PENDING))
    seen = pub.publish(draft(job, JobStatus.STARTED)).seen
    for percent in (10.0, 20.0):
        seen = pub.publish(draft(job, JobStatus.PROGRESS, percent=percent), seen=seen).seen
    assert seen is not None and seen.seq == 4
    lost_state(sync_redis, keyspace, job)
    refused = pub.publish(draft(job, JobStatus.PROGRESS, percent=30.0, attempt=1), seen=seen)
    assert (refused.accepted, refused.reason, refused.seq) == (False, "state_lost", 5)
    (raw,) = history(sync_redis, keyspace, job)
    end = decode_event(raw)
    assert (end.seq, end.status, end.attempt) == (5, JobStatus.FAILURE, 1)
    assert end.error is not None and end.error.type == "StateLost"
    assert end.epoch > seen.epoch
    assert set(json.loads(raw)) == set(json.loads(history_of_a_failure(pub)))  # same shape
    for later in (draft(job, JobStatus.SUCCESS, result=1), draft(job, JobStatus.STARTED)):
        assert pub.publish(later, seen=seen).reason == "terminal"
        assert pub.publish(later).reason == "terminal"


def history_of_a_failure(pub: Publisher) -> bytes:
    job = new_job()
    pub.publish(draft(job, JobStatus.FAILURE, error=None))
    raw: bytes = pub.redis.hget(pub.keyspace.job(job).state, "event")  # type: ignore[assignment]
    return raw


def test_a_state_recreated_by_a_publisher_that_never_saw_it_ends_state_lost(
    sync_redis: redis.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    pub, job = Publisher(sync_redis, settings), new_job()
    seen = pub.publish(draft(job, JobStatus.STARTED)).seen
    lost_state(sync_redis, keyspace, job)
    unaware = [pub.publish(draft(job, s)) for s in (JobStatus.STARTED, JobStatus.PROGRESS)]
    assert [o.seq for o in unaware] == [1, 2]
    refused = pub.publish(draft(job, JobStatus.PROGRESS, attempt=1), seen=seen)
    assert (refused.reason, refused.seq) == ("state_lost", 3)
    end = decode_event(history(sync_redis, keyspace, job)[-1])
    assert (end.seq, end.status, end.epoch) == (3, JobStatus.FAILURE, unaware[0].epoch)
    assert pub.publish(draft(job, JobStatus.SUCCESS)).reason == "terminal"


async def test_a_stream_s_loss_report_marks_the_job_until_it_is_published_again(
    async_redis: redis.asyncio.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    pub, job = AsyncPublisher(async_redis, settings), new_job()
    reader = JobReader(async_redis)
    seen = (await pub.publish(draft(job, JobStatus.STARTED))).seen
    assert seen is not None
    assert (await pub.report_lost(job, seen)).reason == "not_lost"  # still there: nothing
    await async_redis.delete(*keyspace.job(job).all_keys)
    for last in (7, 4):  # two streams, the highest seq wins
        assert (await pub.report_lost(job, SeenState(epoch=seen.epoch, seq=last))).seq == 0
    assert await reader.events_since(keyspace.job(job), None) is None  # still unknown: 404
    assert 0 < await async_redis.ttl(keyspace.job(job).state) <= settings.job_ttl
    refused = await pub.publish(draft(job, JobStatus.STARTED))  # a publisher unaware of it
    assert (refused.reason, refused.seq) == ("state_lost", 8)
    catch_up = await reader.events_since(keyspace.job(job), 3)
    assert catch_up is not None and catch_up.is_terminal
    assert [(e.seq, e.error.type if e.error else None) for e in catch_up.events] == [
        (8, "StateLost")
    ]
    assert not await async_redis.hexists(keyspace.job(job).state, "lost")


@pytest.mark.parametrize("status", [JobStatus.STARTED, JobStatus.PROGRESS, JobStatus.SUCCESS])
def test_a_publish_sent_twice_counts_once(
    sync_redis: redis.Redis, settings: Settings, keyspace: KeySpace, status: JobStatus
) -> None:
    """A client that sends the same call again (its reply lost in a failover) gets the
    first answer: no second seq, no second attempt, one event in the history."""
    publisher = Publisher(sync_redis, settings)
    job = new_job()
    publisher.publish(draft(job, JobStatus.STARTED))
    publisher.publish(draft(job, JobStatus.PROGRESS, percent=5))
    call = publish_call(
        keyspace.job(job), draft(job, status, percent=None), settings, token=os.urandom(8).hex()
    )
    first = publisher._publish(keys=call.keys, args=call.args)
    again = publisher._publish(keys=call.keys, args=call.args)
    assert again == first and int(first[0]) == 1 and int(first[1]) == 3
    assert [decode_event(raw).seq for raw in history(sync_redis, keyspace, job)] == [1, 2, 3]
    state = sync_redis.hmget(keyspace.job(job).state, ["seq", "attempt"])
    assert state == [b"3", b"2" if status is JobStatus.STARTED else b"1"]
    # A new call (a new token) is a new event, as before.
    if status is not JobStatus.SUCCESS:
        assert publisher.publish(draft(job, JobStatus.PROGRESS)).seq == 4


def test_a_cluster_publish_carries_a_token_and_a_single_redis_one_none(
    settings: Settings, keyspace: KeySpace
) -> None:
    job = new_job()
    tokens = {
        publish_call(keyspace.job(job), draft(job, JobStatus.STARTED), settings).args[-1]
        for _ in range(3)
    }
    if settings.cluster:
        assert len(tokens) == 3 and all(len(str(t)) == 16 for t in tokens)
    else:
        assert tokens == {""}  # the script skips the token work: one Redis as before


def test_only_the_last_four_tokens_are_kept(
    sync_redis: redis.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    if not settings.cluster:
        pytest.skip("tokens are sent on a Redis Cluster only")
    publisher = Publisher(sync_redis, settings)
    job = new_job()
    publisher.publish(draft(job, JobStatus.STARTED))
    for _ in range(10):
        publisher.publish(draft(job, JobStatus.PROGRESS))
    kept = sync_redis.hget(keyspace.job(job).state, "tokens")
    assert isinstance(kept, bytes) and kept.count(b";") == 4
    assert kept.split(b";")[0].split(b" ")[1] == b"11"  # the newest first, with its seq
