"""`track()`: every item passes unchanged, counts are reported, the last one exactly."""

from __future__ import annotations

from collections.abc import Iterator

from progress_streamer.protocol.track import percent_of, track


def reports_of(items: object, total: int | None = None) -> tuple[list[object], list[tuple]]:
    seen: list[tuple[int, int | None]] = []
    out = list(track(items, lambda c, t: seen.append((c, t)), total))  # type: ignore[arg-type]
    return out, seen


def test_a_sized_loop_reports_its_total_from_the_start_and_its_final_count() -> None:
    out, seen = reports_of(list("abcdefghij"))
    assert out == list("abcdefghij")
    assert seen[0] == (0, 10) and seen[-1] == (10, 10)
    counts = [c for c, _ in seen]
    assert counts == sorted(counts)


def test_an_unsized_loop_counts_without_a_total() -> None:
    out, seen = reports_of(i for i in range(7))
    assert out == list(range(7))
    assert seen[0] == (0, None) and seen[-1] == (7, None)


def test_an_explicit_total_wins_and_an_empty_loop_reports_zero() -> None:
    assert reports_of(iter([1, 2]), total=5)[1][-1] == (2, 5)
    assert reports_of([])[1][-1] == (0, 0)


def test_the_source_is_not_read_ahead_of_the_loop() -> None:
    """A lazy source (a queue, a cursor) is pulled one item at a time, as the loop asks."""
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in range(100):
            pulled.append(i)
            yield i

    for i, item in enumerate(track(source(), lambda c, t: None)):
        assert item == i and len(pulled) == i + 1


def test_a_fast_loop_is_checked_rarely_with_the_last_count_exact() -> None:
    seen: list[tuple[int, int | None]] = []
    count = sum(1 for _ in track(range(1_000_000), lambda c, t: seen.append((c, t))))
    assert count == 1_000_000 and seen[-1] == (1_000_000, 1_000_000)
    assert len(seen) < 1_000  # chunks grow with the loop's speed


def test_percent_of_a_count() -> None:
    assert percent_of(1, 4) == 25.0 and percent_of(9, 4) == 100.0
    assert percent_of(3, None) is None and percent_of(0, 0) is None
