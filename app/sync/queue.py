"""The worker's side of the outbox: claim by lease, load what a send needs, complete in bulk."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.sync.outbox import NOTIFY_CHANNEL


@dataclass(slots=True, frozen=True)
class Claimed:
    """A queue row this worker leased, with the `seq` it had when claimed."""

    connection_id: uuid.UUID
    mapping_id: uuid.UUID
    email_key: str
    seq: int
    contact_id: uuid.UUID | None
    forget: bool
    attempts: int
    priority: int
    tag_intent: tuple[str, ...] = ()
    create_intent: bool = False  # a send cut short may have created the person (see models)


@dataclass(slots=True)
class Outcome:
    """What became of one claimed row after the send."""

    key: str
    kind: str  # done | retry | defer | release
    delay: float = 0.0
    error: str | None = None
    # done: the mirror row to write (None: leave it), or delete it
    mirror: dict[str, Any] | None = None
    mirror_delete: bool = False
    tombstone: str | None = None
    # the provider refused for a reason that is the person's consent (compliance, forgotten)
    consent_off: str | None = None
    contact_id: uuid.UUID | None = None
    synced: bool = False  # a call reached the provider and succeeded


# Eligible connections first (a few rows), then each one's due rows through
# ix_sync_queue_ready_connection, bound to its connection (a LATERAL lookup planned alone) and
# read in claim order, locked as read; the first :limit across
# them win. Read in global ix_sync_queue_ready order instead, the claim walked every due row
# of the skipped (blocked, full, swamped) accounts ahead of the first claimable one (P6,
# 3 December: 1,222 rows read to claim 13). A connection's rows beyond the global :limit may
# be locked until the claim commits (other claimers skip them meanwhile); none is leased.
_CLAIM = text(
    """
    UPDATE sync_queue q
    SET lease_until = now() + make_interval(secs => :lease), leased_by = :me
    FROM (
        SELECT r.connection_id, r.mapping_id, r.email_key
        FROM connections c
        CROSS JOIN LATERAL (
            SELECT q2.connection_id, q2.mapping_id, q2.email_key, q2.priority, q2.available_at
            FROM sync_queue q2
            WHERE q2.connection_id = c.id
              AND q2.state = 'ready'
              AND q2.priority <= :max_priority
              AND q2.available_at <= now()
              AND (q2.lease_until IS NULL OR q2.lease_until < now())
              AND NOT (q2.priority <= 0
                       AND q2.connection_id = ANY(CAST(:skip_live AS uuid[])))
            ORDER BY q2.priority, q2.available_at
            LIMIT :limit
            FOR UPDATE OF q2 SKIP LOCKED
        ) r
        WHERE c.status = 'active'
          AND c.audience_id IS NOT NULL
          AND (c.cooldown_until IS NULL OR c.cooldown_until <= now())
          AND NOT (c.account_key = ANY(CAST(:skip_accounts AS text[])))
        ORDER BY r.priority, r.available_at
        LIMIT :limit
    ) pick
    WHERE q.connection_id = pick.connection_id AND q.mapping_id = pick.mapping_id
      AND q.email_key = pick.email_key
    RETURNING q.connection_id, q.mapping_id, q.email_key, q.seq, q.contact_id, q.forget,
              q.attempts, q.priority, q.tag_intent, q.create_intent
    """
)

_NEXT_DUE = text(
    """
    SELECT EXTRACT(EPOCH FROM min(q.available_at) - now())
    FROM sync_queue q JOIN connections c ON c.id = q.connection_id
    WHERE q.state = 'ready' AND c.status = 'active'
    """
)

# Triples, not three ANY lists: a cross product could release another group's row.
_RELEASE = text(
    """
    UPDATE sync_queue q SET lease_until = NULL, leased_by = NULL
    FROM unnest(CAST(:conns AS uuid[]), CAST(:maps AS uuid[]), CAST(:keys AS text[]))
        AS r(connection_id, mapping_id, email_key)
    WHERE q.leased_by = :me AND q.connection_id = r.connection_id
      AND q.mapping_id = r.mapping_id AND q.email_key = r.email_key
    """
)

_RENEW = text(
    """
    UPDATE sync_queue q SET lease_until = now() + make_interval(secs => :lease)
    FROM unnest(CAST(:conns AS uuid[]), CAST(:maps AS uuid[]), CAST(:keys AS text[]))
        AS h(connection_id, mapping_id, email_key)
    WHERE q.leased_by = :me AND q.connection_id = h.connection_id
      AND q.mapping_id = h.mapping_id AND q.email_key = h.email_key
    """
)

# Tags about to be pushed, added to what the row already records (a resend after a crash may
# push yet other tags; every one of them may now be at the provider); and whether the send may
# create the person, kept once set (a create that was cut short may have happened).
_INTENT = text(
    """
    UPDATE sync_queue q
    SET tag_intent = ARRAY(SELECT DISTINCT unnest(q.tag_intent || i.tags) ORDER BY 1),
        create_intent = q.create_intent OR i.creates
    FROM (
        SELECT r.email_key, ARRAY(SELECT jsonb_array_elements_text(r.tags)) AS tags, r.creates
        FROM jsonb_to_recordset(CAST(:rows AS jsonb))
            AS r(email_key text, tags jsonb, creates boolean)
    ) i
    WHERE q.connection_id = :conn AND q.mapping_id = :mapping AND q.email_key = i.email_key
      AND q.leased_by = :me
    """
)

# Parked rows whose slow-schedule time has come get a fresh attempt budget (a batch per
# tick; SKIP LOCKED leaves rows another worker re-arms alone). `parks` and `parked_at` stay:
# the next park waits longer, and the notice still knows how long the row has been stuck.
_REARM_PARKED = text(
    """
    WITH due AS (
        SELECT q.connection_id, q.mapping_id, q.email_key FROM sync_queue q
        JOIN connections c ON c.id = q.connection_id
        WHERE q.state = 'parked' AND q.available_at <= now() AND c.status = 'active'
        ORDER BY q.available_at
        LIMIT :limit
        FOR UPDATE OF q SKIP LOCKED
    ), moved AS (
        UPDATE sync_queue q SET state = 'ready', attempts = 0, available_at = now()
        FROM due WHERE q.connection_id = due.connection_id AND q.mapping_id = due.mapping_id
            AND q.email_key = due.email_key
        RETURNING 1
    )
    SELECT count(*) AS n, CASE WHEN count(*) > 0 THEN pg_notify(:channel, '') END AS notified
    FROM moved
    """
)

_RELEASE_UNHELD = text(
    """
    UPDATE sync_queue q SET lease_until = NULL, leased_by = NULL
    WHERE q.leased_by = :me AND NOT EXISTS (
        SELECT FROM unnest(CAST(:conns AS uuid[]), CAST(:maps AS uuid[]), CAST(:keys AS text[]))
            AS h(connection_id, mapping_id, email_key)
        WHERE h.connection_id = q.connection_id AND h.mapping_id = q.mapping_id
          AND h.email_key = q.email_key
    )
    """
)

_RELEASE_ALL = text(
    "UPDATE sync_queue SET lease_until = NULL, leased_by = NULL WHERE leased_by = :me"
)

_REAP = text(
    """
    UPDATE sync_queue SET lease_until = NULL, leased_by = NULL
    WHERE leased_by = ANY(CAST(:dead AS text[]))
    """
)

_LEASE_HOLDERS = text("SELECT DISTINCT leased_by FROM sync_queue WHERE leased_by LIKE :prefix")
# The workers holding request slots now (a small table: a worker with requests waiting or in
# flight holds some; reading the queue's leases walked every row of a backlog each time), and
# the active connections of the given providers.
_JOIN_AFFINITY = text(
    """
    SELECT 'worker' AS kind, h.holder AS value
    FROM (SELECT DISTINCT holder FROM provider_slots
          WHERE holder IS NOT NULL AND lease_until > now()) h
    UNION ALL
    SELECT 'connection', CAST(id AS text) FROM connections
    WHERE provider = ANY(CAST(:providers AS text[])) AND status = 'active'
    """
)

# A group's contacts and mirror rows are read one key at a time (LATERAL … OFFSET 0: each
# lookup planned alone, bound to its unique key). As `owner_id = … AND email_key = ANY(…)`,
# with no statistics (autovacuum off or behind), the planner bound the owner, or the
# connection and mapping, alone and filtered the keys over every contact of the owner and
# every mirror row of the mapping, at each group (P6, 3 December: ~1,500 rows for 15 keys).
# A contact found both by key and by id comes twice; the caller keys them.
_LOAD_CONTACTS = text(
    """
    SELECT c.* FROM unnest(CAST(:keys AS text[])) AS k(email_key)
    CROSS JOIN LATERAL (
        SELECT * FROM contacts WHERE owner_id = :owner AND email_key = k.email_key OFFSET 0
    ) c
    UNION ALL
    SELECT c.* FROM unnest(CAST(:ids AS uuid[])) AS i(id)
    CROSS JOIN LATERAL (
        SELECT * FROM contacts WHERE id = i.id AND owner_id = :owner OFFSET 0
    ) c
    """
)

_LOAD_MIRROR = text(
    """
    SELECT s.* FROM unnest(CAST(:keys AS text[])) AS k(email_key)
    CROSS JOIN LATERAL (
        SELECT * FROM sync_state
        WHERE connection_id = :conn AND mapping_id = :mapping AND email_key = k.email_key
        OFFSET 0
    ) s
    """
)

_LOAD_TOMBSTONES = text(
    """
    SELECT remote_id FROM sync_tombstones
    WHERE connection_id = :conn AND remote_id = ANY(CAST(:ids AS text[]))
    """
)

# Outcomes travel as one JSON document: one statement per table, whatever the batch size.
_MIRROR_UPSERT = text(
    """
    INSERT INTO sync_state AS s (connection_id, mapping_id, email_key, contact_id, remote_id,
        pushed_email, pushed_digest, pushed_tags, remote_status, remote_changed_at, last_synced_at,
        error_kind, error, remote_refs)
    SELECT :conn, :mapping, r.email_key, r.contact_id, r.remote_id, r.pushed_email, r.pushed_digest,
        ARRAY(SELECT jsonb_array_elements_text(COALESCE(r.pushed_tags, '[]'::jsonb))),
        r.remote_status, r.remote_changed_at, now(), r.error_kind, r.error,
        COALESCE(r.remote_refs, '{}'::jsonb)
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(email_key text, contact_id uuid,
        remote_id text, pushed_email text, pushed_digest text, pushed_tags jsonb,
        remote_status text, remote_changed_at timestamptz, error_kind text, error text,
        remote_refs jsonb)
    ON CONFLICT (connection_id, mapping_id, email_key) DO UPDATE SET
        contact_id = EXCLUDED.contact_id,
        remote_id = COALESCE(EXCLUDED.remote_id, s.remote_id),
        -- Refs a send reports are merged over the known ones (a client drops one with null).
        remote_refs = s.remote_refs || EXCLUDED.remote_refs,
        pushed_email = COALESCE(EXCLUDED.pushed_email, s.pushed_email),
        pushed_digest = COALESCE(EXCLUDED.pushed_digest, s.pushed_digest),
        pushed_tags = CASE WHEN EXCLUDED.pushed_digest IS NULL THEN s.pushed_tags
                           ELSE EXCLUDED.pushed_tags END,
        remote_status = EXCLUDED.remote_status,
        remote_changed_at = CASE WHEN EXCLUDED.remote_status IS DISTINCT FROM s.remote_status
                                 THEN COALESCE(EXCLUDED.remote_changed_at, now())
                                 ELSE COALESCE(s.remote_changed_at, EXCLUDED.remote_changed_at)
                            END,
        last_synced_at = now(),
        error_kind = EXCLUDED.error_kind,
        error = EXCLUDED.error
    """
)

_MIRROR_DELETE = text(
    """
    DELETE FROM sync_state
    WHERE connection_id = :conn AND mapping_id = :mapping
      AND email_key = ANY(CAST(:keys AS text[]))
    """
)

_TOMBSTONES = text(
    """
    INSERT INTO sync_tombstones (connection_id, remote_id)
    SELECT :conn, unnest(CAST(:ids AS text[]))
    ON CONFLICT DO NOTHING
    """
)

# The person's decision at the provider becomes the CRM's consent (no sync is queued back).
_CONSENT_OFF = text(
    """
    WITH r AS (
        SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(contact_id uuid, reason text)
    ), upd AS (
        UPDATE contacts c SET newsletter_opt_in = false,
            newsletter_changed_at = now(), newsletter_unsubscribed_at = now(),
            version = c.version + 1, updated_at = now()
        FROM r WHERE c.id = r.contact_id AND c.owner_id = :owner AND c.newsletter_opt_in
        RETURNING c.id, r.reason
    )
    INSERT INTO contact_changes (contact_id, owner_id, op, fields, source, actor)
    SELECT upd.id, :owner, 'update',
        jsonb_build_object('before', jsonb_build_object('newsletter_opt_in', true),
                           'after', jsonb_build_object('newsletter_opt_in', false),
                           'reason', upd.reason),
        'provider', :provider
    FROM upd
    """
)

# Compare-and-delete: a row whose seq moved on while we sent stays (released) for the next
# pass. Retries and deferrals only apply while the seq is unchanged: a newer change already
# re-armed the row with attempts 0.
_COMPLETE = text(
    """
    WITH o AS (
        SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb))
            AS o(email_key text, seq bigint, kind text, delay float8, error text)
    ), done AS (
        DELETE FROM sync_queue q USING o
        WHERE q.connection_id = :conn AND q.mapping_id = :mapping AND q.email_key = o.email_key
          AND o.kind = 'done' AND q.seq = o.seq
        RETURNING q.email_key
    ), rest AS (
        UPDATE sync_queue q SET
            lease_until = NULL,
            leased_by = NULL,
            attempts = CASE WHEN o.kind = 'retry' AND q.seq = o.seq
                            THEN q.attempts + 1 ELSE q.attempts END,
            state = CASE WHEN o.kind = 'retry' AND q.seq = o.seq AND q.attempts + 1 >= :max
                         THEN 'parked' ELSE q.state END,
            -- a parked row's available_at is when it is re-armed: the slow schedule, doubling
            -- with each park (SYNC_PARKED_RETRY_SECONDS up to SYNC_PARKED_RETRY_MAX_SECONDS)
            available_at = CASE WHEN o.kind = 'retry' AND q.seq = o.seq AND q.attempts + 1 >= :max
                                THEN now() + make_interval(secs => LEAST(
                                    :park_base * power(2, LEAST(q.parks, 20)), :park_max))
                                WHEN o.kind IN ('retry', 'defer') AND q.seq = o.seq
                                THEN now() + make_interval(secs => o.delay)
                                ELSE q.available_at END,
            parks = CASE WHEN o.kind = 'retry' AND q.seq = o.seq AND q.attempts + 1 >= :max
                         THEN q.parks + 1 ELSE q.parks END,
            parked_at = CASE WHEN o.kind = 'retry' AND q.seq = o.seq AND q.attempts + 1 >= :max
                             THEN COALESCE(q.parked_at, now()) ELSE q.parked_at END,
            last_error = CASE WHEN o.kind = 'retry' AND q.seq = o.seq
                              THEN o.error ELSE q.last_error END,
            -- done (the row changed meanwhile): sync_state now records what we pushed
            tag_intent = CASE WHEN o.kind = 'done' THEN '{}'::text[] ELSE q.tag_intent END,
            create_intent = CASE WHEN o.kind = 'done' THEN false ELSE q.create_intent END
        FROM o
        WHERE q.connection_id = :conn AND q.mapping_id = :mapping AND q.email_key = o.email_key
          AND NOT (o.kind = 'done' AND q.seq = o.seq)
          AND q.leased_by = :me
        RETURNING q.state
    )
    SELECT (SELECT count(*) FROM done) AS done,
           (SELECT count(*) FROM rest WHERE state = 'parked') AS parked,
           (SELECT count(*) FROM rest) AS rest
    """
)

_CONNECTION_SYNCED = text(
    """
    UPDATE connections SET last_synced_at = now(), consecutive_failures = 0
    WHERE id = :conn
    """
)


@dataclass(slots=True)
class GroupData:
    """The current rows a group's plans are computed from."""

    contacts_by_key: dict[str, Any] = field(default_factory=dict)
    contacts_by_id: dict[uuid.UUID, Any] = field(default_factory=dict)
    mirrors: dict[str, Any] = field(default_factory=dict)
    tombstones: set[str] = field(default_factory=set)


