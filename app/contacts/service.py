"""Contact use cases: every write is the contact, its audit row and its outbox rows, together."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.contacts.repository import ContactRepository, Row
from app.contacts.schemas import (
    ContactCreate,
    ContactOut,
    ContactPage,
    ContactSync,
    ContactUpdate,
    ForgetResult,
    SyncStatus,
)
from app.errors import Conflict, NotFound, PreconditionFailed, Unprocessable
from app.providers.mapping import AudienceRule
from app.sync.outbox import email_key

# Columns the audit and the diff consider; generated and bookkeeping columns are not fields.
FIELD_NAMES = (
    "kind",
    "email",
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
    "preferences",
    "custom_fields",
    "notes",
    "newsletter_opt_in",
    "lead_status",
    "referral",
)


def etag(row: Row) -> str:
    """The strong ETag of a contact version."""
    return f'"{row["version"]}"'


def etag_matches(if_match: str, row: Row) -> bool:
    """RFC 9110 If-Match: `*` or any listed tag equal to the current one (W/ ignored)."""
    current = etag(row)
    for candidate in if_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == current:
            return True
    return False


def encode_cursor(row: Row) -> str:
    """An opaque cursor after `row`."""
    raw = f"{row['created_at'].isoformat()}|{row['id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor names; 422 when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, ident = raw.split("|", 1)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("a cursor we wrote carries an offset")
        # The driver sends timestamptz in UTC: a date at the edge of datetime's range
        # (year 1 or 9999 with an offset) would overflow there, as a 500.
        return when.astimezone(UTC), uuid.UUID(ident)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise Unprocessable(
            "The cursor is not valid; use next_cursor from a previous page."
        ) from None


def _sync_status(queue: Row | None, mirror: Row | None) -> SyncStatus:
    if queue is not None:
        return "failed" if queue["state"] == "parked" else "pending"
    if mirror is not None:
        if mirror["error_kind"]:
            return "rejected"
        if mirror["remote_status"]:
            return "synced"
    return "not_synced"


class ContactService:
    """Create, read, update, delete and forget contacts of one owner."""

    async def create(
        self,
        session: AsyncSession,
        *,
        owner_id: str,
        data: ContactCreate,
        actor: str | None,
        source: str = "api",
    ) -> Written:
        """Insert a contact with its audit row and outbox rows; 409 on a duplicate email."""
        repo = ContactRepository(session)
        values = data.model_dump()
        if data.newsletter_opt_in:
            values["newsletter_changed_at"] = datetime.now(UTC)
        if data.preferences:
            values["preferences_changed_at"] = datetime.now(UTC)
        row = await repo.insert(owner_id, values)
        if row is None:
            existing = await repo.id_by_email_key(owner_id, email_key(data.email) or "")
            raise Conflict(
                f"A contact with the email {data.email} already exists.",
                extra={"existing_id": str(existing) if existing else None},
            )
        lines, _ = await repo.record_change(
            owner_id=owner_id,
            contact_id=row["id"],
            op="create",
            fields={"after": _jsonable({k: row[k] for k in FIELD_NAMES})},
            source=source,
            actor=actor,
            queue_keys=[row["email_key"]],
            queue_contact_id=row["id"],
            sync_key=row["email_key"],
        )
        return Written(row, _out(row, lines))

    async def get(self, session: AsyncSession, *, owner_id: str, contact_id: uuid.UUID) -> Row:
        """One contact of the owner, or 404."""
        row = await ContactRepository(session).get(owner_id, contact_id)
        if row is None:
            raise NotFound(f"Contact {contact_id} does not exist.")
        return row

    async def update(
        self,
        session: AsyncSession,
        *,
        owner_id: str,
        contact_id: uuid.UUID,
        data: ContactUpdate,
        if_match: str | None,
        actor: str | None,
        source: str = "api",
    ) -> Written:
        """Apply the sent fields; nothing changes (no version, no sync) when nothing differs."""
        repo = ContactRepository(session)
        row = await repo.get(owner_id, contact_id, for_update=True)
        if row is None:
            raise NotFound(f"Contact {contact_id} does not exist.")
        if if_match is not None and not etag_matches(if_match, row):
            raise PreconditionFailed(
                f"The contact changed since you read it (now at version {row['version']}).",
                extra={"current_etag": etag(row)},
            )
        sent = data.model_dump(include=data.model_fields_set)
        for must_have in ("kind", "newsletter_opt_in"):
            if must_have in sent and sent[must_have] is None:
                raise Unprocessable(f"{must_have} cannot be null.")
        sent = {
            k: ([] if k in ("tags", "preferences") else {})
            if v is None and k in ("tags", "preferences", "custom_fields")
            else v
            for k, v in sent.items()
        }
        diff = {k: v for k, v in sent.items() if row[k] != v}
        if not diff:
            (out,) = await self.render(session, owner_id=owner_id, rows=[row])
            return Written(row, out)
        return await self._apply(
            session, owner_id=owner_id, row=row, diff=diff, actor=actor, source=source
        )

    async def _apply(
        self,
        session: AsyncSession,
        *,
        owner_id: str,
        row: Row,
        diff: dict[str, Any],
        actor: str | None,
        source: str,
    ) -> Written:
        repo = ContactRepository(session)
        old_key = row["email_key"]
        new_key = email_key(diff["email"]) if "email" in diff else old_key
        if new_key and new_key != old_key:
            other = await repo.id_by_email_key(owner_id, new_key, exclude=row["id"])
            if other is not None:
                raise Conflict(
                    f"A contact with the email {diff['email']} already exists.",
                    extra={"existing_id": str(other)},
                )
        values = dict(diff)
        if "preferences" in diff:
            # The newer side wins against the provider's (interest groups): remember when.
            values["preferences_changed_at"] = datetime.now(UTC)
        if "newsletter_opt_in" in diff:
            now = datetime.now(UTC)
            values["newsletter_changed_at"] = now
            if not diff["newsletter_opt_in"]:
                values["newsletter_unsubscribed_at"] = now
        if new_key != old_key:
            try:
                # The email key is the only unique field an update can collide on.
                async with session.begin_nested():
                    new = await repo.update(owner_id, row["id"], values)
            except IntegrityError:
                # A concurrent write took the address between our check and the update.
                raise Conflict(
                    f"A contact with the email {diff.get('email')} already exists."
                ) from None
        else:
            new = await repo.update(owner_id, row["id"], values)
        lines, _ = await repo.record_change(
            owner_id=owner_id,
            contact_id=row["id"],
            op="update",
            fields={
                "before": _jsonable({k: row[k] for k in diff}),
                "after": _jsonable({k: new[k] for k in diff}),
            },
            source=source,
            actor=actor,
            queue_keys=[old_key, new_key],
            queue_contact_id=row["id"],
            sync_key=new["email_key"],
        )
        return Written(new, _out(new, lines))

    async def delete(
        self, session: AsyncSession, *, owner_id: str, contact_id: uuid.UUID, actor: str | None
    ) -> None:
        """Delete the contact; the worker archives the member it had pushed."""
        repo = ContactRepository(session)
        row = await repo.delete(owner_id, contact_id)
        if row is None:
            raise NotFound(f"Contact {contact_id} does not exist.")
        await repo.record_change(
            owner_id=owner_id,
            contact_id=contact_id,
            op="delete",
            fields={"before": _jsonable({k: row[k] for k in FIELD_NAMES})},
            source="api",
            actor=actor,
            queue_keys=[row["email_key"]],
            queue_contact_id=None,
        )

    async def forget(
        self, session: AsyncSession, *, owner_id: str, contact_id: uuid.UUID, actor: str | None
    ) -> ForgetResult:
        """GDPR erase: the contact and its history's data go here, the member at each provider."""
        repo = ContactRepository(session)
        row = await repo.delete(owner_id, contact_id)
        if row is None:
            raise NotFound(f"Contact {contact_id} does not exist.")
        await repo.erase_history(owner_id, contact_id)
        _, queued = await repo.record_change(
            owner_id=owner_id,
            contact_id=contact_id,
            op="forget",
            fields={},
            source="api",
            actor=actor,
            queue_keys=[row["email_key"]],
            queue_contact_id=None,
            forget=True,
        )
        return ForgetResult(id=contact_id, forgotten=True, queued_connections=queued)

    async def list_page(
        self,
        session: AsyncSession,
        *,
        owner_id: str,
        limit: int,
        cursor: str | None,
        q: str | None,
        tag: str | None,
        kind: str | None,
        company: str | None = None,
        audience: uuid.UUID | None = None,
    ) -> ContactPage:
        """A page of contacts with their sync lines (`audience`: those a mapping selects)."""
        repo = ContactRepository(session)
        after = decode_cursor(cursor) if cursor else None
        rule = None
        if audience is not None:
            mapping = await repo.mapping(owner_id, audience)
            if mapping is None:
                raise NotFound(f"No audience mapping {audience}.")
            rule = AudienceRule.of(mapping)
        rows = list(
            await repo.page(
                owner_id,
                limit=limit,
                after=after,
                q=q,
                tag=tag,
                kind=kind,
                company=company,
                rule=rule,
            )
        )
        more = len(rows) > limit
        rows = rows[:limit]
        items = await self.render(session, owner_id=owner_id, rows=rows)
        return ContactPage(items=items, next_cursor=encode_cursor(rows[-1]) if more else None)

    async def render(
        self, session: AsyncSession, *, owner_id: str, rows: Sequence[Row]
    ) -> list[ContactOut]:
        """Contacts as the API shows them, each with one sync line per connection."""
        keys = [r["email_key"] for r in rows if r["email_key"]]
        connections, queued, mirrored = await ContactRepository(session).sync_rows(owner_id, keys)
        out = []
        for row in rows:
            lines = []
            for conn in connections:
                k = (conn["mapping_id"], row["email_key"])
                queue, mirror = (
                    (queued.get(k), mirrored.get(k)) if row["email_key"] else (None, None)
                )
                lines.append(_sync_line(conn["id"], conn, queue, mirror, row))
            out.append(ContactOut.model_validate({**row, "sync": lines}))
        return out


