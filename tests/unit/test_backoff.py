"""Backoff strategies are pure functions of the retry number."""

from __future__ import annotations

import pytest

from conveyor import Backoff


def test_schedule_is_the_seed_rule_and_repeats_its_last_step() -> None:
    b = Backoff.schedule(60, 300, 1800)
    assert [b.delay(n) for n in (1, 2, 3, 4, 9)] == [60, 300, 1800, 1800, 1800]


def test_exponential_grows_by_factor_and_caps() -> None:
    b = Backoff.exponential(60, factor=5, max=1800, jitter=0)
    assert [b.delay(n) for n in (1, 2, 3, 4)] == [60, 300, 1500, 1800]


def test_jitter_stays_within_bounds() -> None:
    b = Backoff.exponential(100, factor=2, jitter=0.1)
    for n in (1, 2, 3):
        low, high = b.bounds(n)
        samples = [b.delay(n) for _ in range(200)]
        assert all(low <= s <= high for s in samples)
        assert len(set(samples)) > 1


def test_fixed() -> None:
    assert [Backoff.fixed(7).delay(n) for n in (1, 5)] == [7, 7]


def test_json_round_trip() -> None:
    b = Backoff.schedule(1, 2, 3, jitter=0.2)
    assert Backoff.from_json(b.to_json()) == b


@pytest.mark.parametrize(
    "build",
    [
        lambda: Backoff.schedule(),
        lambda: Backoff.fixed(-1),
        lambda: Backoff.exponential(1, factor=0.5),
        lambda: Backoff.schedule(1, -2),
    ],
)
def test_nonsense_is_refused(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_retry_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        Backoff.fixed(1).delay(0)
