"""Reconcile runs — "Sync Now", the initial sync of an audience, dry runs (DESIGN §6.5).

A run lists every remote member (`count=1000` pages, a `fields` projection), stages each page
with COPY into `reconcile_members` together with the contact that has the address and whether
the member's merge fields already equal what we would send (desired.py computes that, in
Python, per page), then diffs in SQL, in one transaction:

- members that match a consenting contact (fields equal, every contact tag present) are
  *adopted*: the mirror records them as ours, no write call;
- consenting contacts whose member differs, or that have none, are queued at bulk priority
  (live changes keep theirs); the worker sends the current state;
- unsubscribed / cleaned members turn local consent off (cleaned also marks the address
  bounced), with a `contact_changes` row of source `reconcile`; nothing is queued for that;
- a subscribed member whose contact never opted out locally turns local consent on (the
  person subscribed at Mailchimp); one whose contact opted out *after* the member last changed
  is queued (the worker unsubscribes it); anything in between is a conflict, left alone;
- members without a contact are counted and left alone.

A dry run stages and counts the same way and writes nothing else.

Crash safety: a run is claimed by lease (`FOR UPDATE SKIP LOCKED`); every staged page commits
with the run's progress (pages done), which also renews the lease. A worker that dies leaves
the run leased; once the lease lapses (at once when it ran on this host and its process is
gone) another worker resumes at the next page. Queue rows are keyed by address, so a re-run
of the diff cannot queue anything twice. The staging table is UNLOGGED: if a database crash
empties it, the run notices (staged count ≠ progress) and lists again from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import metrics
from app.config import ContactKind, Settings
from app.connections.webhook_registration import one_at_a_time, webhook_url
from app.fieldmap import FieldsRefused
from app.providers.base import (
    AudienceMissing,
    AuthError,
    MemberPage,
    ProviderError,
    RemoteMember,
    ThrottledError,
    TransientError,
)
from app.providers.mapping import RULE_SQL, MappingConfig
from app.sync.limits import request_priority
from app.sync.models import PRIORITY_BULK
from app.sync.outbox import (
    NOTIFY_CHANNEL,
    email_key,
    queue_upsert,
    refresh_statistics,
    statistics_due,
)
from app.sync.slots import is_dead_local

if TYPE_CHECKING:
    from app.sync.engine import ConnectionContext, SyncEngine

log = structlog.get_logger(__name__)
T = TypeVar("T")

PAGE_SIZE = 1000
MAX_RUN_ATTEMPTS = 5
CALL_ATTEMPTS = 6
STAGE_COLUMNS = (
    "email_key",
    "email",
    "remote_id",
    "status",
    "tags",
    "last_changed",
    "contact_id",
    "desired_digest",
    "fields_equal",
)


def reason_auth(name: str) -> str:
    """The connection's status reason when the provider refuses the credentials."""
    return f"{name} refused the credentials; reconnect {name}."


def reason_audience(name: str) -> str:
    """The connection's status reason when the audience is gone."""
    return f"The {name} audience no longer exists; choose another audience."


class LostRun(Exception):
    """The run is no longer ours (cancelled, or another worker took over its lease)."""


class Interrupted(Exception):
    """The worker is stopping: give the run back so another worker resumes it."""


@dataclass(slots=True)
class Run:
    """A claimed run."""

    id: uuid.UUID
    connection_id: uuid.UUID
    mapping_id: uuid.UUID | None
    owner_id: str
    kind: str
    dry_run: bool
    attempts: int
    progress: dict[str, Any]
    started_at: datetime


# --- SQL ------------------------------------------------------------------------------------

