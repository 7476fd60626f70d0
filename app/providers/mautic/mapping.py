"""Contact → Mautic contact fields: FIELD_MAP rules onto field aliases, and how the fields read
back compare with what we send."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from app.config import Environment, MauticEnrollmentRule, MauticMode, Settings
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


def _score(contact: Mapping[str, Any], field: str) -> float | None:
    custom = contact.get("custom_fields") or {}
    value = custom.get(field) if isinstance(custom, Mapping) else None
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # not a number: the rule does not match (never a guess)


def qualifies(rule: MauticEnrollmentRule, contact: Mapping[str, Any]) -> bool:
    """Whether a contact matches an enrollment rule (lead status in the list, score at least
    the minimum; a missing or non-numeric score never matches)."""
    if rule.lead_status_in is not None:
        status = str(contact.get("lead_status") or "").strip().lower()
        if status not in {s.lower() for s in rule.lead_status_in}:
            return False
    if rule.min_score is not None and rule.score_field:
        score = _score(contact, rule.score_field)
        if score is None or score < rule.min_score:
            return False
    return True


def enrollment(
    rules: tuple[MauticEnrollmentRule, ...],
) -> Callable[[Mapping[str, Any]], tuple[str, ...]] | None:
    """MAUTIC_ENROLLMENT as the planner asks it: the campaigns a contact qualifies for."""
    if not rules:
        return None

    def campaigns(contact: Mapping[str, Any]) -> tuple[str, ...]:
        found = [str(r.campaign_id) for r in rules if qualifies(r, contact)]
        return tuple(dict.fromkeys(found))

    return campaigns


# Development against the sandbox with MAUTIC_ENROLLMENT unset: qualified leads scoring 70+
# (custom field `score`) join the sandbox's demo campaign (its DEMO_CAMPAIGN_ID), so the
# README's first steps show an enrollment.
DEMO_ENROLLMENT = (
    MauticEnrollmentRule(
        campaign_id=1,
        lead_status_in=("qualified", "converted"),
        min_score=70,
        score_field="score",
    ),
)


def enrollment_rules(settings: Settings) -> tuple[MauticEnrollmentRule, ...]:
    """MAUTIC_ENROLLMENT; unset in development against the sandbox, the demo rule."""
    if settings.MAUTIC_ENROLLMENT is not None:
        return settings.MAUTIC_ENROLLMENT
    demo = (
        settings.ENVIRONMENT is Environment.development
        and settings.MAUTIC_MODE is MauticMode.sandbox
    )
    return DEMO_ENROLLMENT if demo else ()


def from_settings(settings: Settings) -> MappingConfig:
    """The deployment's Mautic mapping (FIELD_MAP, SYNC_KINDS, MAUTIC_ENROLLMENT); Mautic has
    no double opt-in."""
    return MappingConfig(
        fields=rules_from(settings.FIELD_MAP),
        kinds=kinds_from(settings),
        reoptin="none",
        same=same_fields,
        campaigns=enrollment(enrollment_rules(settings)),
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
