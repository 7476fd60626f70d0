"""Contact → ActiveCampaign fields: FIELD_MAP rules onto the contact's own attributes
(`firstName`, `lastName`, `phone`) or custom fields (by numeric id or personalization tag),
and how fields read back compare with what we send."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from app.config import Settings
from app.fieldmap import FieldMap, FieldRule, FieldType
from app.providers.activecampaign.client import STANDARD_FIELDS, render_value
from app.providers.activecampaign.spec import PROVIDER
from app.providers.mapping import MappingConfig, kinds_from

# ActiveCampaign upper-cases a personalization tag and keeps letters, digits and `_`.
PERSTAG = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
FIELD_ID = re.compile(r"^[1-9][0-9]{0,9}$")

DEFAULT_RULES: tuple[FieldRule, ...] = (
    FieldRule(source="first_name", field="firstName", label="First Name"),
    FieldRule(source="last_name", field="lastName", label="Last Name"),
    FieldRule(source="phone", field="phone", label="Phone"),
    # ActiveCampaign's own `orgname` is deprecated (Accounts replaced it): a custom field.
    FieldRule(source="company", field="COMPANY", label="Company"),
)


def _normal(field: str) -> str:
    if field in STANDARD_FIELDS or FIELD_ID.match(field):
        return field
    return field.upper()


def rules_from(field_map: FieldMap) -> tuple[FieldRule, ...]:
    """The effective rules: the defaults, then FIELD_MAP's `activecampaign` entries; a custom
    field is named by its id or its personalization tag (upper-cased, as ActiveCampaign)."""
    return tuple(
        rule.model_copy(update={"field": _normal(rule.field)})
        for rule in field_map.rules(PROVIDER, DEFAULT_RULES)
    )


def is_custom(rule: FieldRule) -> bool:
    """True when the rule fills a custom field (not one of the contact's own attributes)."""
    return rule.field not in STANDARD_FIELDS


def rule_problems(rules: tuple[FieldRule, ...]) -> list[str]:
    """Every FIELD_MAP entry ActiveCampaign cannot hold, named (start-up refuses any)."""
    problems = []
    for rule in rules:
        entry = f"FIELD_MAP entry {PROVIDER}.{rule.source}"
        if rule.field in STANDARD_FIELDS:
            if rule.type is not FieldType.text:
                problems.append(f"{entry}: {rule.field} is text, not {rule.type.value}")
        elif not (FIELD_ID.match(rule.field) or PERSTAG.match(rule.field)):
            problems.append(
                f"{entry}: {rule.field!r} is neither a field id nor a personalization tag"
            )
    return problems


def from_settings(settings: Settings) -> MappingConfig:
    """The deployment's ActiveCampaign mapping; ActiveCampaign has no way back after an
    unsubscribe (`reoptin` none) and no double opt-in through the API."""
    return MappingConfig(
        fields=rules_from(settings.FIELD_MAP),
        kinds=kinds_from(settings),
        reoptin="none",
        same=same_fields,
    )


def same_fields(cfg: MappingConfig, ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    """Whether fields read back already hold every value we would send (ActiveCampaign keeps
    what we do not send, so only our values are compared; a custom field not read back is
    not known to match)."""
    for key, value in ours.items():
        wanted = render_value(value)
        if wanted is None:
            continue
        held = render_value(theirs.get(key))
        if held != wanted:
            return False
    return True