_GIVE_UP = text(
    """
    UPDATE sync_runs SET state = 'failed', finished_at = now(), leased_by = NULL,
        lease_until = NULL, error = COALESCE(error, 'gave up after repeated failures')
    WHERE state = 'running' AND lease_until < now() AND attempts >= :max
    """
)
_HOLDERS = text(
    "SELECT DISTINCT leased_by FROM sync_runs WHERE state = 'running' AND leased_by IS NOT NULL"
)
_CLAIM = text(
    """
    UPDATE sync_runs r SET state = 'running', leased_by = :me,
        lease_until = now() + make_interval(secs => :lease), attempts = r.attempts + 1,
        started_at = COALESCE(r.started_at, now()), error = NULL
    FROM (
        SELECT r2.id FROM sync_runs r2 JOIN connections c ON c.id = r2.connection_id
        JOIN audience_mappings m ON m.id = r2.mapping_id
        WHERE (r2.state = 'queued'
               OR (r2.state = 'running' AND (r2.lease_until < now()
                                             OR r2.leased_by = ANY(CAST(:dead AS text[])))))
          AND c.status = 'active' AND c.audience_id IS NOT NULL
          AND r2.progress ->> 'audience_id' = m.audience_id
        ORDER BY r2.created_at
        LIMIT 1
        FOR UPDATE OF r2 SKIP LOCKED
    ) pick
    WHERE r.id = pick.id
    RETURNING r.id, r.connection_id, r.mapping_id, r.owner_id, r.kind, r.dry_run, r.attempts,
        r.progress, r.started_at
    """
)
_RELEASE = text(
    """
    UPDATE sync_runs SET lease_until = now() + make_interval(secs => :after), leased_by = NULL,
        error = :error
    WHERE id = :id AND leased_by = :me AND state = 'running'
    """
)
_FAIL = text(
    """
    UPDATE sync_runs SET state = 'failed', error = :error, finished_at = now(),
        leased_by = NULL, lease_until = NULL
    WHERE id = :id AND leased_by = :me AND state = 'running'
    """
)
_CONNECTION_ERROR = text(
    """
    UPDATE connections SET status = 'error', status_reason = :reason, status_since = now(),
        last_error = :error, last_error_at = now()
    WHERE id = :id AND status IN ('active', 'paused')
    """
)
_FIELDS_ERROR = text(
    "UPDATE connections SET last_error = :error, last_error_at = now() WHERE id = :id"
)
_STAGED_COUNT = text("SELECT count(*) FROM reconcile_members WHERE run_id = :id")
_RESTART = text(
    """
    UPDATE sync_runs SET progress = progress || '{"pages_done": 0, "staged": 0}'::jsonb
    WHERE id = :id AND leased_by = :me AND state = 'running'
    """
)
_CLEAR_STAGING = text("DELETE FROM reconcile_members WHERE run_id = :id")
_SWEEP_STAGING = text(
    """
    DELETE FROM reconcile_members m WHERE NOT EXISTS (
        SELECT 1 FROM sync_runs r WHERE r.id = m.run_id AND r.state IN ('queued', 'running'))
    """
)
_PROGRESS = text(
    """
    UPDATE sync_runs SET progress = progress || CAST(:patch AS jsonb),
        lease_until = now() + make_interval(secs => :lease)
    WHERE id = :id AND leased_by = :me AND state = 'running'
      AND (progress ->> 'pages_done')::int = :pages_done
    RETURNING 1
    """
)
_WEBHOOK = text(
    """
    UPDATE connections SET webhook_id = :webhook_id, webhook_error = :error,
        last_error = COALESCE(:error, last_error),
        last_error_at = CASE WHEN :error IS NULL THEN last_error_at ELSE now() END
    WHERE id = :id AND audience_id = :audience
    """
)
# Another mapping's audience: its webhook is the mapping's (the URL and token are the same).
_MAPPING_WEBHOOK = text(
    """
    UPDATE audience_mappings SET webhook_id = :webhook_id
    WHERE id = :mapping AND audience_id = :audience AND id <> connection_id
    """
)
_CONTACTS = text(
    """
    SELECT id, kind, email, email_key, first_name, last_name, company, phone, addr1, addr2,
        city, state, zip, country, referral, custom_fields, tags, preferences
    FROM contacts WHERE owner_id = :owner AND email_key = ANY(CAST(:keys AS text[]))
    """
)
_PAGE_TABLE = text(
    """
    CREATE TEMP TABLE reconcile_page (
        email_key text, email text, remote_id text, status text, tags text[],
        last_changed timestamptz, contact_id uuid, desired_digest text, fields_equal boolean
    ) ON COMMIT DROP
    """
)
_PAGE_INSERT = text(
    """
    WITH ins AS (
        INSERT INTO reconcile_members (run_id, email_key, email, remote_id, status, tags,
            last_changed, contact_id, desired_digest, fields_equal)
        SELECT :id, p.email_key, p.email, p.remote_id, p.status, p.tags, p.last_changed,
            p.contact_id, p.desired_digest, p.fields_equal
        FROM reconcile_page p
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*) FROM ins
    """
)
_LOCK_RUN = text(
    "SELECT id FROM sync_runs WHERE id = :id AND leased_by = :me AND state = 'running' FOR UPDATE"
)

