"""The realism knobs every sandbox shares, as a dataclass base with validated PATCHes."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Self

FAULT_KINDS = ("429", "403", "503", "timeout")


def number(key: str, value: Any, *, minimum: float = 0.0) -> float:
    """A finite number >= minimum; raise ValueError naming `key` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{key} must be a number")
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum:g}")
    return float(value)


def integer(key: str, value: Any, *, minimum: int = 0) -> int:
    """An integer >= minimum (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer")
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum}")
    return value


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be a boolean")
    return value


def choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{key} is one of {', '.join(allowed)}")
    return str(value)


@dataclass
class Knobs:
    """Latency, in-flight cap, fault rates, outage window, seed and request log size.

    A sandbox subclasses it (more fields, more keys in `validate`); `/_control/config`
    shows `to_dict()` and applies `patch()`.

    - ``latency_ms``: each API request is held this long before it is answered.
    - ``max_in_flight``: requests of one scope (account) served at once; one more is refused.
    - ``fault_rates``: probabilities per API request of ``429``, ``403`` (no body), ``503`` and
      ``timeout`` (held ``timeout_seconds``, then 504; the change is not applied).
    - ``outage_seconds``: from the moment it is set, every API request answers 503 for N s.
    - ``seed``: faults are a pure function of the seed and the order of API requests.
    - ``record_bodies``: keep each write request's body in the request log.
    """

    fault_kinds: ClassVar[tuple[str, ...]] = FAULT_KINDS
    number_keys: ClassVar[frozenset[str]] = frozenset()

    latency_ms: float = 0.0
    max_in_flight: int = 10
    fault_rates: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0.0))
    timeout_seconds: float = 120.0
    outage_seconds: float = 0.0
    seed: int = 0
    request_log_size: int = 50_000
    record_bodies: bool = False

    def copy(self) -> Self:
        """A deep copy (a state keeps the configuration it started with for resets)."""
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (fields starting with `_` are private caches)."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def patch(self, changes: dict[str, Any]) -> None:
        """Apply a partial update, validating every value; raise ValueError on a bad one."""
        known = {f.name for f in fields(self) if not f.name.startswith("_")}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        staged = self.copy()
        for key, value in changes.items():
            setattr(staged, key, staged.validate(key, value))
        for f in fields(self):
            setattr(self, f.name, getattr(staged, f.name))

    def validate(self, key: str, value: Any) -> Any:
        """The checked value of one key; subclasses handle theirs and defer to this."""
        if key in ("latency_ms", "timeout_seconds", "outage_seconds") or key in self.number_keys:
            return number(key, value)
        if key in ("max_in_flight", "request_log_size"):
            return integer(key, value, minimum=1)
        if key == "record_bodies":
            return boolean(key, value)
        if key == "seed":
            return integer(key, value, minimum=-(2**63))
        if key == "fault_rates":
            return self._fault_rates(value)
        raise ValueError(f"unknown config key {key}")

    def _fault_rates(self, value: Any) -> dict[str, float]:
        if not isinstance(value, dict):
            raise ValueError("fault_rates must be an object")
        rates = dict(self.fault_rates)
        for kind, rate in value.items():
            if kind not in self.fault_kinds:
                raise ValueError(f"fault_rates keys are {', '.join(self.fault_kinds)}")
            rates[kind] = number(f"fault_rates.{kind}", rate)
            if rates[kind] > 1:
                raise ValueError(f"fault_rates.{kind} must be <= 1")
        if sum(rates.values()) > 1:
            raise ValueError("fault_rates must add up to at most 1")
        return rates
