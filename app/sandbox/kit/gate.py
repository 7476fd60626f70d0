"""What stands between a request and a handler: in-flight cap, rate windows, outage, faults.

Every refusal is a `Refusal`; the sandbox turns it into its provider's answer (status,
headers, body) in one place, its refusal hook. The kit never renders a provider's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Mapping

from starlette.types import Receive

from app.sandbox.kit.clock import Clock


class Refusal(Exception):
    """A request the gate turned away.

    `kind` is what the request log records as its fault: ``cap`` (in-flight cap), ``rate``
    (a requests-per-window limit), ``outage``, or an injected ``429``/``403``/``503``/``timeout``.
    """

    def __init__(
        self,
        kind: str,
        *,
        limit: int | None = None,
        retry_after: float | None = None,
        in_flight: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(kind)
        self.kind = kind
        self.limit = limit
        self.retry_after = retry_after
        self.in_flight = in_flight
        self.name = name  # which limiter refused (a sandbox may have several)


class InFlight(dict[str, int]):
    """Requests being served, per scope (an account)."""

    def enter(self, scope: str, cap: int) -> int:
        """Take a slot and return the count including this request; Refusal("cap") if full."""
        current = self.get(scope, 0)
        if current >= cap:
            raise Refusal("cap", limit=cap, in_flight=current + 1)
        self[scope] = current + 1
        return current + 1

    def leave(self, scope: str) -> None:
        self[scope] -= 1


class WindowLimiter:
    """At most `limit` requests per scope in any sliding `window` seconds."""

    def __init__(self, limit: int, window: float = 1.0, *, name: str = "rate") -> None:
        self.limit = limit
        self.window = window
        self.name = name
        self._hits: dict[str, deque[float]] = {}

    def hit(self, scope: str, now: float) -> None:
        """Count one request at `now`; Refusal("rate") with `retry_after` when over the limit.

        A refused request is not counted: waiting `retry_after` is always enough.
        """
        hits = self._hits.setdefault(scope, deque())
        edge = now - self.window
        while hits and hits[0] <= edge:
            hits.popleft()
        if len(hits) >= self.limit:
            raise Refusal(
                "rate",
                limit=self.limit,
                retry_after=max(0.0, hits[0] + self.window - now),
                name=self.name,
            )
        hits.append(now)

    def remaining(self, scope: str, now: float) -> int:
        hits = self._hits.get(scope)
        if not hits:
            return self.limit
        return max(0, self.limit - sum(1 for t in hits if t > now - self.window))

    def clear(self) -> None:
        self._hits.clear()


class DailyQuota:
    """At most `limit` requests per scope in each UTC day of the clock (reset at 00:00:00 UTC).

    `check` refuses once the day's requests are spent; `spend` counts one. They are separate so
    a request another limit refuses costs nothing of the day.
    """

    def __init__(self, limit: int, *, name: str = "quota") -> None:
        self.limit = limit
        self.name = name
        self._days: dict[str, tuple[int, int]] = {}  # scope → (UTC day number, requests)

    def used(self, scope: str, now: float) -> int:
        day, count = self._days.get(scope, (-1, 0))
        return count if day == int(now // 86_400) else 0

    def check(self, scope: str, now: float) -> None:
        """Refusal("quota") with `retry_after` = the seconds to midnight UTC when spent."""
        if self.used(scope, now) >= self.limit:
            raise Refusal(
                "quota",
                limit=self.limit,
                retry_after=(int(now // 86_400) + 1) * 86_400 - now,
                name=self.name,
            )

    def spend(self, scope: str, now: float) -> None:
        self._days[scope] = (int(now // 86_400), self.used(scope, now) + 1)

    def usage(self, now: float) -> dict[str, int]:
        """Requests spent today, per scope."""
        return {s: n for s in self._days if (n := self.used(s, now))}

    def clear(self) -> None:
        self._days.clear()


class Gate:
    """The realism of one sandbox: clock, in-flight counts, seeded fault dice, outage window."""

    def __init__(self, clock: Clock, seed: int = 0) -> None:
        self.clock = clock
        self.in_flight = InFlight()
        self.rng = random.Random(seed)
        self.outage_until = 0.0

    def reseed(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def start_outage(self, seconds: float) -> None:
        """Every request answers 503 for `seconds` from now (0 ends an outage)."""
        self.outage_until = self.clock.now() + seconds

    def outage_remaining(self) -> float:
        return round(max(0.0, self.outage_until - self.clock.now()), 3)

    def roll(self, rates: Mapping[str, float], kinds: tuple[str, ...]) -> str | None:
        """One roll of the dice: the injected fault kind or None (one draw per request)."""
        roll = self.rng.random()
        threshold = 0.0
        for kind in kinds:
            threshold += rates.get(kind, 0.0)
            if roll < threshold:
                return kind
        return None

    async def inject(
        self,
        rates: Mapping[str, float],
        kinds: tuple[str, ...],
        timeout_seconds: float,
        receive: Receive,
        *,
        passthrough: frozenset[str] = frozenset(),
    ) -> str | None:
        """Outage, then the dice; a timeout holds the request first. Raise Refusal, except
        for a `passthrough` kind, which is returned for the sandbox to act out (e.g. a
        response cut short after the change was applied)."""
        if self.clock.now() < self.outage_until:
            raise Refusal("outage")
        kind = self.roll(rates, kinds)
        if kind is None or kind in passthrough:
            return kind
        if kind == "timeout":
            await hold(timeout_seconds, receive)
        raise Refusal(kind)


async def hold(seconds: float, receive: Receive) -> None:
    """Hold the request `seconds`, or until the client gives up and disconnects."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, watcher):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
