"""Provider request limits (DESIGN §14.3), held across every process through PostgreSQL.

A provider declares its limits in its spec as neutral data (`LimitSpec`): concurrency per
account, rates per account or per application, rates of one endpoint, a daily quota. The
concurrency cap is kept by the slot leases of `slots.py`; rates and quotas by a bucket row per
scope in `limit_buckets`, which schedules tokens like GCRA: each grant hands out a few tokens,
each with the time it may be spent, and moves the bucket's next free time past them, so every
process together stays at or under the rate without a database round trip per request.

Where a bucket is shared by several tenants (one application, many connections), claims in
`limit_claims` make grants fair: a live claim of any tenant goes before bulk work of every
tenant, and within a priority the tenant served longest ago goes next (round-robin). A token
granted is its holder's, so bulk work books only about one token ahead of now: a live request
arriving in the middle of a backlog waits behind that one, not behind a grant's horizon.

Token times alone cannot keep an application's "R requests in any W seconds" where the
provider counts, at its arrival times: a process starved between its token and its send (a
loaded machine, a slow event loop, the network) sends late, and its request lands together
with other processes' punctual ones. So an application rate also has R window slots in
`limit_window`: each token is bound to a slot, and a slot is handed out again only W seconds
after its last request was *answered* (the answer is reported with the process's next grant,
or on its own a moment later). Any R + 1 requests share a slot, and the later of those two
was sent at least W after the earlier one arrived: at most R arrive in any W seconds,
however late anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.connections.notices import QUOTA_NOTICE
from app.metrics import record_quota_limit
from app.providers.base import QuotaExhausted as QuotaExhausted  # re-exported for the engine
from app.providers.base import ThrottledError
from app.sync.models import PRIORITY_BULK, PRIORITY_LIVE

if TYPE_CHECKING:
    from app.config import Settings
    from app.providers.registry import Provider

log = structlog.get_logger(__name__)

# One deployment is one application at a provider (one OAuth client): every connection of a
# provider shares its application scope, in the workers and the API alike.
APPLICATION = "app"
# The tenant every connection's background requests (a provider's `background_ops`) share.
BACKGROUND_TENANT = "background"

# The priority of the work a request belongs to; the engine sets it per group of rows.
request_priority: contextvars.ContextVar[int] = contextvars.ContextVar(
    "request_priority", default=PRIORITY_LIVE
)


# --- what a provider declares ---------------------------------------------------------------


class Scope(StrEnum):
    """Who shares a limit: one provider account, or every tenant of our application."""

    account = "account"
    application = "application"


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `requests` every `per_seconds` in `scope`; only requests to `endpoint` if set."""

    requests: int
    per_seconds: float = 1.0
    scope: Scope = Scope.account
    endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.requests < 1 or self.per_seconds <= 0:
            raise ValueError(f"a rate needs requests ≥ 1 and a positive period: {self!r}")

    @property
    def interval(self) -> float:
        """Seconds between two requests at exactly this rate."""
        return self.per_seconds / self.requests


@dataclass(frozen=True, slots=True)
class DailyQuota:
    """At most `requests` a UTC day in `scope`; bulk work may spend only `bulk_share` of it."""

    requests: int
    scope: Scope = Scope.application
    bulk_share: float = 0.8

    def __post_init__(self) -> None:
        if self.requests < 1 or not 0.0 < self.bulk_share <= 1.0:
            raise ValueError(f"a quota needs requests ≥ 1 and 0 < bulk_share ≤ 1: {self!r}")


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """Every limit of a provider; the engine reads only this, never a provider's name."""

    concurrency: int | None = None  # requests in flight per account
    rates: tuple[Rate, ...] = ()
    daily_quota: DailyQuota | None = None

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")

    @classmethod
    def from_limits(cls, limits: Any) -> LimitSpec:
        """The spec of a provider's flat `Limits` declaration (app/providers/base.py)."""
        if isinstance(limits, LimitSpec):
            return limits
        rates: list[Rate] = []
        for value, scope in (
            (limits.rate_per_account, Scope.account),
            (limits.rate_per_application, Scope.application),
        ):
            if value:
                # A fractional rate (0.5/s) becomes one request every 1/value seconds.
                n = max(1, round(value)) if value >= 1 else 1
                rates.append(Rate(n, per_seconds=n / value, scope=scope))
        for ep in limits.endpoint_rates:
            rates.append(Rate(ep.requests, per_seconds=ep.per_seconds, endpoint=ep.op))
        quota = None
        if limits.daily_quota_per_application:
            quota = DailyQuota(
                limits.daily_quota_per_application, bulk_share=limits.bulk_quota_share
            )
        return cls(
            concurrency=limits.concurrency_per_account, rates=tuple(rates), daily_quota=quota
        )

    @property
    def metered(self) -> bool:
        """True when requests need tokens (a rate or a quota), not only a slot."""
        return bool(self.rates) or self.daily_quota is not None


class LimitPaused(ThrottledError):
    """A scope takes no requests until `until` (a quota spent, or a provider's pause)."""

    def __init__(self, message: str, *, until: datetime, scope: str) -> None:
        wait = max(0.0, (until - datetime.now(UTC)).total_seconds())
        super().__init__(message, retry_after=wait)
        self.until = until
        self.scope = scope


