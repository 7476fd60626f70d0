"""The operator's field map (DESIGN §14.7): which contact data fills which provider field.

`FIELD_MAP` is JSON (inline, or the path of a JSON file), one object per provider id; each
entry maps a *source* — a contact field such as `company`, or `custom_fields.<key>` — to the
provider's field (a Mailchimp merge tag, a Constant Contact custom field name, an
ActiveCampaign field id, a Mautic alias) and a type:

    {"mailchimp": {"company": "COMPANY",
                   "custom_fields.plan": {"field": "PLAN", "type": "text"},
                   "custom_fields.score": {"field": "SCORE", "type": "number",
                                           "label": "Lead score"},
                   "phone": null}}

A string is shorthand for a `text` field; `null` removes a mapping the provider maps by
default. This module is neutral: it parses and checks what holds for every provider and turns
a contact into typed values; each provider package adds its own rules (tag syntax, the types
its fields accept) and its defaults.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CUSTOM_PREFIX = "custom_fields."
# Contact columns an operator may map; the rest are the service's own business.
CONTACT_FIELDS = frozenset(
    {
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
        "kind",
        "referral",
    }
)
# Data the seed PRD keeps out of every provider (§4), and what the engine syncs by itself.
NEVER_SYNCED = {
    "notes": "notes never sync",
    "lead_status": "the pipeline stage never syncs",
}
SYNCED_BY_THE_SERVICE = frozenset(
    {"email", "tags", "newsletter_opt_in", "email_status", "newsletter_changed_at"}
)
PROVIDER_ID = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
CUSTOM_KEY_MAX = 64  # as the contacts API allows


class FieldType(StrEnum):
    """How a value is sent: the provider field must accept this type."""

    text = "text"
    number = "number"
    date = "date"
    list = "list"


class FieldRule(BaseModel):
    """One mapping: a contact source to a provider field of a type."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    source: str
    field: str = Field(min_length=1, max_length=100)
    type: FieldType = FieldType.text
    label: str | None = Field(default=None, min_length=1, max_length=100)

    @property
    def custom_key(self) -> str | None:
        """The `custom_fields` key this rule reads, or None for a contact column."""
        return self.source.removeprefix(CUSTOM_PREFIX) if self.is_custom else None

    @property
    def is_custom(self) -> bool:
        """True when the source is a custom field."""
        return self.source.startswith(CUSTOM_PREFIX)

    @property
    def display_name(self) -> str:
        """The name a provider field created for this rule gets."""
        if self.label:
            return self.label
        name = self.custom_key or self.source
        return name.replace("_", " ").strip().capitalize() or self.field

    def raw(self, contact: Mapping[str, Any]) -> Any:
        """The local value this rule reads from a contact row."""
        if self.is_custom:
            return (contact.get("custom_fields") or {}).get(self.custom_key)
        return contact.get(self.source)

    def value(self, contact: Mapping[str, Any]) -> Any:
        """The typed value to send, or None when there is nothing to send.

        Empty values are never sent (an empty local value must not blank the provider's), and a
        value that is not of the field's type is left out rather than refusing the member.
        """
        return coerce(self.raw(contact), self.type)


def coerce(value: Any, kind: FieldType) -> Any:
    """`value` as `kind` (text: str, number: int|float, date: ISO date, list: [str]) or None."""
    if value is None:
        return None
    if kind is FieldType.text:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        text = str(value).strip()
        return text or None
    if kind is FieldType.number:
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            return value
        try:
            number = float(str(value).strip())
        except ValueError:
            return None
        if number != number or number in (float("inf"), float("-inf")):
            return None
        return int(number) if number.is_integer() else number
    if kind is FieldType.date:
        if isinstance(value, datetime):
            return value.date().isoformat()
        if isinstance(value, date):
            return value.isoformat()
        if not isinstance(value, str):
            return None
        text = value.strip()
        try:
            return date.fromisoformat(text[:10]).isoformat() if len(text) >= 10 else None
        except ValueError:
            return None
    items = value if isinstance(value, list) else str(value).split(";")
    out = [str(v).strip() for v in items if v is not None and str(v).strip()]
    return out or None