class QueueRepository:
    """Statements of the worker on sync_queue, sync_state, tombstones and consent."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def claim(
        self,
        *,
        me: str,
        limit: int,
        lease_seconds: float,
        skip_accounts: Sequence[str],
        max_priority: int = 32767,
        skip_live: Sequence[uuid.UUID] = (),
    ) -> list[Claimed]:
        """Lease up to `limit` due rows of active connections, live work first; the live
        rows of the connections in `skip_live` are left to the worker they are assigned to."""
        result = await self.conn.execute(
            _CLAIM,
            {
                "me": me,
                "limit": limit,
                "lease": lease_seconds,
                "skip_accounts": list(skip_accounts),
                "max_priority": max_priority,
                "skip_live": [str(c) for c in skip_live],
            },
        )
        return [
            Claimed(
                **{
                    **row,
                    "tag_intent": tuple(row["tag_intent"] or ()),
                    "create_intent": bool(row["create_intent"]),
                }
            )
            for row in result.mappings()
        ]

    async def seconds_until_next_due(self) -> float | None:
        """Seconds until the earliest ready row becomes due (None when the queue is empty)."""
        value = (await self.conn.execute(_NEXT_DUE)).scalar()
        return None if value is None else float(value)

    async def release(self, *, me: str, rows: Sequence[Claimed]) -> None:
        """Give leased rows back untouched."""
        if rows:
            await self.conn.execute(
                _RELEASE,
                {
                    "me": me,
                    "conns": [str(r.connection_id) for r in rows],
                    "maps": [str(r.mapping_id) for r in rows],
                    "keys": [r.email_key for r in rows],
                },
            )

    async def renew(
        self,
        *,
        me: str,
        held: Sequence[tuple[uuid.UUID, uuid.UUID, str]],
        lease_seconds: float,
    ) -> None:
        """Extend the leases of these (connection, mapping, key) rows, and only these."""
        await self.conn.execute(
            _RENEW,
            {
                "me": me,
                "lease": lease_seconds,
                "conns": [str(c) for c, _, _ in held],
                "maps": [str(m) for _, m, _ in held],
                "keys": [k for _, _, k in held],
            },
        )

    async def record_intent(
        self,
        *,
        me: str,
        connection_id: uuid.UUID,
        mapping_id: uuid.UUID,
        intents: dict[str, list[str]],
        creates: Iterable[str] = (),
    ) -> None:
        """Record, before the call, the tags each key's send is about to push and the keys
        whose send may create the person at the provider."""
        creating = set(creates)
        rows = [
            {"email_key": k, "tags": intents.get(k, []), "creates": k in creating}
            for k in sorted(set(intents) | creating)
        ]
        if rows:
            params = {"me": me, "conn": connection_id, "mapping": mapping_id, "rows": _dumps(rows)}
            await self.conn.execute(_INTENT, params)

    async def rearm_parked(self, *, limit: int = 1000) -> int:
        """Make parked rows whose retry time has come ready again; NOTIFY when any moved."""
        result = await self.conn.execute(_REARM_PARKED, {"limit": limit, "channel": NOTIFY_CHANNEL})
        return int(result.mappings().one()["n"])

    async def release_unheld(
        self, *, me: str, held: Sequence[tuple[uuid.UUID, uuid.UUID, str]]
    ) -> int:
        """Give back every lease of this worker but those of these (connection, mapping, key)
        rows; how many."""
        result = await self.conn.execute(
            _RELEASE_UNHELD,
            {
                "me": me,
                "conns": [str(c) for c, _, _ in held],
                "maps": [str(m) for _, m, _ in held],
                "keys": [k for _, _, k in held],
            },
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def release_all(self, *, me: str) -> None:
        """Give back every lease this worker holds (shutdown)."""
        await self.conn.execute(_RELEASE_ALL, {"me": me})

    async def join_affinity(self, providers: Sequence[str]) -> tuple[list[str], list[uuid.UUID]]:
        """(workers holding request slots now, active connections of `providers`)."""
        workers: list[str] = []
        connections: list[uuid.UUID] = []
        for kind, value in await self.conn.execute(_JOIN_AFFINITY, {"providers": list(providers)}):
            if kind == "worker":
                workers.append(value)
            else:
                connections.append(uuid.UUID(value))
        return workers, connections

    async def lease_holders(self, prefix: str) -> list[str]:
        """Workers (by id prefix, e.g. this host's) that hold queue leases."""
        result = await self.conn.execute(_LEASE_HOLDERS, {"prefix": prefix + "%"})
        return [r for (r,) in result]

    async def reap(self, dead: Sequence[str]) -> None:
        """Free the leases of workers known to be dead (same host, process gone)."""
        if dead:
            await self.conn.execute(_REAP, {"dead": list(dead)})

    async def load(
        self,
        *,
        connection_id: uuid.UUID,
        mapping_id: uuid.UUID,
        owner_id: str,
        keys: Sequence[str],
        contact_ids: Sequence[uuid.UUID],
        hashes: Sequence[str],
    ) -> GroupData:
        """Contacts (by key and by hinted id), mirror rows and tombstones for a group."""
        data = GroupData()
        contacts = await self.conn.execute(
            _LOAD_CONTACTS,
            {"owner": owner_id, "keys": list(keys), "ids": [str(i) for i in contact_ids]},
        )
        for row in contacts.mappings():
            data.contacts_by_id[row["id"]] = row
            if row["email_key"]:
                data.contacts_by_key[row["email_key"]] = row
        mirror_keys = set(keys) | {
            c["email_key"] for c in data.contacts_by_id.values() if c["email_key"]
        }
        mirrors = await self.conn.execute(
            _LOAD_MIRROR,
            {"conn": connection_id, "mapping": mapping_id, "keys": sorted(mirror_keys)},
        )
        data.mirrors = {row["email_key"]: row for row in mirrors.mappings()}
        tombs = await self.conn.execute(
            _LOAD_TOMBSTONES, {"conn": connection_id, "ids": list(hashes)}
        )
        data.tombstones = {r for (r,) in tombs}
        return data

    async def other_rules(
        self, *, connection_id: uuid.UUID, mapping_id: uuid.UUID
    ) -> list[Mapping[str, Any]]:
        """The rule columns (kinds, tags_any, tags_all) of the connection's other mappings."""
        rows = await self.conn.execute(
            text(
                "SELECT kinds, tags_any, tags_all FROM audience_mappings"
                " WHERE connection_id = :conn AND id <> :mapping"
            ),
            {"conn": connection_id, "mapping": mapping_id},
        )
        return [dict(r) for r in rows.mappings()]

    async def complete(
        self,
        *,
        me: str,
        connection_id: uuid.UUID,
        mapping_id: uuid.UUID,
        owner_id: str,
        claimed: Sequence[Claimed],
        outcomes: dict[str, Outcome],
        max_attempts: int,
        park_base: float = 900.0,
        park_max: float = 3600.0,
    ) -> dict[str, int]:
        """Write the mirror, tombstones and consent, then compare-and-delete the queue rows."""
        upserts = [o.mirror | {"email_key": o.key} for o in outcomes.values() if o.mirror]
        if upserts:
            await self.conn.execute(
                _MIRROR_UPSERT,
                {"conn": connection_id, "mapping": mapping_id, "rows": _dumps(upserts)},
            )
        deletes = [o.key for o in outcomes.values() if o.mirror_delete]
        if deletes:
            await self.conn.execute(
                _MIRROR_DELETE, {"conn": connection_id, "mapping": mapping_id, "keys": deletes}
            )
        tombstones = [o.tombstone for o in outcomes.values() if o.tombstone]
        if tombstones:
            await self.conn.execute(_TOMBSTONES, {"conn": connection_id, "ids": tombstones})
        consent = [
            {"contact_id": str(o.contact_id), "reason": o.consent_off}
            for o in outcomes.values()
            if o.consent_off and o.contact_id
        ]
        if consent:
            await self.conn.execute(
                _CONSENT_OFF, {"rows": _dumps(consent), "owner": owner_id, "provider": "mailchimp"}
            )
        rows = []
        for c in claimed:
            o = outcomes.get(c.email_key) or Outcome(c.email_key, "release")
            rows.append(
                {
                    "email_key": c.email_key,
                    "seq": c.seq,
                    "kind": o.kind,
                    "delay": o.delay,
                    "error": o.error,
                }
            )
        result = (
            (
                await self.conn.execute(
                    _COMPLETE,
                    {
                        "conn": connection_id,
                        "mapping": mapping_id,
                        "rows": _dumps(rows),
                        "me": me,
                        "max": max_attempts,
                        "park_base": park_base,
                        "park_max": park_max,
                    },
                )
            )
            .mappings()
            .one()
        )
        if result["done"] + result["rest"] < len(rows):
            # A row that a writer changed while this statement waited for its lock escapes
            # both CTEs: `done` re-checks the new version (seq moved on: not deleted) but
            # `rest` chose its rows from the statement's snapshot (seq unchanged: not
            # released). Left leased, the lease keeper would hold it until the worker goes
            # idle. Release what is still ours; the writer already re-armed it.
            await self.conn.execute(
                _RELEASE,
                {
                    "me": me,
                    "conns": [str(connection_id)] * len(rows),
                    "maps": [str(mapping_id)] * len(rows),
                    "keys": [r["email_key"] for r in rows],
                },
            )
        if any(o.synced for o in outcomes.values()):
            await self.conn.execute(_CONNECTION_SYNCED, {"conn": connection_id})
        if result["rest"]:
            # Rows that stay (changed meanwhile, retried, deferred) may be due now: wake peers.
            await self.conn.execute(text("SELECT pg_notify(:ch, '')"), {"ch": NOTIFY_CHANNEL})
        return dict(result)


def _dumps(rows: list[dict[str, Any]]) -> str:
    return orjson.dumps(rows, default=_default).decode()


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value))
