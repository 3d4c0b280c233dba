"""Log lines are bounded per second, and what is dropped is counted, never lost silently."""

from __future__ import annotations

import pytest

from progress_streamer.protocol.log_lines import MAX_LINE_CHARS, LogLines


def test_a_burst_passes_up_to_the_bound_then_is_counted() -> None:
    lines = LogLines(per_second=20)
    sent = [out for i in range(1000) for out in lines.admit(f"line {i}")]
    sent += lines.take_dropped()  # what the end of the attempt sends
    assert sent[:20] == [f"line {i}" for i in range(20)]
    passed = [s for s in sent if s.startswith("line ")]
    dropped = sum(int(s.split()[0]) for s in sent if s.endswith("dropped"))
    assert len(passed) + dropped == 1000  # every line passed or was counted
    assert passed == sorted(passed, key=lambda s: int(s.split()[1]))  # in order


def test_the_count_goes_out_before_the_next_line_or_at_the_end() -> None:
    lines = LogLines(per_second=1)
    assert lines.admit("a") == ["a"]
    assert lines.admit("b") == [] and lines.admit("c") == []
    assert lines.take_dropped() == ["2 log lines dropped"]
    assert lines.take_dropped() == []


def test_a_long_line_is_cut_and_a_non_string_refused() -> None:
    lines = LogLines(per_second=5)
    assert len(lines.admit("x" * 5000)[0]) == MAX_LINE_CHARS
    with pytest.raises(TypeError, match="must be a string"):
        lines.admit(42)
