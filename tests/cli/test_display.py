"""The command's one-line description of an event, a parent job's children included."""

from __future__ import annotations

from progress_streamer.cli.display import describe
from progress_streamer.protocol import EventDraft, JobStatus
from progress_streamer.protocol.event import decode_event, encode_event


def test_a_parent_job_line_counts_its_children_leaving_out_the_zeros() -> None:
    counts = {"total": 8, "pending": 3, "running": 3, "succeeded": 2, "failed": 0, "revoked": 0}
    draft = EventDraft(job_id="p", status=JobStatus.PROGRESS, percent=40.0, current=2,
                       total=8, children=counts)  # fmt: skip
    line = describe(decode_event(encode_event(draft, seq=5, attempt=1)))
    assert line == "progress · 40% · 2/8 · 3 running, 2 succeeded, 3 pending"