# The diff. One row per staged member, classified; plus the consenting contacts no member
# matched. Rows the worker or the user changed after the listing began are skipped: what we
# saw is older than what they know.
_PLAN = text(
    f"""
    CREATE TEMP TABLE reconcile_plan ON COMMIT DROP AS
    WITH staged AS (
        SELECT s.email_key, s.remote_id, s.status, s.tags AS remote_tags, s.last_changed,
            s.desired_digest, s.fields_equal, s.contact_id AS staged_contact_id,
            c.id AS contact_id, c.email AS contact_email, c.tags AS contact_tags,
            c.newsletter_opt_in AS opt_in, c.email_status,
            (c.newsletter_opt_in AND c.email_status = 'ok') AS consent,
            c.newsletter_changed_at AS consent_at, c.newsletter_unsubscribed_at AS opted_out_at,
            (c.kind = ANY(CAST(:kinds AS text[])) AND {RULE_SQL}) AS in_scope,
            m.remote_status AS mirror_status, m.remote_changed_at AS mirror_changed_at,
            m.last_synced_at AS mirror_synced_at,
            -- Ours: pushed by us and not archived by us since (a member we archived that is
            -- listed again was brought back by the person).
            (m.pushed_digest IS NOT NULL AND m.remote_status IS DISTINCT FROM 'archived')
                AS ours
        FROM reconcile_members s
        LEFT JOIN contacts c ON c.owner_id = :owner AND c.email_key = s.email_key
        LEFT JOIN sync_state m ON m.connection_id = :conn AND m.mapping_id = :mapping
            AND m.email_key = s.email_key
        WHERE s.run_id = :run
    ), classified AS (
        SELECT *,
            CASE
                WHEN contact_id IS NULL THEN 'remote_only'
                WHEN mirror_synced_at > :started OR consent_at > :started THEN 'skipped'
                -- A kind SYNC_KINDS or the mapping's rule leaves out: the member we pushed is
                -- queued (the worker
                -- archives it, as after a local delete); the person's own unsubscribe or
                -- bounce still becomes the CRM's consent, below.
                WHEN NOT in_scope AND status NOT IN ('unsubscribed', 'cleaned') THEN
                    CASE WHEN ours AND status IN ('subscribed', 'pending', 'transactional')
                         THEN 'kind_removed' ELSE 'kind_excluded' END
                WHEN status IN ('unsubscribed', 'cleaned') THEN
                    CASE WHEN status = 'unsubscribed' AND consent
                              AND mirror_status = 'unsubscribed'
                              AND consent_at > mirror_changed_at THEN 'reoptin'
                         ELSE status END
                WHEN consent THEN 'consenting'
                WHEN status = 'subscribed' AND email_status = 'ok' AND opted_out_at IS NULL
                    THEN 'subscribe_import'
                WHEN status IN ('subscribed', 'pending') AND opted_out_at > last_changed
                    THEN 'unsubscribe_push'
                ELSE 'conflict'
            END AS category,
            COALESCE(fields_equal AND staged_contact_id = contact_id
                     AND contact_tags <@ remote_tags, false) AS matches
        FROM staged
    )
    SELECT email_key, contact_id, contact_email, contact_tags, remote_id, status,
        last_changed, desired_digest, category, matches,
        category IN ('consenting', 'subscribe_import', 'unsubscribed', 'cleaned') AND matches
            AS adopt,
        category IN ('consenting', 'subscribe_import', 'unsubscribe_push', 'unsubscribed',
                     'cleaned') AS mirror_write,
        (category IN ('consenting', 'subscribe_import', 'unsubscribed') AND NOT matches)
            OR category IN ('unsubscribe_push', 'reoptin', 'kind_removed') AS enqueue,
        CASE category
            WHEN 'unsubscribed' THEN opt_in
            WHEN 'cleaned' THEN opt_in OR email_status = 'ok'
            WHEN 'subscribe_import' THEN true
            ELSE false
        END AS consent_change
    FROM classified
    UNION ALL
    SELECT c.email_key, c.id, c.email, c.tags, NULL, NULL, NULL, NULL, 'local_only', false,
        false, false, true, false
    FROM contacts c
    WHERE c.owner_id = :owner AND c.email_key IS NOT NULL
      AND c.newsletter_opt_in AND c.email_status = 'ok'
      AND c.kind = ANY(CAST(:kinds AS text[])) AND {RULE_SQL}
      AND NOT EXISTS (SELECT 1 FROM reconcile_members s
                      WHERE s.run_id = :run AND s.email_key = c.email_key)
    """
)
_COUNTS = text(
    """
    SELECT
        count(*) FILTER (WHERE category <> 'local_only') AS remote_total,
        count(*) FILTER (WHERE adopt AND category IN ('consenting', 'subscribe_import'))
            AS matched,
        count(*) FILTER (WHERE enqueue) AS to_push,
        count(*) FILTER (WHERE category = 'local_only') AS local_only,
        count(*) FILTER (WHERE category = 'remote_only') AS remote_only,
        count(*) FILTER (WHERE category = 'unsubscribed' AND consent_change)
            AS unsubscribed_imported,
        count(*) FILTER (WHERE category = 'cleaned' AND consent_change) AS cleaned_imported,
        count(*) FILTER (WHERE category = 'subscribe_import') AS subscribed_imported,
        count(*) FILTER (WHERE category = 'unsubscribe_push') AS unsubscribes_pushed,
        count(*) FILTER (WHERE category = 'reoptin') AS reoptins_pushed,
        count(*) FILTER (WHERE category = 'conflict') AS consent_conflicts,
        count(*) FILTER (WHERE category = 'kind_removed') AS kind_removed,
        count(*) FILTER (WHERE category = 'kind_excluded') AS kind_excluded,
        count(*) FILTER (WHERE category = 'skipped') AS skipped_changed_meanwhile,
        count(*) FILTER (WHERE category IN ('unsubscribed', 'cleaned')) AS remote_opted_out
    FROM reconcile_plan
    """
)
# The person's decision at the provider becomes the CRM's consent; audited, never queued back.
_CONSENT = text(
    """
    WITH r AS (
        SELECT p.contact_id, p.category, p.last_changed, c.newsletter_opt_in AS was_opt_in,
            c.email_status AS was_status
        FROM reconcile_plan p JOIN contacts c ON c.id = p.contact_id
        WHERE p.consent_change AND c.owner_id = :owner
    ), upd AS (
        UPDATE contacts c SET
            newsletter_opt_in = (r.category = 'subscribe_import'),
            newsletter_changed_at = COALESCE(r.last_changed, now()),
            newsletter_unsubscribed_at = CASE WHEN r.category = 'subscribe_import'
                THEN c.newsletter_unsubscribed_at ELSE COALESCE(r.last_changed, now()) END,
            email_status = CASE WHEN r.category = 'cleaned' THEN 'bounced'
                ELSE c.email_status END,
            version = c.version + 1, updated_at = now()
        FROM r WHERE c.id = r.contact_id
        RETURNING c.id, r.category, r.was_opt_in, r.was_status, c.newsletter_opt_in,
            c.email_status
    )
    INSERT INTO contact_changes (contact_id, owner_id, op, fields, source, actor)
    SELECT upd.id, :owner, 'update',
        jsonb_build_object(
            'before', jsonb_build_object('newsletter_opt_in', upd.was_opt_in,
                                         'email_status', upd.was_status),
            'after', jsonb_build_object('newsletter_opt_in', upd.newsletter_opt_in,
                                        'email_status', upd.email_status),
            'reason', :provider || ' member ' || CASE upd.category
                WHEN 'subscribe_import' THEN 'subscribed' ELSE upd.category END),
        'reconcile', :provider
    FROM upd
    """
)
_MIRROR = text(
    """
    INSERT INTO sync_state AS m (connection_id, mapping_id, email_key, contact_id, remote_id,
        pushed_email, pushed_digest, pushed_tags, remote_status, remote_changed_at,
        last_synced_at)
    SELECT :conn, :mapping, p.email_key, p.contact_id, p.remote_id,
        CASE WHEN p.adopt THEN p.contact_email END,
        CASE WHEN p.adopt THEN p.desired_digest END,
        CASE WHEN p.adopt THEN p.contact_tags ELSE '{}'::text[] END,
        p.status, p.last_changed, now()
    FROM reconcile_plan p WHERE p.mirror_write
    ON CONFLICT (connection_id, mapping_id, email_key) DO UPDATE SET
        contact_id = EXCLUDED.contact_id,
        remote_id = EXCLUDED.remote_id,
        pushed_email = COALESCE(EXCLUDED.pushed_email, m.pushed_email),
        pushed_digest = COALESCE(EXCLUDED.pushed_digest, m.pushed_digest),
        pushed_tags = CASE WHEN EXCLUDED.pushed_digest IS NOT NULL THEN EXCLUDED.pushed_tags
                           ELSE m.pushed_tags END,
        remote_status = EXCLUDED.remote_status,
        remote_changed_at = EXCLUDED.remote_changed_at,
        last_synced_at = now(),
        error_kind = CASE WHEN EXCLUDED.pushed_digest IS NOT NULL THEN NULL ELSE m.error_kind END,
        error = CASE WHEN EXCLUDED.pushed_digest IS NOT NULL THEN NULL ELSE m.error END
    -- A Sync Now with everything in sync rewrites nothing.
    WHERE m.contact_id IS DISTINCT FROM EXCLUDED.contact_id
       OR m.remote_id IS DISTINCT FROM EXCLUDED.remote_id
       OR m.remote_status IS DISTINCT FROM EXCLUDED.remote_status
       OR m.remote_changed_at IS DISTINCT FROM EXCLUDED.remote_changed_at
       OR (EXCLUDED.pushed_digest IS NOT NULL
           AND (m.pushed_digest IS DISTINCT FROM EXCLUDED.pushed_digest
                OR m.pushed_email IS DISTINCT FROM EXCLUDED.pushed_email
                OR m.pushed_tags IS DISTINCT FROM EXCLUDED.pushed_tags
                OR m.error_kind IS NOT NULL))
    """
)
# A consenting contact no member matched, whose mirror still says "present": the member is
# gone (or archived) at the provider; forget the stale mirror so the worker plans afresh.
_STALE_MIRROR = text(
    """
    DELETE FROM sync_state m USING reconcile_plan p
    WHERE p.category = 'local_only' AND m.connection_id = :conn AND m.mapping_id = :mapping
      AND m.email_key = p.email_key
      AND m.remote_status IN ('subscribed', 'unsubscribed', 'cleaned', 'pending',
                              'transactional')
      AND (m.last_synced_at IS NULL OR m.last_synced_at < :started)
    """
)
# Bulk priority: live changes go first. A row already queued keeps its seq (the worker sends
# the current state anyway); a parked one is re-armed: Sync Now is a retry.
_PLANNED_ROWS = """
    SELECT :conn, :mapping, p.email_key, p.contact_id, :priority, false, now()
    FROM reconcile_plan p WHERE p.enqueue
"""
_ENQUEUE = text(
    f"""
    WITH ins AS ({queue_upsert(_PLANNED_ROWS, only_parked=True)})
    SELECT count(*), CASE WHEN count(*) > 0 THEN pg_notify(:channel, '') END FROM ins
    """
)
_DONE = text(
    """
    UPDATE sync_runs SET state = 'done', counts = CAST(:counts AS jsonb),
        progress = progress || CAST(:patch AS jsonb), finished_at = now(),
        leased_by = NULL, lease_until = NULL, error = NULL
    WHERE id = :id AND leased_by = :me AND state = 'running'
    """
)
_FULL_SYNC_AT = text("UPDATE connections SET last_full_sync_at = now() WHERE id = :id")


