"""The write side of the outbox: enqueue inside the caller's transaction, then NOTIFY."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.emailkey import email_key as email_key  # the queue and mirror key (re-exported)
from app.sync.models import PRIORITY_LIVE

NOTIFY_CHANNEL = "sync_queue"


def queue_upsert(select: str, *, only_parked: bool = False) -> str:
    """The one queue upsert every writer uses (API, import, reconcile), as SQL text.

    `select` yields (connection_id, mapping_id, email_key, contact_id, priority, forget,
    available_at).
    On conflict a new change re-arms the row: `seq` moves on (so the worker knows a row it is
    sending changed meanwhile), attempts reset, a parked row is ready again, live priority
    wins, and `forget` is sticky (an erasure request is never undone by a later write).
    `only_parked`: touch an existing row only when it is parked (Sync Now as a retry leaves a
    row already on its way as it is). Returns each row written, with `inserted` true for a
    new one.
    """
    condition = "WHERE q.state = 'parked'" if only_parked else ""
    return f"""
        INSERT INTO sync_queue AS q
            (connection_id, mapping_id, email_key, contact_id, priority, forget, available_at)
        {select}
        ON CONFLICT (connection_id, mapping_id, email_key) DO UPDATE SET
            seq = q.seq + 1,
            parks = 0,
            parked_at = NULL,
            contact_id = COALESCE(EXCLUDED.contact_id, q.contact_id),
            priority = LEAST(q.priority, EXCLUDED.priority),
            forget = q.forget OR EXCLUDED.forget,
            state = 'ready',
            attempts = 0,
            last_error = NULL,
            available_at = EXCLUDED.available_at
        {condition}
        RETURNING q.connection_id, q.mapping_id, q.email_key, q.state, q.last_error, q.available_at,
                  q.xmax = 0 AS inserted
    """


# A row per audience mapping (of a connection with an audience) × key of an API write. Every
# mapping gets the row whatever its rule: the rule is evaluated at send time, so a contact
# that stopped matching is archived from that audience and one that started matching joins.
# Coalescing hold: a key sent less than `hold` seconds ago waits until that much time has
# passed, so a contact edited over and over is sent once per hold with its latest state
# (DESIGN §1.4), while a change to a quiet contact goes at once.
#
# The mirror row is read by a subquery bound to its full key, not a join: as a join the
# planner, with no statistics on sync_state (autovacuum off or behind), saw no gain in binding
# the email key too and walked every mirror row of the connection per write (P6, 3 December:
# ~3,000 buffers a write with 2,000 contacts synced).
_API_ROWS = """
    SELECT c.id, m.id, k.email_key, CAST(:contact_id AS uuid), :priority, :forget,
           GREATEST(now(), (
               SELECT s.last_synced_at FROM sync_state s
               WHERE s.connection_id = c.id AND s.mapping_id = m.id
                 AND s.email_key = k.email_key
           ) + make_interval(secs => :hold))
    FROM connections c
    JOIN audience_mappings m ON m.connection_id = c.id
    CROSS JOIN unnest(CAST(:keys AS text[])) AS k(email_key)
    WHERE c.owner_id = :owner_id AND c.audience_id IS NOT NULL
      AND m.id IS DISTINCT FROM CAST(:skip_mapping AS uuid)
