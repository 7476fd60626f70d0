"""Set-based SQL of the CSV import: COPY into a staging table, then one statement a chunk.

Two temporary tables live on the import's one connection for the whole import:
- `import_stage` holds the current chunk's rows (truncated per chunk, filled by COPY);
- `import_seen` holds every email key the import has already taken, with its row number, so
  a duplicate in a later chunk is found by an index probe in PostgreSQL, not by a Python set
  that would grow with the file (a million addresses would cost the importer ~150 MB).
Both are created once per connection and truncated, never dropped: prepared statements that
name them stay valid on a pooled connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.contacts.service import FIELD_NAMES  # what the API's audit records for a create
from app.emailkey import email_key
from app.sync.models import PRIORITY_BULK
from app.sync.outbox import NOTIFY_CHANNEL, queue_upsert

# Fields an import may write, compared with IS DISTINCT FROM to tell changed from unchanged.
# The email is not among them: rows are matched on lower(trim(email)), and a difference in
# case alone is not worth a change and a sync.
IMPORTED_FIELDS = (
    "kind",
    "first_name",
    "last_name",
    "company",
    "phone",
    "addr1",
    "addr2",
    "city",
    "state",
    "zip",
    "country",
    "tags",
    "newsletter_opt_in",
)

# The order of a staged record (the tuples the importer builds).
STAGE_COLUMNS = ("row_no", "email", *IMPORTED_FIELDS)

_CREATE_TABLES = (
    """
    CREATE TEMP TABLE IF NOT EXISTS import_stage (
        row_no integer NOT NULL,
        email text NOT NULL,
        email_key text NOT NULL,
        kind text,
        first_name text,
        last_name text,
        company text,
        phone text,
        addr1 text,
        addr2 text,
        city text,
        state text,
        zip text,
        country text,
        tags text[],
        newsletter_opt_in boolean
    )
    """,
    """
    CREATE TEMP TABLE IF NOT EXISTS import_seen (
        email_key text PRIMARY KEY,
        row_no integer NOT NULL
    )
    """,
)

# The queue upsert of app.sync.outbox._ENQUEUE, set-based and at bulk priority: one row per
# audience mapping (of a connection with an audience) × touched contact. Live work keeps its
# priority (LEAST); a parked or backed-off row is re-armed, exactly as a change made through
# the API does. The API's coalescing hold (a key sent moments ago waits
# SYNC_COALESCE_SECONDS) is left out: an import touches each contact once, so its rows are
# due at once. Rows are written in a fixed (connection, mapping, key) order, which keeps
# concurrent writers of the same keys out of lock cycles as far as the order can; a deadlock
# that still happens replays the chunk.
_IMPORT_ROWS = """
    SELECT conn.id, m.id, x.email_key, x.id, {priority}, false, now()
    FROM {source} x
    CROSS JOIN connections conn
    JOIN audience_mappings m ON m.connection_id = conn.id
    WHERE conn.owner_id = :owner_id AND conn.audience_id IS NOT NULL
    ORDER BY conn.id, m.id, x.email_key
