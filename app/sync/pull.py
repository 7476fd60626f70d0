"""The scheduled pull: webhooks are lossy, so statuses no webhook brought are read back.

Every `SYNC_PULL_INTERVAL_SECONDS` (default 900; 0 turns it off) each active connection lists
the members the provider changed since its last pull (`since_last_changed`, minus an overlap for
clock skew and paging races, sorted by `last_changed`), through the account's request gate like
every other call of the worker, and applies their statuses with the webhook handlers' rules
(app/webhooks/inbound.py): unsubscribed and cleaned for contacts we know, and subscribed for
contacts we know when the mirror did not already say so. No leads are created here.

`last_changed` changes with *any* edit of a member, so it is only an upper bound of when the
status changed: a pull never treats a status the mirror already holds as news (its time stays
the mirror's), which keeps a field edit at Mailchimp from looking like a re-subscribe.

Several workers may run the job: a per-connection advisory lock (held on a connection, not in a
transaction, while HTTP is in flight) lets one pull at a time, and `last_pull_at` moves only
after a complete pull, to the time it started — a failed pull is simply repeated next time.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.config import Settings
from app.db import make_sessionmaker, session_scope
from app.providers import registry
from app.providers.base import (
    InboundEvent,
    InboundKind,
    MemberPage,
    ProviderError,
    RemoteMember,
    ThrottledError,
)
from app.sync.limits import request_priority
from app.sync.models import PRIORITY_BULK
from app.sync.outbox import email_key
from app.sync.slots import AccountGate, SlotsUnavailable
from app.webhooks.handlers import handle
from app.webhooks.inbound import (
    CLEANED,
    SUBSCRIBED,
    UNSUBSCRIBED,
    Inbound,
    InboundApplier,
)
from app.webhooks.repository import InboundRepository

if TYPE_CHECKING:
    from app.sync.engine import ConnectionContext, SyncEngine

log = structlog.get_logger(__name__)

PULL_OVERLAP = timedelta(minutes=2)
PAGE_SIZE = 1000
CHECK_EVERY_MAX = 60.0  # how often a worker looks for due connections (at most)
LOCK_NAMESPACE = 0x5A5C_0002  # pg_advisory_lock(namespace, hashtext(connection id))
PULLED_STATUSES = frozenset({SUBSCRIBED, UNSUBSCRIBED, CLEANED})
SOURCE = "provider"

_DUE = text(
    """
    SELECT id FROM connections
    WHERE provider = ANY(CAST(:providers AS text[])) AND status = 'active'
      AND audience_id IS NOT NULL
      AND (last_pull_at IS NULL OR last_pull_at <= now() - make_interval(secs => :every))
    ORDER BY last_pull_at NULLS FIRST
    LIMIT :limit
    """
)
_ACTIVE_BY_PROVIDER = text(
    "SELECT provider, count(*) FROM connections WHERE status = 'active' GROUP BY provider"
)
# A quota shared by every tenant: the scheduled pulls may spend this share of a day's, each
# quiet pull costing this many requests (Constant Contact: opt-outs, then our list's changes).
PULL_QUOTA_SHARE = 0.1
PULL_REQUESTS = 2
_CONNECTION = text(
    """
    SELECT id, owner_id, status, audience_id, last_pull_at, created_at, now() AS now
    FROM connections WHERE id = :id
    """
)
_KNOWN = text(
    """
    SELECT k.email_key, c.id AS contact_id, c.newsletter_opt_in, c.email_status,
           s.remote_status, s.remote_changed_at, s.remote_id
    FROM unnest(CAST(:keys AS text[])) AS k(email_key)
    LEFT JOIN contacts c ON c.owner_id = :owner AND c.email_key = k.email_key
    LEFT JOIN sync_state s ON s.connection_id = :conn AND s.mapping_id = :mapping
        AND s.email_key = k.email_key
    """
)
# Every audience of the connection is pulled, the default mapping's first.
_MAPPINGS = text(
    """
    SELECT id FROM audience_mappings WHERE connection_id = :id
    ORDER BY id <> connection_id, created_at
    """
)
_PULLED = text(
    """
    UPDATE connections SET last_pull_at = :started
    WHERE id = :id AND (last_pull_at IS NULL OR last_pull_at < :started)
    """
)
_TRY_LOCK = text("SELECT pg_try_advisory_lock(:ns, hashtext(:id))")
_UNLOCK = text("SELECT pg_advisory_unlock(:ns, hashtext(:id))")


@dataclass(slots=True)
class PullResult:
    """What one pull of one connection saw and did."""

    connection_id: uuid.UUID
    members: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


def check_interval(settings: Settings) -> float | None:
    """How often the periodic job runs (None: pulls are off)."""
    every = settings.SYNC_PULL_INTERVAL_SECONDS
    if every <= 0:
        return None
    return float(min(every, CHECK_EVERY_MAX))


async def pull_due(engine: SyncEngine) -> None:
    """The periodic job: pull each active connection whose last pull is an interval old."""
    every = engine.settings.SYNC_PULL_INTERVAL_SECONDS
    if every <= 0:
        return
    due: list[tuple[uuid.UUID, float]] = []
    async with engine.db.connect() as conn:
        counts: dict[str, int] = {
            str(p): int(n) for p, n in (await conn.execute(_ACTIVE_BY_PROVIDER)).all()
        }
        for provider in registry.all_providers():
            interval = pull_interval(
                every, provider.spec.limits.daily_quota_per_application, counts.get(provider.id, 0)
            )
            params = {"every": interval, "limit": 100, "providers": [provider.id]}
            due += [(r, interval) for (r,) in await conn.execute(_DUE, params)]
    for connection_id, interval in due:
        try:
            await pull_connection(engine, connection_id, every=interval)
        except Exception:  # one connection's failure must not starve the others
            log.exception("sync.pull.failed", connection=str(connection_id))


def pull_interval(every: float, daily_quota: int | None, connections: int) -> float:
    """Seconds between two pulls of a connection: SYNC_PULL_INTERVAL_SECONDS, stretched where
    a daily quota is shared by every tenant (Constant Contact) so that all pulls together
    spend at most PULL_QUOTA_SHARE of it (a quiet pull costs PULL_REQUESTS requests)."""
    if not daily_quota or connections <= 0:
        return every
    budget = daily_quota * PULL_QUOTA_SHARE
    return max(every, connections * PULL_REQUESTS * 86_400 / budget)


async def pull_connection(
    engine: SyncEngine, connection_id: uuid.UUID, *, every: float = 0.0
) -> PullResult | None:
    """Pull one connection now (None: skipped — locked elsewhere, not active, not due)."""
    async with engine.db.connect() as lock:
        key = {"ns": LOCK_NAMESPACE, "id": str(connection_id)}
        locked = bool((await lock.execute(_TRY_LOCK, key)).scalar())
        await lock.commit()  # a session-level lock: no transaction stays open meanwhile
        if not locked:
            return None
        # The pull's requests are bulk work for the shared limits: live changes go first.
        priority = request_priority.set(PRIORITY_BULK)
        try:
            return await _pull(engine, connection_id, every)
        finally:
            request_priority.reset(priority)
            await _unlock(lock, key)


async def _unlock(lock: AsyncConnection, key: dict[str, Any]) -> None:
    try:
        await lock.execute(_UNLOCK, key)
        await lock.commit()
    except Exception:
        # A pooled connection must never carry the lock on: drop it (the lock goes with it).
        await lock.invalidate()
        raise


async def _pull(engine: SyncEngine, connection_id: uuid.UUID, every: float) -> PullResult | None:
    async with engine.db.connect() as conn:
        row = (await conn.execute(_CONNECTION, {"id": connection_id})).mappings().first()
    if row is None or row["status"] != "active" or row["audience_id"] is None:
        return None
    last = row["last_pull_at"]
    if every and last is not None and row["now"] - last < timedelta(seconds=every):
        return None  # another worker pulled it meanwhile
    async with engine.db.connect() as conn:
        mapping_ids = [m for (m,) in await conn.execute(_MAPPINGS, {"id": connection_id})]
    started: datetime = row["now"]
    since = ((last or row["created_at"]) - PULL_OVERLAP).replace(microsecond=0)
    result = PullResult(connection_id)
    maker = make_sessionmaker(engine.db)
    for mapping_id in mapping_ids:
        ctx = await engine.connection_context(connection_id, mapping_id)
        if ctx is None:
            return None
        inbound = Inbound(
            connection_id=connection_id,
            mapping_id=mapping_id,
            owner_id=row["owner_id"],
            mapping=ctx.mapping,
            source=SOURCE,
            actor=f"{ctx.provider.id}:pull",
            provider=ctx.provider.id,
            person_id=ctx.provider.person_id,
        )
        gate = engine.slots.gate(ctx.account_key)
        if ctx.provider.spec.capabilities.inbound == "pull" and hasattr(ctx.client, "pull_changes"):
            # No webhooks exist: the pull is the provider's only way back, as neutral events.
            if not await _pull_events(engine, gate, ctx, row, since, result):
                return None
            continue
        offset = 0
        while True:
            page = await _fetch(engine, gate, ctx, since=since, offset=offset)
            if page is None:
                return None  # retried at the next round; last_pull_at stays
            async with session_scope(maker) as session:
                await _apply(session, inbound, page, started, result)
            offset += len(page.members)
            result.members += len(page.members)
            if not page.members or offset >= page.total_items:
                break
    async with engine.db.begin() as conn:
        await conn.execute(_PULLED, {"id": connection_id, "started": started})
    if result.outcomes:
        log.info(
            "sync.pull.done",
            connection=str(connection_id),
            members=result.members,
            **dict(result.outcomes),
        )
    return result


async def _fetch(
    engine: SyncEngine,
    gate: AccountGate,
    ctx: ConnectionContext,
    *,
    since: datetime,
    offset: int,
) -> MemberPage | None:
    """One page, within the account's request slots; None when the provider failed us."""
    try:
        # The client's limiter holds one of the account's slots for the request.
        page = await ctx.client.list_members(
            ctx.audience_id, offset=offset, count=PAGE_SIZE, since_last_changed=since
        )
        gate.succeeded()
        return page
    except ThrottledError as exc:
        gate.throttled(exc.retry_after)
        log.info("sync.pull.throttled", connection=str(ctx.id))
    except ProviderError as exc:
        log.warning("sync.pull.provider_failed", connection=str(ctx.id), error=exc.message)
    except SlotsUnavailable:
        log.info("sync.pull.no_slot", connection=str(ctx.id))
    return None