# The pause reason of bulk work past its share of a day's quota (live work still goes).
BULK_SHARE_SPENT = "bulk share of the quota spent"


def next_utc_midnight(now: datetime | None = None) -> datetime:
    """00:00 UTC of the next day, when daily quotas reset."""
    now = now or datetime.now(UTC)
    return datetime.combine(
        now.astimezone(UTC).date() + timedelta(days=1), datetime.min.time(), UTC
    )


def quota_notice(display_name: str) -> str:
    """The calm notice shown while an application's daily quota is spent."""
    return QUOTA_NOTICE.format(name=display_name)


# --- the buckets a request draws from ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bucket:
    """One row of `limit_buckets` as one request sees it."""

    key: str
    interval: float  # seconds between two tokens, headroom included
    quota: int | None = None
    bulk_share: float = 1.0
    window: int = 0  # window slots: at most this many requests in any `period` (0: none)
    period: float = 0.0


@dataclass(frozen=True, slots=True)
class Binding:
    """A connection's limits resolved to bucket keys: what each kind of request draws from."""

    tenant: str
    general: tuple[Bucket, ...]
    endpoints: dict[str, tuple[Bucket, ...]] = field(default_factory=dict)
    quota_keys: tuple[str, ...] = ()

    def buckets(self, endpoint: str | None) -> tuple[Bucket, ...]:
        """The buckets of one request: the general ones plus its endpoint's own."""
        extra = self.endpoints.get(endpoint, ()) if endpoint else ()
        return tuple(sorted(self.general + extra, key=lambda b: b.key))


def bind(
    spec: LimitSpec,
    *,
    provider: str,
    account: str,
    application: str,
    tenant: str,
    headroom: float = 0.9,
) -> Binding:
    """Resolve a spec for one connection: `account` and `application` name the scopes.

    `headroom` (≤ 1) keeps the rates a little under the provider's, because a request's
    arrival jitters by the network and the event loop.
    """
    idents = {Scope.account: account, Scope.application: application}

    def key(scope: Scope, suffix: str = "") -> str:
        return f"{provider}:{scope.value}:{idents[scope]}{suffix}"

    general: dict[str, Bucket] = {}
    endpoints: dict[str, dict[str, Bucket]] = {}
    for rate in spec.rates:
        suffix = f":{rate.endpoint}" if rate.endpoint else ""
        k = key(rate.scope, suffix)
        # An application's rate is shared by processes and tenants alike: its window slots
        # keep it where the provider counts (module docstring).
        shared = rate.scope is Scope.application
        bucket = Bucket(
            k,
            rate.interval / headroom,
            window=rate.requests if shared else 0,
            period=rate.per_seconds if shared else 0.0,
        )
        target = endpoints.setdefault(rate.endpoint, {}) if rate.endpoint else general
        if k in target and target[k].interval > bucket.interval:  # two rates: the stricter
            bucket = target[k]
        target[k] = bucket
    quota_keys: tuple[str, ...] = ()
    if spec.daily_quota is not None:
        q = spec.daily_quota
        k = key(q.scope)
        prev = general.get(k) or Bucket(k, 0.0)
        general[k] = Bucket(
            k, prev.interval, q.requests, q.bulk_share, window=prev.window, period=prev.period
        )
        quota_keys = (k,)
        record_quota_limit(provider, q.requests)  # the quota alert's denominator
    return Binding(
        tenant=tenant,
        general=tuple(general.values()),
        endpoints={e: tuple(b.values()) for e, b in endpoints.items()},
        quota_keys=quota_keys,
    )


# --- the grant, in one transaction -------------------------------------------------------------