"""
_ENQUEUE_FROM = f"queued AS ({queue_upsert(_IMPORT_ROWS)})"


def _json_of(alias: str, fields: Sequence[str], prefix: str = "") -> str:
    pairs = ", ".join(f"'{f}', {alias}.{prefix}{f}" for f in fields)
    return f"jsonb_build_object({pairs})"


# What an existing contact becomes: a value in the file replaces the stored one, an empty
# cell keeps it, tags from the file are added (never removed). `c` is the row being updated,
# re-read after any concurrent change (EvalPlanQual), so a concurrent edit is never undone;
# `f` is the staged row.
_DESIRED = {
    **{f: f"COALESCE(f.{f}, c.{f})" for f in IMPORTED_FIELDS if f != "tags"},
    "tags": (
        "CASE WHEN f.tags IS NULL THEN c.tags ELSE c.tags || ARRAY("
        "SELECT t FROM unnest(f.tags) WITH ORDINALITY AS u(t, i)"
        " WHERE NOT EXISTS (SELECT 1 FROM unnest(c.tags) AS x WHERE lower(x) = lower(u.t))"
        " ORDER BY u.i) END"
    ),
}
_SET = ",\n".join(f"{f} = {_DESIRED[f]}" for f in IMPORTED_FIELDS)
_DESIRED_ROW = ", ".join(_DESIRED[f] for f in IMPORTED_FIELDS)
_CURRENT_ROW = ", ".join(f"c.{f}" for f in IMPORTED_FIELDS)
_OLD_COLUMNS = ", ".join(f"o.{f} AS old_{f}" for f in IMPORTED_FIELDS)

# One statement per chunk, in one snapshot:
# - `found`: every staged row with the row that first had its email (an earlier row of this
#   chunk, or of an earlier chunk via import_seen) and the owner's contact with that email.
#   The lookups are LATERAL … LIMIT 1, which PostgreSQL never flattens: one index probe per
#   staged row, whatever the statistics say. (While a large import runs, the planner still
#   believes the owner has a handful of contacts; a plan starting from the contacts table
#   would read all of them once per chunk.)
# - rows whose email came earlier are duplicates: returned, nothing else done with them;
# - `ins`: new emails become contacts (the API's defaults for empty cells). A concurrent
#   create of the same address makes this insert fail with a unique violation; the caller
#   replays the chunk, which then finds the contact and updates it.
# - `upd`: existing contacts whose imported fields differ; the update reaches each by
#   primary key. Unchanged rows are not touched: no version bump, no change row, no queue.
# - `changes`: the audit, like the API's (create: every field; update: before/after of the
#   fields that changed), source `import`;
# - `queued`: the sync-queue upsert for created and changed contacts, at bulk priority.
_APPLY_CHUNK = text(
    f"""
    WITH found AS MATERIALIZED (
        SELECT r.*, COALESCE(seen.row_no, NULLIF(r.first_in_chunk, r.row_no)) AS first_row,
               o.id AS contact_id, {_OLD_COLUMNS}
        FROM (
            SELECT s.*, min(s.row_no) OVER (PARTITION BY s.email_key) AS first_in_chunk
            FROM import_stage s
        ) r
        LEFT JOIN LATERAL (
            SELECT row_no FROM import_seen WHERE email_key = r.email_key LIMIT 1
        ) seen ON true
        LEFT JOIN LATERAL (
            SELECT * FROM contacts
            WHERE owner_id = :owner_id AND email_key = r.email_key
            LIMIT 1
        ) o ON true
    ), remembered AS (
        INSERT INTO import_seen (email_key, row_no)
        SELECT email_key, row_no FROM found WHERE first_row IS NULL
    ), ins AS (
        INSERT INTO contacts AS c
            (owner_id, kind, email, email_key, first_name, last_name, company, phone, addr1,
             addr2, city, state, zip, country, tags, newsletter_opt_in, newsletter_changed_at)
        SELECT :owner_id, COALESCE(f.kind, 'contact'), f.email, f.email_key, f.first_name,
               f.last_name,
               f.company, f.phone, f.addr1, f.addr2, f.city, f.state, f.zip, f.country,
               COALESCE(f.tags, '{{}}'), COALESCE(f.newsletter_opt_in, false),
               CASE WHEN f.newsletter_opt_in THEN now() END
        FROM found f
        WHERE f.first_row IS NULL AND f.contact_id IS NULL
        ORDER BY f.row_no
        RETURNING c.id, c.email_key, {_json_of("c", FIELD_NAMES)} AS after
    ), upd AS (
        UPDATE contacts c SET
            {_SET},
            newsletter_changed_at = CASE
                WHEN f.newsletter_opt_in IS DISTINCT FROM c.newsletter_opt_in
                     AND f.newsletter_opt_in IS NOT NULL
                THEN now() ELSE c.newsletter_changed_at END,
            newsletter_unsubscribed_at = CASE
                WHEN f.newsletter_opt_in = false AND c.newsletter_opt_in
                THEN now() ELSE c.newsletter_unsubscribed_at END,
            version = c.version + 1,
            updated_at = now()
        FROM found f
        WHERE f.first_row IS NULL
          AND c.id = f.contact_id
          AND c.email_key = f.email_key
          AND ROW({_DESIRED_ROW}) IS DISTINCT FROM ROW({_CURRENT_ROW})
        RETURNING c.id, c.email_key, {_json_of("f", IMPORTED_FIELDS, "old_")} AS before,
                  {_json_of("c", IMPORTED_FIELDS)} AS after
    ), changes AS (
        INSERT INTO contact_changes (contact_id, owner_id, op, fields, source, actor)
        SELECT id, :owner_id, 'create', jsonb_build_object('after', after), 'import', :actor
        FROM ins
        UNION ALL
        SELECT u.id, :owner_id, 'update',
               jsonb_build_object(
                   'before', (SELECT jsonb_object_agg(b.key, b.value) FROM jsonb_each(u.before) b
                              WHERE b.value IS DISTINCT FROM u.after -> b.key),
                   'after', (SELECT jsonb_object_agg(a.key, a.value) FROM jsonb_each(u.after) a
                             WHERE a.value IS DISTINCT FROM u.before -> a.key)
               ),
               'import', :actor
        FROM upd u
    ), touched AS (
        SELECT id, email_key FROM ins UNION ALL SELECT id, email_key FROM upd
    ),
    {_ENQUEUE_FROM.format(source="touched", priority=PRIORITY_BULK)}
    SELECT (SELECT count(*) FROM ins) AS created,
           (SELECT count(*) FROM upd) AS updated,
           (SELECT count(*) FROM queued) AS queued,
           (SELECT COALESCE(array_agg(ARRAY[row_no, first_row] ORDER BY row_no), '{{}}')
            FROM found WHERE first_row IS NOT NULL) AS duplicates
    """
)


@dataclass(frozen=True)
class ChunkCounts:
    """What one chunk's statement did."""

    created: int
    updated: int
    queued: int
    duplicates: list[tuple[int, int]]  # (row, the row that first had the email)


