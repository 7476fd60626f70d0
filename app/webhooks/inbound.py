"""What the provider says about a subscriber, applied to the CRM (DESIGN §7).

One set of rules for the webhook handlers and for the scheduled pull: "the provider now says
status S about email E at time T" (`InboundApplier.status`), plus the two data events
(`profile`, `email_change`). Everything runs inside the caller's transaction; nothing commits.

Consent belongs to the person: an unsubscribe, a bounce or a complaint turns local consent off,
a signup turns it on — unless the CRM changed consent *after* the provider did, in which case
the CRM keeps its value and the mirror still records the provider's status and time, so the
worker's planner sends what the CRM owes (a later local re-opt-in becomes `pending`).

Ordering. Mailchimp stamps events to the second (`fired_at`, `last_changed`); local changes
carry microseconds. A local change counts as newer only when it happened at least a second
after the provider's stamp: within that second we cannot tell, and the provider's side wins —
for consent, that is the person's own action.

No echo. Each change records in `sync_state` what the provider now holds (status, time, the
address and, where the CRM took the provider's data, the digest of it). Then the planner is
asked what the CRM still owes for the key; only when it is not a noop is the key queued (a
later local re-opt-in, local edits not yet sent, tags of a contact the mirror did not know).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.contacts.repository import ContactRepository
from app.contacts.schemas import normalise_email
from app.contacts.service import FIELD_NAMES
from app.providers.base import ErrorKind, tombstone_key
from app.providers.mapping import PROFILE_COLUMNS, MappingConfig
from app.sync.desired import Action, plan_key
from app.sync.outbox import email_key, enqueue
from app.webhooks.repository import InboundRepository

ONE_SECOND = timedelta(seconds=1)

SUBSCRIBED = "subscribed"
UNSUBSCRIBED = "unsubscribed"
CLEANED = "cleaned"
ARCHIVED = "archived"
COMPLAINED = "complained"
CONSENT_OFF = frozenset({UNSUBSCRIBED, CLEANED, ARCHIVED, COMPLAINED})
__all__ = ["PROFILE_COLUMNS", "Inbound", "InboundApplier", "Outcome", "profile_fields"]


def profile_fields(cfg: MappingConfig) -> tuple[tuple[str, str, int], ...]:
    """(provider field, contact column, length limit) of the mapped columns a person edits."""
    return cfg.profile_fields()


class Outcome(StrEnum):
    """What an inbound event did; stored on the inbox row and counted in metrics."""

    applied = "applied"  # the contact changed
    created = "created"  # a signup became a lead
    unchanged = "unchanged"  # the CRM already agreed (the mirror may have learned something)
    stale = "stale"  # older than a later local change: local data kept, the mirror updated
    ignored = "ignored"  # by design: campaign, profile updates off, signups off, other audience
    unknown_contact = "unknown_contact"  # no contact with this address
    conflict = "conflict"  # email change onto an address another contact has
    invalid = "invalid"  # the event lacks what it needs (an address)
    duplicate = "duplicate"  # the same delivery again (not stored twice)


@dataclass(slots=True, frozen=True)
class Inbound:
    """Where inbound facts are applied and how they are audited."""

    connection_id: uuid.UUID
    owner_id: str
    mapping: MappingConfig  # the worker's, so digests computed here match the planner's
    source: str  # contact_changes.source: webhook:<provider> | provider
    actor: str | None = None
    signups: bool = False  # create leads from signups (webhooks with INBOUND_SIGNUPS only)
    provider: str = ""  # the provider id; a lead made from a signup has it as `referral`
    # The provider's person id derivable from an email key (Mailchimp's subscriber hash).
    person_id: Callable[[str], str | None] = lambda _key: None
    # The audience mapping whose audience the facts come from (None: the default mapping).
    mapping_id: uuid.UUID | None = None

    @property
    def mirror_mapping(self) -> uuid.UUID:
        """The mapping whose mirror rows the facts update (the default one has the
        connection's id)."""
        return self.mapping_id or self.connection_id


def newer_than(local: datetime | None, at: datetime) -> bool:
    """True when a change at `local` surely happened after an event stamped `at` (1 s)."""
    return local is not None and local >= at + ONE_SECOND


def _clip(value: Any, limit: int) -> str | None:
    text = value.strip() if isinstance(value, str) else ""
    return text[:limit] or None


class InboundApplier:
    """Applies provider facts for one connection inside the caller's transaction."""

    def __init__(self, session: AsyncSession, inbound: Inbound) -> None:
        self.session = session
        self.inbound = inbound
        self.repo = InboundRepository(session)
        # The mirror rows of the audience mapping the facts are about.
        self.mirrors = self.repo.mirror_of(inbound.mirror_mapping)
        self.contacts = ContactRepository(session)

    # --- status: unsubscribe, cleaned, subscribe, and the pull ----------------------------

    async def status(
        self,
        *,
        email: str | None,
        status: str,
        at: datetime,
        reason: str | None = None,
        merges: Mapping[str, Any] | None = None,
        event: str | None = None,
    ) -> Outcome:
        """The provider says `email` has `status` since `at`."""
        key = email_key(email)
        if key is None or email is None:
            return Outcome.invalid
        conn = self.inbound.connection_id
        # Lock order mirror → contact, as the worker's completion takes them.
        mirror = await self.mirrors.mirror(conn, key)
        contact = await self.repo.contact_by_key(self.inbound.owner_id, key)
        created = False
        if contact is None:
            if status != SUBSCRIBED or not self.inbound.signups:
                if mirror is not None:
                    await self._learn_status(key, mirror, None, status, at)
                return Outcome.unknown_contact
            contact, created = await self._create_lead(email, key, merges or {}, at, event)
            if contact is None:
                return Outcome.invalid
        changes = {} if created else self._consent_changes(contact, status, at, reason)
        if changes:
            contact = await self._update(
                contact, changes, at=at, event=event, extra={"reason": reason} if reason else {}
            )
        await self._learn_status(key, mirror, contact, status, at, adopt=created)
        if status == SUBSCRIBED:
            # A person who signs up again by themselves lifts our "never push again" mark.
            await self.repo.drop_tombstone(conn, tombstone_key(key))
        await self._enqueue_if_owed(key, contact, changed=bool(changes) or created)
        if created:
            return Outcome.created
        if changes:
            return Outcome.applied
        if newer_than(contact["newsletter_changed_at"], at):
            return Outcome.stale
        return Outcome.unchanged

    @staticmethod
    def _consent_changes(
        contact: RowMapping, status: str, at: datetime, reason: str | None
    ) -> dict[str, Any]:
        if newer_than(contact["newsletter_changed_at"], at):
            return {}  # the CRM changed consent after the provider did: its value stands
        values: dict[str, Any] = {}
        if status in CONSENT_OFF:
            if contact["newsletter_opt_in"]:
                values.update(
                    newsletter_opt_in=False, newsletter_changed_at=at, newsletter_unsubscribed_at=at
                )
            bad = None
            if reason == "abuse" or status == COMPLAINED:
                bad = "complained"
            elif status == CLEANED:
                bad = "bounced"
            # A complaint is never softened into a bounce.
            if bad and contact["email_status"] != bad and contact["email_status"] != "complained":
                values["email_status"] = bad
        elif status == SUBSCRIBED:
            if not contact["newsletter_opt_in"]:
                values.update(newsletter_opt_in=True, newsletter_changed_at=at)
            if contact["email_status"] != "ok":
                values["email_status"] = "ok"  # subscribed again: the address works
        return values

    async def _learn_status(
        self,
        key: str,
        mirror: RowMapping | None,
        contact: RowMapping | None,
        status: str,
        at: datetime,
        *,
        adopt: bool = False,
    ) -> None:
        """Record in the mirror what the provider holds, unless it already knows better."""
        contact_id = contact["id"] if contact is not None else None
        if mirror is not None and newer_than(mirror["remote_changed_at"], at):
            if contact_id is not None and mirror["contact_id"] != contact_id:
                await self.mirrors.save_mirror(
                    self.inbound.connection_id, key, {**mirror, "contact_id": contact_id}
                )
            return
        values: dict[str, Any] = dict(mirror) if mirror is not None else {"pushed_tags": []}
        same = mirror is not None and mirror["remote_status"] == status
        values.update(
            contact_id=contact_id if contact_id is not None else values.get("contact_id"),
            remote_id=values.get("remote_id") or self.inbound.person_id(key),
            remote_status=status,
            # When the status itself is not news, keep the time it first became so.
            remote_changed_at=(values.get("remote_changed_at") or at) if same else at,
            error_kind=None,
            error=None,
        )
        if mirror is not None and mirror["error_kind"] == ErrorKind.collision:
            # A refused address change is not undone by a status (the person's record still
            # holds its old address): the planner keeps retrying the move, and never writes
            # to the other person in the meantime.
            values.update(error_kind=mirror["error_kind"], error=mirror["error"])
        if (
            mirror is not None
            and mirror["remote_status"] == ARCHIVED
            and status == SUBSCRIBED
            and not adopt
        ):
            # A member we archived (its contact deleted, or of a kind SYNC_KINDS leaves out)
            # that the person brought back is theirs now: never ours to archive again.
            values["pushed_digest"] = None
        if adopt and contact is not None and self.inbound.mapping.syncs(dict(contact)):
            # A lead made from the provider's own data: the member holds exactly this. (Not
            # when leads are not synced: it is then the person's member, not ours.)
            values.update(
                pushed_email=contact["email"],
                pushed_digest=self._digest(contact),
                pushed_tags=list(contact["tags"] or []),
            )
        await self.mirrors.save_mirror(self.inbound.connection_id, key, values)

    async def _create_lead(
        self, email: str, key: str, merges: Mapping[str, Any], at: datetime, event: str | None
    ) -> tuple[RowMapping | None, bool]:
        try:
            address = normalise_email(email)
        except ValueError:
            return None, False
        if address is None:
            return None, False
        values: dict[str, Any] = {
            "email": address,
            "kind": "lead",
            "lead_status": "new",
            "referral": self.inbound.provider,
            "newsletter_opt_in": True,
            "newsletter_changed_at": at,
        }
        for tag, column, limit in profile_fields(self.inbound.mapping):
            values[column] = _clip(merges.get(tag), limit)
        row = await self.contacts.insert(self.inbound.owner_id, values)
        if row is None:  # created meanwhile by another transaction: treat it as known
            return await self.repo.contact_by_key(self.inbound.owner_id, key), False
        await self.contacts.add_change(
            owner_id=self.inbound.owner_id,
            contact_id=row["id"],
            op="create",
            fields=self._audit(
                {"after": {k: row[k] for k in FIELD_NAMES}}, at=at, event=event, extra={}
            ),
            source=self.inbound.source,
            actor=self.inbound.actor,
        )
        return row, True

    # --- profile ------------------------------------------------------------------------

    async def profile(
        self, *, email: str | None, merges: Mapping[str, Any], at: datetime, event: str | None
    ) -> Outcome:
        """The person edited names, company or phone at the provider: the CRM takes them,
        field by field, unless the CRM wrote that field after the event."""
        key = email_key(email)
        if key is None:
            return Outcome.invalid
        mirror = await self.mirrors.mirror(self.inbound.connection_id, key)
        contact = await self.repo.contact_by_key(self.inbound.owner_id, key)
        if contact is None:
            return Outcome.unknown_contact
        wanted = {
            column: _clip(merges.get(tag), limit)
            for tag, column, limit in profile_fields(self.inbound.mapping)
            if tag in merges
        }
        differing = {c: v for c, v in wanted.items() if contact[c] != v}
        if not differing:
            return Outcome.unchanged
        times = await self.repo.field_times(self.inbound.owner_id, contact["id"], list(differing))
        diff = {c: v for c, v in differing.items() if not newer_than(times.get(c), at)}
        if not diff:
            return Outcome.stale
        before_digest = self._digest(contact)
        contact = await self._update(contact, diff, at=at, event=event, extra={})
        if mirror is not None and mirror["pushed_digest"] == before_digest:
            # The member held our data and now holds the person's edit, which we took.
            await self.mirrors.save_mirror(
                self.inbound.connection_id,
                key,
                {**mirror, "contact_id": contact["id"], "pushed_digest": self._digest(contact)},
            )
        await self._enqueue_if_owed(key, contact, changed=True)
        return Outcome.applied

    # --- email change -------------------------------------------------------------------

    async def email_change(
        self, *, old_email: str | None, new_email: str | None, at: datetime, event: str | None
    ) -> Outcome:
        """The member's address changed at the provider: the contact's email moves with it and
        the mirror row is renamed, so the worker sends nothing back.

        No time comparison: the contact is found by its old address, so the CRM has not moved
        it since; if it has, the event finds no contact (or the new address already taken).
        """
        old_key, new_key = email_key(old_email), email_key(new_email)
        if old_key is None or new_key is None or new_email is None:
            return Outcome.invalid
        try:
            address = normalise_email(new_email)
        except ValueError:
            return Outcome.invalid
        if address is None:
            return Outcome.invalid
        conn, owner = self.inbound.connection_id, self.inbound.owner_id
        old_mirror = await self.mirrors.mirror(conn, old_key)
        if new_key != old_key:
            await self.mirrors.mirror(conn, new_key)  # lock it: it is about to be replaced
        contact = await self.repo.contact_by_key(owner, old_key)
        if contact is None:
            moved = await self.repo.contact_by_key(owner, new_key)
            return Outcome.unchanged if moved is not None else Outcome.unknown_contact
        if new_key != old_key and await self.repo.contact_by_key(
            owner, new_key, exclude=contact["id"]
        ):
            return Outcome.conflict
        if contact["email"] == address:
            return Outcome.unchanged
        before_digest = self._digest(contact)
        try:
            async with self.session.begin_nested():
                contact = await self._update(
                    contact, {"email": address}, at=at, event=event, extra={}
                )
        except IntegrityError:  # another contact took the address meanwhile
            return Outcome.conflict
        if old_mirror is not None:
            renamed = dict(old_mirror)
            renamed.update(
                contact_id=contact["id"],
                remote_id=self.inbound.person_id(new_key) or old_mirror["remote_id"],
                pushed_email=contact["email"] if old_mirror["pushed_email"] else None,
                # The digest covers the address: recompute it when the member held our data,
                # keep the old one (which no longer matches) when local edits are still owed.
                pushed_digest=self._digest(contact)
                if old_mirror["pushed_digest"] == before_digest
                else old_mirror["pushed_digest"],
            )
            if new_key != old_key:
                await self.mirrors.delete_mirror(conn, old_key)
            await self.mirrors.save_mirror(conn, new_key, renamed)
        await self._enqueue_if_owed(new_key, contact, changed=True, old_key=old_key)
        return Outcome.applied

    async def attributed(self, email: str, person_id: str) -> str | None:
        """The address of ours an event about `email` applies to, given the provider's id of
        its person; None when it is about someone else (ignored).

        The email key decides, except where the provider's id says otherwise: when the
        mirror holds another person for the address (after a refused collision our contact's
        new address belongs to another person there, whose events are not our contact's),
        or when no contact of the owner has the address (that person's record still holds
        the old one) — then the contact is the one whose mirror row holds that id. Mirror
        rows are this connection's and contacts its owner's: never across owners.
        """
        key = email_key(email)
        if key is None:
            return email
        conn = self.inbound.connection_id
        row = await self.mirrors.mirror(conn, key)
        other = row is not None and bool(row["remote_id"]) and str(row["remote_id"]) != person_id
        if not other and (
            (row is not None and row["remote_id"])
            or await self.repo.contact_by_key(self.inbound.owner_id, key) is not None
        ):
            return email
        found = await self.mirrors.mirror_by_remote_id(conn, person_id)
        if found is not None and found["email_key"] != key:
            contact = await self.repo.contact_by_key(self.inbound.owner_id, found["email_key"])
            if contact is not None:
                return str(contact["email"])
        return None if other else email

    async def moved_at_provider(
        self, *, person_id: str, email: str, at: datetime, event: str | None
    ) -> Outcome | None:
        """A profile event for a person the mirror holds under another address: their
        address changed at the provider (an email change); None when it did not."""
        key = email_key(email)
        if key is None:
            return None
        found = await self.mirrors.mirror_by_remote_id(self.inbound.connection_id, person_id)
        # Still the address we pushed: nothing moved there (a refused collision keeps the
        # record's old address on the new key's row).
        if found is None or key in (found["email_key"], email_key(found["pushed_email"])):
            return None
        return await self.email_change(
            old_email=found["pushed_email"] or found["email_key"],
            new_email=email,
            at=at,
            event=event,
        )

    # --- shared ---------------------------------------------------------------------------

    def _digest(self, contact: Any) -> str | None:
        return self.inbound.mapping.contact_digest(contact)

    # --- preferences (interest groups) ------------------------------------------------------

    async def preferences(
        self,
        *,
        email: str | None,
        chosen: set[str] | None,
        at: datetime,
        event: str | None,
        changes: Mapping[str, bool] | None = None,
    ) -> Outcome:
        """The person's mapped preferences at the provider are `chosen` since `at` (or, for
        a provider that tells a change, the contact's with `changes` applied).

        The newer side wins: the contact takes them unless its preferences changed after
        `at` (then the CRM's are sent back). Either way the decision is audited, and the
        mirror records what the member holds so nothing echoes.
        """
        key = email_key(email)
        if key is None:
            return Outcome.invalid
        conn = self.inbound.connection_id
        cfg = self.inbound.mapping
        mirror = await self.mirrors.mirror(conn, key)
        contact = await self.repo.contact_by_key(self.inbound.owner_id, key)
        if contact is None:
            return Outcome.unknown_contact
        current = list(contact["preferences"] or [])
        if chosen is None:
            chosen = cfg.chosen_after(current, changes or {})
        wanted = cfg.merged_preferences(current, chosen)
        if {p.casefold() for p in wanted} == {p.casefold() for p in current}:
            if mirror is not None:
                await self.mirrors.save_mirror(conn, key, {**mirror, "remote_preferences_at": at})
            return Outcome.unchanged
        if newer_than(contact["preferences_changed_at"], at):
            # The CRM changed them later: keep ours, and send them again (the member now
            # differs from what the mirror says we pushed).
            await self.contacts.add_change(
                owner_id=self.inbound.owner_id,
                contact_id=contact["id"],
                op="update",
                fields=self._audit(
                    {"kept": {"preferences": current}, "provider": {"preferences": wanted}},
                    at=at,
                    event=event,
                    extra={"decision": "crm_newer"},
                ),
                source=self.inbound.source,
                actor=self.inbound.actor,
            )
            if mirror is not None and mirror["pushed_digest"] is not None:
                await self.mirrors.save_mirror(
                    conn,
                    key,
                    {**mirror, "pushed_digest": "interests-differ", "remote_preferences_at": at},
                )
            await enqueue(
                self.session, owner_id=self.inbound.owner_id, keys=[key], contact_id=contact["id"]
            )
            return Outcome.stale
        before_digest = self._digest(contact)
        contact = await self._update(
            contact,
            {"preferences": wanted, "preferences_changed_at": at},
            at=at,
            event=event,
            extra={"decision": "provider_newer"},
        )
        if mirror is not None:
            values = {**mirror, "contact_id": contact["id"], "remote_preferences_at": at}
            if mirror["pushed_digest"] == before_digest:
                # The member held our data and now holds the person's choice, which we took.
                values["pushed_digest"] = self._digest(contact)
            await self.mirrors.save_mirror(conn, key, values)
        await self._enqueue_if_owed(key, contact, changed=True)
        return Outcome.applied

    def _audit(
        self, fields: dict[str, Any], *, at: datetime, event: str | None, extra: dict[str, Any]
    ) -> dict[str, Any]:
        out = dict(to_jsonable_python(fields))
        # `event_at` orders later inbound changes against this one (field_times()).
        out["event_at"] = at.isoformat()
        if event:
            out["event"] = event
        out.update(extra)
        return out

    async def _update(
        self,
        contact: RowMapping,
        values: dict[str, Any],
        *,
        at: datetime,
        event: str | None,
        extra: dict[str, Any],
    ) -> RowMapping:
        new = await self.contacts.update(self.inbound.owner_id, contact["id"], values)
        shown = [k for k in values if k in FIELD_NAMES or k == "email_status"]
        await self.contacts.add_change(
            owner_id=self.inbound.owner_id,
            contact_id=contact["id"],
            op="update",
            fields=self._audit(
                {
                    "before": {k: contact[k] for k in shown},
                    "after": {k: new[k] for k in shown},
                },
                at=at,
                event=event,
                extra=extra,
            ),
            source=self.inbound.source,
            actor=self.inbound.actor,
        )
        return new

    async def _enqueue_if_owed(
        self,
        key: str,
        contact: RowMapping,
        *,
        changed: bool = False,
        old_key: str | None = None,
    ) -> None:
        """Queue the key only when the planner, given the new rows, would call the provider.

        `changed`: the fact changed the contact, so every *other* audience mapping (of this
        connection and of the owner's other connections) owes a send — the person's consent or
        data is the contact's, not one audience's; this mapping's own row stays unqueued (the
        provider already holds it: no echo). `old_key`: the address it moved from.
        """
        if changed:
            await enqueue(
                self.session,
                owner_id=self.inbound.owner_id,
                keys=[key, old_key],
                contact_id=contact["id"],
                skip_mapping=self.inbound.mirror_mapping,
            )
        conn = self.inbound.connection_id
        mirror = await self.mirrors.mirror(conn, key)
        plan = plan_key(
            key,
            contact=dict(contact),
            mirror=dict(mirror) if mirror is not None else None,
            tombstoned=await self.repo.is_tombstoned(conn, tombstone_key(key)),
            forget=False,
            cfg=self.inbound.mapping,
        )
        if plan.action is not Action.noop:
            await enqueue(
                self.session, owner_id=self.inbound.owner_id, keys=[key], contact_id=contact["id"]
            )
