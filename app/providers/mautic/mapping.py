"""Contact → Mautic contact fields: FIELD_MAP rules onto field aliases, and how the fields read
back compare with what we send."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from app.config import Settings
from app.fieldmap import FieldMap, FieldRule
from app.providers.mapping import MappingConfig, kinds_from
from app.providers.mautic.spec import PROVIDER

# Mautic's own rule for an alias (it lower-cases and strips what it is given).
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# The address is the payload's `email`; these are API keys with their own meaning, not fields.
RESERVED_ALIASES = frozenset(
    {"email", "tags", "owner", "stage", "ipaddress", "lastactive", "donotcontact", "points"}
)

DEFAULT_RULES: tuple[FieldRule, ...] = (
    FieldRule(source="first_name", field="firstname", label="First Name"),
    FieldRule(source="last_name", field="lastname", label="Last Name"),
    FieldRule(source="phone", field="phone", label="Phone"),
    FieldRule(source="company", field="company", label="Company"),
)


def rules_from(field_map: FieldMap) -> tuple[FieldRule, ...]:
    """The effective Mautic rules: defaults, then FIELD_MAP's `mautic` entries, aliases
    lower-cased as Mautic stores them."""
    return tuple(
        rule.model_copy(update={"field": rule.field.lower()})
        for rule in field_map.rules(PROVIDER, DEFAULT_RULES)
    )


def alias_problems(rules: tuple[FieldRule, ...]) -> list[str]:
    """Every FIELD_MAP entry Mautic cannot hold, named (start-up refuses to run on any)."""
    problems = []
    for rule in rules:
        entry = f"FIELD_MAP entry {PROVIDER}.{rule.source}"
        if rule.field in RESERVED_ALIASES:
            problems.append(f"{entry}: {rule.field!r} is not a contact field alias")
        elif not ALIAS_PATTERN.match(rule.field):
            problems.append(f"{entry}: {rule.field!r} is not a Mautic alias ([a-z][a-z0-9_]*)")
    return problems


def from_settings(settings: Settings) -> MappingConfig:
    """The deployment's Mautic mapping (FIELD_MAP, SYNC_KINDS); Mautic has no double opt-in."""
    return MappingConfig(
        fields=rules_from(settings.FIELD_MAP),
        kinds=kinds_from(settings),
        reoptin="none",
        same=same_fields,
    )


def field_value(value: Any) -> Any:
    """A neutral value as Mautic takes it: a list (FIELD_MAP type list) joined with `|`, as
    Mautic stores multiselect values; None for an empty value (never sent)."""
    if isinstance(value, list):
        value = "|".join(str(v) for v in value if str(v).strip())
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def same_fields(cfg: MappingConfig, ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    """Whether a contact's `fields.all` already holds every value we would send (Mautic keeps
    what we do not send, so only our values are compared)."""
    for alias, value in ours.items():
        wanted = field_value(value)
        if wanted is None:
            continue
        held = theirs.get(alias)
        if held is None or _text(held) != _text(wanted):
            return False
    return True