class FieldMap(BaseModel):
    """The operator's field map: provider id → its rules (in the order written)."""

    model_config = ConfigDict(frozen=True)

    providers: dict[str, tuple[FieldRule, ...]] = Field(default_factory=dict)
    # Sources the operator unmapped (`null`) per provider: removed from its defaults.
    removed: dict[str, frozenset[str]] = Field(default_factory=dict)

    def rules(self, provider: str, defaults: tuple[FieldRule, ...] = ()) -> tuple[FieldRule, ...]:
        """A provider's effective rules: its defaults, overridden and extended by the operator."""
        ours = {r.source: r for r in self.providers.get(provider, ())}
        gone = self.removed.get(provider, frozenset())
        merged = [ours.pop(r.source, r) for r in defaults if r.source not in gone]
        return (*merged, *ours.values())


class FieldMapError(ValueError):
    """A FIELD_MAP that cannot be used; the message names the entry."""


class FieldsRefused(Exception):
    """The provider refuses the field map for this audience (on connect); names each entry."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def load_field_map(raw: Any) -> FieldMap:
    """Parse FIELD_MAP (a FieldMap, a dict, inline JSON or a file path); FieldMapError names why."""
    if isinstance(raw, FieldMap):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return FieldMap()
    if isinstance(raw, str):
        raw = _read_json(raw.strip())
    if not isinstance(raw, dict):
        raise FieldMapError("FIELD_MAP must be a JSON object of provider id → mappings")
    providers: dict[str, tuple[FieldRule, ...]] = {}
    removed: dict[str, frozenset[str]] = {}
    for provider, entries in raw.items():
        if not isinstance(provider, str) or not PROVIDER_ID.match(provider):
            raise FieldMapError(f"FIELD_MAP: {provider!r} is not a provider id")
        if not isinstance(entries, dict):
            raise FieldMapError(f"FIELD_MAP {provider}: must be an object of source → field")
        rules, gone = _provider_rules(provider, entries)
        providers[provider] = rules
        removed[provider] = gone
    return FieldMap(providers=providers, removed=removed)


def _read_json(text: str) -> Any:
    if text.startswith(("{", "[")):
        source = "FIELD_MAP"
    else:
        path = Path(text).expanduser()
        source = f"FIELD_MAP file {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FieldMapError(f"{source}: cannot be read ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FieldMapError(
            f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def _provider_rules(
    provider: str, entries: dict[str, Any]
) -> tuple[tuple[FieldRule, ...], frozenset[str]]:
    rules: list[FieldRule] = []
    gone: set[str] = set()
    targets: dict[str, str] = {}
    for source, spec in entries.items():
        entry = f"FIELD_MAP entry {provider}.{source}"
        problem = source_problem(source)
        if problem:
            raise FieldMapError(f"{entry}: {problem}")
        if spec is None:
            gone.add(source)
            continue
        if isinstance(spec, str):
            spec = {"field": spec}
        if not isinstance(spec, dict):
            raise FieldMapError(
                f'{entry}: must be a field name or {{"field": …, "type": …}}, not {spec!r}'
            )
        try:
            rule = FieldRule.model_validate({**spec, "source": source})
        except ValidationError as exc:
            raise FieldMapError(f"{entry}: {_first_error(exc)}") from None
        key = rule.field.casefold()
        if key in targets:
            raise FieldMapError(
                f"{entry}: {provider} field {rule.field!r} is already filled by {targets[key]}"
            )
        targets[key] = source
        rules.append(rule)
    return tuple(rules), frozenset(gone)


def source_problem(source: str) -> str | None:
    """Why `source` cannot be mapped, or None when it can."""
    if source.startswith(CUSTOM_PREFIX):
        key = source.removeprefix(CUSTOM_PREFIX)
        if not key or len(key) > CUSTOM_KEY_MAX:
            return f"a custom field key is 1-{CUSTOM_KEY_MAX} characters"
        return None
    if source in NEVER_SYNCED:
        return NEVER_SYNCED[source]
    if source in SYNCED_BY_THE_SERVICE:
        return f"{source} is synced by the service itself and cannot be mapped"
    if source not in CONTACT_FIELDS:
        known = ", ".join(sorted(CONTACT_FIELDS))
        return f"unknown contact field; use one of {known} or custom_fields.<key>"
    return None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    message = err["msg"]
    if err["type"] == "enum":
        message = f"type {err.get('input')!r} is not one of " + ", ".join(
            t.value for t in FieldType
        )
        return message
    if err["type"] == "extra_forbidden":
        return f"unknown key {where!r} (use field, type, label)"
    return f"{where}: {message}" if where else message
