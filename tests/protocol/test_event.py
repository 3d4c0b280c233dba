"""The event's JSON: shape, validation of what comes back from Redis, safe text."""

from __future__ import annotations

import json

import pytest

from progress_streamer.protocol.event import (
    ErrorInfo,
    EventDraft,
    MalformedEvent,
    check_report,
    decode_event,
    encode_event,
)
from progress_streamer.protocol.keys import InvalidJobId, KeySpace
from progress_streamer.protocol.status import TRANSITIONS, JobStatus


def test_an_encoded_event_decodes_to_the_same_fields() -> None:
    draft = EventDraft(
        job_id="job-1",
        status=JobStatus.FAILURE,
        step="saving",
        percent=42.5,
        current=3,
        total=7,
        message='line\nbreak\r<script>"',
        error=ErrorInfo(type="ValueError", message="bad"),
        ts=1700000000.25,
    )
    raw = encode_event(draft, seq=9, attempt=2)
    assert b"\n" not in raw and b"\r" not in raw  # never breaks an SSE data line
    event = decode_event(raw)
    assert (event.seq, event.attempt, event.status, event.percent) == (
        9,
        2,
        JobStatus.FAILURE,
        42.5,
    )
    assert event.message == 'line\nbreak\r<script>"'
    assert event.error == ErrorInfo(type="ValueError", message="bad")
    assert event.raw == raw and event.is_terminal


def test_lone_surrogates_are_escaped_not_fatal() -> None:
    raw = encode_event(EventDraft(job_id="j", status=JobStatus.PROGRESS, message="\udcff"), 1, 1)
    raw.decode("ascii")
    assert decode_event(raw).message == "\udcff"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"job_id": "j"}',
        b'{"job_id": "a b", "seq": 1, "attempt": 1, "status": "started"}',
        b'{"job_id": "j", "seq": 0, "attempt": 1, "status": "started"}',
        b'{"job_id": "j", "seq": 1, "attempt": 1, "status": "weird"}',
        b'{"job_id": "j", "seq": 1, "attempt": 1, "status": "progress", "percent": 101}',
        b'{"job_id": "j", "seq": 1, "attempt": 1, "status": "failure", "error": "x"}',
        b"\xff\xfe",
    ],
)
def test_malformed_events_are_rejected_with_a_clear_error(raw: bytes) -> None:
    with pytest.raises(MalformedEvent):
        decode_event(raw)


def test_keys_carry_the_job_id_as_a_hash_tag_and_refuse_bad_ids() -> None:
    keys = KeySpace("progress").job("abc_DEF-123")
    assert keys.state == "progress:{abc_DEF-123}:state"
    assert {k.split("{")[1].split("}")[0] for k in (*keys.all_keys, keys.channel)} == {
        "abc_DEF-123"
    }
    assert KeySpace("progress").job_id_of_channel(keys.channel) == "abc_DEF-123"
    for bad in ("", "a" * 65, "a}b", "a b", "../x", "é", "a\n"):
        with pytest.raises(InvalidJobId):
            KeySpace("progress").job(bad)


def test_terminal_statuses_have_no_successor() -> None:
    for status in JobStatus:
        assert (not TRANSITIONS[status]) == status.is_terminal
    assert json.dumps(JobStatus.PROGRESS) == '"progress"'


class _Text(str):
    pass


class _Number(float):
    pass


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"percent": 0, "current": 0, "total": 0},
        {"percent": 100.0, "step": "s", "message": "m"},
        {"percent": _Number(42.5), "step": _Text("s")},  # subclasses take the full checks
    ],
)
def test_good_progress_fields_pass(fields: dict[str, object]) -> None:
    check_report(**{"step": None, "percent": None, "current": None, "total": None,
                    "message": None, **fields})  # fmt: skip


@pytest.mark.parametrize(
    "fields",
    [
        {"percent": float("nan")},
        {"percent": float("inf")},
        {"percent": -0.5},
        {"percent": 101},
        {"percent": True},
        {"percent": "50"},
        {"current": -1},
        {"total": True},
        {"total": 2.0},
        {"step": 5},
        {"message": b"bytes"},
    ],
)
def test_bad_progress_fields_raise_a_clear_error(fields: dict[str, object]) -> None:
    name = next(iter(fields))
    with pytest.raises(ValueError, match=name):
        check_report(**{"step": None, "percent": None, "current": None, "total": None,
                        "message": None, **fields})  # fmt: skip
