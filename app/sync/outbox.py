"""The write side of the outbox: enqueue inside the caller's transaction, then NOTIFY."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.sync.models import PRIORITY_LIVE

NOTIFY_CHANNEL = "sync_queue"

# One statement: upsert a row per (connection with an audience) × key, and NOTIFY when any
# row was written. NOTIFY is transactional: listeners hear it only if the caller commits.
# A new change re-arms a parked or backed-off row (attempts reset, due now); `seq` tells the
# worker that a row it is sending changed meanwhile. `forget` is sticky: an erasure request
# is never undone by a later write.
# Coalescing hold: a key sent less than `hold` seconds ago waits until that much time has
# passed, so a contact edited over and over is sent once per hold with its latest state
# (DESIGN §1.4), while a change to a quiet contact goes at once.
UPSERT_SQL = """
    INSERT INTO sync_queue AS q
        (connection_id, email_key, contact_id, priority, forget, available_at)
    SELECT c.id, k.email_key, CAST(:contact_id AS uuid), :priority, :forget,
           GREATEST(now(), s.last_synced_at + make_interval(secs => :hold))
    FROM connections c
    CROSS JOIN unnest(CAST(:keys AS text[])) AS k(email_key)
    LEFT JOIN sync_state s ON s.connection_id = c.id AND s.email_key = k.email_key
    WHERE c.owner_id = :owner_id AND c.audience_id IS NOT NULL
    ON CONFLICT (connection_id, email_key) DO UPDATE SET
        seq = q.seq + 1,
        contact_id = COALESCE(EXCLUDED.contact_id, q.contact_id),
        priority = LEAST(q.priority, EXCLUDED.priority),
        forget = q.forget OR EXCLUDED.forget,
        state = 'ready',
        attempts = 0,
        last_error = NULL,
        available_at = EXCLUDED.available_at
    RETURNING q.connection_id, q.email_key, q.state, q.last_error
"""
"""The queue upsert, for use as a CTE body; its parameters come from `enqueue_params`.

Callers that fold it into a larger statement (the contact write path does, to save round
trips) must NOTIFY when it returned rows, as `enqueue` does."""

_ENQUEUE = text(
    f"""
    WITH ins AS ({UPSERT_SQL})
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
    params = enqueue_params(
        owner_id=owner_id, keys=keys, contact_id=contact_id, priority=priority, forget=forget
    )
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
    """Bind parameters of UPSERT_SQL (and of the NOTIFY channel) for these keys."""
    return {
        "owner_id": owner_id,
        "keys": sorted({k for k in keys if k}),
        "contact_id": str(contact_id) if contact_id else None,
        "priority": priority,
        "forget": forget,
        "hold": _coalesce["seconds"],
        "channel": NOTIFY_CHANNEL,
    }
