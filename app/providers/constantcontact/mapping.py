"""Contact → Constant Contact fields: core properties and custom fields (by UUID or name), and
how the values read back compare with what we send."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.config import Settings
from app.fieldmap import FieldMap, FieldRule
from app.providers.constantcontact.client import CORE_FIELDS, UUID_PATTERN, render_value
from app.providers.constantcontact.spec import PROVIDER
from app.providers.mapping import MappingConfig, kinds_from

# The contact's core columns onto Constant Contact's core properties (50 characters each).
DEFAULT_RULES: tuple[FieldRule, ...] = (
    FieldRule(source="first_name", field="first_name", label="First Name"),
    FieldRule(source="last_name", field="last_name", label="Last Name"),
    FieldRule(source="company", field="company_name", label="Company"),
    FieldRule(source="phone", field="phone_number", label="Phone"),
)
RESERVED = frozenset({"email", "email_address", "list_memberships", "taggings", "notes"})


def rules_from(field_map: FieldMap) -> tuple[FieldRule, ...]:
    """The effective rules: defaults, then FIELD_MAP's `constantcontact` entries."""
    return field_map.rules(PROVIDER, DEFAULT_RULES)


def check_rules(rules: tuple[FieldRule, ...]) -> list[str]:
    """Every FIELD_MAP entry Constant Contact cannot hold, named."""
    problems = []
    for rule in rules:
        entry = f"FIELD_MAP entry {PROVIDER}.{rule.source}"
        if rule.field.lower() in RESERVED:
            problems.append(f"{entry}: {rule.field!r} is not a contact field")
        elif (
            rule.field not in CORE_FIELDS
            and not UUID_PATTERN.match(rule.field)
            and len(rule.field) > 50
        ):
            problems.append(f"{entry}: a custom field name has at most 50 characters")
    return problems


def from_settings(settings: Settings) -> MappingConfig:
    """The deployment's mapping (FIELD_MAP, SYNC_KINDS); the way back is the resubscribe
    email, and new people are never asked to confirm (Constant Contact sends no double
    opt-in for contacts an account adds)."""
    return MappingConfig(
        fields=rules_from(settings.FIELD_MAP),
        kinds=kinds_from(settings),
        reoptin="resubscribe_email",
        same=same_fields,
    )


def same_fields(cfg: MappingConfig, ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    """Whether a contact read back holds every value we send (theirs are kept otherwise)."""
    for key, value in ours.items():
        held = theirs.get(key)
        limit = 50 if key in CORE_FIELDS else 255
        if held is None or str(held).strip() != render_value(value).strip()[:limit]:
            return False
    return True