@dataclass(frozen=True, slots=True)
class Written:
    """A contact as just written (`row`, for ETag and Location) and as the API shows it."""

    row: Row
    out: ContactOut


def _sync_line(
    connection_id: uuid.UUID,
    conn: Row,
    queue: Row | None,
    mirror: Row | None,
    contact: Row | None = None,
) -> ContactSync:
    status = _sync_status(queue, mirror)
    error = None
    if status == "failed" and queue is not None:
        error = queue["last_error"]
    elif mirror is not None:
        error = mirror["error"]
    return ContactSync(
        connection_id=connection_id,
        provider=conn["provider"],
        audience_id=conn["audience_id"],
        mapping_id=conn["mapping_id"],
        audience_name=conn["audience_name"],
        in_audience=AudienceRule.of(conn).matches(contact)
        if contact is not None and conn["mapping_id"] is not None
        else None,
        status=status,
        remote_status=mirror["remote_status"] if mirror else None,
        last_synced_at=mirror["last_synced_at"] if mirror else None,
        error=error,
        error_kind=mirror["error_kind"] if mirror else None,
    )


def _out(row: Row, lines: Sequence[Row]) -> ContactOut:
    """The API view of a just-written contact from `record_change`'s sync lines."""
    sync = [
        _sync_line(
            line["connection_id"],
            line,
            line if line["in_queue"] else None,
            line if line["in_mirror"] else None,
            row,
        )
        for line in lines
    ]
    return ContactOut.model_validate({**row, "sync": sync})


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return dict(to_jsonable_python(dict(values)))


contact_service = ContactService()
