"""Set-based SQL of the CSV import: COPY into a staging table, then a few statements a chunk.

Two temporary tables live on the import's one connection for the whole import:
- `import_stage` holds the current chunk's valid rows (truncated per chunk, COPY-filled);
- `import_seen` holds every email key the import has already taken, with its row number, so
  a duplicate in a later chunk is found by an index probe in PostgreSQL, not by a Python set
  that would grow with the file (a million addresses would cost the importer ~150 MB).
Both are created once per connection and truncated, never dropped: prepared statements that
name them stay valid on a pooled connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.sync.models import PRIORITY_BULK
from app.sync.outbox import NOTIFY_CHANNEL

# The order of a staged record (the tuples the importer builds).
STAGE_COLUMNS = (
    "row_no",
    "email",
    "kind",
    "first_name",
    "last_name",
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

# Fields an import may write, compared with IS DISTINCT FROM to tell changed from unchanged.
# The email is not among them: rows are matched on lower(trim(email)), and a difference in
# case alone is not worth a change and a sync.
IMPORTED_FIELDS = (
    "kind",
    "first_name",
    "last_name",
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

# Every field the API's audit records for a create (app.contacts.service.FIELD_NAMES).
_CREATE_AUDIT_FIELDS = (
    "kind",
    "email",
    "first_name",
    "last_name",
    "phone",
    "addr1",
    "addr2",
    "city",
    "state",
    "zip",
    "country",
    "tags",
    "custom_fields",
    "notes",
    "newsletter_opt_in",
    "lead_status",
    "referral",
)

_CREATE_TABLES = (
    """
    CREATE TEMP TABLE IF NOT EXISTS import_stage (
        row_no integer NOT NULL,
        email text NOT NULL,
        email_key text GENERATED ALWAYS AS (lower(btrim(email))) STORED,
        kind text,
        first_name text,
        last_name text,
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

# Duplicates: within the chunk the first row of a key wins (window); across chunks a key
# already in import_seen loses (ON CONFLICT DO NOTHING is an index probe per row, whatever
# the size of import_seen). Losers leave the stage; their row and the winner's come back.
_DROP_DUPLICATES = text(
    """
    WITH ranked AS (
        SELECT row_no, email_key,
               min(row_no) OVER (PARTITION BY email_key) AS first_in_chunk
        FROM import_stage
    ), fresh AS (
        INSERT INTO import_seen (email_key, row_no)
        SELECT email_key, row_no FROM ranked WHERE row_no = first_in_chunk
        ON CONFLICT (email_key) DO NOTHING
        RETURNING email_key
    ), dups AS (
        SELECT r.row_no,
               COALESCE(
                   (SELECT seen.row_no FROM import_seen seen WHERE seen.email_key = r.email_key),
                   r.first_in_chunk
               ) AS first_row
        FROM ranked r
        WHERE r.row_no <> r.first_in_chunk
           OR NOT EXISTS (SELECT 1 FROM fresh f WHERE f.email_key = r.email_key)
    ), gone AS (
        DELETE FROM import_stage s USING dups d WHERE s.row_no = d.row_no
    )
    SELECT row_no, first_row FROM dups ORDER BY row_no
    """
)

# The queue upsert of app.sync.outbox._ENQUEUE, set-based and at bulk priority: one row per
# (connection with an audience) × touched contact. Live work keeps its priority (LEAST); a
# parked or backed-off row is re-armed, exactly as a change made through the API does.
_ENQUEUE_FROM = """
    queued AS (
        INSERT INTO sync_queue AS q (connection_id, email_key, contact_id, priority)
        SELECT conn.id, x.email_key, x.id, {priority}
        FROM {source} x
        CROSS JOIN connections conn
        WHERE conn.owner_id = :owner_id AND conn.audience_id IS NOT NULL
        ORDER BY conn.id, x.email_key
        ON CONFLICT (connection_id, email_key) DO UPDATE SET
            seq = q.seq + 1,
            contact_id = COALESCE(EXCLUDED.contact_id, q.contact_id),
            priority = LEAST(q.priority, EXCLUDED.priority),
            state = 'ready',
            attempts = 0,
            last_error = NULL,
            available_at = now()
        RETURNING 1
    )
"""


def _json_of(alias: str, fields: Sequence[str]) -> str:
    return "jsonb_build_object(" + ", ".join(f"'{f}', {alias}.{f}" for f in fields) + ")"


# New contacts: values absent from the file take the API's defaults. ON CONFLICT DO NOTHING
# both skips existing contacts (its pre-check is an index probe) and survives a concurrent
# create of the same address; the update statement that follows sees and handles those.
_INSERT_NEW = text(
    f"""
    WITH ins AS (
        INSERT INTO contacts AS c
            (owner_id, kind, email, first_name, last_name, phone, addr1, addr2, city, state,
             zip, country, tags, newsletter_opt_in, newsletter_changed_at)
        SELECT :owner_id, COALESCE(s.kind, 'contact'), s.email, s.first_name, s.last_name,
               s.phone, s.addr1, s.addr2, s.city, s.state, s.zip, s.country,
               COALESCE(s.tags, '{{}}'), COALESCE(s.newsletter_opt_in, false),
               CASE WHEN s.newsletter_opt_in THEN now() END
        FROM import_stage s
        ORDER BY s.row_no
        ON CONFLICT (owner_id, email_key) DO NOTHING
        RETURNING c.id, c.email_key, {_json_of("c", _CREATE_AUDIT_FIELDS)} AS after
    ), changes AS (
        INSERT INTO contact_changes (contact_id, owner_id, op, fields, source, actor)
        SELECT id, :owner_id, 'create', jsonb_build_object('after', after), 'import', :actor
        FROM ins
    ),
    {_ENQUEUE_FROM.format(source="ins", priority=PRIORITY_BULK)}
    SELECT (SELECT count(*) FROM ins) AS contacts, (SELECT count(*) FROM queued) AS queued
    """
)

# What an existing contact becomes: a value in the file replaces the stored one, an empty
# cell keeps it, tags from the file are added (never removed). `c` is the row being updated,
# re-read after any concurrent change (EvalPlanQual), so a concurrent edit is never undone.
_DESIRED = {
    **{f: f"COALESCE(s.{f}, c.{f})" for f in IMPORTED_FIELDS if f != "tags"},
    "tags": (
        "CASE WHEN s.tags IS NULL THEN c.tags ELSE c.tags || ARRAY("
        "SELECT t FROM unnest(s.tags) WITH ORDINALITY AS u(t, i)"
        " WHERE NOT EXISTS (SELECT 1 FROM unnest(c.tags) AS x WHERE lower(x) = lower(u.t))"
        " ORDER BY u.i) END"
    ),
}
_SET = ",\n".join(f"{f} = {_DESIRED[f]}" for f in IMPORTED_FIELDS)
_DESIRED_ROW = ", ".join(_DESIRED[f] for f in IMPORTED_FIELDS)
_CURRENT_ROW = ", ".join(f"c.{f}" for f in IMPORTED_FIELDS)

# Existing contacts whose imported fields differ: update, audit only the fields that changed
# (before/after, like the API), queue. Unchanged rows are not touched at all: no version
# bump, no change row, no queue row. Contacts the insert just created match too, and are
# unchanged by construction. `old` is the row as the statement found it, for the audit.
_UPDATE_EXISTING = text(
    f"""
    WITH upd AS (
        UPDATE contacts c SET
            {_SET},
            newsletter_changed_at = CASE
                WHEN s.newsletter_opt_in IS DISTINCT FROM c.newsletter_opt_in
                     AND s.newsletter_opt_in IS NOT NULL
                THEN now() ELSE c.newsletter_changed_at END,
            newsletter_unsubscribed_at = CASE
                WHEN s.newsletter_opt_in = false AND c.newsletter_opt_in
                THEN now() ELSE c.newsletter_unsubscribed_at END,
            version = c.version + 1,
            updated_at = now()
        FROM import_stage s
        JOIN contacts old ON old.owner_id = :owner_id AND old.email_key = s.email_key
        WHERE c.id = old.id
          AND c.owner_id = :owner_id
          AND c.email_key = s.email_key
          AND ROW({_DESIRED_ROW}) IS DISTINCT FROM ROW({_CURRENT_ROW})
        RETURNING c.id, c.email_key,
                  {_json_of("old", IMPORTED_FIELDS)} AS before,
                  {_json_of("c", IMPORTED_FIELDS)} AS after
    ), changes AS (
        INSERT INTO contact_changes (contact_id, owner_id, op, fields, source, actor)
        SELECT u.id, :owner_id, 'update',
               jsonb_build_object(
                   'before', (SELECT jsonb_object_agg(b.key, b.value) FROM jsonb_each(u.before) b
                              WHERE b.value IS DISTINCT FROM u.after -> b.key),
                   'after', (SELECT jsonb_object_agg(a.key, a.value) FROM jsonb_each(u.after) a
                             WHERE a.value IS DISTINCT FROM u.before -> a.key)
               ),
               'import', :actor
        FROM upd u
    ),
    {_ENQUEUE_FROM.format(source="upd", priority=PRIORITY_BULK)}
    SELECT (SELECT count(*) FROM upd) AS contacts, (SELECT count(*) FROM queued) AS queued
    """
)


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
        await driver.copy_records_to_table(
            "import_stage", records=records, columns=list(STAGE_COLUMNS)
        )

    async def drop_duplicates(self) -> list[tuple[int, int]]:
        """Remove rows whose email an earlier row already had: [(row, first row)]."""
        result = await self.session.execute(_DROP_DUPLICATES)
        return [(int(r[0]), int(r[1])) for r in result.all()]

    async def upsert(self, *, owner_id: str, actor: str | None) -> tuple[int, int, int]:
        """Insert new contacts and update changed ones: (created, updated, queue rows)."""
        # The staged chunk is small and the contacts table may be huge: probe its indexes
        # row by row. A hash or merge join would read every contact of the owner per chunk
        # (quadratic over a large file). SET LOCAL ends with the chunk's transaction.
        await self.session.execute(text("SET LOCAL enable_hashjoin = off"))
        await self.session.execute(text("SET LOCAL enable_mergejoin = off"))
        params = {"owner_id": owner_id, "actor": actor}
        created, queued_new = (await self.session.execute(_INSERT_NEW, params)).one()
        updated, queued_changed = (await self.session.execute(_UPDATE_EXISTING, params)).one()
        return int(created), int(updated), int(queued_new) + int(queued_changed)

    async def notify(self) -> None:
        """Wake idle workers once the transaction commits."""
        await self.session.execute(
            text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL}
        )

    async def finish(self) -> None:
        """Empty the staging tables (they stay on the pooled connection, empty)."""
        await self.session.execute(text("TRUNCATE import_stage, import_seen"))