class ImportRepository:
    """The staging tables and the set-based statements of one import connection."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def prepare(self) -> None:
        """Create the staging tables on this connection if needed, and empty them."""
        for ddl in _CREATE_TABLES:
            await self.session.execute(text(ddl))
        await self.session.execute(text("TRUNCATE import_stage, import_seen"))

    async def stage(self, records: Sequence[tuple[Any, ...]]) -> None:
        """Replace the staged chunk with `records` (COPY through the driver connection)."""
        # TRUNCATE through the session first: it also opens the session's transaction on
        # the connection, so the COPY below runs inside it and not in autocommit.
        await self.session.execute(text("TRUNCATE import_stage"))
        connection = await self.session.connection()
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        # The key comes from the one normalisation (app.emailkey), never from SQL's lower().
        keyed = [(r[0], r[1], email_key(r[1]), *r[2:]) for r in records]
        await driver.copy_records_to_table(
            "import_stage",
            records=keyed,
            columns=[*STAGE_COLUMNS[:2], "email_key", *STAGE_COLUMNS[2:]],
        )

    async def apply(self, *, owner_id: str, actor: str | None) -> ChunkCounts:
        """Upsert the staged chunk: contacts, audit and queue rows; duplicates reported."""
        # Contacts are reached by index probes only: a hash or merge join would read the
        # whole table once per chunk (quadratic over a large file). The chunk's working set
        # stays in memory. SET LOCAL ends with the chunk's transaction.
        await self.session.execute(text("SET LOCAL enable_hashjoin = off"))
        await self.session.execute(text("SET LOCAL enable_mergejoin = off"))
        await self.session.execute(text("SET LOCAL work_mem = '64MB'"))
        row = (
            await self.session.execute(_APPLY_CHUNK, {"owner_id": owner_id, "actor": actor})
        ).one()
        return ChunkCounts(
            created=int(row.created),
            updated=int(row.updated),
            queued=int(row.queued),
            duplicates=[(int(r), int(first)) for r, first in row.duplicates],
        )

    async def notify(self) -> None:
        """Wake idle workers once the transaction commits."""
        await self.session.execute(
            text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL}
        )

    async def finish(self) -> None:
        """Empty the staging tables (they stay on the pooled connection, empty)."""
        await self.session.execute(text("TRUNCATE import_stage, import_seen"))