_PREFERENCES = text(
    """
    SELECT email_key, preferences FROM contacts
    WHERE owner_id = :owner AND email_key = ANY(CAST(:keys AS text[]))
    """
)


async def _apply_interests(
    session: AsyncSession,
    inbound: Inbound,
    page: MemberPage,
    started: datetime,
    result: PullResult,
) -> None:
    """Members whose mapped interests differ from the contact's preferences: the newer side
    wins (InboundApplier.preferences)."""
    cfg = inbound.mapping
    members = [m for m in page.members if m.interests is not None]
    keys = sorted({k for m in members if (k := email_key(m.email_address))})
    if not keys:
        return
    prefs = {
        r["email_key"]: r["preferences"]
        for r in (
            await session.execute(_PREFERENCES, {"keys": keys, "owner": inbound.owner_id})
        ).mappings()
    }
    applier = InboundApplier(session, inbound)
    for member in members:
        key = email_key(member.email_address) or ""
        if key not in prefs or member.interests is None:
            continue
        chosen = cfg.chosen_by_ids(member.interests)
        current = {
            m.name
            for m in cfg.interests
            if m.name.casefold() in {p.casefold() for p in prefs[key] or ()}
        }
        if chosen == current:
            continue
        outcome = await applier.preferences(
            email=member.email_address,
            chosen=chosen,
            at=member.last_changed or started,
            event="pull",
        )
        result.outcomes[f"preferences_{outcome.value}"] += 1