_ENSURE = text(
    "INSERT INTO limit_buckets (key) SELECT unnest(CAST(:keys AS text[])) ON CONFLICT DO NOTHING"
)
_LOCK = text(
    """
    SELECT key, next_at, quota_day, quota_used, paused_until, pause_reason
    FROM limit_buckets WHERE key = ANY(CAST(:keys AS text[])) ORDER BY key FOR UPDATE
    """
)
_CLAIM = text(
    """
    INSERT INTO limit_claims (key, tenant, priority, worker, wanted, seen_at)
    SELECT k, :tenant, :prio, :me, :wanted, clock_timestamp()
    FROM unnest(CAST(:keys AS text[])) AS k
    ON CONFLICT (key, tenant, priority, worker)
    DO UPDATE SET wanted = excluded.wanted, seen_at = excluded.seen_at
    """
)
# Is a fresh claim ahead of ours on any bucket? A better priority of anyone (our own tenant's
# live work included), or the same priority of a tenant served longer ago than ours.
_AHEAD = text(
    """
    WITH served AS (
        SELECT key, tenant, max(served_at) AS at FROM limit_claims
        WHERE key = ANY(CAST(:keys AS text[])) GROUP BY key, tenant
    )
    SELECT clock_timestamp() AS now, EXISTS (
        SELECT 1 FROM limit_claims c
        JOIN served s ON s.key = c.key AND s.tenant = c.tenant
        LEFT JOIN served mine ON mine.key = c.key AND mine.tenant = :tenant
        WHERE c.key = ANY(CAST(:keys AS text[]))
          AND c.wanted > 0
          AND c.seen_at > clock_timestamp() - make_interval(secs => :fresh)
          AND (c.priority < :prio
               OR (c.priority = :prio AND c.tenant <> :tenant
                   AND COALESCE(s.at, '-infinity') < COALESCE(mine.at, '-infinity')))
    ) AS ahead, EXISTS (
        SELECT 1 FROM limit_claims c
        WHERE c.key = ANY(CAST(:keys AS text[])) AND c.priority < :prio
          AND c.seen_at > clock_timestamp() - make_interval(secs => :recent)
    ) AS better_recent
    """
)
_TAKE = text(
    """
    UPDATE limit_buckets b SET next_at = u.next_at, quota_day = u.day, quota_used = u.used
    FROM unnest(CAST(:keys AS text[]), CAST(:next_ats AS timestamptz[]),
                CAST(:days AS date[]), CAST(:useds AS int[])) AS u(key, next_at, day, used)
    WHERE b.key = u.key
    """
)
_SERVED = text(
    """
    UPDATE limit_claims
    SET wanted = GREATEST(0, CAST(:pending AS int) - CAST(:n AS int)),
        served_at = clock_timestamp()
    WHERE key = ANY(CAST(:keys AS text[])) AND tenant = :tenant AND priority = :prio
      AND worker = :me
    """
)
_PAUSE = text(
    """
    INSERT INTO limit_buckets (key, paused_until, pause_reason)
    SELECT unnest(CAST(:keys AS text[])), :until, :reason
    ON CONFLICT (key) DO UPDATE SET
        paused_until = GREATEST(limit_buckets.paused_until, excluded.paused_until),
        pause_reason = excluded.pause_reason
    """
)
_FORGET_CLAIMS = text("UPDATE limit_claims SET wanted = 0 WHERE worker = :me AND wanted > 0")
_PRUNE_CLAIMS = text(
    "DELETE FROM limit_claims WHERE seen_at < clock_timestamp() - interval '10 minutes'"
)
_WINDOW_ENSURE = text(
    """
    INSERT INTO limit_window (key, slot)
    SELECT u.key, g FROM unnest(CAST(:keys AS text[]), CAST(:sizes AS int[])) AS u(key, n),
         generate_series(0, u.n - 1) AS g
    ON CONFLICT DO NOTHING
    """
)
_WINDOW_SLOTS = text(
    """
    SELECT key, slot, free_at FROM limit_window
    WHERE key = ANY(CAST(:keys AS text[])) ORDER BY key, free_at NULLS FIRST, slot
    """
)
_WINDOW_TAKE = text(
    """
    UPDATE limit_window w SET ticket = u.ticket, token_at = u.at, free_at = u.free_at
    FROM unnest(CAST(:keys AS text[]), CAST(:slots AS int[]), CAST(:tickets AS text[]),
                CAST(:ats AS timestamptz[]), CAST(:free_ats AS timestamptz[]))
         AS u(key, slot, ticket, at, free_at)
    WHERE w.key = u.key AND w.slot = u.slot
    """
)
# A slot whose request was answered is free `period` after the database hears of it (so after
# the answer, whatever the clocks); one whose token went unused, once that token's time is past.
_WINDOW_REPORT = text(
    """
    UPDATE limit_window w SET ticket = NULL,
        free_at = CASE WHEN u.sent THEN clock_timestamp() + make_interval(secs => u.period)
                       ELSE GREATEST(clock_timestamp(), w.token_at) END
    FROM unnest(CAST(:keys AS text[]), CAST(:slots AS int[]), CAST(:tickets AS text[]),
                CAST(:sents AS boolean[]), CAST(:periods AS float8[]))
         AS u(key, slot, ticket, sent, period)
    WHERE w.key = u.key AND w.slot = u.slot AND w.ticket = u.ticket
    """
)
# While work of a better priority (live changes) was asked for within LIVE_RECENT seconds,
# work of a worse one (bulk) leaves the last LIVE_RESERVE window slots of an application's rate
# alone. Live before bulk at the token level is not enough: a slot comes back only a period
# after its answer, so a burst of live changes arriving between two bursts would find every
# slot cooling from bulk requests and wait a whole period; with the reserve one is ready.
LIVE_RESERVE = 1
LIVE_RECENT = 10.0

# How long a slot stays taken when its request is never reported (its process died): longer
# than any request may take, so a live process's slot is never handed out twice.
WINDOW_HOLD = 120.0


@dataclass(frozen=True, slots=True)
class Report:
    """A window slot's use ended: its request was answered (`sent`) or its token went unused."""

    key: str
    slot: int
    ticket: str
    sent: bool
    period: float


async def _report(conn: Any, reports: list[Report]) -> None:
    if reports:
        await conn.execute(
            _WINDOW_REPORT,
            {
                "keys": [r.key for r in reports],
                "slots": [r.slot for r in reports],
                "tickets": [r.ticket for r in reports],
                "sents": [r.sent for r in reports],
                "periods": [r.period for r in reports],
            },
        )


