"""The kit's pieces on their own: knobs, the gate, the sliding window, the log, the clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from app.sandbox.kit import Clock, Gate, Knobs, LogEntry, Refusal, RequestLog, WindowLimiter


@dataclass
class _Config(Knobs):
    extra: float = 1.0

    def validate(self, key: str, value: object) -> object:
        if key == "extra":
            if value == "bad":
                raise ValueError("extra is bad")
            return value
        return super().validate(key, value)


@pytest.fixture(autouse=True)
def clean_db() -> None:
    """No database here."""


def test_patch_is_all_or_nothing() -> None:
    config = _Config()
    with pytest.raises(ValueError, match="extra is bad"):
        config.patch({"latency_ms": 5, "extra": "bad"})
    assert config.latency_ms == 0
    with pytest.raises(ValueError, match="unknown config keys"):
        config.patch({"nope": 1})
    with pytest.raises(ValueError, match="at most 1"):
        config.patch({"fault_rates": {"429": 0.6, "503": 0.6}})
    config.patch({"fault_rates": {"429": 0.5}, "extra": 2.0})
    assert config.fault_rates["429"] == 0.5
    assert config.to_dict()["extra"] == 2.0


def test_window_limiter_slides_and_says_when() -> None:
    limiter = WindowLimiter(2, 1.0)
    limiter.hit("a", 10.0)
    limiter.hit("a", 10.4)
    limiter.hit("b", 10.4)  # per scope
    with pytest.raises(Refusal) as refused:
        limiter.hit("a", 10.5)
    assert refused.value.kind == "rate"
    assert refused.value.retry_after == pytest.approx(0.5)
    limiter.hit("a", 11.0)  # the first hit left the window
    assert limiter.remaining("a", 11.0) == 0


def test_cap_and_seeded_dice() -> None:
    gate = Gate(Clock(), seed=3)
    assert gate.in_flight.enter("a", 1) == 1
    with pytest.raises(Refusal) as refused:
        gate.in_flight.enter("a", 1)
    assert (refused.value.kind, refused.value.in_flight) == ("cap", 2)
    gate.in_flight.leave("a")
    rates = {"429": 0.5}
    first = [gate.roll(rates, ("429",)) for _ in range(20)]
    gate.reseed(3)
    assert first == [gate.roll(rates, ("429",)) for _ in range(20)]
    assert {None, "429"} == set(first)


def test_outage_ends_when_the_clock_moves() -> None:
    clock = Clock()
    gate = Gate(clock)
    gate.start_outage(30)
    assert gate.outage_remaining() > 29
    clock.advance(31)
    assert gate.outage_remaining() == 0


def test_log_view() -> None:
    log = RequestLog(2, scope_key="account")
    for i in range(3):
        log.append(LogEntry("GET", f"/{i}", 200, 1.0, 2.0, 1, "acc", None, {"x": i}))
    view = log.view()
    assert [e["path"] for e in view] == ["/1", "/2"]
    assert view[0]["account"] == "acc" and view[0]["x"] == 1 and view[0]["fault"] is None