async def _apply(
    session: AsyncSession,
    inbound: Inbound,
    page: MemberPage,
    started: datetime,
    result: PullResult,
) -> None:
    """Apply the statuses of one page that tell the CRM something it does not know."""
    await _apply_moves(session, inbound, page, started, result)
    if inbound.mapping.interests:
        await _apply_interests(session, inbound, page, started, result)
    members = [m for m in page.members if m.status in PULLED_STATUSES]
    keys = sorted({k for m in members if (k := email_key(m.email_address))})
    if not keys:
        return
    known = await _known(session, inbound, keys)
    await _fill_ids(session, inbound, members, known)
    applier = InboundApplier(session, inbound)
    mirrored = await _mirrored_ids(session, inbound, members)
    todo: list[tuple[RemoteMember, str]] = []
    for member in members:
        email: str | None = member.email_address
        info = known.get(email_key(email) or "")
        rid = member.remote_id
        if rid and (
            info is None
            or info["contact_id"] is None
            or (info["remote_id"] and str(info["remote_id"]) != rid)
        ):
            # The address alone misses the person (or names another): by the provider's id,
            # as the webhooks' events (InboundApplier.attributed). Only ids the mirror holds
            # can change the answer; the others keep the address's.
            if rid in mirrored and email:
                email = await applier.attributed(email, rid)
            elif info is not None and info["remote_id"]:
                email = None  # another person than the one the mirror holds there
        if email is not None:
            todo.append((member, email))
    extra = sorted({k for _, e in todo if (k := email_key(e)) and k not in known})
    if extra:
        known.update(await _known(session, inbound, extra))
    for member, email in todo:
        info = known.get(email_key(email) or "")
        if info is None or info["contact_id"] is None:
            continue  # only contacts we know
        at = member.last_changed or started
        if info["remote_status"] == member.status:
            if member.status == SUBSCRIBED:
                continue  # not news; a later edit's last_changed is no re-subscribe
            if not info["newsletter_opt_in"] and (
                member.status != CLEANED or info["email_status"] != "ok"
            ):
                continue  # the CRM already agrees
            at = info["remote_changed_at"] or at
        outcome = await applier.status(email=email, status=member.status, at=at, event="pull")
        result.outcomes[outcome.value] += 1