@dataclass(slots=True)
class Grant:
    """Tokens granted: their times and the database's clock now, in seconds since the epoch."""

    times: list[float]
    now: float = 0.0
    ahead: bool = False  # nothing granted: another claim goes first
    # Per token: its ticket and window slots (key, slot), when its buckets have windows.
    slots: list[tuple[str, tuple[tuple[str, int], ...]]] = field(default_factory=list)
    # Nothing granted: every window slot is taken; the earliest one known to come free.
    window_full_until: float | None = None
    # Nothing granted to bulk work: the buckets are booked further ahead than it may book;
    # ask again at this time (the database's clock).
    not_before: float | None = None


class Paused(Exception):
    """Raised inside the grant: a bucket is paused (its quota spent) until `until`."""

    def __init__(self, until: datetime, reason: str, key: str) -> None:
        super().__init__(reason)
        self.until, self.reason, self.key = until, reason, key


# How long before its last token is due a pool asks for more (at most half a spacing).
ASK_LEAD = 0.05
# Bulk work books at least this far ahead (seconds), whatever the rate: a fast bucket's one
# token is shorter than a grant's round trip, and booking less would leave the bucket idle.
BULK_REACH_MIN = 0.1


def bulk_reach(buckets: tuple[Bucket, ...]) -> float | None:
    """How far ahead of now bulk work may book tokens of `buckets` (None: no limit).

    One token of the finest rate among them (the account's or application's own, not a
    slower endpoint rate), so a live request waits behind at most one bulk token already
    granted; and a bulk request whose slower endpoint bucket is booked far ahead waits for it
    unbooked, instead of pushing the shared bucket's next free time past an idle gap. Plus
    the asker's lead: the next bulk token is booked just before the previous one is spent, so
    the bucket never idles for a grant's round trip, and a live request sent with the
    previous one finds the next to take (`Limiter._steal`).

    Rates without window slots only (an account's, an endpoint's): an application's rate,
    shared by tenants, keeps its turns (round-robin) and its window slots, whose reserve
    already holds the last slots for live work.
    """
    intervals = [b.interval for b in buckets if b.interval > 0 and b.window == 0]
    if not intervals:
        return None  # a quota or an application's window alone: not limited here
    finest = min(intervals)
    return max(BULK_REACH_MIN, finest + min(ASK_LEAD, finest / 2))


