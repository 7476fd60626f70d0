"""The worker: drains the outbox into the provider (DESIGN §6).

Loop: wake on NOTIFY, on the earliest due row, or every poll interval; claim a batch of rows by
lease in one short transaction; per connection, load the current rows, plan (desired.py), send
(batch endpoint for a backlog, single calls otherwise) with at most N requests in flight per
account across all workers (slots.py); complete with compare-and-delete on `seq`. No database
transaction is open while HTTP is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import httpx
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.config import Settings
from app.connections.crypto import decrypt_credentials
from app.connections.notices import (
    REASON_AUDIENCE,
    REASON_CREDENTIALS,
    REASON_ENDPOINT,
    REASON_QUOTA,
    REASON_UNAVAILABLE,
)
from app.connections.tokens import token_source
from app.db import make_sessionmaker, to_libpq_url
from app.providers import registry
from app.providers.base import (
    AudienceMissing,
    AuthError,
    ClientConfig,
    ErrorKind,
    PermanentError,
    ProviderClient,
    RemoteMember,
    RemoteRef,
    ThrottledError,
    TransientError,
    tombstone_key,
)
from app.providers.mapping import AudienceRule, MappingConfig, interest_maps
from app.providers.registry import Provider
from app.providers.transport import build_transport
from app.sync.backoff import Backoff
from app.sync.desired import (
    Action,
    MirrorOp,
    Plan,
    creates,
    is_movable,
    plan_key,
    plan_move,
    shared_tags,
    tag_diff,
)
from app.sync.limits import (
    APPLICATION,
    BULK_SHARE_SPENT,
    Binding,
    ConnectionLimits,
    Limiter,
    LimitPaused,
    LimitSpec,
    QuotaExhausted,
    Scope,
    bind,
    next_utc_midnight,
    quota_notice,
    request_priority,
)
from app.sync.models import PRIORITY_BULK, PRIORITY_LIVE
from app.sync.outbox import NOTIFY_CHANNEL
from app.sync.queue import Claimed, GroupData, Outcome, QueueRepository
from app.sync.slots import (
    AccountGate,
    SlotManager,
    SlotsUnavailable,
    is_dead_local,
    worker_identity,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

STARVE_SECONDS = 5.0  # give rows back when another worker holds every slot this long
# Outcomes after which a group completes what it has sent so far: a kill costs at most about
# this many resends per group (plus what was in flight), for one more short transaction.
COMPLETE_STEP = 50
LONE_THROTTLE_RETRIES = 2  # in-place retries of a request after a lone throttle
LONE_THROTTLE_DEFER = 0.25  # seconds a row waits when its request stayed throttled
MAINTENANCE_TICK = 0.5  # the maintenance loop's finest step
# How often a worker looks for paused connections it did not pause itself (another process
# paused them, or a worker that died): its own pauses and the probes it has scheduled wake it
# at their time. Looking twice a second cost a transaction each time for nothing, mostly.
PROBE_SWEEP_SECONDS = 5.0
# How long a worker keeps its view of which worker takes which joining connection's live rows
# (one small query per refresh).
AFFINITY_SECONDS = 1.0
# The priority of the group a request belongs to: the gate and the rate limits read it.
_priority = request_priority


class GateLimiter:
    """A connection's client's limiter: the account gate, live groups first (and the
    provider's `first_ops`, which finish work already sent)."""

    def __init__(
        self, gate: AccountGate, *, margin: float, first: frozenset[str] = frozenset()
    ) -> None:
        self.gate = gate
        self.margin = margin
        self.first = first

    def slot(self, op: str | None = None) -> contextlib.AbstractAsyncContextManager[None]:
        """One request slot of the account (SlotsUnavailable when starved)."""
        return self.gate.slot(
            margin=self.margin,
            starve_after=STARVE_SECONDS,
            live=_priority.get() == PRIORITY_LIVE or op in self.first,
        )


class Halt(Exception):
    """Stop sending for this connection now (paused, errored, lease at risk, shutdown)."""


@dataclass
class ConnectionContext:
    """What a worker keeps per audience mapping of a connection: its provider, client, gate
    and failure streak (`id` is the connection's, `audience_id` and `mapping` the mapping's)."""

    id: uuid.UUID
    owner_id: str
    account_key: str
    audience_id: str
    client: ProviderClient
    version: datetime
    provider: Provider
    mapping: MappingConfig
    failure_streak: int = 0
    halted: str | None = None
    last_error: str | None = None
    binding: Binding | None = None  # its rate and quota buckets (None: only the slots)
    # The audience mapping; the default one has the connection's id.
    mapping_id: uuid.UUID | None = None

    @property
    def mapping_key(self) -> uuid.UUID:
        """The mapping the queue and mirror rows of this context are keyed by."""
        return self.mapping_id or self.id


DEFAULT_ACCOUNT_CONCURRENCY = 10


@dataclass
class EngineOptions:
    """The engine's knobs, from Settings."""

    # Requests in flight per account for a provider that declares no concurrency limit (its
    # rates hold it), and the lanes of a group; a provider's own cap (Mailchimp:
    # MAILCHIMP_MAX_CONCURRENCY) is in its limits.
    max_concurrency: int = DEFAULT_ACCOUNT_CONCURRENCY
    batch_size: int = 500
    batch_threshold: int = 50
    claim_size: int = 500
    lease_seconds: float = 60.0
    poll_interval: float = 1.0
    max_attempts: int = 5
    parked_retry: float = 900.0
    parked_retry_max: float = 3600.0
    pause_after_failures: int = 10
    timeout: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    probe_max_interval: float = 2.0
    throttle_cooldown: float = 0.5
    # The provider's limits (DESIGN §14.3); None: what its spec declares.
    limits: LimitSpec | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineOptions:
        """Options as configured by the environment."""
        return cls(
            max_concurrency=DEFAULT_ACCOUNT_CONCURRENCY,
            batch_size=settings.SYNC_BATCH_SIZE,
            batch_threshold=settings.SYNC_BATCH_THRESHOLD,
            claim_size=settings.SYNC_CLAIM_SIZE,
            lease_seconds=settings.SYNC_LEASE_SECONDS,
            poll_interval=settings.SYNC_POLL_INTERVAL_SECONDS,
            max_attempts=settings.SYNC_MAX_ATTEMPTS,
            parked_retry=settings.SYNC_PARKED_RETRY_SECONDS,
            parked_retry_max=max(
                settings.SYNC_PARKED_RETRY_SECONDS, settings.SYNC_PARKED_RETRY_MAX_SECONDS
            ),
            pause_after_failures=settings.SYNC_PAUSE_AFTER_FAILURES,
            timeout=settings.MAILCHIMP_TIMEOUT_SECONDS,
            backoff=Backoff(
                base=settings.SYNC_BACKOFF_BASE_SECONDS, cap=settings.SYNC_BACKOFF_MAX_SECONDS
            ),
            throttle_cooldown=settings.SYNC_THROTTLE_COOLDOWN_SECONDS,
            probe_max_interval=settings.SYNC_PROBE_MAX_INTERVAL_SECONDS,
        )


PROBE_BATCH = 10  # paused connections one pass probes
# Due paused connections, marked as being probed (another worker's SKIP LOCKED passes them
# by); and, from the same snapshot, the seconds until the next one not yet due.
_PROBE_DUE = text(
    """
    WITH due AS (
        UPDATE connections SET next_probe_at = now() + interval '30 seconds',
            probe_attempts = probe_attempts + 1
        WHERE id IN (
            SELECT id FROM connections
            WHERE status = 'paused' AND next_probe_at <= now()
            ORDER BY next_probe_at LIMIT :batch FOR UPDATE SKIP LOCKED)
        RETURNING id, probe_attempts
    )
    SELECT id, probe_attempts, NULL::float8 AS next_in FROM due
    UNION ALL
    SELECT NULL, NULL, CAST(EXTRACT(EPOCH FROM min(next_probe_at) - now()) AS float8)
    FROM connections WHERE status = 'paused' AND next_probe_at > now()
    """
).bindparams(batch=PROBE_BATCH)


def probe_delay(next_in: float | None) -> float:
    """Seconds until the maintenance loop probes again, from what `probe_paused` returned:
    the next scheduled probe, and at least every sweep for pauses made elsewhere."""
    if next_in is None:
        return PROBE_SWEEP_SECONDS
    return min(max(0.0, next_in), PROBE_SWEEP_SECONDS)


Periodic = Callable[["SyncEngine"], Awaitable[None]]
Runner = Callable[["ConnectionContext", list[Plan]], Awaitable[dict[str, Outcome]]]


class SyncEngine:
    """Drains sync_queue into the providers; several may run against one database."""

    def __init__(
        self,
        db: AsyncEngine,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        options: EngineOptions | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self._sessions = make_sessionmaker(db)  # token renewals (app.connections.tokens)
        self.options = options or EngineOptions.from_settings(settings)
        self.me = worker_id or worker_identity()
        self._own_transport = transport is None
        self.transport = transport or build_transport()
        # Slot leases outlive the longest request so a live lease never covers a dead one.
        self.slots = SlotManager(
            db,
            me=self.me,
            cap=self.options.max_concurrency,
            # A request starts only while the lease outlasts it (timeout + margin); twice that
            # leaves room for a slow renewal.
            ttl=max(10.0, 2 * self.options.timeout + 5.0),
            cooldown_base=self.options.throttle_cooldown,
        )
        # Rates and daily quotas, shared with every other process through PostgreSQL.
        self.limits = Limiter(db, me=self.me)
        self.contexts: dict[uuid.UUID, ConnectionContext] = {}
        self._mappings: dict[str, MappingConfig] = {}
        self.periodic: list[tuple[float, Periodic]] = []
        self._stop = asyncio.Event()  # stop claiming
        self._bg_stop = asyncio.Event()  # stop the background loops (after in-flight work)
        self._wake = asyncio.Event()
        self._groups: set[asyncio.Task[None]] = set()
        self._outstanding: dict[str, int] = defaultdict(int)
        self._outstanding_live: dict[str, int] = defaultdict(int)  # of those, live rows
        self._row_lease_deadline = 0.0
        self._last_periodic: dict[int, float] = {}
        self._bg: list[asyncio.Task[Any]] = []
        self._starved_until: dict[str, float] = {}
        # Requests an account can have in flight, where fewer than its slots (_per_account_max).
        self._ahead_slots: dict[str, int] = {}
        self._spawned: set[asyncio.Task[Any]] = set()
        # Rows a group of this worker is still working on: the only ones the lease keeper
        # renews. Rows whose completion (and its release) failed, say while the database was
        # down, are orphans: given back as soon as the database answers, never renewed.
        # Counted: a row released by a group's step may be claimed again by a new group
        # before the first group has let go of its own hold on it.
        self._held: Counter[tuple[uuid.UUID, uuid.UUID, str]] = Counter()
        self._orphans: dict[tuple[uuid.UUID, uuid.UUID, str], Claimed] = {}
        self._orphaned = asyncio.Event()
        # A claim that failed may still have been committed (the connection lost as the
        # commit's answer was on its way): rows leased by this worker that it does not know
        # of. The next claim gives back every lease of ours no group holds first.
        self._claim_unheard = False
        self._probe_soon = asyncio.Event()  # this worker paused a connection: look now
        # Live rows of joining connections assigned to other workers (see _live_elsewhere),
        # and when that view was read.
        self._elsewhere: list[uuid.UUID] = []
        self._elsewhere_at = -math.inf
        # Accounts of providers with joins_creates, and the connections of each seen here.
        self._joining_accounts: dict[str, set[uuid.UUID]] = defaultdict(set)

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish in-flight work and exit."""
        self._stop.set()
        self._wake.set()

    def add_periodic(self, every_seconds: float, job: Periodic) -> None:
        """Run `job(engine)` every `every_seconds` from the maintenance loop."""
        self.periodic.append((every_seconds, job))

    def spawn(self, coro: Awaitable[Any], *, name: str) -> asyncio.Task[Any]:
        """Run long background work (a reconcile run) beside the loops; stop() cancels it.

        Periodic jobs must return quickly (they share the maintenance loop); they hand longer
        work to this. The work may use the account gates: the slot loop outlives it.
        """
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        return task

    @property
    def spawned(self) -> set[asyncio.Task[Any]]:
        """Background work started with spawn() that is still running."""
        return set(self._spawned)

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stop.is_set()

    async def connection_context(
        self, connection_id: uuid.UUID, mapping_id: uuid.UUID | None = None
    ) -> ConnectionContext | None:
        """The client and account of a connection, for periodic jobs (requests they make go
        through `self.slots.gate(ctx.account_key)`); None when its credentials are unusable."""
        key = mapping_id or connection_id  # the default mapping has the connection's id
        return (await self._contexts([key])).get(key)

    async def run(self, *, grace_seconds: float = 30.0) -> None:
        """Run until stop(): claim, send, complete; then finish in-flight groups and let go."""
        log.info("sync.worker.started", worker=self.me)
        await self._reap_dead_local()
        self._bg = [
            asyncio.create_task(self.slots.run(self._bg_stop), name="slots"),
            asyncio.create_task(self._listen(), name="listen"),
            asyncio.create_task(self._lease_keeper(), name="lease-keeper"),
            asyncio.create_task(self._maintenance(), name="maintenance"),
        ]
        try:
            while not self._stop.is_set():
                # Cleared before the claim, not after: a NOTIFY (or a group's end) arriving
                # while the claim runs must wake the next round, not wait for the poll.
                self._wake.clear()
                try:
                    claimed = await self._fill()
                except Exception as exc:
                    log.warning("sync.claim_failed", error=repr(exc))
                    claimed = False
                if not claimed:
                    await self._idle_wait()
        finally:
            await self._shutdown(grace_seconds)
            log.info("sync.worker.stopped", worker=self.me)

    async def _shutdown(self, grace: float) -> None:
        if self._groups:
            _, pending = await asyncio.wait(self._groups, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        self._stop.set()
        for spawned in list(self._spawned):
            spawned.cancel()  # it gives its lease back; another worker resumes it
        if self._spawned:
            await asyncio.gather(*self._spawned, return_exceptions=True)
        self._bg_stop.set()
        self.slots.wake.set()  # the slot loop notices the stop now, not at its next tick
        for task in self._bg:
            if task.get_name() != "slots":
                task.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with self.db.begin() as conn:
                await QueueRepository(conn).release_all(me=self.me)
        await self.limits.release()

    async def aclose(self) -> None:
        """Close the HTTP transport when the engine made it."""
        if self._own_transport:
            await self.transport.aclose()

    async def run_until_idle(self, *, limit_seconds: float = 60.0) -> None:
        """Drain until nothing is due (tests and the CLI); the background loops run meanwhile."""
        deadline = time.monotonic() + limit_seconds
        self._bg = [
            asyncio.create_task(self.slots.run(self._bg_stop), name="slots"),
            asyncio.create_task(self._lease_keeper(), name="lease-keeper"),
        ]
        try:
            while time.monotonic() < deadline:
                claimed = await self._fill()
                if claimed:
                    continue
                if self._groups:
                    await asyncio.wait(self._groups, return_when=asyncio.FIRST_COMPLETED)
                    continue
                return
            raise TimeoutError("the queue did not drain in time")
        finally:
            await self._shutdown(5.0)
            self._stop = asyncio.Event()
            self._bg_stop = asyncio.Event()

    # --- claiming -------------------------------------------------------------------------

    def _per_account_max(self, account_key: str | None = None) -> int:
        # Two full claims per slot of the account: one in flight, one planned and waiting, so
        # a freed slot never waits for a claim-load-plan round trip. The account's own cap
        # (Mautic: 4), not the engine's default: more rows claimed and planned up front only
        # delayed the first sends (P5: a drain's first seconds spent planning 40,000 rows).
        # An account whose requests an application's rate admits a few at a time (its
        # window) has that few in flight however many slots it has: more planned ahead is
        # only CPU and lease renewals on the loop its live groups share.
        slots = self._ahead_slots.get(account_key or "", self.options.max_concurrency)
        gate = self.slots.gates.get(account_key) if account_key is not None else None
        if gate is not None:
            slots = min(slots, gate.cap)
        return 2 * slots * self.options.claim_size

    async def _fill(self) -> bool:
        """Claim one batch when there is room; False when nothing was claimed."""
        if self._stop.is_set():
            return False
        if sum(self._outstanding.values()) >= 4 * self._per_account_max():
            return False
        now = time.monotonic()
        full = {a for a, n in self._outstanding.items() if n >= self._per_account_max(a)}
        cooling = {a for a, g in self.slots.gates.items() if g.cooldown_until > now}
        starved = {a for a, until in self._starved_until.items() if until > now}
        blocked = cooling | starved
        # Live changes arriving faster than the account takes them one by one wait in the
        # queue once a batch's worth is in hand: claimed a few at a time they would all go
        # alone (a fan-out burst at a 5/s provider, 4 requests a contact); together, by batch.
        # Not for a provider that joins waiting creates itself: its live rows stay held until
        # their import's outcome is read, which under a contended rate comes well after the
        # import, and holding the next ones back would only make them wait for that read.
        swamped = {
            a
            for a, n in self._outstanding_live.items()
            if n >= self.options.batch_threshold and a not in self._joining_accounts
        }
        limit = self.options.claim_size
        if self._claim_unheard:
            # Only this task claims, and a claim's rows are held before it yields again:
            # a lease of ours that no group holds now is an unheard claim's (or an orphan's).
            async with self.db.begin() as conn:
                n = await QueueRepository(conn).release_unheld(me=self.me, held=list(self._held))
            self._claim_unheard = False
            if n:
                log.info("sync.unheard_claim_released", rows=n)
        try:
            skip_live = await self._live_elsewhere()
            # A joining account whose live rows are dealt to this worker has no other taker
            # for them: a starved wait for its slot gives them back, but skipping the account
            # for STARVE_SECONDS would leave them untaken all that time (P4: 10-17 s stalls).
            # Its live rows are claimed again at once; its bulk rows stay skipped.
            elsewhere = set(skip_live)
            dealt_here = {a for a, conns in self._joining_accounts.items() if conns - elsewhere}
            live_blocked = cooling | (starved - dealt_here)
            async with self.db.begin() as conn:
                repo = QueueRepository(conn)
                # Live changes first, even for an account busy with bulk work (DESIGN §6.5).
                claimed = await repo.claim(
                    me=self.me,
                    limit=limit,
                    lease_seconds=self.options.lease_seconds,
                    skip_accounts=sorted(live_blocked | swamped),
                    max_priority=PRIORITY_LIVE,
                    skip_live=skip_live,
                )
                if not claimed:
                    # Live rows claimed go first, on their own: claiming the backlog's rows
                    # too would hold their groups back by that claim, and the next fill
                    # claims it anyway. A full claim of bulk rows whatever the live ones
                    # took: live rows eating into it would leave remainders of the backlog
                    # too small for a batch.
                    claimed = await repo.claim(
                        me=self.me,
                        limit=limit,
                        lease_seconds=self.options.lease_seconds,
                        # its claim takes live rows too
                        skip_accounts=sorted(blocked | full | swamped),
                        max_priority=PRIORITY_BULK,
                        skip_live=skip_live,
                    )
        except Exception:
            self._claim_unheard = True
            raise
        if not claimed:
            return False
        self._held.update((row.connection_id, row.mapping_id, row.email_key) for row in claimed)
        self._row_lease_deadline = max(
            self._row_lease_deadline, time.monotonic() + self.options.lease_seconds
        )
        # A group is one audience mapping's rows of one priority: one audience per send.
        groups: dict[tuple[uuid.UUID, int], list[Claimed]] = defaultdict(list)
        for row in claimed:
            groups[(row.mapping_id, min(row.priority, PRIORITY_BULK))].append(row)
        try:
            contexts = await self._contexts(list({mapping_id for mapping_id, _ in groups}))
        except Exception:
            await self._let_go(claimed)  # the database went away between claim and start
            raise
        # The mappings of one connection run one after another: the audiences of one account
        # share the person (ActiveCampaign and Mautic: one contact, its tags, its lists or
        # segments), so a leave of one audience must not read that person while a join of
        # another is half done.
        chains: dict[uuid.UUID, list[tuple[ConnectionContext, list[Claimed], int]]] = {}
        for (mapping_id, priority), rows in groups.items():
            ctx = contexts.get(mapping_id)
            if ctx is None:
                await self._let_go(rows)
                continue
            self._outstanding[ctx.account_key] += len(rows)
            if priority == PRIORITY_LIVE:
                self._outstanding_live[ctx.account_key] += len(rows)
                if ctx.provider.spec.capabilities.joins_creates:
                    self._joining_accounts[ctx.account_key].add(ctx.id)
            chains.setdefault(ctx.id, []).append((ctx, rows, priority))
        for chain in chains.values():
            # A connection with one mapping keeps its groups (live, bulk) side by side.
            parts = (
                [chain] if len({c.mapping_key for c, _, _ in chain}) > 1 else [[g] for g in chain]
            )
            for part in parts:
                task = asyncio.create_task(self._chain(part))
                self._groups.add(task)
                task.add_done_callback(self._group_done)
        return True

    async def _live_elsewhere(self) -> list[uuid.UUID]:
        """The connections whose live rows this worker leaves to another: those of providers
        that join waiting creates into one request (`joins_creates`), dealt out in turn over
        the workers holding request slots (dead local ones left out) and this one. Creates of one
        tenant split over workers would wait for one turn each; all of them on one worker
        (the first to claim) put every tenant behind that worker's stalls. Every worker that
        holds leases sees the same deal, so each connection's live rows have a taker."""
        joining = [p.id for p in registry.all_providers() if p.spec.capabilities.joins_creates]
        if not joining:
            return []
        now = time.monotonic()
        if now - self._elsewhere_at < AFFINITY_SECONDS:
            return self._elsewhere
        async with self.db.connect() as conn:
            holders, connections = await QueueRepository(conn).join_affinity(joining)
        workers = sorted({h for h in holders if not is_dead_local(h)} | {self.me})
        self._elsewhere = [
            c for i, c in enumerate(sorted(connections)) if workers[i % len(workers)] != self.me
        ]
        self._elsewhere_at = now
        return self._elsewhere

    async def _chain(self, chain: list[tuple[ConnectionContext, list[Claimed], int]]) -> None:
        for ctx, rows, priority in chain:
            await self._process(ctx, rows, priority)

    def _group_done(self, task: asyncio.Task[None]) -> None:
        self._groups.discard(task)
        self._wake.set()

    async def _idle_wait(self) -> None:
        timeout = self.options.poll_interval
        if not self._groups:
            with contextlib.suppress(Exception):
                async with self.db.connect() as conn:
                    due = await QueueRepository(conn).seconds_until_next_due()
                if due is not None:
                    timeout = min(timeout, max(0.0, due))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.01, timeout))

    async def _contexts(
        self, mapping_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, ConnectionContext]:
        """Contexts by audience mapping id (a connection's default mapping has its id)."""
        async with self.db.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT c.id, c.provider, c.owner_id, c.account_key, c.api_endpoint,"
                        " c.dc, c.auth_kind, c.credentials, m.audience_id, c.status,"
                        " GREATEST(c.updated_at, m.updated_at) AS updated_at,"
                        " m.id AS mapping_id, m.kinds, m.tags_any, m.tags_all, m.interests"
                        " FROM audience_mappings m JOIN connections c ON c.id = m.connection_id"
                        " WHERE m.id = ANY(CAST(:ids AS uuid[])) AND c.audience_id IS NOT NULL"
                    ),
                    {"ids": [str(i) for i in mapping_ids]},
                )
            ).mappings()
            out: dict[uuid.UUID, ConnectionContext] = {}
            for row in rows:
                cached = self.contexts.get(row["mapping_id"])
                if cached is not None and cached.version == row["updated_at"]:
                    if row["status"] == "active":
                        cached.halted = None
                    out[row["mapping_id"]] = cached
                    continue
                try:
                    provider = registry.get(row["provider"])
                    binding = self._binding(provider, row)
                    client = self._client_for(provider, row, binding)
                except Exception as exc:
                    log.error("sync.connection_unusable", connection=str(row["id"]), error=str(exc))
                    # A stored endpoint that fails the host check (ValueError) asks for a
                    # reconnect, like refused credentials; anything else says what it was.
                    reason = REASON_ENDPOINT if isinstance(exc, ValueError) else str(exc)
                    await self._set_status(row["id"], "error", reason, str(exc))
                    continue
                ctx = ConnectionContext(
                    id=row["id"],
                    owner_id=row["owner_id"],
                    account_key=row["account_key"],
                    audience_id=row["audience_id"],
                    client=client,
                    version=row["updated_at"],
                    binding=binding,
                    provider=provider,
                    mapping=dataclasses.replace(
                        self.mapping(provider),
                        rule=AudienceRule.of(row),
                        interests=interest_maps(row["interests"]),
                    ),
                    mapping_id=row["mapping_id"],
                )
                self.contexts[row["mapping_id"]] = ctx
                out[row["mapping_id"]] = ctx
            return out

    def mapping(self, provider: Provider) -> MappingConfig:
        """The deployment's field mapping for a provider (built once per engine)."""
        found = self._mappings.get(provider.id)
        if found is None:
            found = self._mappings[provider.id] = provider.mapping(self.settings)
        return found

    def _limit_spec(self, provider: Provider) -> LimitSpec:
        """The provider's limits: its spec's, as the deployment's Settings narrow them."""
        if self.options.limits is not None:
            return self.options.limits
        return LimitSpec.from_limits(provider.limits(self.settings))

    def _binding(self, provider: Provider, row: Any) -> Binding | None:
        spec = self._limit_spec(provider)
        if not spec.metered:
            return None
        return bind(
            spec,
            provider=provider.id,
            account=row["account_key"],
            application=APPLICATION,
            tenant=str(row["id"]),
        )

    def _client_for(
        self, provider: Provider, row: Any, binding: Binding | None = None
    ) -> ProviderClient:
        spec = self._limit_spec(provider)
        cap = min(spec.concurrency or self.options.max_concurrency, self.options.max_concurrency)
        windows = [r.requests for r in spec.rates if r.scope is Scope.application]
        if windows and min(windows) < cap:
            self._ahead_slots[row["account_key"]] = min(windows)
        # A provider that limits by rate alone: the cap is ours, and bulk requests would fill
        # it waiting for their tokens; one slot stays a live request's (its wait is then the
        # rate's, not a bulk request's answer). A declared concurrency is the provider's own,
        # all of it bulk work's too.
        reserve = 1 if spec.concurrency is None and spec.metered and cap > 1 else 0
        gate = GateLimiter(
            self.slots.gate(row["account_key"], cap=cap, live_reserve=reserve),
            margin=self.options.timeout + 2.0,
            first=provider.spec.limits.first_ops,
        )
        credentials = decrypt_credentials(self.settings, row["credentials"])
        # The factory applies the provider's host rule outside its sandbox (DESIGN §8).
        return provider.client(
            ClientConfig(
                transport=self.transport,
                api_endpoint=row["api_endpoint"],
                credentials=credentials,
                timeout=self.options.timeout,
                sandbox=provider.connect.sandbox(self.settings),
                dc=row["dc"],
                limiter=ConnectionLimits(
                    self.limits if binding is not None else None,
                    binding,
                    gate=gate.slot,
                    background=provider.spec.limits.background_ops,
                ),
                # Expiring tokens are renewed by one process per connection (DESIGN §14.4).
                tokens=token_source(
                    self._sessions, self.settings, provider, row["id"], credentials
                ),
            )
        )

    # --- a group: load, plan, send, complete ------------------------------------------------

    async def _process(self, ctx: ConnectionContext, rows: list[Claimed], priority: int) -> None:
        _priority.set(priority)  # the gate lets live groups' requests go first
        # Rows not completed yet. A group completes in steps as its sends finish: a worker
        # killed mid-group re-sends only the rows of its last unfinished step, not the group.
        remaining = {r.email_key: r for r in rows}

        async def complete(outcomes: dict[str, Outcome]) -> None:
            done = [remaining[k] for k in outcomes if k in remaining]
            if not done:
                return
            await self._complete(ctx, done, outcomes)
            for r in done:
                remaining.pop(r.email_key, None)
            self._unhold(done)
            self._count(ctx, outcomes)

        try:
            outcomes = await self._sync_group(ctx, rows, complete)
            rest = {k: o for k, o in outcomes.items() if k in remaining}
            if remaining:
                # Rows without an outcome (none planned for them) are released untouched.
                await self._complete(ctx, list(remaining.values()), rest)
                self._count(ctx, rest)
                remaining.clear()
        except Exception as exc:
            log.exception("sync.group_failed", connection=str(ctx.id), error=repr(exc))
            await self._let_go(list(remaining.values()))
            remaining.clear()
        finally:
            self._unhold(remaining.values())
            self._outstanding[ctx.account_key] -= len(rows)
            if self._outstanding[ctx.account_key] <= 0:
                del self._outstanding[ctx.account_key]
            if priority == PRIORITY_LIVE:
                self._outstanding_live[ctx.account_key] -= len(rows)
                if self._outstanding_live[ctx.account_key] <= 0:
                    del self._outstanding_live[ctx.account_key]

    async def _complete(
        self, ctx: ConnectionContext, rows: list[Claimed], outcomes: dict[str, Outcome]
    ) -> None:
        async with self.db.begin() as conn:
            # A lost acknowledgement only means one idempotent resend (DESIGN §13).
            await conn.execute(text("SET LOCAL synchronous_commit = off"))
            await QueueRepository(conn).complete(
                me=self.me,
                connection_id=ctx.id,
                mapping_id=ctx.mapping_key,
                owner_id=ctx.owner_id,
                claimed=rows,
                outcomes=outcomes,
                max_attempts=self.options.max_attempts,
                park_base=self.options.parked_retry,
                park_max=self.options.parked_retry_max,
            )
            if ctx.last_error:
                await conn.execute(
                    text(
                        "UPDATE connections SET last_error = :e, last_error_at = now()"
                        " WHERE id = :id"
                    ),
                    {"e": ctx.last_error, "id": ctx.id},
                )
                ctx.last_error = None

    async def _let_go(self, rows: Sequence[Claimed]) -> None:
        """Release rows untouched; when that fails too, the lease keeper retries it soon."""
        self._unhold(rows)
        try:
            async with self.db.begin() as conn:
                await QueueRepository(conn).release(me=self.me, rows=rows)
        except Exception as exc:
            log.warning("sync.release_failed", rows=len(rows), error=repr(exc))
            self._orphans.update(((r.connection_id, r.mapping_id, r.email_key), r) for r in rows)
            self._orphaned.set()

    def _unhold(self, rows: Iterable[Claimed]) -> None:
        for r in rows:
            key = (r.connection_id, r.mapping_id, r.email_key)
            self._held[key] -= 1
            if self._held[key] <= 0:
                del self._held[key]

    async def _release_orphans(self) -> None:
        orphans = [r for k, r in self._orphans.items() if k not in self._held]
        async with self.db.begin() as conn:
            await QueueRepository(conn).release(me=self.me, rows=orphans)
        for r in orphans:
            self._orphans.pop((r.connection_id, r.mapping_id, r.email_key), None)
        log.info("sync.orphans_released", rows=len(orphans))
        self._wake.set()  # claim them again now

    @staticmethod
    def _count(ctx: ConnectionContext, outcomes: dict[str, Outcome]) -> None:
        for o in outcomes.values():
            metrics.SENDS.labels(ctx.provider.id, "sync", o.kind).inc()

    async def _sync_group(
        self,
        ctx: ConnectionContext,
        rows: list[Claimed],
        step: Callable[[dict[str, Outcome]], Awaitable[None]] | None = None,
    ) -> dict[str, Outcome]:
        keys = [r.email_key for r in rows]
        hints = [r.contact_id for r in rows if r.contact_id]
        async with self.db.connect() as conn:
            data = await QueueRepository(conn).load(
                connection_id=ctx.id,
                mapping_id=ctx.mapping_key,
                owner_id=ctx.owner_id,
                keys=keys,
                contact_ids=hints,
                hashes=[tombstone_key(k) for k in keys],
            )
        plans = self._plan(rows, data, ctx.mapping)
        await self._keep_shared_tags(ctx, plans, data)
        await self._record_intent(ctx, rows, plans)
        attempts = {r.email_key: r.attempts for r in rows}
        return await self._execute(ctx, plans, attempts, step)

    async def _keep_shared_tags(
        self, ctx: ConnectionContext, plans: list[Plan], data: GroupData
    ) -> None:
        """Where tags are the person's, a plan that would remove some of ours keeps those
        another mapping of the connection still pushes for the person (`shared_tags`)."""
        removing = [p for p in plans if set(p.owned_tags) - set(p.tags)]
        if not removing or not ctx.provider.spec.capabilities.shared_tags:
            return
        async with self.db.connect() as conn:
            rules = await QueueRepository(conn).other_rules(
                connection_id=ctx.id, mapping_id=ctx.mapping_key
            )
        if not rules:
            return
        others = [dataclasses.replace(ctx.mapping, rule=AudienceRule.of(r)) for r in rules]
        for plan in removing:
            # A rule's leave plans without the contact: the person is the one still held here.
            contact = plan.contact or data.contacts_by_key.get(plan.key)
            plan.kept_tags = shared_tags(contact, others)

    async def _record_intent(
        self, ctx: ConnectionContext, rows: list[Claimed], plans: list[Plan]
    ) -> None:
        """Before any call, record what a crash after the provider's answer must not lose:
        the tags the sends are about to push that are not yet known to be ours, and the keys
        whose send may create the person (the mirror learns of them only at completion)."""
        intents = {
            plan.key: plan.tags
            for plan in plans
            if plan.action in (Action.upsert, Action.update, Action.tags, Action.move)
            and set(plan.tags) - set(plan.owned_tags)
        }
        already = {r.email_key for r in rows if r.create_intent}
        creating = [p.key for p in plans if creates(p) and p.key not in already]
        if intents or creating:
            async with self.db.begin() as conn:
                await QueueRepository(conn).record_intent(
                    me=self.me,
                    connection_id=ctx.id,
                    mapping_id=ctx.mapping_key,
                    intents=intents,
                    creates=creating,
                )

    def _plan(self, rows: list[Claimed], data: GroupData, cfg: MappingConfig) -> list[Plan]:
        claimed = {r.email_key: r for r in rows}
        intent = {r.email_key: r.tag_intent for r in rows}
        may_exist = {r.email_key for r in rows if r.create_intent}
        plans: list[Plan] = []
        handled: set[str] = set()
        for row in rows:
            # Email changed A→B, both keys claimed together: move the member, keep its history.
            if row.forget or row.email_key in data.contacts_by_key or row.contact_id is None:
                continue
            contact = data.contacts_by_id.get(row.contact_id)
            new_key = contact["email_key"] if contact is not None else None
            if contact is None or not new_key or new_key == row.email_key:
                continue
            if not cfg.syncs(contact):
                # A kind SYNC_KINDS or the mapping's rule leaves out: the old key is archived,
                # not moved.
                continue
            target = claimed.get(new_key)
            if target is None or target.forget or new_key in handled:
                continue
            old_mirror = data.mirrors.get(row.email_key)
            if (
                is_movable(old_mirror)
                and not is_movable(data.mirrors.get(new_key))
                and tombstone_key(new_key) not in data.tombstones
                and old_mirror is not None
            ):
                plans.append(
                    plan_move(
                        row.email_key,
                        new_key,
                        contact=contact,
                        old_mirror=old_mirror,
                        cfg=cfg,
                        intent=(*row.tag_intent, *target.tag_intent),
                    )
                )
                handled |= {row.email_key, new_key}
        for row in rows:
            if row.email_key in handled:
                continue
            plans.append(
                plan_key(
                    row.email_key,
                    contact=data.contacts_by_key.get(row.email_key),
                    mirror=data.mirrors.get(row.email_key),
                    tombstoned=tombstone_key(row.email_key) in data.tombstones,
                    forget=row.forget,
                    cfg=cfg,
                    intent=intent[row.email_key],
                    may_exist=row.email_key in may_exist,
                )
            )
        return plans

    async def _execute(
        self,
        ctx: ConnectionContext,
        plans: list[Plan],
        attempts: dict[str, int],
        step: Callable[[dict[str, Outcome]], Awaitable[None]] | None = None,
    ) -> dict[str, Outcome]:
        """Send the plans; outcomes not yet handed to `step` (a partial completion, called
        every COMPLETE_STEP outcomes) are returned."""
        upserts = [p for p in plans if p.action is Action.upsert]
        singles = [p for p in plans if p.action is not Action.upsert]
        jobs: list[tuple[list[Plan], Runner]] = []
        if len(upserts) >= self.options.batch_threshold:
            size = self.options.batch_size
            batch = functools.partial(self._batch, attempts=attempts)
            jobs += [(upserts[i : i + size], batch) for i in range(0, len(upserts), size)]
        else:
            singles = upserts + singles
        jobs += [([plan], self._single) for plan in singles]
        jobs.reverse()  # pop() from the end keeps the planned order
        outcomes: dict[str, Outcome] = {}

        async def lane() -> None:
            # A few lanes per group, not a task per member: waiters at the gate stay few.
            while jobs:
                group, run = jobs.pop()
                outcomes.update(await self._guard(ctx, group, attempts, run))
                if step is not None and len(outcomes) >= COMPLETE_STEP and jobs:
                    ready = dict(outcomes)  # taken and cleared with no await between
                    outcomes.clear()
                    await step(ready)

        lanes = min(len(jobs), self.options.max_concurrency)
        await asyncio.gather(*(lane() for _ in range(lanes)))
        return outcomes

    async def _guard(
        self,
        ctx: ConnectionContext,
        plans: list[Plan],
        attempts: dict[str, int],
        run: Callable[[ConnectionContext, list[Plan]], Awaitable[dict[str, Outcome]]],
    ) -> dict[str, Outcome]:
        """Run a job; turn the provider's failures into outcomes for all of its keys."""
        try:
            return await run(ctx, plans)
        except Halt:
            return {k: Outcome(k, "release") for p in plans for k in _keys(p)}
        except LimitPaused as exc:  # a spent quota: the rows wait for its reset, unburnt
            delay = exc.retry_after or 60.0
            ctx.last_error = exc.message[:500]
            if not exc.message.startswith(BULK_SHARE_SPENT):
                # The whole day's quota (not only bulk work's share): nothing goes until it
                # resets, so every connection of the provider says so (the calm notice).
                await self._pause_for_quota(ctx, exc.until, exc.message)
            return {
                k: Outcome(k, "defer", delay=delay, error=exc.message)
                for p in plans
                for k in _keys(p)
            }
        except ThrottledError as exc:
            gate = self.slots.gate(ctx.account_key)
            delay = max(LONE_THROTTLE_DEFER, gate.cooldown_until - time.monotonic())
            return {
                k: Outcome(k, "defer", delay=delay, error=exc.message)
                for p in plans
                for k in _keys(p)
            }
        except (AuthError, AudienceMissing) as exc:
            return {k: Outcome(k, "release", error=exc.message) for p in plans for k in _keys(p)}
        except TransientError as exc:
            return self._retry(ctx, plans, attempts, exc.message)
        except PermanentError as exc:
            return {p.key: self._rejected(p, exc) for p in plans} | {
                p.move_from: Outcome(p.move_from, "done") for p in plans if p.move_from
            }
        except Exception as exc:  # a bug must not lose the row: it retries and parks
            log.exception("sync.send_crashed", connection=str(ctx.id))
            return self._retry(ctx, plans, attempts, f"internal error: {type(exc).__name__}")

    def _retry(
        self, ctx: ConnectionContext, plans: list[Plan], attempts: dict[str, int], message: str
    ) -> dict[str, Outcome]:
        out = {}
        # One delay for a whole failed batch: rows jittered apart come due a few at a time and
        # would be claimed in groups too small for a batch (a backlog gone one by one).
        attempt = max((attempts.get(k, 0) for p in plans for k in _keys(p)), default=0) + 1
        delay = self.options.backoff.delay(attempt)
        for p in plans:
            for k in _keys(p):
                out[k] = Outcome(k, "retry", delay=delay, error=message[:500])
        ctx.last_error = message[:500]
        return out

    # --- calls ------------------------------------------------------------------------------

    async def _call(self, ctx: ConnectionContext, fn: Callable[[], Awaitable[T]]) -> T:
        """One provider request: lease-safe, failures counted (the client's limiter holds the
        account's slot while the request is on the wire)."""
        if ctx.halted:
            raise Halt(ctx.halted)
        gate = self.slots.gate(ctx.account_key)
        margin = self.options.timeout + 2.0
        try:
            return await self._send(ctx, gate, fn, margin)
        except SlotsUnavailable:
            self._starved_until[ctx.account_key] = time.monotonic() + STARVE_SECONDS
            raise Halt("another worker holds every slot of this account") from None

    async def _send(
        self,
        ctx: ConnectionContext,
        gate: AccountGate,
        fn: Callable[[], Awaitable[T]],
        margin: float,
    ) -> T:
        if ctx.halted:
            raise Halt(ctx.halted)
        if time.monotonic() + margin > self._row_lease_deadline:
            # Our row leases might lapse mid-request: another worker could then send a newer
            # state before ours lands. Give the rows back instead.
            raise Halt("row lease at risk")
        lone = 0
        while True:
            try:
                result = await fn()
                break
            except LimitPaused:
                raise  # our own limiter's pause (a quota): the account is not over its limit
            except QuotaExhausted as exc:
                raise await self._quota_spent(ctx, exc) from exc
            except ThrottledError as exc:
                pause = gate.throttled(exc.retry_after)
                if pause > 0:
                    await self._cooldown(ctx, pause)
                    raise
                lone += 1
                if lone > LONE_THROTTLE_RETRIES:
                    raise
            except TransientError as exc:
                ctx.failure_streak += 1
                if ctx.failure_streak >= self.options.pause_after_failures and not ctx.halted:
                    ctx.halted = "paused"
                    await self._set_status(
                        ctx.id, "paused", REASON_UNAVAILABLE, exc.message, probe=True
                    )
                raise
            except AuthError as exc:
                ctx.halted = "error"
                await self._set_status(ctx.id, "error", REASON_CREDENTIALS, exc.message)
                raise
            except AudienceMissing as exc:
                ctx.halted = "error"
                await self._set_status(ctx.id, "error", REASON_AUDIENCE, exc.message)
                raise
            # A lone throttle (no burst, no Retry-After) costs this request a short, jittered
            # wait and a retry; nobody else waits.
            await asyncio.sleep(random.uniform(0.05, 0.25))
            if ctx.halted:
                raise Halt(ctx.halted)
            if time.monotonic() + margin > self._row_lease_deadline:
                raise Halt("row lease at risk")
        ctx.failure_streak = 0
        gate.succeeded()
        return result

    async def _single(self, ctx: ConnectionContext, plans: list[Plan]) -> dict[str, Outcome]:
        (plan,) = plans
        client, audience, ref = ctx.client, ctx.audience_id, _ref(plan)
        match plan.action:
            case Action.noop:
                return {plan.key: self._noop(ctx, plan)}
            case Action.upsert:
                assert plan.payload is not None
                payload = plan.payload
                state = await self._call(
                    ctx, lambda: client.upsert_member(audience, payload, remote=ref)
                )
                return {plan.key: await self._after_write(ctx, plan, state)}
            case Action.update:
                assert plan.payload is not None
                payload = plan.payload
                try:
                    state = await self._call(
                        ctx, lambda: client.update_member(audience, payload, remote=ref)
                    )
                except PermanentError as exc:
                    if exc.kind is ErrorKind.not_found:  # gone at the provider: forget the mirror
                        return {
                            plan.key: Outcome(plan.key, "done", mirror_delete=True, synced=True)
                        }
                    raise
                return {plan.key: await self._after_write(ctx, plan, state)}
            case Action.tags:
                return {plan.key: await self._tags_only(ctx, plan)}
            case Action.move:
                return await self._move(ctx, plan)
            case Action.archive:
                return {plan.key: await self._archive(ctx, plan)}
            case Action.forget:
                return {plan.key: await self._forget(ctx, plan)}
        raise AssertionError(plan.action)

    async def _batch(
        self, ctx: ConnectionContext, plans: list[Plan], *, attempts: dict[str, int]
    ) -> dict[str, Outcome]:
        payloads = [p.payload for p in plans if p.payload is not None]
        results = await self._call(ctx, lambda: ctx.client.batch_upsert(ctx.audience_id, payloads))
        follow: list[Awaitable[Outcome]] = []
        out: dict[str, Outcome] = {}
        for plan, result in zip(plans, results, strict=True):
            if result.error is not None:
                out[plan.key] = self._rejected(plan, result.error)
            elif result.state is None:
                continue
            elif _tag_change(plan, result.state) is None:
                # Nothing more to send (the body carried the tags): no task for it. A batch
                # of new people made 200 tasks that never awaited anything, on the loop that
                # reads the other batches' answers.
                out[plan.key] = self._written(plan, result.state, dict(result.state.refs))
            else:
                follow.append(self._after_write_guarded(ctx, plan, result.state, attempts))
        for outcome in await asyncio.gather(*follow):
            out[outcome.key] = outcome
        return out

    async def _after_write_guarded(
        self, ctx: ConnectionContext, plan: Plan, state: RemoteMember, attempts: dict[str, int]
    ) -> Outcome:
        # In a batch, one member's failing tag call must not fail its neighbours.
        result = await self._guard(
            ctx, [plan], attempts, lambda c, ps: self._one(self._after_write(c, ps[0], state))
        )
        return result[plan.key]

    @staticmethod
    async def _one(coro: Awaitable[Outcome]) -> dict[str, Outcome]:
        outcome = await coro
        return {outcome.key: outcome}

    async def _after_write(
        self, ctx: ConnectionContext, plan: Plan, state: RemoteMember
    ) -> Outcome:
        """Tags for members that existed (the body's tags apply on create only), then done."""
        change = _tag_change(plan, state)
        refs: dict[str, Any] = dict(state.refs)
        if change is not None:
            add, remove = change
            email = state.email_address or plan.target_email or plan.key
            known = _ref(plan)
            ref = RemoteRef(
                email=email,
                remote_id=state.remote_id,
                refs={**(known.refs if known else {}), **state.refs},
            )
            tag_refs = await self._call(
                ctx,
                lambda: ctx.client.update_tags(
                    ctx.audience_id, email, add=add, remove=remove, remote=ref
                ),
            )
            refs.update(tag_refs or {})
        return self._written(plan, state, refs)

    def _written(self, plan: Plan, state: RemoteMember, refs: dict[str, Any]) -> Outcome:
        """A write that needs nothing more: done, the mirror as the provider answered."""
        mirror = self._mirror(plan, state)
        mirror["remote_refs"] = refs
        return Outcome(plan.key, "done", mirror=mirror, synced=True)

    async def _tags_only(self, ctx: ConnectionContext, plan: Plan) -> Outcome:
        add, remove = tag_diff(plan.tags, plan.owned_tags, None, plan.kept_tags)
        email = plan.target_email or plan.key
        try:
            tag_refs = await self._call(
                ctx,
                lambda: ctx.client.update_tags(
                    ctx.audience_id, email, add=add, remove=remove, remote=_ref(plan)
                ),
            )
        except PermanentError as exc:
            if exc.kind is ErrorKind.not_found:
                # The member vanished at the provider: drop the mirror and plan afresh now.
                return Outcome(plan.key, "defer", delay=0.0, mirror_delete=True)
            raise
        assert plan.mirror is not None
        assert plan.contact is not None
        mirror = {
            "contact_id": plan.contact["id"],
            "remote_id": plan.mirror["remote_id"],
            "pushed_email": plan.contact["email"],
            "pushed_digest": plan.digest,
            "pushed_tags": plan.tags,
            "remote_status": plan.mirror["remote_status"],
            "remote_refs": dict(tag_refs or {}),
        }
        return Outcome(plan.key, "done", mirror=mirror, synced=True)

    async def _move(self, ctx: ConnectionContext, plan: Plan) -> dict[str, Outcome]:
        assert plan.payload is not None
        # A move retried after a refused collision has no old key: the mirror row is the new
        # key's already (the record still holds its old address, `target_email`).
        old_key = plan.move_from or plan.key
        old_email, payload = plan.target_email or old_key, plan.payload
        client, audience, ref = ctx.client, ctx.audience_id, _ref(plan)
        try:
            state = await self._call(
                ctx, lambda: client.move_member(audience, old_email, payload, remote=ref)
            )
        except PermanentError as exc:
            if exc.kind is ErrorKind.collision:
                return await self._address_refused(ctx, plan, old_email, exc)
            if exc.kind not in (ErrorKind.member_exists, ErrorKind.not_found):
                raise
            # The new address is already a member (or the old one is gone): archive the old
            # one and upsert the new address as a member of its own.
            old_outcome = Outcome(old_key, "done", synced=True)
            if exc.kind is ErrorKind.member_exists:
                archived = await self._call(
                    ctx, lambda: client.archive_member(audience, old_email, remote=ref)
                )
                previous = plan.mirror["remote_status"] if plan.mirror else None
                old_outcome.mirror = {
                    "contact_id": None,
                    "remote_status": "archived" if archived else previous,
                }
            else:
                old_outcome.mirror_delete = True
            fresh = Plan(
                plan.key,
                Action.upsert,
                contact=plan.contact,
                mirror=None,
                payload=payload,
                digest=plan.digest,
                tags=plan.tags,
                target_email=payload.email_address,
            )
            state = await self._call(ctx, lambda: client.upsert_member(audience, payload))
            return {old_key: old_outcome, plan.key: await self._after_write(ctx, fresh, state)}
        new_outcome = await self._after_write(ctx, plan, state)
        if old_key == plan.key:
            return {plan.key: new_outcome}
        return {
            old_key: Outcome(old_key, "done", mirror_delete=True, synced=True),
            plan.key: new_outcome,
        }

    async def _address_refused(
        self, ctx: ConnectionContext, plan: Plan, held: str, exc: PermanentError
    ) -> dict[str, Outcome]:
        """The provider would merge the person into the one holding the new address: the
        address change stays refused and shown (`rejected`, the collision's reason), and the
        rest of the change goes to the person's record by its id under the address it holds.
        The new key's mirror row keeps that record (pushed_email = `held`), so a delete,
        a forget or the next change (which tries the move again) addresses it."""
        assert plan.payload is not None
        payload = dataclasses.replace(plan.payload, email_address=held)
        ref = _ref(plan)
        try:
            state = await self._call(
                ctx, lambda: ctx.client.update_member(ctx.audience_id, payload, remote=ref)
            )
        except PermanentError as blocked:
            if blocked.kind is not ErrorKind.compliance:
                raise
            # A re-opt-in the person's own opt-out there refuses: consent follows it, and the
            # row stays the collision's (the record still holds `held`, unsubscribed), so the
            # planner keeps addressing that record and never the other person.
            outcome = self._rejected(plan, blocked)
            assert outcome.mirror is not None
            outcome.mirror.update(
                remote_status="unsubscribed",
                pushed_email=held,
                error_kind=exc.kind.value,
                error=f"{exc.message}; {blocked.message}"[:1000],
            )
        else:
            outcome = await self._after_write(
                ctx, dataclasses.replace(plan, target_email=held), state
            )
            assert outcome.mirror is not None
            outcome.mirror.update(
                pushed_email=held, error_kind=exc.kind.value, error=exc.message[:1000]
            )
        out = {plan.key: outcome}
        if plan.move_from and plan.move_from != plan.key:
            out[plan.move_from] = Outcome(plan.move_from, "done", mirror_delete=True, synced=True)
        return out

    async def _archive(self, ctx: ConnectionContext, plan: Plan) -> Outcome:
        email = plan.target_email or plan.key
        ref = _ref(plan)
        archived = await self._call(
            ctx, lambda: ctx.client.archive_member(ctx.audience_id, email, remote=ref)
        )
        if not archived and plan.mirror is None:
            # A create cut short that never happened: there was nobody to archive.
            return Outcome(plan.key, "done", mirror_delete=True, synced=True)
        status = "archived" if archived else (plan.mirror or {}).get("remote_status")
        return Outcome(
            plan.key, "done", mirror={"contact_id": None, "remote_status": status}, synced=True
        )

    async def _forget(self, ctx: ConnectionContext, plan: Plan) -> Outcome:
        ref = _ref(plan)
        await self._call(
            ctx, lambda: ctx.client.forget_member(ctx.audience_id, plan.key, remote=ref)
        )
        outcome = Outcome(plan.key, "done", tombstone=tombstone_key(plan.key), synced=True)
        outcome.mirror_delete = True
        return outcome

    def _noop(self, ctx: ConnectionContext, plan: Plan) -> Outcome:
        match plan.mirror_op:
            case MirrorOp.delete:
                return Outcome(plan.key, "done", mirror_delete=True)
            case MirrorOp.forgotten:
                assert plan.contact is not None
                name = ctx.provider.spec.display_name
                return Outcome(
                    plan.key,
                    "done",
                    mirror={
                        "contact_id": plan.contact["id"],
                        "remote_status": "forgotten",
                        "error_kind": "forgotten",
                        "error": f"This address was permanently deleted at {name}; the person"
                        f" must sign up again through a {name} form.",
                    },
                )
        return Outcome(plan.key, "done")

    def _mirror(self, plan: Plan, state: RemoteMember) -> dict[str, Any]:
        contact = plan.contact or {}
        return {
            "contact_id": contact.get("id"),
            "remote_id": state.remote_id,
            "pushed_email": contact.get("email") or state.email_address,
            "pushed_digest": plan.digest,
            "pushed_tags": plan.tags,
            "remote_status": state.status,
            "remote_changed_at": state.last_changed,
            "error_kind": None,
            "error": None,
        }

    def _rejected(self, plan: Plan, exc: PermanentError) -> Outcome:
        contact = plan.contact or {}
        outcome = Outcome(
            plan.key,
            "done",
            mirror={
                "contact_id": contact.get("id"),
                "remote_status": "rejected",
                "error_kind": exc.kind.value,
                "error": exc.message[:1000],
            },
        )
        if exc.kind in (ErrorKind.compliance, ErrorKind.forgotten) and contact:
            # The provider's refusal is the person's decision: local consent follows it.
            outcome.consent_off = exc.kind.value
            outcome.contact_id = contact.get("id")
        if exc.kind is ErrorKind.forgotten:
            outcome.tombstone = tombstone_key(plan.key)
        return outcome

    # --- connection status ------------------------------------------------------------------

    async def _set_status(
        self,
        connection_id: uuid.UUID,
        status: str,
        reason: str,
        error: str,
        *,
        probe: bool = False,
    ) -> None:
        log.warning(
            "sync.connection_status", connection=str(connection_id), status=status, error=error
        )
        async with self.db.begin() as conn:
            await conn.execute(
                text(
                    """
                    UPDATE connections SET status = :status, status_reason = :reason,
                        status_since = now(), last_error = :error, last_error_at = now(),
                        probe_attempts = 0,
                        next_probe_at = CASE WHEN :probe THEN now() + interval '1 second' END
                    WHERE id = :id AND status = 'active'
                    """
                ),
                {
                    "status": status,
                    "reason": reason,
                    "error": error[:500],
                    "probe": probe,
                    "id": connection_id,
                },
            )
        if status == "paused":
            self._probe_soon.set()  # the maintenance loop learns when its first probe is due

    async def _quota_spent(self, ctx: ConnectionContext, exc: QuotaExhausted) -> LimitPaused:
        """The provider says the daily quota is spent: pause its whole scope (every tenant)
        until 00:00 UTC; the rows wait for it, unburnt."""
        until = next_utc_midnight()
        notice = quota_notice(ctx.provider.spec.display_name)
        log.warning("sync.quota_spent", connection=str(ctx.id), until=until.isoformat())
        if ctx.binding is not None:
            await self.limits.pause(ctx.binding, until=until, reason=notice)
        await self._pause_for_quota(ctx, until, exc.message)
        return LimitPaused(notice, until=until, scope="quota")

    async def _pause_for_quota(self, ctx: ConnectionContext, until: datetime, error: str) -> None:
        """Every connection of the provider shares the application's quota: each is paused
        with the notice, and probed at `until` (its ping resumes it; a refusal keeps it
        paused)."""
        async with self.db.begin() as conn:
            paused = await conn.execute(
                text(
                    """
                    UPDATE connections SET status = 'paused', status_reason = :reason,
                        status_since = now(), last_error = :error, last_error_at = now(),
                        probe_attempts = 0, next_probe_at = :until
                    WHERE provider = :provider AND status = 'active' RETURNING id
                    """
                ),
                {
                    "reason": REASON_QUOTA,
                    "error": error[:500],
                    "until": until,
                    "provider": ctx.provider.id,
                },
            )
            paused_ids = {conn_id for (conn_id,) in paused.all()}
            # Contexts are per audience mapping: halt every mapping of those connections.
            for other in self.contexts.values():
                if other.id in paused_ids:
                    other.halted = "paused"
        ctx.halted = ctx.halted or "paused"
        self._probe_soon.set()

    async def _cooldown(self, ctx: ConnectionContext, seconds: float) -> None:
        # Other workers skip the connection while it cools down (claim filters on it).
        async with self.db.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE connections SET cooldown_until = GREATEST(COALESCE(cooldown_until,"
                    " now()), now() + make_interval(secs => :s)) WHERE id = :id"
                ),
                {"s": seconds, "id": ctx.id},
            )

    # --- background loops --------------------------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN sync_queue on a dedicated connection; reconnect when it drops."""
        url = to_libpq_url(self.db.url.render_as_string(hide_password=False))
        delay = 0.5
        while not self._bg_stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
                delay = 0.5
                self._wake.set()  # anything committed while we were away
                stop_wait = asyncio.create_task(self._bg_stop.wait())
                lost_wait = asyncio.create_task(lost.wait())
                await asyncio.wait({stop_wait, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                lost_wait.cancel()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("sync.listen_failed", error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._bg_stop.wait(), timeout=delay)
                delay = min(delay * 2, 10.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)

    async def _lease_keeper(self) -> None:
        """Extend the leases of the rows this worker's groups still work on; give orphans back.

        Renewing every row leased by this worker would keep an orphan (a row whose completion
        failed) leased for as long as the worker stays busy: nobody sends it meanwhile.
        """
        every = max(1.0, self.options.lease_seconds / 3)
        last_renewal = time.monotonic()
        while not self._bg_stop.is_set():
            # Orphans are retried every second: sending resumes as soon as the database is back.
            wait = 1.0 if self._orphans else max(0.0, last_renewal + every - time.monotonic())
            self._orphaned.clear()
            stop = asyncio.ensure_future(self._bg_stop.wait())
            orphaned = asyncio.ensure_future(self._orphaned.wait())
            await asyncio.wait({stop, orphaned}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            orphaned.cancel()
            if self._orphans:
                try:
                    await self._release_orphans()
                except Exception as exc:
                    log.warning("sync.release_failed", rows=len(self._orphans), error=repr(exc))
            if time.monotonic() - last_renewal < every:
                continue
            last_renewal = time.monotonic()
            held = list(self._held)
            if not held:
                continue
            try:
                start = time.monotonic()
                async with self.db.begin() as conn:
                    await QueueRepository(conn).renew(
                        me=self.me, held=held, lease_seconds=self.options.lease_seconds
                    )
                self._row_lease_deadline = start + self.options.lease_seconds
            except Exception as exc:
                log.warning("sync.lease_renew_failed", error=repr(exc))

    async def _maintenance(self) -> None:
        """Probe paused connections, reap dead local workers, run periodic jobs."""
        now = time.monotonic()
        last_reap = last_rearm = now
        probe_at = now  # the first pass looks for paused connections at once
        rearm_every = min(5.0, self.options.parked_retry / 2)
        while not self._bg_stop.is_set():
            # Sleep until the next thing is due (a probe, the reap, the re-arm, a periodic
            # job), at least a tick and at most a sweep; a pause of our own wakes it early.
            now = time.monotonic()
            due = [probe_at, last_reap + 5.0, last_rearm + rearm_every]
            due += [
                self._last_periodic.get(i, 0.0) + every
                for i, (every, _) in enumerate(self.periodic)
            ]
            wait = min(max(MAINTENANCE_TICK, min(due) - now), PROBE_SWEEP_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._probe_soon.wait(), timeout=wait)
            if self._bg_stop.is_set():
                return
            try:
                if self._probe_soon.is_set() or time.monotonic() >= probe_at:
                    self._probe_soon.clear()
                    probe_at = time.monotonic() + probe_delay(await self.probe_paused())
                if time.monotonic() - last_reap > 5.0:
                    await self._reap_dead_local()
                    last_reap = time.monotonic()
                if time.monotonic() - last_rearm > rearm_every:
                    await self.rearm_parked()
                    last_rearm = time.monotonic()
                for i, (every, job) in enumerate(self.periodic):
                    if time.monotonic() - self._last_periodic.get(i, 0.0) >= every:
                        self._last_periodic[i] = time.monotonic()
                        await job(self)
            except Exception as exc:
                log.warning("sync.maintenance_failed", error=repr(exc))
                probe_at = min(probe_at, time.monotonic() + MAINTENANCE_TICK)

    async def rearm_parked(self) -> int:
        """Re-arm parked rows whose slow-schedule time has come (no operator needed)."""
        async with self.db.begin() as conn:
            n = await QueueRepository(conn).rearm_parked()
        if n:
            metrics.PARKED_REARMED.inc(n)
            log.info("sync.parked_rearmed", rows=n)
        return n

    async def _reap_dead_local(self) -> None:
        """Free leases of workers that ran on this host and are gone (SIGKILL, OOM)."""
        host = self.me.rsplit(":", 2)[0]
        async with self.db.begin() as conn:
            repo = QueueRepository(conn)
            holders = await repo.lease_holders(host + ":")
            dead = [h for h in holders if h != self.me and is_dead_local(h)]
            if dead:
                await repo.reap(dead)
                await conn.execute(
                    text(
                        "UPDATE provider_slots SET holder = NULL, lease_until = NULL"
                        " WHERE holder = ANY(CAST(:dead AS text[]))"
                    ),
                    {"dead": dead},
                )
                log.info("sync.reaped_dead_workers", workers=dead)
                self._wake.set()

    async def probe_paused(self) -> float | None:
        """Ping paused connections that are due; resume them when the provider answers.

        Returns the seconds until the next paused connection's probe is due (None: none is
        paused), so the maintenance loop need not look before then.
        """
        async with self.db.begin() as conn:
            rows = (await conn.execute(_PROBE_DUE)).all()
        due = [(conn_id, attempts) for conn_id, attempts, _ in rows if conn_id is not None]
        later = [float(n) for conn_id, _, n in rows if conn_id is None and n is not None]
        if len(due) >= PROBE_BATCH:
            later.append(0.0)  # more are due than one pass takes
        for conn_id, probe_attempts in due:
            ctx = (await self._contexts([conn_id])).get(conn_id)
            if ctx is None:
                continue
            try:
                await ctx.client.ping()
            except (TransientError, ThrottledError) as exc:
                if isinstance(exc, ThrottledError):
                    await self._resume(conn_id)  # it answers: it is up, only busy
                    continue
                wait = min(self.options.probe_max_interval, 2.0 ** max(0, probe_attempts - 1))
                later.append(wait)
                async with self.db.begin() as conn:
                    await conn.execute(
                        text(
                            "UPDATE connections SET next_probe_at = now() + make_interval(secs"
                            " => :w), last_error = :e, last_error_at = now() WHERE id = :id"
                        ),
                        {"w": wait, "e": exc.message[:500], "id": conn_id},
                    )
            except (AuthError, AudienceMissing) as exc:
                async with self.db.begin() as conn:
                    await conn.execute(
                        text(
                            "UPDATE connections SET status = 'error', status_reason = :r,"
                            " status_since = now(), last_error = :e, last_error_at = now(),"
                            " next_probe_at = NULL WHERE id = :id"
                        ),
                        {
                            "r": REASON_CREDENTIALS
                            if isinstance(exc, AuthError)
                            else REASON_AUDIENCE,
                            "e": exc.message[:500],
                            "id": conn_id,
                        },
                    )
            else:
                await self._resume(conn_id)
        return min(later) if later else None

    async def _resume(self, connection_id: uuid.UUID) -> None:
        """Active again; parked and backed-off rows become due with attempts reset."""
        async with self.db.begin() as conn:
            resumed = (
                await conn.execute(
                    text(
                        """
                        UPDATE connections SET status = 'active', status_reason = NULL,
                            status_since = now(), consecutive_failures = 0, probe_attempts = 0,
                            next_probe_at = NULL, cooldown_until = NULL
                        WHERE id = :id AND status = 'paused' RETURNING id
                        """
                    ),
                    {"id": connection_id},
                )
            ).first()
            if resumed:
                await conn.execute(
                    text(
                        """
                        UPDATE sync_queue SET state = 'ready', attempts = 0,
                            available_at = now()
                        WHERE connection_id = :id AND (state = 'parked' OR attempts > 0)
                        """
                    ),
                    {"id": connection_id},
                )
                await conn.execute(text("SELECT pg_notify(:ch, '')"), {"ch": NOTIFY_CHANNEL})
        if resumed:
            for ctx in self.contexts.values():
                if ctx.id == connection_id:
                    ctx.halted, ctx.failure_streak = None, 0
            log.info("sync.connection_resumed", connection=str(connection_id))


def _tag_change(plan: Plan, state: RemoteMember) -> tuple[list[str], list[str]] | None:
    """The tags still to add and remove after a write (None: nothing to send)."""
    add, remove = tag_diff(plan.tags, plan.owned_tags, state.tags, plan.kept_tags)
    if (add or remove) and state.status != "archived":
        return add, remove
    return None


def _keys(plan: Plan) -> list[str]:
    return [plan.key, plan.move_from] if plan.move_from else [plan.key]


def _ref(plan: Plan) -> RemoteRef | None:
    """What the mirror knows of the person a plan addresses (None: never pushed). A row with
    refs but no provider id (a bulk import that did not read the ids back) keeps its refs:
    the client finds the person by address and the refs say what is ours."""
    mirror = plan.mirror
    if mirror is None or not (mirror.get("remote_id") or mirror.get("remote_refs")):
        return None
    return RemoteRef(
        email=mirror.get("pushed_email") or plan.target_email or plan.key,
        remote_id=mirror.get("remote_id") or None,
        refs=mirror.get("remote_refs") or {},
        keep_person=plan.keep_person,
        keep_tags=frozenset(plan.kept_tags),
    )