async def _known(session: AsyncSession, inbound: Inbound, keys: list[str]) -> dict[str, Any]:
    """Contact and mirror facts of each key (the contact's, its row's status and id)."""
    params = {
        "keys": keys,
        "owner": inbound.owner_id,
        "conn": inbound.connection_id,
        "mapping": inbound.mirror_mapping,
    }
    return {r["email_key"]: r for r in (await session.execute(_KNOWN, params)).mappings()}


async def _fill_ids(
    session: AsyncSession,
    inbound: Inbound,
    members: list[RemoteMember],
    known: dict[str, Any],
) -> None:
    """Give mirror rows stored without the provider's id (a bulk import that did not read
    its records back) the id the pull lists for their address.

    Until a row has its id, an event that names the person by id alone (an email change at
    the provider) finds nobody; the pull lists every person the import touched, so this
    closes that window at no request's cost.
    """
    fills: dict[str, str] = {}
    for m in members:
        key = email_key(m.email_address)
        info = known.get(key or "")
        if key and m.remote_id and info is not None and not info["remote_id"]:
            fills[key] = m.remote_id
    if fills:
        params = {
            "conn": inbound.connection_id,
            "mapping": inbound.mirror_mapping,
            "keys": list(fills),
            "rids": list(fills.values()),
        }
        await session.execute(_FILL_IDS, params)