async def grant(
    engine: AsyncEngine,
    buckets: tuple[Bucket, ...],
    *,
    tenant: str,
    priority: int,
    me: str,
    wanted: int,
    horizon: float,
    fresh: float,
    pending: int | None = None,
    reports: list[Report] | None = None,
    live_recent: float = LIVE_RECENT,
) -> Grant:
    """Take up to `wanted` tokens from every bucket at once, spaced by the strictest interval.

    At most `horizon` seconds of tokens are handed out per grant (at least one), so a grant to
    one tenant never holds the others back by more than that. `pending` (default `wanted`)
    is how many requests wait: what the grant leaves unserved stays claimed, so work of a
    lower priority keeps waiting while ours does. `reports` (window slots of these buckets
    whose use ended) are applied first. A token of a bucket with a window also takes one of
    its slots that is free by `horizon`, and is not due before that slot is free; while
    better work was asked for within `live_recent` seconds, not one of the last LIVE_RESERVE.
    Bulk work gets only tokens due within `bulk_reach` of now (none: `not_before` says when
    to ask).
    """
    keys = [b.key for b in buckets]
    windowed = [b for b in buckets if b.window > 0]
    async with engine.begin() as conn:
        await conn.execute(_ENSURE, {"keys": keys})
        rows = {r["key"]: r for r in (await conn.execute(_LOCK, {"keys": keys})).mappings()}
        if windowed:
            sizes = {"keys": [b.key for b in windowed], "sizes": [b.window for b in windowed]}
            await conn.execute(_WINDOW_ENSURE, sizes)
            await _report(conn, reports or [])
        params = {"keys": keys, "tenant": tenant, "prio": priority, "me": me}
        await conn.execute(_CLAIM, {**params, "wanted": wanted})
        head = (
            (await conn.execute(_AHEAD, {**params, "fresh": fresh, "recent": live_recent}))
            .mappings()
            .one()
        )
        now: datetime = head["now"]
        for b in buckets:
            until = rows[b.key]["paused_until"]
            if until is not None and until > now:
                raise Paused(until, rows[b.key]["pause_reason"] or "paused", b.key)
        if head["ahead"]:
            return Grant([], now=now.timestamp(), ahead=True)
        today = now.astimezone(UTC).date()
        n = wanted
        spacing = max(b.interval for b in buckets)
        if spacing > 0:
            n = min(n, max(1, math.floor(horizon / spacing)))
        used: dict[str, int] = {}
        for b in buckets:
            if b.quota is None:
                continue
            row = rows[b.key]
            used[b.key] = row["quota_used"] if row["quota_day"] == today else 0
            cap = b.quota if priority <= PRIORITY_LIVE else math.floor(b.quota * b.bulk_share)
            n = min(n, cap - used[b.key])
            if n <= 0:
                reason = "daily quota spent" if cap == b.quota else BULK_SHARE_SPENT
                raise Paused(next_utc_midnight(now), reason, b.key)
        start = max([now] + [rows[b.key]["next_at"] or now for b in buckets])
        free: list[list[tuple[int, datetime | None]]] = []
        if windowed:
            by_key: dict[str, list[tuple[int, datetime | None]]] = {b.key: [] for b in windowed}
            size = {b.key: b.window for b in windowed}
            reach = now + timedelta(seconds=horizon)
            earliest: datetime | None = None
            reserve = LIVE_RESERVE if head["better_recent"] else 0
            for r in (await conn.execute(_WINDOW_SLOTS, {"keys": list(by_key)})).mappings():
                if r["slot"] >= size[r["key"]]:
                    continue  # the rate was lowered since
                if size[r["key"]] > reserve and r["slot"] >= size[r["key"]] - reserve:
                    continue  # kept for live work
                if r["free_at"] is None or r["free_at"] <= reach:
                    by_key[r["key"]].append((r["slot"], r["free_at"]))
                elif earliest is None or r["free_at"] < earliest:
                    earliest = r["free_at"]
            free = list(by_key.values())
            n = min([n] + [len(f) for f in free])
            if n <= 0:
                wait = (earliest or reach).timestamp()
                return Grant([], now=now.timestamp(), window_full_until=wait)
        times: list[datetime] = []
        for i in range(n):
            at = start if i == 0 else times[-1] + timedelta(seconds=spacing)
            for f in free:
                slot_free = f[i][1]
                if slot_free is not None and slot_free > at:
                    at = slot_free
            times.append(at)
        ahead = bulk_reach(buckets) if priority > PRIORITY_LIVE else None
        if ahead is not None:
            # Granted tokens are their holder's: a live request arriving later waits behind
            # every one already booked. So bulk work books only `ahead` of now (about one
            # token of the finest rate), and asks again as that comes due.
            limit = now + timedelta(seconds=ahead)
            n = sum(1 for at in times if at <= limit)
            if n == 0:
                due = (times[0] - timedelta(seconds=ahead)).timestamp()
                return Grant([], now=now.timestamp(), not_before=due)
            times = times[:n]
        last = times[-1]
        tickets: list[tuple[str, tuple[tuple[str, int], ...]]] = []
        if windowed:
            tickets = [
                (
                    f"{me}/{uuid.uuid4().hex[:12]}",
                    tuple((b.key, free[j][i][0]) for j, b in enumerate(windowed)),
                )
                for i in range(n)
            ]
            hold = {b.key: WINDOW_HOLD + b.period for b in windowed}
            uses = [
                (k, s, t, at) for (t, ks), at in zip(tickets, times, strict=True) for k, s in ks
            ]
            await conn.execute(
                _WINDOW_TAKE,
                {
                    "keys": [u[0] for u in uses],
                    "slots": [u[1] for u in uses],
                    "tickets": [u[2] for u in uses],
                    "ats": [u[3] for u in uses],
                    "free_ats": [u[3] + timedelta(seconds=hold[u[0]]) for u in uses],
                },
            )
        await conn.execute(
            _TAKE,
            {
                "keys": keys,
                "next_ats": [last + timedelta(seconds=b.interval) for b in buckets],
                "days": [
                    today if b.quota is not None else rows[b.key]["quota_day"] for b in buckets
                ],
                "useds": [
                    used[b.key] + n if b.quota is not None else rows[b.key]["quota_used"]
                    for b in buckets
                ],
            },
        )
        await conn.execute(
            _SERVED, {**params, "n": n, "pending": wanted if pending is None else pending}
        )
        return Grant([t.timestamp() for t in times], now=now.timestamp(), slots=tickets)


# --- this process's side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Token:
    """Leave to send one request at `at` (local wall time), in the window slots it names."""

    at: float
    ticket: str | None = None
    slots: tuple[tuple[str, int, float], ...] = ()  # (bucket key, slot, period)


@dataclass(eq=False)
class _Sleeper:
    """A bulk request waiting for its token's time; `robbed` is set when a live one took it."""

    keys: tuple[str, ...]  # its buckets'
    token: Token
    robbed: asyncio.Future[None]


def _taken(sleeper: _Sleeper) -> bool:
    """True when a live request took the sleeper's token (not merely its wait ended)."""
    return sleeper.robbed.done() and not sleeper.robbed.cancelled()


@dataclass(eq=False)
class _Pool:
    """Tokens of one set of buckets for one tenant and priority, and who waits for them."""

    buckets: tuple[Bucket, ...]
    tenant: str
    priority: int
    tokens: deque[Token] = field(default_factory=deque)
    waiters: deque[asyncio.Future[Token]] = field(default_factory=deque)
    asker: asyncio.Task[None] | None = None
    paused: Paused | None = None
    recheck_at: float = 0.0  # a pause is believed until then, then asked about again
    last_granted: int = 0
    last_at: float = -math.inf  # the local time of the last token handed out

    @property
    def slack(self) -> float:
        """How late a token may still be spent: later ones would bunch up with the next."""
        spacing = max(b.interval for b in self.buckets)
        # A quota alone has no spacing to keep: its tokens are never too late.
        return max(0.005, spacing / 2) if spacing > 0 else math.inf


