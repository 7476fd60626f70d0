"""The retry policy: 1 s, 2 s, 4 s, 8 s … capped, jittered."""

import random

from app.sync.backoff import Backoff


def test_nominal_doubles_and_caps() -> None:
    b = Backoff(base=1.0, cap=300.0)
    assert [b.nominal(n) for n in (1, 2, 3, 4, 9, 10, 100)] == [1, 2, 4, 8, 256, 300, 300]


def test_jitter_stays_within_bounds_and_cap() -> None:
    b = Backoff(base=1.0, cap=300.0, jitter=0.2, rng=random.Random(7))
    for attempt in range(1, 20):
        for _ in range(50):
            d = b.delay(attempt)
            assert 0.8 * b.nominal(attempt) <= d <= min(300.0, 1.2 * b.nominal(attempt))


def test_jitter_spreads_delays() -> None:
    b = Backoff(rng=random.Random(1))
    assert len({round(b.delay(3), 6) for _ in range(20)}) > 10
