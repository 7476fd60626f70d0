"""Desired remote state (DESIGN §5): what to do for one subscriber, from the current rows.

Pure functions: no I/O. The engine loads the contact, the mirror row (`sync_state`) and the
tombstone flag, and gets back a Plan. Nothing here ever turns an unsubscribed, cleaned or
forgotten person back into a subscriber: only a local re-opt-in made *after* the provider's
change becomes `pending` — the provider's confirmation path (Mailchimp's double opt-in email,
Constant Contact's resubscribe email); where the provider has none (`reoptin == "none"`) the
wish goes as `subscribed` and the provider's client refuses it for an opt-out the person made,
so they stay unsubscribed and the contact's sync says why. Fields come from the provider's
`MappingConfig` (its field rules).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from app.emailkey import email_key
from app.providers.base import PRESENT_STATUSES, ContactPayload, ErrorKind, campaign_ref
from app.providers.mapping import MappingConfig, digest_of, merge_fields

__all__ = [
    "Action",
    "MappingConfig",
    "MirrorOp",
    "Plan",
    "creates",
    "digest_of",
    "merge_fields",
    "unknown_to_mirror",
]

# Statuses under which the member exists at the provider and can be updated.
PRESENT = PRESENT_STATUSES
CONSENTED = frozenset({"subscribed", "pending"})


class Action(StrEnum):
    """What the engine does for a key."""

    noop = "noop"  # nothing to send
    upsert = "upsert"  # PUT (or batch): create with consent, or update a consented member
    update = "update"  # PATCH: update an existing member without consent (never creates)
    tags = "tags"  # only the tags differ
    move = "move"  # email changed A→B: PUT on A's hash with B
    archive = "archive"  # the contact is gone: archive what we pushed
    forget = "forget"  # GDPR erase


class MirrorOp(StrEnum):
    """What a noop does to the mirror row."""

    keep = "keep"
    delete = "delete"
    forgotten = "forgotten"  # a tombstoned address: shown as rejected, never pushed


@dataclass(slots=True)
class Plan:
    """The decision for one key (for a move: the new key, with `move_from` the old one)."""

    key: str
    action: Action
    contact: Mapping[str, Any] | None = None
    mirror: Mapping[str, Any] | None = None
    payload: ContactPayload | None = None
    digest: str | None = None
    tags: list[str] = field(default_factory=list)
    target_email: str | None = None  # the address the call addresses (archive/forget/move src)
    move_from: str | None = None
    mirror_op: MirrorOp = MirrorOp.keep
    # Tags that are ours to remove: what the mirror says we pushed, plus what a send that was
    # cut short was about to push (see `owned_tags`).
    owned_tags: list[str] = field(default_factory=list)
    # An archive of a contact that still exists here (a rule or SYNC_KINDS leaves it out):
    # it leaves the audience, and the person is never deleted at the provider.
    keep_person: bool = False
    # Tags another mapping of the connection still pushes for the person, where tags are the
    # person's (`shared_tags`): never removed by this plan, neither by a leave nor an update.
    kept_tags: list[str] = field(default_factory=list)


def shared_tags(contact: Mapping[str, Any] | None, others: Sequence[MappingConfig]) -> list[str]:
    """The contact's tags when another mapping of the connection still holds the contact
    (its rule selects it): that mapping pushes them too, so they are not ours alone."""
    if contact is None or not any(cfg.syncs(contact) for cfg in others):
        return []
    return list(contact.get("tags") or [])


def owned_tags(mirror: Mapping[str, Any] | None, intent: Sequence[str] = ()) -> list[str]:
    """The tags we own on a member: pushed ones (recorded at completion) and intended ones.

    Ownership is recorded twice on purpose. sync_state.pushed_tags is written when a send
    completes; the queue row's tag_intent is written *before* the call. A worker killed after
    the provider applied the tags but before the completion leaves the intent, so the resend
    still treats those tags as ours and removes them once the contact no longer has them.
    The intent may name a tag the call never applied: deactivating it is a no-op at the
    provider. Treating every tag of the contact's past versions as ours was the alternative;
    it needs the audit trail at plan time and would claim tags never pushed to this account.
    """
    pushed: list[str] = []
    if mirror is not None and mirror.get("pushed_digest") is not None:
        pushed = list(mirror.get("pushed_tags") or [])
    return pushed + sorted(set(intent) - set(pushed))


def effective_status(mirror: Mapping[str, Any] | None) -> str | None:
    """The remote status to reason with; a compliance rejection means `unsubscribed`."""
    if mirror is None:
        return None
    status = mirror.get("remote_status")
    if status == "rejected":
        return "unsubscribed" if mirror.get("error_kind") == "compliance" else None
    return status


def _later(local: datetime | None, remote: datetime | None) -> bool:
    # Unknown provider time: never assume the local change is newer (consent is the person's).
    return local is not None and remote is not None and local > remote


def plan_key(
    key: str,
    *,
    contact: Mapping[str, Any] | None,
    mirror: Mapping[str, Any] | None,
    tombstoned: bool,
    forget: bool,
    cfg: MappingConfig,
    intent: Sequence[str] = (),
    may_exist: bool = False,
) -> Plan:
    """Decide what the provider must be told about `key` (DESIGN §5's table).

    `may_exist`: a send that could create (or revive) the person was cut short before its
    completion, so the provider may hold them although the mirror says absent (or archived);
    see `creates`.
    """
    plan = _plan_key(
        key,
        contact=contact,
        mirror=mirror,
        tombstoned=tombstoned,
        forget=forget,
        cfg=cfg,
        intent=intent,
        may_exist=may_exist,
    )
    plan.owned_tags = owned_tags(mirror, intent)
    return plan


def _plan_key(
    key: str,
    *,
    contact: Mapping[str, Any] | None,
    mirror: Mapping[str, Any] | None,
    tombstoned: bool,
    forget: bool,
    cfg: MappingConfig,
    intent: Sequence[str],
    may_exist: bool = False,
) -> Plan:
    if forget:
        return Plan(key, Action.forget, contact=contact, mirror=mirror, target_email=key)
    left_out = contact is not None and not cfg.syncs(contact)
    if left_out:
        # A kind SYNC_KINDS or the mapping's rule leaves out: what we pushed leaves the
        # audience as after a local delete, but the person stays at the provider.
        contact = None
    if contact is None:
        pushed = mirror is not None and mirror.get("pushed_digest") is not None
        if pushed and mirror is not None and mirror.get("remote_status") in PRESENT:
            target = mirror.get("pushed_email") or key
            return Plan(
                key, Action.archive, mirror=mirror, target_email=target, keep_person=left_out
            )
        if may_exist and unknown_to_mirror(mirror):
            # We may have created (or revived) them: what we pushed goes, as above.
            return Plan(key, Action.archive, mirror=mirror, target_email=key)
        op = MirrorOp.delete if mirror is not None and not pushed else MirrorOp.keep
        return Plan(key, Action.noop, mirror=mirror, mirror_op=op)
    if tombstoned:
        return Plan(key, Action.noop, contact=contact, mirror=mirror, mirror_op=MirrorOp.forgotten)
    if mirror is not None and mirror.get("error_kind") == ErrorKind.collision:
        held = mirror.get("pushed_email")
        if is_movable(mirror) and held and email_key(held) != key:
            # An address change refused because the provider would merge two people: the
            # person's record still holds `held`. Every later change tries the move again
            # (the new address is checked again: once free, it moves); while it is taken,
            # the rest of the change goes to the record by its id under `held`.
            again = plan_move(key, key, contact=contact, old_mirror=mirror, cfg=cfg, intent=intent)
            again.move_from = None
            return again
        # Refused before the record was kept with it (no record to address): sending to the
        # new address would write onto the other person.
        return Plan(key, Action.noop, contact=contact, mirror=mirror)
    return _plan_contact(key, contact, mirror, cfg, intent, may_exist)


def creates(plan: Plan) -> bool:
    """True when the plan's send may create or revive the person at the provider: an upsert
    the mirror does not know a present member for. The engine records it before the call."""
    return plan.action is Action.upsert and unknown_to_mirror(plan.mirror)


def unknown_to_mirror(mirror: Mapping[str, Any] | None) -> bool:
    """The mirror holds no present member: never pushed, gone, or archived."""
    return effective_status(mirror) in (None, "archived")


def _plan_contact(
    key: str,
    contact: Mapping[str, Any],
    mirror: Mapping[str, Any] | None,
    cfg: MappingConfig,
    intent: Sequence[str] = (),
    may_exist: bool = False,
) -> Plan:
    email: str = contact["email"]
    fields = merge_fields(contact, cfg)
    interests = cfg.interest_payload(contact)  # only the mapping's interests, if any
    digest = digest_of(email, fields, interests)
    tags = list(contact.get("tags") or [])
    consent = bool(contact.get("newsletter_opt_in")) and contact.get("email_status") == "ok"
    new_status = cfg.consent_if_new
    remote = effective_status(mirror)

    # Campaigns the contact newly qualifies for (enrollment rules, DESIGN §14.6): only with
    # consent, and only those the mirror does not record us enrolling them in.
    refs = (mirror or {}).get("remote_refs") or {}
    campaigns = [
        c
        for c in (cfg.campaigns(contact) if cfg.campaigns and consent else ())
        if not refs.get(campaign_ref(c))
    ]

    def plan(action: Action, status: str | None = None, status_if_new: str = new_status) -> Plan:
        payload = ContactPayload(
            email_address=email,
            fields=fields,
            consent_if_new=status_if_new,
            consent=status,
            tags=tags,
            interests=interests,
            campaigns=campaigns if action is Action.upsert else [],
            unseen=mirror is None and not may_exist,
        )
        return Plan(key, action, contact, mirror, payload, digest, tags, target_email=email)

    if not consent and may_exist and remote in (None, "archived"):
        # A create (or revival) of ours may have reached the provider before a crash, and the
        # person has withdrawn consent since: unsubscribe them there, never creating anyone
        # (an update; the provider's not-found ends it).
        return plan(Action.update, status="unsubscribed", status_if_new="unsubscribed")
    if remote is None:
        if not consent:
            # Never create a member without consent; a stale mirror row goes.
            op = MirrorOp.delete if mirror is not None else MirrorOp.keep
            return Plan(key, Action.noop, contact, mirror, mirror_op=op)
        return plan(Action.upsert)
    if remote == "archived":
        if not consent:
            return Plan(key, Action.noop, contact, mirror)
        # `status_if_new` leaves an archived member archived: revive with an explicit status.
        return plan(Action.upsert, status=new_status)

    status: str | None = None
    changed_at = contact.get("newsletter_changed_at")
    remote_at = mirror.get("remote_changed_at") if mirror else None
    if consent:
        if remote == "unsubscribed" and _later(changed_at, remote_at):
            # The only way back after an unsubscribe: the provider's confirmation path. Where
            # it has none, the wish is still sent: the client refuses it (compliance, the
            # contact's sync says `blocked` and why) or lifts only an opt-out of our own.
            status = "pending" if cfg.reoptin != "none" else "subscribed"
        elif remote == "transactional" and _later(changed_at, remote_at):
            status = new_status
    elif remote in CONSENTED:
        status = "unsubscribed"

    assert mirror is not None
    fields_changed = digest != mirror.get("pushed_digest")
    # A tag we were about to push when a send was cut short may be at the provider although
    # the contact no longer has it: that is a change to send too.
    tags_changed = sorted(tags) != sorted(mirror.get("pushed_tags") or []) or bool(
        set(intent) - set(tags)
    )
    if not fields_changed and status is None and not campaigns:
        if tags_changed:
            return plan(Action.tags)
        return Plan(key, Action.noop, contact, mirror, digest=digest, tags=tags)
    if consent:
        return plan(Action.upsert, status=status)
    return plan(Action.update, status=status, status_if_new="unsubscribed")


def plan_move(
    old_key: str,
    new_key: str,
    *,
    contact: Mapping[str, Any],
    old_mirror: Mapping[str, Any],
    cfg: MappingConfig,
    intent: Sequence[str] = (),
) -> Plan:
    """Email changed A→B: update the member at A to address B, keeping its history."""
    inner = _plan_contact(new_key, contact, old_mirror, cfg)
    consent = bool(contact.get("newsletter_opt_in")) and contact.get("email_status") == "ok"
    payload = inner.payload or ContactPayload(
        email_address=contact["email"],
        fields=merge_fields(contact, cfg),
        consent_if_new="subscribed" if consent else "unsubscribed",
        tags=list(contact.get("tags") or []),
        interests=cfg.interest_payload(contact),
    )
    return Plan(
        new_key,
        Action.move,
        contact=contact,
        mirror=old_mirror,
        payload=payload,
        digest=digest_of(contact["email"], payload.fields, payload.interests),
        tags=list(contact.get("tags") or []),
        target_email=old_mirror.get("pushed_email") or old_key,
        move_from=old_key,
        owned_tags=owned_tags(old_mirror, intent),
    )


def is_movable(mirror: Mapping[str, Any] | None) -> bool:
    """A mirror row we pushed and that still exists at the provider can be moved."""
    return (
        mirror is not None
        and mirror.get("pushed_digest") is not None
        and mirror.get("remote_status") in PRESENT
    )


def tag_diff(
    desired: list[str], pushed: list[str], remote: list[str] | None, keep: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """Tags to activate and to deactivate; only tags we pushed are ever deactivated, and never
    one in `keep` (another mapping of the connection still pushes it, `shared_tags`)."""
    have = set(remote) if remote is not None else set(pushed)
    want = set(desired) | set(keep)
    add = [t for t in desired if t not in have]
    remove = [t for t in pushed if t not in want and (remote is None or t in have)]
    return add, remove