async def _mirrored_ids(
    session: AsyncSession, inbound: Inbound, members: list[RemoteMember]
) -> set[str]:
    """The provider ids of `members` the mirror holds a row for."""
    rids = sorted({m.remote_id for m in members if m.remote_id})
    if not rids:
        return set()
    params = {"conn": inbound.connection_id, "mapping": inbound.mirror_mapping, "rids": rids}
    return {str(r["remote_id"]) for r in (await session.execute(_BY_REMOTE_IDS, params)).mappings()}


# Each row by its full key (no table statistics here: a partial key walks the mapping).
_FILL_IDS = text(
    """
    UPDATE sync_state s SET remote_id = f.rid
    FROM unnest(CAST(:keys AS text[]), CAST(:rids AS text[])) AS f(email_key, rid)
    WHERE s.connection_id = :conn AND s.mapping_id = :mapping AND s.email_key = f.email_key
      AND COALESCE(s.remote_id, '') = ''
    """
)
_BY_REMOTE_IDS = text(
    """
    SELECT remote_id, email_key, pushed_email FROM sync_state
    WHERE connection_id = :conn AND mapping_id = :mapping
      AND remote_id = ANY(CAST(:rids AS text[]))
    """
)


async def _apply_moves(
    session: AsyncSession,
    inbound: Inbound,
    page: MemberPage,
    started: datetime,
    result: PullResult,
) -> None:
    """Members whose provider id our mirror knows under another address: the person changed
    it there and the delivery saying so was lost. The contact follows (as the webhook's
    email change does), so the statuses below find it and our next send keeps the address."""
    by_id = {m.remote_id: m for m in page.members if m.remote_id}
    if not by_id:
        return
    rows = await session.execute(
        _BY_REMOTE_IDS,
        {"conn": inbound.connection_id, "mapping": inbound.mirror_mapping, "rids": list(by_id)},
    )
    applier = InboundApplier(session, inbound)
    for row in rows.mappings():
        member = by_id[row["remote_id"]]
        key = email_key(member.email_address)
        # The address we pushed is not a change at the provider (a refused collision keeps
        # the record's old address on the new key's row).
        if key is None or key in (row["email_key"], email_key(row["pushed_email"])):
            continue
        outcome = await applier.email_change(
            old_email=row["pushed_email"] or row["email_key"],
            new_email=member.email_address,
            at=member.last_changed or started,
            event="pull",
        )
        result.outcomes[f"email_change_{outcome.value}"] += 1


_BY_REMOTE_ID = text(
    """
    SELECT email_key, pushed_email FROM sync_state
    WHERE connection_id = :conn AND mapping_id = :mapping AND remote_id = :rid
    LIMIT 1
    """
)
# Kinds stored and applied; a `profile` only when the CRM takes profile edits (and then, like
# every pulled event, once per contact and change time).
_APPLIED_KINDS = frozenset(
    {InboundKind.unsubscribe, InboundKind.cleaned, InboundKind.complained, InboundKind.subscribe}
)