def stage_records(
    run_id: uuid.UUID,
    members: Sequence[RemoteMember],
    contacts: Mapping[str, Any],
    cfg: MappingConfig,
) -> list[tuple[Any, ...]]:
    """COPY rows for one page: the member, its contact, and whether its fields already match."""
    seen: set[str] = set()
    records: list[tuple[Any, ...]] = []
    for m in members:
        key = email_key(m.email_address)
        if not key or key in seen:
            continue
        seen.add(key)
        contact = contacts.get(key)
        digest: str | None = None
        equal = False
        if contact is not None and cfg.syncs(contact):
            fields = cfg.payload_fields(contact)
            digest = cfg.contact_digest(contact)
            # Mapped interests must hold what we send too (Mailchimp interest groups).
            wanted = cfg.interest_payload(contact)
            equal = cfg.matches(fields, m.fields) and (
                not wanted
                or m.interests is not None
                and all(m.interests.get(k, False) == v for k, v in wanted.items())
            )
        records.append(
            (
                key,
                m.email_address,
                m.remote_id,
                m.status,
                list(m.tags),
                m.last_changed,
                contact["id"] if contact is not None else None,
                digest,
                equal,
            )
        )
    return records


# --- the job -------------------------------------------------------------------------------


class Reconciler:
    """The periodic job that claims reconcile runs and executes them, one at a time a worker."""

    POLL_SECONDS = 1.0

    def __init__(
        self,
        settings: Settings,
        *,
        page_size: int = PAGE_SIZE,
        max_attempts: int = MAX_RUN_ATTEMPTS,
        on_page: Callable[[uuid.UUID, int], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.page_size = page_size
        self.on_page = on_page  # observer after each committed page (progress reporting, tests)
        self.max_attempts = max_attempts
        self.lease_seconds = max(30.0, settings.SYNC_LEASE_SECONDS)

    async def __call__(self, engine: SyncEngine) -> None:
        """Claim one run if this worker is not executing one; execute it in the background."""
        if engine.stopping or any(t.get_name().startswith("reconcile") for t in engine.spawned):
            return
        run = await self.claim(engine)
        if run is not None:
            engine.spawn(self.execute(engine, run), name=f"reconcile-{run.id}")

    async def run_once(self, engine: SyncEngine) -> uuid.UUID | None:
        """Claim and execute one run to the end (CLI, tests, benchmarks); needs engine.run()."""
        run = await self.claim(engine)
        if run is None:
            return None
        await self.execute(engine, run)
        return run.id

    async def claim(self, engine: SyncEngine) -> Run | None:
        """Lease the oldest runnable run: queued, or running under an expired or dead lease."""
        async with engine.db.begin() as conn:
            await conn.execute(_GIVE_UP, {"max": self.max_attempts})
            holders = [h for (h,) in await conn.execute(_HOLDERS) if h != engine.me]
            dead = [h for h in holders if is_dead_local(h)]
            row = (
                (
                    await conn.execute(
                        _CLAIM, {"me": engine.me, "lease": self.lease_seconds, "dead": dead}
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        run = Run(**dict(row))
        log.info(
            "sync.reconcile.claimed",
            run=str(run.id),
            connection=str(run.connection_id),
            kind=run.kind,
            dry_run=run.dry_run,
            attempt=run.attempts,
            pages_done=run.progress.get("pages_done", 0),
        )
        return run

    async def execute(self, engine: SyncEngine, run: Run) -> None:
        """List, stage and diff; give the lease back on any interruption."""
        # Its requests are bulk work for the shared limits: live changes go first (§14.3).
        request_priority.set(PRIORITY_BULK)
        started = time.monotonic()
        ctx: ConnectionContext | None = None
        try:
            ctx = await engine.connection_context(run.connection_id, run.mapping_id)
            if ctx is None:
                await self._fail(engine, run, "the connection's credentials are unusable")
                return
            if not run.dry_run:
                await self._ensure_webhook(engine, ctx, run)
                await self._ensure_fields(engine, ctx, run)
            pages = await self._stage_all(engine, ctx, run)
            counts = await self._apply(engine.db, engine.me, run, ctx, ctx.mapping)
            log.info(
                "sync.reconcile.done",
                run=str(run.id),
                connection=str(run.connection_id),
                dry_run=run.dry_run,
                pages=pages,
                seconds=round(time.monotonic() - started, 3),
                **counts,
            )
        except LostRun:
            log.info("sync.reconcile.lost", run=str(run.id))
            await self._cleanup_if_inactive(engine.db, run)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(engine, run, 0.0, "interrupted; resumes"))
            raise
        except Interrupted:
            await self._release(engine, run, 0.0, "interrupted; resumes")
        except (AuthError, AudienceMissing) as exc:
            name = ctx.provider.spec.display_name if ctx is not None else "The provider"
            reason = reason_auth(name) if isinstance(exc, AuthError) else reason_audience(name)
            async with engine.db.begin() as conn:
                await conn.execute(
                    _CONNECTION_ERROR,
                    {"reason": reason, "error": exc.message[:500], "id": run.connection_id},
                )
            await self._fail(engine, run, reason)
        except (TransientError, ThrottledError) as exc:
            delay = engine.options.backoff.delay(run.attempts) * 5
            name = ctx.provider.spec.display_name if ctx is not None else "provider"
            await self._release(engine, run, delay, f"{name}: {exc.message[:300]}")
        except Exception as exc:
            log.exception("sync.reconcile.crashed", run=str(run.id))
            delay = engine.options.backoff.delay(run.attempts) * 5
            await self._release(engine, run, delay, f"internal error: {type(exc).__name__}")

    # --- steps -------------------------------------------------------------------------------

    async def _call(
        self,
        engine: SyncEngine,
        ctx: ConnectionContext,
        fn: Callable[[], Awaitable[T]],
        *,
        attempts: int = CALL_ATTEMPTS,
    ) -> T:
        """One request (the client's limiter holds the account's slot), retried a few times."""
        gate = engine.slots.gate(ctx.account_key)
        for attempt in range(1, attempts + 1):
            try:
                result = await fn()
            except ThrottledError as exc:
                gate.throttled(exc.retry_after)  # the gate holds requests through the cool-down
                if attempt == attempts:
                    raise
            except TransientError:
                if attempt == attempts or engine.stopping:
                    raise
                await asyncio.sleep(engine.options.backoff.delay(attempt))
            else:
                gate.succeeded()
                return result
        raise AssertionError("unreachable")

    async def _ensure_webhook(self, engine: SyncEngine, ctx: ConnectionContext, run: Run) -> None:
        async with engine.db.connect() as conn:
            token = (
                await conn.execute(
                    text("SELECT webhook_token FROM connections WHERE id = :id"),
                    {"id": run.connection_id},
                )
            ).scalar()
        if not token:
            return
        if ctx.provider.spec.capabilities.inbound != "webhook":
            return  # nothing to register: the scheduled pull brings changes back
        url = webhook_url(self.settings.public_base_url, ctx.provider.id, token)
        webhook_id: str | None = None
        error: str | None = None
        try:
            webhook_id = await self._keep_webhook(engine, ctx, run, url, token)
        except (AuthError, AudienceMissing):
            raise
        except ProviderError as exc:
            # Best effort: the sync works without it (a reconcile catches what it misses).
            error = f"Webhook not registered: {exc.message[:300]}"
            log.warning(
                "sync.reconcile.webhook_failed",
                connection=str(run.connection_id),
                url=url,
                reason=error,
            )
        async with engine.db.begin() as conn:
            await conn.execute(
                _WEBHOOK,
                {
                    "webhook_id": webhook_id,
                    "error": error,
                    "id": run.connection_id,
                    "audience": ctx.audience_id,
                },
            )
            await conn.execute(
                _MAPPING_WEBHOOK,
                {"webhook_id": webhook_id, "mapping": ctx.mapping_key, "audience": ctx.audience_id},
            )

    async def _keep_webhook(
        self, engine: SyncEngine, ctx: ConnectionContext, run: Run, url: str, token: str
    ) -> str | None:
        """`ensure_webhook` under the connection's webhook lock, retried whole: a create that
        timed out may have been applied, so it is never re-sent blindly — the retry lists the
        webhooks again and keeps the one that exists (no duplicate to delete later)."""
        for attempt in range(1, CALL_ATTEMPTS + 1):
            try:
                async with one_at_a_time(engine.db.begin, run.connection_id):
                    return await ctx.provider.inbound.ensure_webhook(
                        ctx.client,
                        ctx.audience_id,
                        url=url,
                        webhook_token=token,
                        call=lambda fn: self._call(engine, ctx, fn, attempts=1),
                    )
            except (TransientError, ThrottledError):
                if attempt == CALL_ATTEMPTS or engine.stopping:
                    raise
                await asyncio.sleep(engine.options.backoff.delay(attempt))
        raise AssertionError("unreachable")

    async def _ensure_fields(self, engine: SyncEngine, ctx: ConnectionContext, run: Run) -> None:
        """Create merge fields the field map needs and the audience lacks (deleted since, or a
        connection configured without a connect); a refusal is shown, the sync goes on."""
        prepare = ctx.provider.connect.prepare_audience
        try:
            created = await self._call(
                engine, ctx, lambda: prepare(ctx.client, ctx.audience_id, ctx.mapping)
            )
        except (AuthError, AudienceMissing):
            raise
        except (FieldsRefused, ProviderError) as exc:
            reason = str(exc) if isinstance(exc, FieldsRefused) else exc.message[:300]
            log.warning(
                "sync.reconcile.fields_refused", connection=str(run.connection_id), reason=reason
            )
            async with engine.db.begin() as conn:
                await conn.execute(
                    _FIELDS_ERROR,
                    {"error": f"Merge fields: {reason}"[:500], "id": run.connection_id},
                )
            return
        if created:
            log.info(
                "sync.reconcile.fields_created", connection=str(run.connection_id), tags=created
            )

    async def _stage_all(self, engine: SyncEngine, ctx: ConnectionContext, run: Run) -> int:
        pages_done = int(run.progress.get("pages_done") or 0)
        staged = int(run.progress.get("staged") or 0)
        async with engine.db.begin() as conn:
            actual = int((await conn.execute(_STAGED_COUNT, {"id": run.id})).scalar_one())
            if actual != staged:
                # The staging table lost rows (a database crash empties UNLOGGED tables), or a
                # page landed without its progress: list again from the start.
                await conn.execute(_CLEAR_STAGING, {"id": run.id})
                await conn.execute(_RESTART, {"id": run.id, "me": engine.me})
                pages_done, staged = 0, 0
                run.progress.update(pages_done=0, staged=0)
        cfg = ctx.mapping

        def fetch(page_no: int) -> asyncio.Task[MemberPage]:
            call = functools.partial(
                ctx.client.list_members,
                ctx.audience_id,
                offset=page_no * self.page_size,
                count=self.page_size,
            )
            return asyncio.ensure_future(self._call(engine, ctx, call))

        # One page ahead: the provider lists the next page while this one is staged.
        pending = fetch(pages_done)
        try:
            while True:
                if engine.stopping:
                    raise Interrupted(str(run.id))
                page = await pending
                offset = pages_done * self.page_size
                more = len(page.members) >= self.page_size and offset + len(page.members) < int(
                    page.total_items
                )
                if more:
                    pending = fetch(pages_done + 1)
                keys = sorted({k for m in page.members if (k := email_key(m.email_address))})
                async with engine.db.connect() as conn:
                    rows = await conn.execute(_CONTACTS, {"owner": ctx.owner_id, "keys": keys})
                    contacts = {r["email_key"]: r for r in rows.mappings()}
                records = stage_records(run.id, page.members, contacts, cfg)
                added = await self._stage_page(engine, run, pages_done, records, page.total_items)
                pages_done += 1
                staged += added
                if self.on_page is not None:
                    await self.on_page(run.id, pages_done)
                if not more:
                    return pages_done
        finally:
            if not pending.done():
                pending.cancel()
            # Retrieve its outcome, whatever it is, so nothing is reported as never retrieved.
            pending.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _stage_page(
        self,
        engine: SyncEngine,
        run: Run,
        pages_done: int,
        records: list[tuple[Any, ...]],
        remote_total: int,
    ) -> int:
        """COPY one page into staging, in the same transaction as the run's progress."""
        async with engine.db.begin() as conn:
            await conn.execute(_PAGE_TABLE)
            if records:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                await driver.copy_records_to_table(
                    "reconcile_page", records=records, columns=list(STAGE_COLUMNS)
                )
            added = int((await conn.execute(_PAGE_INSERT, {"id": run.id})).scalar_one())
            patch = {
                "pages_done": pages_done + 1,
                "remote_total": int(remote_total),
                "staged": int(run.progress.get("staged") or 0) + added,
            }
            ok = (
                await conn.execute(
                    _PROGRESS,
                    {
                        "patch": _json(patch),
                        "lease": self.lease_seconds,
                        "id": run.id,
                        "me": engine.me,
                        "pages_done": pages_done,
                    },
                )
            ).first()
            if ok is None:
                raise LostRun(str(run.id))
        run.progress.update(patch)
        return added

    async def _apply(
        self, db: AsyncEngine, me: str, run: Run, ctx: ConnectionContext, cfg: MappingConfig
    ) -> dict[str, int]:
        """Diff staging against contacts and the mirror; write (unless dry); finish the run."""
        params = {
            "run": run.id,
            "conn": run.connection_id,
            "mapping": ctx.mapping_key,
            "owner": ctx.owner_id,
            "started": run.started_at,
            "kinds": sorted(cfg.kinds if cfg.kinds is not None else (k.value for k in ContactKind)),
            "provider": ctx.provider.id,
            **cfg.rule.sql_params(),
        }
        async with db.begin() as conn:
            if (await conn.execute(_LOCK_RUN, {"id": run.id, "me": me})).first() is None:
                raise LostRun(str(run.id))
            await conn.execute(_PLAN, params)
            counts = {k: int(v) for k, v in (await conn.execute(_COUNTS)).mappings().one().items()}
            if not run.dry_run:
                await self._write(conn, params)
            patch = {"phase": "done"}
            await conn.execute(
                _DONE,
                {"counts": _json(counts), "patch": _json(patch), "id": run.id, "me": me},
            )
            if not run.dry_run:
                await conn.execute(_FULL_SYNC_AT, {"id": run.connection_id})
            await conn.execute(_CLEAR_STAGING, {"id": run.id})
        metrics.RECONCILE_RUNS.labels(kind=run.kind, outcome="done").inc()
        with contextlib.suppress(Exception):
            async with db.begin() as conn:
                await conn.execute(_SWEEP_STAGING)
                written = counts.get("to_push", 0) + counts.get("matched", 0)
                if not run.dry_run and statistics_due(written, 0):
                    await refresh_statistics(conn, "sync_queue", "sync_state")
        return counts

    @staticmethod
    async def _write(conn: AsyncConnection, params: dict[str, Any]) -> None:
        await conn.execute(_CONSENT, {"owner": params["owner"], "provider": params["provider"]})
        target = {"conn": params["conn"], "mapping": params["mapping"]}
        await conn.execute(_MIRROR, target)
        await conn.execute(_STALE_MIRROR, {**target, "started": params["started"]})
        await conn.execute(
            _ENQUEUE, {**target, "priority": PRIORITY_BULK, "channel": NOTIFY_CHANNEL}
        )

    # --- endings -----------------------------------------------------------------------------

    async def _release(self, engine: SyncEngine, run: Run, after: float, error: str) -> None:
        with contextlib.suppress(Exception):
            async with engine.db.begin() as conn:
                await conn.execute(
                    _RELEASE, {"after": after, "error": error, "id": run.id, "me": engine.me}
                )
        log.warning(
            "sync.reconcile.released", run=str(run.id), retry_in=round(after, 1), error=error
        )

    async def _fail(self, engine: SyncEngine, run: Run, error: str) -> None:
        async with engine.db.begin() as conn:
            await conn.execute(_FAIL, {"error": error, "id": run.id, "me": engine.me})
            await conn.execute(_CLEAR_STAGING, {"id": run.id})
        metrics.RECONCILE_RUNS.labels(kind=run.kind, outcome="failed").inc()
        log.warning("sync.reconcile.failed", run=str(run.id), error=error)

    @staticmethod
    async def _cleanup_if_inactive(db: AsyncEngine, run: Run) -> None:
        with contextlib.suppress(Exception):
            async with db.begin() as conn:
                await conn.execute(_SWEEP_STAGING)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
