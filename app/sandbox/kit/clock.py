"""A wall clock that tests can move forward."""

from __future__ import annotations

import time


class Clock:
    """`time.time()` plus an offset; `advance()` moves the sandbox's notion of now."""

    __slots__ = ("offset",)

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> float:
        """Jump `seconds` ahead (outage windows end, rate windows slide); the new now."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset += seconds
        return self.now()

    def reset(self) -> None:
        self.offset = 0.0