async def _pull_events(
    engine: SyncEngine,
    gate: AccountGate,
    ctx: ConnectionContext,
    row: Any,
    since: datetime,
    result: PullResult,
) -> bool:
    """A pull-only provider's changes since `since`, applied as its webhooks' would be:
    stored once each in the inbox (dedupe key per contact, kind and change time) and applied
    by the same handlers. An address changed at the provider is found by the person's id in
    the mirror and moves the contact's email. False when the provider failed us."""
    try:
        feed = ctx.client.pull_changes  # type: ignore[attr-defined]  # pull-only providers
        events: list[InboundEvent] = await feed(ctx.audience_id, since)
        gate.succeeded()
    except ThrottledError as exc:
        gate.throttled(exc.retry_after)
        log.info("sync.pull.throttled", connection=str(ctx.id))
        return False
    except ProviderError as exc:
        log.warning("sync.pull.provider_failed", connection=str(ctx.id), error=exc.message)
        return False
    except SlotsUnavailable:
        return False
    settings = engine.settings
    maker = make_sessionmaker(engine.db)
    provider = ctx.provider
    connection: Any = {"id": ctx.id, "owner_id": ctx.owner_id, "audience_id": ctx.audience_id}
    for event in events:
        result.members += 1
        async with session_scope(maker) as session:
            applier = InboundApplier(
                session,
                Inbound(
                    connection_id=ctx.id,
                    mapping_id=ctx.mapping_key,
                    owner_id=ctx.owner_id,
                    mapping=ctx.mapping,
                    source=SOURCE,
                    actor=f"{provider.id}:pull",
                    signups=settings.INBOUND_SIGNUPS,
                    provider=provider.id,
                    person_id=provider.person_id,
                ),
            )
            moved = await _email_change(session, applier, ctx, event)
            if moved is not None:
                result.outcomes[f"email_change_{moved.value}"] += 1
            if event.kind not in _APPLIED_KINDS and not (
                event.kind is InboundKind.profile
                and (settings.INBOUND_PROFILE_UPDATES or _tells_preferences(ctx, event))
            ):
                continue
            if (
                event.kind is InboundKind.profile
                and not settings.INBOUND_PROFILE_UPDATES
                and not await _preferences_news(session, ctx, event)
            ):
                # Read only for its preferences, and they are the ones the CRM holds (our own
                # update coming back, mostly): nothing to store or apply. A later change of the
                # person's has another change time, so it is read again and is news then.
                result.outcomes["unchanged"] += 1
                continue
            repo = InboundRepository(session)
            event_id = await repo.insert_event(
                {
                    "provider": provider.id,
                    "connection_id": ctx.id,
                    "event_type": event.type[:64],
                    "fired_at": event.fired_at,
                    "payload": event.payload,
                    "dedupe_key": provider.inbound.dedupe_key(str(ctx.id), event, b""),
                }
            )
            if event_id is None:
                continue  # seen by an earlier pull (the windows overlap)
            outcome = await handle(applier, event, connection=connection, settings=settings)
            await repo.finish_event(event_id, outcome.value)
            result.outcomes[outcome.value] += 1
    return True


async def _preferences_news(
    session: AsyncSession, ctx: ConnectionContext, event: InboundEvent
) -> bool:
    """True when a profile event's mapped preferences differ from the contact's (an event
    naming only changes, or no preferences, is left to the handlers)."""
    cfg = ctx.mapping
    if event.interests is not None:
        chosen = cfg.chosen_by_labels(event.interests)
    elif event.interest_ids is not None:
        chosen = cfg.chosen_by_ids(dict.fromkeys(event.interest_ids, True))
    else:
        return True
    key = email_key(event.email)
    if key is None:
        return True
    row = (
        (await session.execute(_PREFERENCES, {"keys": [key], "owner": ctx.owner_id}))
        .mappings()
        .first()
    )
    if row is None:
        return False  # nobody the CRM holds: the handlers would ignore it too
    held = {p.casefold() for p in row["preferences"] or ()}
    return chosen != {m.name for m in cfg.interests if m.name.casefold() in held}


def _tells_preferences(ctx: ConnectionContext, event: InboundEvent) -> bool:
    """A profile event that says which mapped preferences the person holds."""
    if not ctx.mapping.interests:
        return False
    return (
        event.interests is not None
        or event.interest_ids is not None
        or event.interest_changes is not None
    )


async def _email_change(
    session: AsyncSession, applier: InboundApplier, ctx: ConnectionContext, event: InboundEvent
) -> Any:
    """Move the contact's email when the provider's person (by id) now has another address."""
    remote_id = str(event.payload.get("contact_id") or "")
    new_key = email_key(event.email)
    if not remote_id or new_key is None:
        return None
    found = (
        (
            await session.execute(
                _BY_REMOTE_ID, {"conn": ctx.id, "mapping": ctx.mapping_key, "rid": remote_id}
            )
        )
        .mappings()
        .first()
    )
    if found is None or new_key in (found["email_key"], email_key(found["pushed_email"])):
        return None
    return await applier.email_change(
        old_email=found["pushed_email"] or found["email_key"],
        new_email=event.email,
        at=event.fired_at,
        event="email_change",
    )
