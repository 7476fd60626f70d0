"""Retry delays: exponential (1 s, 2 s, 4 s, 8 s …), capped, with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delay before retry number `attempt` (1-based): base·2^(attempt−1), ≤ cap, ±jitter."""

    base: float = 1.0
    cap: float = 300.0
    jitter: float = 0.2  # ±20 %: spreads retries of rows that failed together
    rng: random.Random = field(default_factory=random.Random)

    def nominal(self, attempt: int) -> float:
        """The delay before jitter."""
        exponent = min(max(attempt, 1) - 1, 62)  # 2**63 overflows float soon enough: clamp
        return float(min(self.cap, self.base * (2**exponent)))

    def delay(self, attempt: int) -> float:
        """The delay to wait, jittered and still within the cap."""
        nominal = self.nominal(attempt)
        factor = 1.0 + self.rng.uniform(-self.jitter, self.jitter)
        return min(self.cap, nominal * factor)
