"""`start(canvas)` without a worker: what it records, and what it does when sending fails."""

from __future__ import annotations

import dataclasses

import pytest
import redis
from celery import Celery, chain, chord, group

from progress_streamer.celery import start
from progress_streamer.protocol.event import decode_event
from progress_streamer.protocol.family import FamilyKind, InvalidFamily
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus


@pytest.fixture
def publisher(sync_redis: redis.Redis, settings: Settings) -> Publisher:
    return Publisher(sync_redis, settings)


@pytest.fixture
def unreachable() -> Celery:
    """An app whose broker refuses connections: every send fails, quickly."""
    app = Celery("unreachable", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.update(broker_connection_retry=False, broker_connection_max_retries=0,
                    task_publish_retry=False)  # fmt: skip
    return app


def last(publisher: Publisher, job_id: str) -> object:
    raw = publisher.redis.hget(publisher.keyspace.job(job_id).state, "event")
    assert isinstance(raw, bytes)
    return decode_event(raw)


def test_a_canvas_that_cannot_be_sent_ends_its_parent(
    publisher: Publisher, unreachable: Celery
) -> None:
    task = unreachable.signature("t", immutable=True)
    canvas = chain(task.clone(), group(task.clone(), task.clone()))
    with pytest.raises(Exception):  # noqa: B017 - whatever the broker client raises
        start(canvas, publisher=publisher, parent_id="outer")
    end = last(publisher, "outer")
    assert end.status is JobStatus.FAILURE  # type: ignore[attr-defined]
    assert end.children["failed"] + end.children["revoked"] == 2  # type: ignore[attr-defined]


def test_start_names_ids_and_kinds(publisher: Publisher, unreachable: Celery) -> None:
    task = unreachable.signature("t", immutable=True)
    preset = task.clone().set(task_id="keep-me")
    canvas = chord([preset, task.clone()], task.clone())
    with pytest.raises(Exception):  # noqa: B017
        start(canvas, publisher=publisher, parent_id="p")
    first = publisher.redis.lindex(publisher.keyspace.job("p").history, 0)
    assert isinstance(first, bytes)
    assert decode_event(first).children == {"total": 3, "pending": 3, "running": 0,
                                             "succeeded": 0, "failed": 0, "revoked": 0}  # fmt: skip
    ids = publisher.redis.hget(publisher.keyspace.family("p"), "ids")
    assert isinstance(ids, bytes) and ids.decode().split(",")[0] == "keep-me"
    kind = publisher.redis.hget(publisher.keyspace.family("p"), "kind")
    assert kind == FamilyKind.CHORD.value.encode()


def test_start_refuses_what_it_cannot_record_before_sending(
    publisher: Publisher, unreachable: Celery
) -> None:
    task = unreachable.signature("t", immutable=True)
    with pytest.raises(TypeError, match="group, chord or chain"):
        start(task, publisher=publisher)
    small = Publisher(publisher.redis, dataclasses.replace(publisher.settings, max_children=2))
    with pytest.raises(InvalidFamily, match="PROGRESS_MAX_CHILDREN"):
        start(group([task.clone() for _ in range(3)]), publisher=small, parent_id="big")
    assert not publisher.redis.exists(publisher.keyspace.job("big").state)