"""

# The API's upsert and its NOTIFY as CTEs (`queued`, `notified`) for a WITH clause;
# parameters from `enqueue_params`. A statement using them must read `notified` (a
# plain SELECT CTE runs only when read) whenever `queued` may hold rows. NOTIFY is
# transactional: listeners hear it only if the caller commits.
#
# NOTIFY only when a worker has something new to wake for: a row was created, re-armed from
# `parked`, or made due earlier than it was. A row that was already waiting (ready, or being
# sent) was announced when it started waiting, and a worker that is sending it looks again
# when the send completes: a NOTIFY for it would only cost commit time, because PostgreSQL
# serialises the commits of transactions that NOTIFY (a global lock held through the WAL
# flush). The probe of `sync_queue` in `notified` reads the rows as they were when the
# statement started (every part of a statement shares one snapshot, and the upsert's own
# writes are not visible to it); a row deleted or changed by a worker since then shows up as
# created, or is the worker's own to look at again. It looks each written row up by its full
# key: looking up the owner's connections' rows by email key alone walked every queue entry of
# each connection (the key's third column), dead ones included (P6, 3 December). The key
# lookup sits under OFFSET 0, its state and due time tested outside: with them beside it the
# planner, without statistics, took the claim's (connection_id, priority, available_at)
# ready index and walked the connection's ready rows.
# Not done (tried 3 December, reverted): sparing the NOTIFY when the connection has *another*
# row already due. It did cut the commits' serialisation (32 writers, four connections:
# 390-440 commits/s with a NOTIFY each, 540-690/s without), but any probe of "the connection's
# rows" walks the index entries of the rows the worker deleted until vacuum removes them: with
# a drained backlog ahead in key order the write statement went from 0.35 to ~4 ms (EXPLAIN,
# 909 buffers), a cost without bound (P6 itself did not separate it from other costs; see
# docs/benchmarks.md). Looking up only the rows this write touches (by their full key,
# below) costs the same whatever the queue's history.
ENQUEUE_CTES = f"""
    queued AS ({queue_upsert(_API_ROWS)}),
    notified AS (
        SELECT pg_notify(:channel, '')
        WHERE EXISTS (
            SELECT FROM queued
            WHERE queued.inserted OR NOT EXISTS (
                SELECT FROM (
                    SELECT b.state, b.available_at FROM sync_queue b
                    WHERE b.connection_id = queued.connection_id
                      AND b.mapping_id = queued.mapping_id
                      AND b.email_key = queued.email_key
                    OFFSET 0
                ) b
                WHERE b.state = 'ready' AND b.available_at <= queued.available_at
            )
        )
    )
"""

_ENQUEUE = text(
    f"""
    WITH {ENQUEUE_CTES}
    SELECT (SELECT count(*) FROM queued) AS n, (SELECT count(*) FROM notified) AS notified
    """
)


# Bulk writers (CSV import, reconcile) refresh the planner's statistics of what they wrote
# once it is a lot: when autovacuum is behind (or off), a queue of 500k rows that the
# statistics still think nearly empty gets a claim plan that sorts every ready row (about a
# second a claim, measured) instead of reading the ready index in order (about a millisecond).
# Refreshes come at 10k, 20k, 40k … rows written, so a big import pays only a few.
STATS_REFRESH_ROWS = 10_000


def statistics_due(written: int, refreshed_at: int) -> bool:
    """True when `written` rows (`refreshed_at` at the last refresh) call for an ANALYZE."""
    return written - refreshed_at >= STATS_REFRESH_ROWS and written >= 2 * refreshed_at


async def refresh_statistics(conn: AsyncConnection | AsyncSession, *tables: str) -> None:
    """ANALYZE the given tables (ours; a role that does not own them gets a warning, no error)."""
    await conn.execute(text("ANALYZE " + ", ".join(tables)))


# Seconds a just-sent key waits before its next send (SYNC_COALESCE_SECONDS); the service and
# the worker set it from their settings at start-up.
_coalesce = {"seconds": 0.0}


def configure(coalesce_seconds: float) -> None:
    """Set the coalescing hold for this process."""
    _coalesce["seconds"] = max(0.0, float(coalesce_seconds))


async def enqueue(
    session: AsyncSession,
    *,
    owner_id: str,
    keys: Sequence[str | None],
    contact_id: uuid.UUID | None,
    priority: int = PRIORITY_LIVE,
    forget: bool = False,
    skip_mapping: uuid.UUID | None = None,
) -> int:
    """Queue a sync of `keys` for every audience mapping of the owner's connections (but
    `skip_mapping`: inbound facts need not go back to the audience they came from)."""
    params = enqueue_params(
        owner_id=owner_id, keys=keys, contact_id=contact_id, priority=priority, forget=forget
    )
    params["skip_mapping"] = str(skip_mapping) if skip_mapping else None
    if not params["keys"]:
        return 0
    result = await session.execute(_ENQUEUE, params)
    return int(result.scalar_one())


def enqueue_params(
    *,
    owner_id: str,
    keys: Sequence[str | None],
    contact_id: uuid.UUID | None,
    priority: int = PRIORITY_LIVE,
    forget: bool = False,
) -> dict[str, Any]:
    """Bind parameters of ENQUEUE_CTES for these keys."""
    return {
        "owner_id": owner_id,
        "keys": sorted({k for k in keys if k}),
        "contact_id": str(contact_id) if contact_id else None,
        "priority": priority,
        "forget": forget,
        "hold": _coalesce["seconds"],
        "channel": NOTIFY_CHANNEL,
        "skip_mapping": None,
    }
