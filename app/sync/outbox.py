"""The write side of the outbox: enqueue inside the caller's transaction, then NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from app.db import to_libpq_url
from app.emailkey import email_key as email_key  # the queue and mirror key (re-exported)
from app.sync.models import PRIORITY_LIVE

log = structlog.get_logger(__name__)

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
#
# `notified` holds a row whenever a worker must hear of the write; the NOTIFY itself is sent
# in the transaction only when `defer_notify` is false. In the service it is true: the
# process's CommitNotifier sends it after the commit (see there), and `announce` marks the
# session so that its commit signals the notifier.
ENQUEUE_CTES = f"""
    queued AS ({queue_upsert(_API_ROWS)}),
    notified AS (
        SELECT CASE WHEN :defer_notify THEN NULL ELSE pg_notify(:channel, '') END
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
    row = (await session.execute(_ENQUEUE, params)).one()
    announce(session, params, int(row.notified))
    return int(row.n)


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
        "defer_notify": _notifier["current"] is not None,
        "skip_mapping": None,
    }


# --- the NOTIFY after commit -------------------------------------------------------------------
#
# PostgreSQL serialises the commits of every transaction that NOTIFYs: it takes a lock of the
# whole database at commit and holds it through the WAL flush. With every POST of an owner
# with connections notifying, the service's commits queued behind one another on it (P6,
# 3 December: 0.2-0.7 backends waiting on `Lock: object` at COMMIT; 32 writers on asyncpg,
# 390-440 commits/s with the NOTIFY, 540-690 without). So the service's writes leave the
# NOTIFY to one task per process: a commit that queued something new signals it, and it sends
# one NOTIFY, in a transaction of its own, for every signal since its last. No wake-up is
# lost: the signal is cleared before the NOTIFY is sent, so a commit that signalled before the
# clear is visible by the time a worker hears that NOTIFY, and one that signals after it
# leaves the signal set for another. What a lost NOTIFY would cost (the notifier's
# connection down, the process killed between a commit and its NOTIFY) is a wait for the
# worker's poll (SYNC_POLL_INTERVAL_SECONDS), never a change: the rows are committed.

_WAKE_AT_COMMIT = "sync_queue.wake_at_commit"
_notifier: dict[str, CommitNotifier | None] = {"current": None}


def announce(session: AsyncSession, params: dict[str, Any], notified: int) -> None:
    """Mark the session's commit to wake the workers when its statement left the NOTIFY to
    the notifier (`notified`: the rows of the statement's `notified` CTE)."""
    if notified and params.get("defer_notify"):
        session.info[_WAKE_AT_COMMIT] = True


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_WAKE_AT_COMMIT, False):
        notifier = _notifier["current"]
        if notifier is not None:
            notifier.wake()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_WAKE_AT_COMMIT, None)


class CommitNotifier:
    """One task and one connection sending the NOTIFY of this process's committed writes."""

    def __init__(self, database_url: str) -> None:
        self._url = to_libpq_url(database_url)
        self._due = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._signals = 0  # wake() calls so far
        self._covered = 0  # of those, the ones a sent NOTIFY followed
        self._progress = asyncio.Event()  # set after every NOTIFY sent
        self.sent = 0  # NOTIFYs sent (one may stand for many commits)

    def wake(self) -> None:
        """Ask for a NOTIFY (after a commit that queued something new)."""
        self._signals += 1
        self._due.set()

    def start(self) -> None:
        """Run the sending task and let this process's writes leave their NOTIFY to it."""
        self._task = asyncio.create_task(self._run(), name="sync-notifier")
        _notifier["current"] = self

    async def aclose(self) -> None:
        """Stop taking signals, send the one still due, then close."""
        if _notifier["current"] is self:
            _notifier["current"] = None
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout=2.0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def flush(self) -> None:
        """Return once every signal given before the call was followed by a sent NOTIFY."""
        target = self._signals
        while self._covered < target:
            self._progress.clear()
            await self._progress.wait()

    async def _run(self) -> None:
        delay = 0.5
        while True:
            conn: asyncpg.Connection | None = None
            connected = False
            try:
                # The NOTIFY's own commit need not wait for the WAL flush: it writes nothing
                # a crash could lose but the wake-up itself, which the poll stands in for.
                conn = await asyncpg.connect(
                    self._url,
                    server_settings={
                        "application_name": "audience-sync-notifier",
                        "synchronous_commit": "off",
                    },
                )
                connected = True
                delay = 0.5
                while True:
                    await self._due.wait()
                    self._due.clear()
                    covers = self._signals  # read with the clear: no wake() in between
                    try:
                        await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
                    except BaseException:
                        self._due.set()  # not sent: the next connection sends it
                        raise
                    self.sent += 1
                    self._covered = covers
                    self._progress.set()
            except Exception as exc:
                # Whatever failed, the task goes on: a dead notifier would leave every
                # write of the process to the poll. A connection that dropped while idle is
                # replaced at once; one that cannot be opened is retried with a back-off.
                log.warning("sync.notifier_failed", error=repr(exc))
                if not connected:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
