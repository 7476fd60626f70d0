"""Mailchimp's side of the field map: merge tags, their defaults, and the values they take."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import structlog

from app.fieldmap import FieldMap, FieldRule, FieldsRefused, FieldType
from app.providers.base import PermanentError

if TYPE_CHECKING:
    from app.providers.mailchimp.client import MailchimpClient

log = structlog.get_logger(__name__)

PROVIDER = "mailchimp"
# Mailchimp's own rule for a merge tag (it upper-cases what it is given).
TAG_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]{0,9}$")
# EMAIL is the address itself; ADDRESS is filled by MAILCHIMP_SYNC_ADDRESS as one object.
RESERVED_TAGS = {
    "EMAIL": "EMAIL is the member's address, not a merge field",
    "ADDRESS": "ADDRESS is sent whole when MAILCHIMP_SYNC_ADDRESS is on",
}

# What the service sent before the field map existed, plus the company: a new audience has no
# COMPANY merge field, so connecting creates it (one text field, additive, nothing of the
# user's touched) — the CRM's company is worth having for segments and merge tags, and
# leaving it out would make the core field silently never reach Mailchimp.
DEFAULT_RULES: tuple[FieldRule, ...] = (
    FieldRule(source="first_name", field="FNAME", label="First Name"),
    FieldRule(source="last_name", field="LNAME", label="Last Name"),
    FieldRule(source="phone", field="PHONE", label="Phone Number"),
    FieldRule(source="company", field="COMPANY", label="Company"),
)

# The merge-field types that hold a value of each of our types, and the one we create.
ACCEPTS: dict[FieldType, frozenset[str]] = {
    FieldType.text: frozenset({"text", "phone", "url", "imageurl", "radio", "dropdown", "zip"}),
    FieldType.number: frozenset({"number", "text"}),
    # Dates go out as YYYY-MM-DD; a BIRTHDAY field takes "MM/DD" only, so it is refused.
    FieldType.date: frozenset({"date", "text"}),
    FieldType.list: frozenset({"text"}),
}
CREATE_AS: dict[FieldType, str] = {
    FieldType.text: "text",
    FieldType.number: "number",
    FieldType.date: "date",
    FieldType.list: "text",
}


def rules_from(
    field_map: FieldMap, legacy: Mapping[str, str] | None = None
) -> tuple[FieldRule, ...]:
    """The effective Mailchimp rules: defaults, FIELD_MAP's mailchimp entries, tags upper-cased.

    `legacy` is MAILCHIMP_MERGE_FIELD_MAP (custom field → tag), kept as a shorthand: its
    entries apply where FIELD_MAP says nothing about the same custom field.
    """
    rules = list(field_map.rules(PROVIDER, DEFAULT_RULES))
    known = {r.source for r in rules} | set(field_map.removed.get(PROVIDER, ()))
    for key, tag in (legacy or {}).items():
        source = f"custom_fields.{key}"
        if source not in known:
            rules.append(FieldRule(source=source, field=tag))
    return tuple(r.model_copy(update={"field": r.field.upper()}) for r in rules)


def check_rules(rules: Iterable[FieldRule]) -> list[str]:
    """Every problem Mailchimp would have with these rules, each naming its entry."""
    problems = []
    seen: dict[str, str] = {}
    for rule in rules:
        entry = f"FIELD_MAP entry {PROVIDER}.{rule.source}"
        tag = rule.field.upper()
        if tag in RESERVED_TAGS:
            problems.append(f"{entry}: {RESERVED_TAGS[tag]}")
        elif not TAG_PATTERN.match(tag):
            problems.append(
                f"{entry}: {rule.field!r} is not a Mailchimp merge tag "
                "(1-10 characters: a letter, then A-Z, 0-9 or _)"
            )
        elif tag in seen:
            problems.append(f"{entry}: merge tag {tag} is already filled by {seen[tag]}")
        seen.setdefault(tag, rule.source)
    return problems


async def ensure_merge_fields(
    client: MailchimpClient, audience_id: str, rules: Iterable[FieldRule]
) -> list[str]:
    """Create the merge fields the map needs and the audience lacks; returns the tags created.

    Nothing is created when an existing field cannot hold its entry's type; every refusal
    (wrong type, Mailchimp declining a creation) names its entry in FieldsRefused. Transient
    and credential failures propagate as the client raised them.
    """
    rules = list(rules)
    existing = {
        str(f.get("tag") or "").upper(): f for f in await client.list_merge_fields(audience_id)
    }
    problems = []
    missing = []
    for rule in rules:
        entry = f"FIELD_MAP entry {PROVIDER}.{rule.source}"
        have = existing.get(rule.field)
        if have is None:
            missing.append(rule)
        elif have.get("type") not in ACCEPTS[rule.type]:
            problems.append(
                f"{entry}: the audience's merge field {rule.field} is of type "
                f"{have.get('type')}, which cannot hold a {rule.type.value} value"
            )
    if problems:
        raise FieldsRefused(problems)
    created = []
    for rule in missing:
        try:
            await client.create_merge_field(
                audience_id, tag=rule.field, name=rule.display_name, type=CREATE_AS[rule.type]
            )
        except PermanentError as exc:
            problems.append(
                f"FIELD_MAP entry {PROVIDER}.{rule.source}: Mailchimp refused to create the "
                f"merge field {rule.field} ({exc.message})"
            )
        else:
            created.append(rule.field)
    if created:
        log.info("mailchimp.merge_fields_created", audience=audience_id, tags=created)
    if problems:
        raise FieldsRefused(problems)
    return created
