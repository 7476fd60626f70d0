"""The per-account request cap across every worker process (DESIGN §6.4).

Each provider account has N request slots in `provider_slots`. A worker leases as many slots
of an account as its requests need (waiting or in flight, up to N) and runs at most as many
requests as it holds, so workers with work for one account share it; leases are renewed while
in use and released when idle, and a crashed worker's slots come back when its lease runs out
(at once, when it ran on this host and its process is gone). So the cap holds across processes
without a database round trip per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import psutil
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger(__name__)

_ENSURE = text(
    """
    INSERT INTO provider_slots (account_key, slot)
    SELECT :acct, g FROM generate_series(0, :cap - 1) AS g
    ON CONFLICT DO NOTHING
    """
)
_ACQUIRE = text(
    """
    UPDATE provider_slots p
    SET holder = :me, lease_until = now() + make_interval(secs => :ttl)
    FROM (
        SELECT account_key, slot FROM provider_slots
        WHERE account_key = :acct AND slot < :cap
          AND (holder IS NULL OR holder = :me OR lease_until < now()
               OR holder = ANY(CAST(:dead AS text[])))
        ORDER BY holder IS DISTINCT FROM :me, slot
        LIMIT :want
        FOR UPDATE SKIP LOCKED
    ) f
    WHERE p.account_key = f.account_key AND p.slot = f.slot
    RETURNING p.slot
    """
)
_RENEW = text(
    """
    UPDATE provider_slots SET lease_until = now() + make_interval(secs => :ttl)
    WHERE holder = :me AND lease_until > now()
    RETURNING account_key
    """
)
_RELEASE = text(
    """
    UPDATE provider_slots SET holder = NULL, lease_until = NULL
    WHERE holder = :me AND account_key = ANY(CAST(:accts AS text[]))
    """
)
_HOLDERS = text("SELECT DISTINCT holder FROM provider_slots WHERE holder IS NOT NULL")


SLOT_RETRY = 1.0  # seconds between tries for slots another worker holds (and failed ticks)
RESTORE_AFTER = 3  # successes that give one request of concurrency back after a throttle
BURST_WINDOW = 1.0  # seconds of answers a throttle is judged against
BURST_MIN = 3  # throttles in the window, and at least as many as successes, make a burst


class SlotsUnavailable(Exception):
    """No slot of the account came free in time (another worker holds them all)."""


def worker_identity() -> str:
    """host:pid:start — unique per process, and checkable for liveness on the same host."""
    started = int(psutil.Process().create_time())
    return f"{socket.gethostname()}:{os.getpid()}:{started}"


def is_dead_local(holder: str, *, host: str | None = None) -> bool:
    """True when `holder` ran on this host and that process is gone (or is another one)."""
    try:
        h, pid, started = holder.rsplit(":", 2)
        pid_n, started_n = int(pid), int(started)
    except ValueError:
        return False
    if h != (host or socket.gethostname()) or pid_n == os.getpid():
        return False
    try:
        proc = psutil.Process(pid_n)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        return int(proc.create_time()) != started_n  # the pid was reused
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


@dataclass(eq=False)
class AccountGate:
    """In-process limiter of one account: requests ≤ slots held, lowered while throttled.

    Waiters queue in two FIFO lines, live before bulk; a released slot is handed straight to
    the next waiter (no thundering herd, no barging), so a freed slot is busy again in one
    loop iteration.
    """

    key: str
    cap: int
    held: int = 0
    deadline: float = 0.0  # monotonic time until which the held slots are ours
    in_flight: int = 0
    limit: int = 0  # lowered after a throttle, raised back slowly
    cooldown_until: float = 0.0
    cooldown_step: float = 0.0
    cooldown_base: float = 0.5
    successes: int = 0
    last_used: float = field(default_factory=time.monotonic)
    # Recent answers (time, throttled?): a burst of throttles is told from a lone one by them.
    _answers: deque[tuple[float, bool]] = field(default_factory=deque)
    _throttles: int = 0
    wants_slots: asyncio.Event | None = None
    # Slots bulk requests leave to live ones. Where the cap is ours (the provider limits by
    # rate, not concurrency), bulk requests hold every slot while they wait for their
    # tokens, and a live request would wait for one of them to be answered.
    live_reserve: int = 0
    _live: deque[_Waiter] = field(default_factory=deque)
    _bulk: deque[_Waiter] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.limit = self.cap

    @property
    def waiters(self) -> int:
        """Requests waiting for a slot."""
        return len(self._live) + len(self._bulk)

    @property
    def demand(self) -> int:
        """Slots this process's requests could use now (waiting and in flight), up to the cap."""
        return min(self.cap, self.waiters + self.in_flight)

    def allowed(self, now: float, margin: float) -> int:
        """How many requests may be in flight right now."""
        if now >= self.deadline - margin or now < self.cooldown_until:
            return 0
        return min(self.held, self.limit)

    def allowed_bulk(self, now: float, margin: float) -> int:
        """How many requests may be in flight when the next one is bulk: the live reserve
        kept free, but never all of the allowance (bulk work would stall with no live work
        to give concurrency back after a throttle)."""
        allowed = self.allowed(now, margin)
        return max(min(allowed, 1), allowed - self.live_reserve)

    @contextlib.asynccontextmanager
    async def slot(
        self, *, margin: float, starve_after: float | None = None, live: bool = True
    ) -> AsyncIterator[None]:
        """Hold one request slot; `margin` is how long the lease must still last.

        Live requests go before bulk ones. SlotsUnavailable when no slot was held at all for
        `starve_after` seconds.
        """
        await self._acquire(margin=margin, starve_after=starve_after, live=live)
        try:
            yield
        finally:
            self.in_flight -= 1
            self.last_used = time.monotonic()
            self.refill()
            if not self.in_flight and self.held and self.wants_slots is not None:
                # Idle now: the slot loop, which sleeps until something is due, schedules
                # the release of these slots (another worker may want them).
                self.wants_slots.set()

    async def _acquire(self, *, margin: float, starve_after: float | None, live: bool) -> None:
        now = time.monotonic()
        ahead = self._live or (not live and self._bulk)
        room = self.allowed(now, margin) if live else self.allowed_bulk(now, margin)
        if not ahead and self.in_flight < room:
            self.in_flight += 1
            return
        waiter = _Waiter(asyncio.get_running_loop().create_future(), margin)
        (self._live if live else self._bulk).append(waiter)
        began = now
        try:
            while True:
                if self.held < self.demand and self.wants_slots is not None:
                    self.wants_slots.set()  # the slot loop leases what this one needs
                # Slot and lease changes call refill(); only a cool-down's end and the
                # starvation limit pass by themselves, so only they need a timed wait.
                now = time.monotonic()
                deadlines = []
                if self.cooldown_until > now:
                    deadlines.append(self.cooldown_until - now)
                if starve_after is not None and self.held == 0:
                    deadlines.append(began + starve_after - now)
                if not deadlines:
                    # Awaited bare: a shield would cost the hand-off a second loop iteration
                    # (its outer future's callback, then the task's), every slot of a busy
                    # gate. A cancel cancels the future itself, which refill() skips; a
                    # cancel after the hand-off finds it done and gives the slot back below.
                    await waiter.future
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter.future), max(0.01, min(deadlines)))
                    return
                self.refill()
                if waiter.future.done():
                    return
                if (
                    starve_after is not None
                    and self.held == 0
                    and time.monotonic() - began >= starve_after
                ):
                    raise SlotsUnavailable(self.key)
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                # Handed a slot as we gave up (cancelled, starved): give it back.
                self.in_flight -= 1
                self.refill()
            else:
                waiter.future.cancel()
            raise
        finally:
            if waiter.queued:  # refill() took it off its line when it handed it a slot
                (self._live if live else self._bulk).remove(waiter)

    def refill(self) -> None:
        """Hand free slots to the next waiters, live ones first."""
        now = time.monotonic()
        for line, room in ((self._live, self.allowed), (self._bulk, self.allowed_bulk)):
            while line:
                waiter = line[0]
                if waiter.future.done():
                    line.popleft()
                    waiter.queued = False
                    continue
                if self.in_flight >= room(now, waiter.margin):
                    return
                line.popleft()
                waiter.queued = False
                self.in_flight += 1
                waiter.future.set_result(None)

    def _answer(self, now: float, throttled: bool) -> None:
        self._answers.append((now, throttled))
        self._throttles += throttled
        while self._answers and self._answers[0][0] < now - BURST_WINDOW:
            _, old = self._answers.popleft()
            self._throttles -= old

    def in_burst(self) -> bool:
        """True when the last second's answers say the account is over its limit: at least
        BURST_MIN throttles, and no fewer than the successes."""
        t = self._throttles
        return t >= BURST_MIN and 2 * t >= len(self._answers)

    def throttled(self, retry_after: float | None) -> float:
        """Judge a throttle; returns the account's pause (0: a lone one, retry the request).

        A lone 429 among successes is noise (a neighbour's burst, a provider blip): it costs
        that request a retry, not the account a pause. A burst, or a Retry-After, means the
        account is over its limit: cool it down and cut concurrency by a quarter (AIMD). The
        pause starts short and doubles only when throttling resumes right after a cool-down
        with no success between. Throttles answered while a cool-down runs come from requests
        sent before it began: the same burst, so they neither lengthen it nor cut again.
        """
        now = time.monotonic()
        self._answer(now, True)
        if now >= self.cooldown_until and not retry_after and not self.in_burst():
            return 0.0
        if now >= self.cooldown_until:
            self.cooldown_step = min(30.0, max(self.cooldown_base, self.cooldown_step * 2))
            self.cooldown_until = now + self.cooldown_step
            self.limit = max(1, self.limit - max(1, self.limit // 4))
            self.successes = 0
        if retry_after:
            self.cooldown_until = max(self.cooldown_until, now + retry_after)
        return self.cooldown_until - now

    def succeeded(self) -> None:
        """A success ends the cool-down escalation; a run of them gives concurrency back."""
        self._answer(time.monotonic(), False)
        self.cooldown_step = 0.0
        self.successes += 1
        if self.limit < self.cap and self.successes >= RESTORE_AFTER:
            self.limit += 1
            self.successes = 0
            self.refill()


@dataclass(slots=True, eq=False)  # identity: removing a waiter must not compare the rest
class _Waiter:
    future: asyncio.Future[None]
    margin: float
    # Still on its line. Checked before removing it: a failed deque.remove formats the
    # waiter's repr (its future's, callbacks and all) into the ValueError, on every slot.
    queued: bool = True


class SlotManager:
    """Leases, renews and releases provider slots for the gates of this process."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        me: str,
        cap: int,
        ttl: float,
        idle_release: float = 2.0,
        cooldown_base: float = 0.5,
        tick_every: float = SLOT_RETRY,
    ) -> None:
        self.engine = engine
        self.me = me
        self.cap = cap
        self.ttl = ttl
        self.idle_release = idle_release
        self.tick_every = tick_every  # between tries for slots a gate lacks (and failed ticks)
        self.cooldown_base = cooldown_base
        self.gates: dict[str, AccountGate] = {}
        self.wake = asyncio.Event()

    def gate(
        self, account_key: str, *, cap: int | None = None, live_reserve: int = 0
    ) -> AccountGate:
        """The gate of an account (created on first use); `cap` overrides the default cap
        for this account (a provider's declared concurrency) and `live_reserve` keeps slots
        for live requests, the first time only."""
        gate = self.gates.get(account_key)
        if gate is None:
            gate = AccountGate(
                account_key,
                cap or self.cap,
                wants_slots=self.wake,
                cooldown_base=self.cooldown_base,
                live_reserve=live_reserve,
            )
            self.gates[account_key] = gate
        return gate

    async def run(self, stop: asyncio.Event) -> None:
        """Keep slot leases in step with demand until `stop` is set.

        A tick (one transaction) runs only when something is due (`next_tick`): not every
        second whatever the gates do, which cost an idle or steadily busy worker a
        transaction and a wake-up a second for nothing (B1 at 100 ms).
        """
        due = 0.0
        while not stop.is_set():
            # Cleared before the tick, not after: a request that comes to want slots while the
            # tick runs (its demand read before it arrived) must start the next tick, not wait
            # out the interval. Slots go back after `idle_release`, so a contact created after
            # a quiet spell waited up to a second for its first request.
            self.wake.clear()
            now = time.monotonic()
            if now >= due or self._wanting():
                try:
                    await self.tick()
                    due = self.next_tick(time.monotonic())
                except Exception as exc:  # the database may be away: keep trying, leases lapse
                    log.warning("sync.slots.tick_failed", error=repr(exc))
                    due = time.monotonic() + self.tick_every
            else:
                due = min(due, self.next_tick(now))  # a gate went idle: its release is due
            if stop.is_set():
                break
            timeout = None if due == math.inf else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)
        await self.release_all()

    def _wanting(self) -> bool:
        return any(g.held < g.demand for g in self.gates.values())

    def next_tick(self, now: float) -> float:
        """When the next tick is due: every `tick_every` while a gate has fewer slots than its
        requests need (another worker may free some), an idle gate's release, the renewal
        of held leases every quarter of their ttl; None of these: nothing to do until a
        gate wakes the loop (`wants_slots`)."""
        # A gate's deadline is its last lease or renewal plus the ttl: renewed a quarter in.
        due = [g.deadline - 0.75 * self.ttl for g in self.gates.values() if g.held]
        for g in self.gates.values():
            if g.held < g.demand:
                due.append(now + self.tick_every)
            elif g.held and not g.waiters and not g.in_flight:
                due.append(g.last_used + self.idle_release)
        return min(due, default=math.inf)

    async def tick(self) -> None:
        """Acquire for accounts with demand, renew held ones, release idle ones."""
        now = time.monotonic()
        # A worker leases only the slots its requests need (those waiting, those in flight),
        # not every free one: another worker with work for the same account gets the rest
        # at once, instead of starving until this one has been idle for `idle_release`.
        wanting = [g for g in self.gates.values() if g.held < g.demand]
        idle = [
            g
            for g in self.gates.values()
            if g.held
            and not g.waiters
            and not g.in_flight
            and now - g.last_used > self.idle_release
        ]
        async with self.engine.begin() as conn:
            if idle:
                await conn.execute(_RELEASE, {"me": self.me, "accts": [g.key for g in idle]})
            renewed: dict[str, int] = {}
            if any(g.held for g in self.gates.values() if g not in idle):
                start = time.monotonic()
                for (acct,) in await conn.execute(_RENEW, {"me": self.me, "ttl": self.ttl}):
                    renewed[acct] = renewed.get(acct, 0) + 1
                for g in self.gates.values():
                    if g in idle:
                        continue
                    g.held = renewed.get(g.key, 0)
                    g.deadline = start + self.ttl if g.held else 0.0
            for g in idle:
                g.held, g.deadline = 0, 0.0
            if wanting:
                dead = await self._dead_holders(conn)
            for g in wanting:
                await conn.execute(_ENSURE, {"acct": g.key, "cap": g.cap})
                start = time.monotonic()
                rows = await conn.execute(
                    _ACQUIRE,
                    {
                        "acct": g.key,
                        "cap": g.cap,
                        "me": self.me,
                        "ttl": self.ttl,
                        "dead": sorted(dead),
                        "want": max(g.held, g.demand),
                    },
                )
                g.held = len(rows.all())
                g.deadline = start + self.ttl if g.held else 0.0
        for g in self.gates.values():
            g.refill()

    async def _dead_holders(self, conn: AsyncConnection) -> set[str]:
        holders = [h for (h,) in (await conn.execute(_HOLDERS)) if h != self.me]
        return {h for h in holders if is_dead_local(h)}

    async def release_all(self) -> None:
        """Give every slot back (shutdown)."""
        keys = [g.key for g in self.gates.values()]
        for g in self.gates.values():
            g.held, g.deadline = 0, 0.0
        if not keys:
            return
        with contextlib.suppress(Exception):
            async with self.engine.begin() as conn:
                await conn.execute(_RELEASE, {"me": self.me, "accts": keys})