class Limiter:
    """This process's view of the shared limits: asks for tokens, spends them on time."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        me: str,
        horizon: float = 0.5,
        max_chunk: int = 8,
        fresh: float = 1.0,
        poll: float = 0.05,
        pause_recheck: float = 30.0,
        report_delay: float = 0.05,
        live_recent: float = LIVE_RECENT,
    ) -> None:
        self.engine = engine
        self.live_recent = live_recent
        self.me = me
        self.horizon = horizon
        self.max_chunk = max_chunk
        self.fresh = fresh
        self.poll = poll
        self.pause_recheck = pause_recheck
        self.report_delay = report_delay
        self._pools: dict[tuple[tuple[str, ...], str, int], _Pool] = {}
        # (the database's clock minus ours, at most; when that was measured)
        self._skew_sample: tuple[float, float] = (-math.inf, 0.0)
        self.grants = 0  # database grants made (for metrics and tests)
        self._reports: list[Report] = []  # window slots whose use ended, not yet told
        self._reporter: asyncio.Task[None] | None = None
        self._out: set[Token] = set()  # tokens spent whose requests are not answered yet
        # Bulk requests holding a token not due yet, by bucket keys: a live request may take it.
        self._sleeping: dict[tuple[str, ...], list[_Sleeper]] = {}
        self._released = False

    @contextlib.asynccontextmanager
    async def request(
        self, binding: Binding, *, endpoint: str | None = None
    ) -> AsyncIterator[None]:
        """Held for one request, from its token until its answer is read."""
        token = await self.take(binding, endpoint=endpoint)
        try:
            yield
        finally:
            if token is not None:
                self.done(token)

    async def take(self, binding: Binding, *, endpoint: str | None = None) -> Token | None:
        """Wait until one request to `endpoint` may go; LimitPaused while a bucket is paused.

        A token with window slots must be handed back with `done` once the request is
        answered (or failed); `request` does both.
        """
        buckets = binding.buckets(endpoint)
        if not buckets:
            return None
        priority = PRIORITY_LIVE if request_priority.get() <= PRIORITY_LIVE else PRIORITY_BULK
        pool = self._pool(buckets, binding.tenant, priority)
        keys = tuple(b.key for b in buckets)
        robbed = False
        while True:
            self._raise_if_paused(pool)
            token = self._local_token(pool)
            if token is None and priority == PRIORITY_LIVE:
                token = self._steal(keys)
            if token is None:
                fut: asyncio.Future[Token] = asyncio.get_running_loop().create_future()
                # A bulk request whose token a live one took is next in line again.
                pool.waiters.appendleft(fut) if robbed else pool.waiters.append(fut)
                self._ensure_asker(pool)
                try:
                    token = await fut
                except asyncio.CancelledError:
                    if fut.done() and not fut.cancelled():
                        self.done(fut.result(), sent=False)
                    raise
                finally:
                    with contextlib.suppress(ValueError):
                        pool.waiters.remove(fut)
            sleeper: _Sleeper | None = None
            try:
                now = time.time()
                if now > token.at + pool.slack:
                    # Handed over too late (a busy loop): it would bunch; take another.
                    self.done(token, sent=False)
                    continue
                if token.at > now:
                    if priority == PRIORITY_LIVE:
                        await asyncio.sleep(token.at - now)
                    else:
                        sleeper = self._sleep_on(keys, token)
                        robbed = await self._sleep(sleeper)
                        if robbed:
                            continue  # a live request spends it: ask for another
                    if time.time() > token.at + pool.slack:
                        self.done(token, sent=False)  # woke up too late: the same
                        continue
            except BaseException:
                if sleeper is None or not _taken(sleeper):  # else it is the live one's
                    self.done(token, sent=False)
                raise
            if token.slots:
                self._out.add(token)
            return token

    def _sleep_on(self, keys: tuple[str, ...], token: Token) -> _Sleeper:
        sleeper = _Sleeper(keys, token, asyncio.get_running_loop().create_future())
        self._sleeping.setdefault(keys, []).append(sleeper)
        return sleeper

    async def _sleep(self, sleeper: _Sleeper) -> bool:
        """Wait until the bulk token is due; True when a live request took it meanwhile."""
        try:
            with contextlib.suppress(TimeoutError):
                wait = sleeper.token.at - time.time()
                await asyncio.wait_for(asyncio.shield(sleeper.robbed), max(0.0, wait))
            return _taken(sleeper)
        finally:
            if not sleeper.robbed.done():
                sleeper.robbed.cancel()  # no longer to be taken
            line = self._sleeping.get(sleeper.keys)
            if line is not None:
                with contextlib.suppress(ValueError):
                    line.remove(sleeper)

    def _steal(self, keys: tuple[str, ...]) -> Token | None:
        """The earliest token a bulk request of this process waits to spend on the same
        buckets, taken for a live request (the bulk one asks again).

        Granted tokens cannot go back to the database, and a live grant is due only after
        every token already booked; the bulk request waiting for the earliest of them yields
        it instead, so the live request waits for at most that one, and no token is lost.
        """
        line = self._sleeping.get(keys)
        while line:
            sleeper = min(line, key=lambda s: s.token.at)
            line.remove(sleeper)
            if not sleeper.robbed.done():
                sleeper.robbed.set_result(None)
                return sleeper.token
        return None

    def done(self, token: Token, *, sent: bool = True) -> None:
        """The request of `token` was answered or failed (`sent`), or never sent."""
        self._out.discard(token)
        if token.ticket is None:
            return
        self._requeue([Report(k, s, token.ticket, sent, per) for k, s, per in token.slots])

    def _requeue(self, reports: list[Report]) -> None:
        if not reports or self._released:  # released: told already, as answered
            return
        self._reports += reports
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.create_task(self._report_soon(), name="limits-report")

    async def _report_soon(self) -> None:
        """Tell the database which window slots came free, unless a grant tells it first."""
        delay = self.report_delay
        while self._reports:
            await asyncio.sleep(delay)
            batch, self._reports = self._reports, []
            if not batch:
                continue
            try:
                async with self.engine.begin() as conn:
                    await _report(conn, batch)
                delay = self.report_delay
            except Exception as exc:  # the database may be away: the slots wait for it
                log.warning("sync.limits.report_failed", error=repr(exc))
                self._reports = batch + self._reports
                delay = min(2.0, max(delay, 0.05) * 2)

    async def pause(self, binding: Binding, *, until: datetime, reason: str) -> None:
        """Pause every quota bucket of the binding until `until` (the provider said so)."""
        keys = list(binding.quota_keys) or [b.key for b in binding.general]
        if not keys:
            return
        async with self.engine.begin() as conn:
            await conn.execute(_PAUSE, {"keys": keys, "until": until, "reason": reason})
        for pool in self._pools.values():
            if any(b.key in keys for b in pool.buckets):
                while pool.tokens:
                    self.done(pool.tokens.popleft(), sent=False)
                self._fail(pool, Paused(until, reason, keys[0]), recheck=self.pause_recheck)

    async def release(self) -> None:
        """Withdraw this process's claims and window slots (shutdown), so no one waits for
        them to go stale."""
        for pool in self._pools.values():
            if pool.asker is not None:
                pool.asker.cancel()
            while pool.tokens:
                self.done(pool.tokens.popleft(), sent=False)
        for token in list(self._out):
            self.done(token)  # cut off: it may have arrived, so its slot waits its period
        if self._reporter is not None:
            self._reporter.cancel()
        batch, self._reports = self._reports, []
        self._released = True
        with contextlib.suppress(Exception):
            async with self.engine.begin() as conn:
                await _report(conn, batch)
                await conn.execute(_FORGET_CLAIMS, {"me": self.me})
                await conn.execute(_PRUNE_CLAIMS)

    @property
    def _skew(self) -> float:
        return self._skew_sample[0]

    def _learn_skew(self, db_now: float, received: float) -> None:
        """Estimate the database's clock minus ours, never too high.

        Tokens are times on the database's clock; every process spends them on its own wall
        clock less this skew. `db_now` was read before the answer arrived, so `db_now -
        received` is a lower bound of the skew: a token is never spent early, and the best
        (largest) bound of the last minute leaves it late by little more than the fastest
        round trip, however slow other grants are.
        """
        sample = db_now - received
        best, measured = self._skew_sample
        if sample >= best or received - measured > 60.0:
            self._skew_sample = (sample, received)

    def _pool(self, buckets: tuple[Bucket, ...], tenant: str, priority: int) -> _Pool:
        key = (tuple(b.key for b in buckets), tenant, priority)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(buckets, tenant, priority)
        return pool

    @staticmethod
    def _raise_if_paused(pool: _Pool) -> None:
        p = pool.paused
        if p is None:
            return
        # Believed without asking until the recheck (an operator may lift a pause early).
        if p.until > datetime.now(UTC) and time.monotonic() < pool.recheck_at:
            raise LimitPaused(p.reason, until=p.until, scope=p.key)
        pool.paused = None

    def _local_token(self, pool: _Pool) -> Token | None:
        now = time.time()
        while pool.tokens:
            token = pool.tokens.popleft()
            if now <= token.at + pool.slack:
                return token
            self.done(token, sent=False)
        return None

    def _ensure_asker(self, pool: _Pool) -> None:
        if pool.asker is None or pool.asker.done():
            pool.asker = asyncio.create_task(self._ask(pool), name="limits-ask")

    async def _sync_clock(self) -> None:
        """A few quick reads of the database's clock, before the first grant's tokens."""
        for _ in range(3):
            async with self.engine.connect() as conn:
                db_now = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
            self._learn_skew(db_now.timestamp(), time.time())

    async def _ask(self, pool: _Pool) -> None:
        """Ask the database for tokens while anyone in this process waits for them."""
        delay = self.poll
        keys = {b.key for b in pool.buckets}
        periods = {b.key: b.period for b in pool.buckets}
        while True:
            live = [w for w in pool.waiters if not w.done()]
            if not live:
                return
            # Lanes that just spent a token come back for the next one right after this ask:
            # asking for as many as last time keeps a steady tenant's share steady.
            pending = max(0, len(live) - len(pool.tokens))
            wanted = min(self.max_chunk, max(pending, pool.last_granted))
            # The window slots of these buckets that came free ride along with the grant.
            reports = [r for r in self._reports if r.key in keys]
            self._reports = [r for r in self._reports if r.key not in keys]
            try:
                if self._skew_sample[0] == -math.inf:
                    await self._sync_clock()
                result = await grant(
                    self.engine,
                    pool.buckets,
                    tenant=pool.tenant,
                    priority=pool.priority,
                    me=self.me,
                    wanted=wanted,
                    horizon=self.horizon,
                    fresh=self.fresh,
                    pending=pending,
                    reports=reports,
                    live_recent=self.live_recent,
                )
                self._learn_skew(result.now, time.time())
            except Paused as exc:
                self._requeue(reports)  # the grant rolled back: told on their own
                self._fail(pool, exc, recheck=self.pause_recheck)
                return
            except Exception as exc:  # the database may be away: keep the waiters waiting
                log.warning("sync.limits.grant_failed", error=repr(exc))
                self._requeue(reports)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            delay = self.poll
            if result.ahead:
                await asyncio.sleep(self.poll)
                continue
            if result.not_before is not None:
                # Bulk work may not book that far ahead yet: ask again when it may (on the
                # database's clock, which ours trails by at most the skew estimate).
                due = result.not_before - self._skew - time.time()
                await asyncio.sleep(max(due, 0.005))
                continue
            if result.window_full_until is not None:
                # Every window slot is taken: ask again as the first one comes free within the
                # horizon, or soon, should an answer free one that is still out.
                due = result.window_full_until - self._skew - self.horizon - time.time()
                await asyncio.sleep(min(max(due, self.poll), 4 * self.poll))
                continue
            self.grants += 1
            pool.last_granted = len(result.times)
            skew = self._skew
            spacing = max(b.interval for b in pool.buckets)
            for i, db_at in enumerate(result.times):
                # Never closer to our previous token than the spacing, should the skew
                # estimate have moved between two grants.
                at = max(db_at - skew, pool.last_at + spacing)
                pool.last_at = at
                token = Token(at)
                if result.slots:
                    ticket, slots = result.slots[i]
                    token = Token(at, ticket, tuple((k, s, periods[k]) for k, s in slots))
                while pool.waiters and pool.waiters[0].done():
                    pool.waiters.popleft()
                if pool.waiters:
                    pool.waiters.popleft().set_result(token)
                else:
                    pool.tokens.append(token)
            if result.times:
                # Ask again when the last token is nearly due: earlier only books further ahead,
                # later leaves the bucket idle for a round trip.
                lead = min(ASK_LEAD, max(b.interval for b in pool.buckets) / 2)
                due = pool.last_at - lead
                await asyncio.sleep(max(0.0, due - time.time()))

    def _fail(self, pool: _Pool, exc: Paused, *, recheck: float) -> None:
        pool.paused = exc
        pool.recheck_at = time.monotonic() + recheck
        while pool.waiters:
            w = pool.waiters.popleft()
            if not w.done():
                w.set_exception(LimitPaused(exc.reason, until=exc.until, scope=exc.key))


@dataclass(eq=False)
class ConnectionLimits:
    """A connection's limiter for its client: the account's slot, then the tokens."""

    limiter: Limiter | None
    binding: Binding | None
    gate: Callable[[str | None], contextlib.AbstractAsyncContextManager[None]] | None = None
    # The provider's `background_ops`: requests that only read the outcome of work the
    # provider already holds. They go as one shared tenant of their own (BACKGROUND_TENANT),
    # so every tenant's such reads together take one tenant's turns of a shared rate, never
    # the turn of a tenant whose new work waits; and, unlike bulk work, are not starved by
    # live work (their rows stay held until they are read).
    background: frozenset[str] = frozenset()

    @contextlib.asynccontextmanager
    async def slot(self, op: str | None = None) -> AsyncIterator[None]:
        """Held for one request on the wire (`op`: its endpoint rate, if any); the token is
        taken with the slot already held, so it is spent the moment it is due, and handed
        back when the answer is read."""
        binding = self.binding
        if binding is not None and op is not None and op in self.background:
            binding = dataclasses.replace(binding, tenant=BACKGROUND_TENANT)
        async with self.gate(op) if self.gate is not None else contextlib.nullcontext():
            if self.limiter is not None and binding is not None:
                async with self.limiter.request(binding, endpoint=op):
                    yield
            else:
                yield


class ProcessLimits:
    """The shared limits for a process that builds clients but runs no engine (the API):
    one Limiter, each connection bound as the engine binds it (app.connections.limits)."""

    def __init__(self, engine: AsyncEngine, settings: Settings, *, me: str) -> None:
        self.limiter = Limiter(engine, me=me)
        self.settings = settings

    def __call__(
        self, provider: Provider, *, account_key: str, tenant: str
    ) -> ConnectionLimits | None:
        """The limiter of one connection's requests; None when its provider has no rate."""
        spec = LimitSpec.from_limits(provider.limits(self.settings))
        if not spec.metered:
            return None
        binding = bind(
            spec, provider=provider.id, account=account_key, application=APPLICATION, tenant=tenant
        )
        return ConnectionLimits(self.limiter, binding)

    async def release(self) -> None:
        """Withdraw the claims and window slots of this process (shutdown)."""
        await self.limiter.release()
