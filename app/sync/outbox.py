"""The write side of the outbox: enqueue inside the caller's transaction, then NOTIFY."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.sync.models import PRIORITY_LIVE

NOTIFY_CHANNEL = "sync_queue"


def queue_upsert(select: str, *, only_parked: bool = False) -> str:
    """The one queue upsert every writer uses (API, import, reconcile), as SQL text.

    `select` yields (connection_id, email_key, contact_id, priority, forget, available_at).
    On conflict a new change re-arms the row: `seq` moves on (so the worker knows a row it is
    sending changed meanwhile), attempts reset, a parked row is ready again, live priority
    wins, and `forget` is sticky (an erasure request is never undone by a later write).
    `only_parked`: touch an existing row only when it is parked (Sync Now as a retry leaves a
    row already on its way as it is).
    """
    condition = "WHERE q.state = 'parked'" if only_parked else ""
    return f"""
        INSERT INTO sync_queue AS q
            (connection_id, email_key, contact_id, priority, forget, available_at)
        {select}
        ON CONFLICT (connection_id, email_key) DO UPDATE SET
            seq = q.seq + 1,
            contact_id = COALESCE(EXCLUDED.contact_id, q.contact_id),
            priority = LEAST(q.priority, EXCLUDED.priority),
            forget = q.forget OR EXCLUDED.forget,
            state = 'ready',
            attempts = 0,
            last_error = NULL,
            available_at = EXCLUDED.available_at
        {condition}
        RETURNING 1
    """


# One statement: a row per (connection with an audience) × key, and NOTIFY when any row was
# written (NOTIFY is transactional: listeners hear it only if the caller commits).
# Coalescing hold: a key sent less than `hold` seconds ago waits until that much time has
# passed, so a contact edited over and over is sent once per hold with its latest state
# (DESIGN §1.4), while a change to a quiet contact goes at once.
_API_ROWS = """
    SELECT c.id, k.email_key, CAST(:contact_id AS uuid), :priority, :forget,
           GREATEST(now(), s.last_synced_at + make_interval(secs => :hold))
    FROM connections c
    CROSS JOIN unnest(CAST(:keys AS text[])) AS k(email_key)
    LEFT JOIN sync_state s ON s.connection_id = c.id AND s.email_key = k.email_key
    WHERE c.owner_id = :owner_id AND c.audience_id IS NOT NULL
"""
_ENQUEUE = text(
    f"""
    WITH ins AS ({queue_upsert(_API_ROWS)})
    SELECT count(*) AS n, CASE WHEN count(*) > 0 THEN pg_notify(:channel, '') END AS notified
    FROM ins
    """
)


# Seconds a just-sent key waits before its next send (SYNC_COALESCE_SECONDS); the service and
# the worker set it from their settings at start-up.
_coalesce = {"seconds": 0.0}


def configure(coalesce_seconds: float) -> None:
    """Set the coalescing hold for this process."""
    _coalesce["seconds"] = max(0.0, float(coalesce_seconds))


def email_key(email: str | None) -> str | None:
    """The queue and mirror key of an address: lower(trim(email))."""
    if email is None:
        return None
    key = email.strip().lower()
    return key or None


async def enqueue(
    session: AsyncSession,
    *,
    owner_id: str,
    keys: Sequence[str | None],
    contact_id: uuid.UUID | None,
    priority: int = PRIORITY_LIVE,
    forget: bool = False,
) -> int:
    """Queue a sync of `keys` for every connection of the owner that has an audience."""
    unique = sorted({k for k in keys if k})
    if not unique:
        return 0
    result = await session.execute(
        _ENQUEUE,
        {
            "owner_id": owner_id,
            "keys": unique,
            "contact_id": str(contact_id) if contact_id else None,
            "priority": priority,
            "forget": forget,
            "hold": _coalesce["seconds"],
            "channel": NOTIFY_CHANNEL,
        },
    )
    return int(result.scalar_one())
