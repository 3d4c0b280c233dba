"""The SSE wire format: the bytes EventSource parses, from sse-starlette's encoder."""

from __future__ import annotations

from progress_streamer.protocol.event import EventDraft, decode_event, encode_event
from progress_streamer.protocol.status import JobStatus
from progress_streamer.web.streaming import frames
from progress_streamer.web.streaming.subscriber import frame_of


def test_a_stream_opens_with_a_retry_line_and_pings_are_comments() -> None:
    assert frames.OPENING.startswith(b"retry: 2000\n") and frames.OPENING.endswith(b"\n\n")
    assert frames.PING == b": ping\n\n"
    assert frames.comment("a\nb") == b": a\n: b\n\n"  # a line break cannot end the comment


def test_an_event_frame_carries_the_redis_bytes_verbatim_with_its_seq_as_id() -> None:
    raw = encode_event(EventDraft(job_id="j1", status=JobStatus.PROGRESS, percent=75.0), 7, 1)
    delivery = frame_of(decode_event(raw))
    assert delivery.frame == b"id: 7\ndata: " + raw + b"\n\n"
    assert b"75.0" in delivery.frame  # never re-encoded (75.0 stays 75.0)
    assert frames.id_line("12.0.7") + delivery.data == b"id: 12.0.7\ndata: " + raw + b"\n\n"
