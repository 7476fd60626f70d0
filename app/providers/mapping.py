"""The neutral field mapping every provider's payload is built with (DESIGN §5, §14.7).

`MappingConfig` is what a provider's `mapping(settings)` returns: the provider's effective
FIELD_MAP rules (contact field or custom field → provider field, typed), whether new people
confirm by email, which contact kinds sync (SYNC_KINDS), and the provider's own comparison of
fields read back. The planner, the reconcile and the inbound rules only ever use these
methods; which provider field a value lands in is the rules' business.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.config import ContactKind, Settings
from app.fieldmap import FieldRule, FieldType
from app.providers.base import Reoptin

ADDRESS_REQUIRED = ("addr1", "city", "state", "zip")
# Contact columns a person's own profile edit may bring back, with the schema's limits: the
# field map decides which provider field each comes from (FNAME, LNAME, PHONE, COMPANY...).
PROFILE_COLUMNS = {"first_name": 200, "last_name": 200, "company": 200, "phone": 50}

Matcher = Callable[["MappingConfig", Mapping[str, Any], Mapping[str, Any]], bool]


def _equal(cfg: MappingConfig, ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    return all(theirs.get(k) == v for k, v in ours.items())


@dataclass(slots=True, frozen=True)
class AudienceRule:
    """Which contacts an audience mapping holds; each set constraint must hold (all: none).

    Tags compare case-insensitively, as the CRM deduplicates them.
    """

    kinds: frozenset[str] | None = None
    tags_any: frozenset[str] | None = None  # at least one of these tags
    tags_all: frozenset[str] | None = None  # every one of these tags

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> AudienceRule:
        """The rule of an `audience_mappings` row (its kinds, tags_any, tags_all columns)."""

        def norm(values: Any, *, lower: bool) -> frozenset[str] | None:
            if not values:
                return None
            return frozenset(v.lower() if lower else v for v in values)

        return cls(
            kinds=norm(row.get("kinds"), lower=False),
            tags_any=norm(row.get("tags_any"), lower=True),
            tags_all=norm(row.get("tags_all"), lower=True),
        )

    @property
    def is_all(self) -> bool:
        """True for the rule "all" (every contact the deployment syncs)."""
        return self.kinds is None and self.tags_any is None and self.tags_all is None

    def matches(self, contact: Mapping[Any, Any]) -> bool:
        """True when the contact belongs in the mapping's audience now."""
        if self.kinds is not None and contact.get("kind", "contact") not in self.kinds:
            return False
        if self.tags_any is None and self.tags_all is None:
            return True
        tags = {t.lower() for t in contact.get("tags") or ()}
        if self.tags_any is not None and not (tags & self.tags_any):
            return False
        return self.tags_all is None or self.tags_all <= tags

    def sql_params(self) -> dict[str, list[str] | None]:
        """Bind parameters of RULE_SQL."""
        return {
            "rule_kinds": sorted(self.kinds) if self.kinds is not None else None,
            "rule_tags_any": sorted(self.tags_any) if self.tags_any is not None else None,
            "rule_tags_all": sorted(self.tags_all) if self.tags_all is not None else None,
        }


def rule_sql(alias: str) -> str:
    """AudienceRule.matches in SQL, for a contacts row named `alias` (parameters:
    AudienceRule.sql_params())."""
    return f"""(
    (CAST(:rule_kinds AS text[]) IS NULL OR {alias}.kind = ANY(CAST(:rule_kinds AS text[])))
    AND (CAST(:rule_tags_any AS text[]) IS NULL
         OR ARRAY(SELECT lower(t) FROM unnest({alias}.tags) AS t)
            && CAST(:rule_tags_any AS text[]))
    AND (CAST(:rule_tags_all AS text[]) IS NULL
         OR ARRAY(SELECT lower(t) FROM unnest({alias}.tags) AS t)
            @> CAST(:rule_tags_all AS text[]))
)"""


RULE_SQL = rule_sql("c")


@dataclass(slots=True, frozen=True)
class InterestMap:
    """A preference name mapped to one interest of the mapping's audience."""

    name: str  # the contact's preference
    id: str  # the provider's interest id
    label: str  # the interest's name at the provider (what its webhooks say)


def interest_maps(rows: Any) -> tuple[InterestMap, ...]:
    """The `audience_mappings.interests` column as InterestMaps."""
    return tuple(
        InterestMap(name=str(r["name"]), id=str(r["id"]), label=str(r.get("label") or r["id"]))
        for r in rows or ()
        if isinstance(r, dict) and r.get("name") and r.get("id")
    )


@dataclass(slots=True)
class MappingConfig:
    """Operator-level field mapping (DESIGN §5 mapped fields, §14.7) and what syncs at all."""

    sync_address: bool = False  # Mailchimp's ADDRESS merge field (MAILCHIMP_SYNC_ADDRESS)
    double_opt_in: bool = False
    # The provider's effective FIELD_MAP rules (its defaults included), in order.
    fields: tuple[FieldRule, ...] = ()
    # SYNC_KINDS: contacts of other kinds are treated as absent (archived if we pushed them).
    kinds: frozenset[str] | None = None  # None: every kind
    reoptin: Reoptin = "double_opt_in"  # the provider's spec.capabilities.reoptin
    # The provider's "a member read back already holds what we send" (reconcile adoption).
    same: Matcher = _equal
    # The audience mapping's rule: a contact it leaves out is absent from that audience.
    rule: AudienceRule = field(default_factory=AudienceRule)
    # Campaigns a contact qualifies for under the provider's enrollment rules (evaluated at
    # send time; Mautic's MAUTIC_ENROLLMENT); None: the provider enrolls nobody.
    campaigns: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None
    # The mapping's preference names → interests; only these interests are ever sent.
    interests: tuple[InterestMap, ...] = ()

    def interest_payload(self, contact: Mapping[str, Any]) -> dict[str, bool]:
        """The mapped interests of the contact: chosen or not (empty: nothing mapped)."""
        if not self.interests:
            return {}
        chosen = {p.casefold() for p in contact.get("preferences") or ()}
        return {m.id: m.name.casefold() in chosen for m in self.interests}

    def chosen_by_labels(self, labels: Sequence[str]) -> set[str]:
        """The mapped preference names whose interests a delivery lists as chosen."""
        picked = {label.casefold() for label in labels}
        return {m.name for m in self.interests if m.label.casefold() in picked}

    def chosen_by_ids(self, interests: Mapping[str, bool]) -> set[str]:
        """The mapped preference names whose interests a member has chosen."""
        return {m.name for m in self.interests if interests.get(m.id)}

    def chosen_after(self, current: Sequence[str], changes: Mapping[str, bool]) -> set[str]:
        """The mapped preference names the contact holds after `changes` (interest id →
        chosen now) at the provider; mapped interests the change does not name stay."""
        held = {p.casefold() for p in current}
        chosen = {m.name for m in self.interests if m.name.casefold() in held}
        for m in self.interests:
            if m.id in changes:
                (chosen.add if changes[m.id] else chosen.discard)(m.name)
        return chosen

    def merged_preferences(self, current: Sequence[str], chosen: set[str]) -> list[str]:
        """The contact's preferences with the mapped ones replaced by `chosen` (the others,
        which this audience does not map, are kept)."""
        mapped = {m.name.casefold() for m in self.interests}
        kept = [p for p in current if p.casefold() not in mapped]
        return kept + sorted(chosen, key=str.casefold)

    def contact_digest(self, contact: Mapping[str, Any]) -> str | None:
        """The digest the planner computes for a contact (None without an email)."""
        email = contact.get("email")
        if not email:
            return None
        return digest_of(email, merge_fields(contact, self), self.interest_payload(contact))

    def syncs(self, contact: Mapping[str, Any]) -> bool:
        """True when the contact's kind is one that is pushed and the mapping's rule holds."""
        if self.kinds is not None and contact.get("kind", "contact") not in self.kinds:
            return False
        return self.rule.matches(contact)

    @property
    def consent_if_new(self) -> str:
        """A new consenting person's status: pending when they confirm by email."""
        return "pending" if self.double_opt_in else "subscribed"

    def payload_fields(self, contact: Mapping[str, Any]) -> dict[str, Any]:
        """The provider's fields for a contact (typed values; empty ones omitted)."""
        return merge_fields(contact, self)

    def digest(self, email: str, fields: Mapping[str, Any]) -> str:
        """The digest the mirror keeps as `pushed_digest`."""
        return digest_of(email, fields)

    def matches(self, ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
        """Whether fields read back from the provider already hold `ours`."""
        return self.same(self, ours, theirs)

    def profile_fields(self) -> tuple[tuple[str, str, int], ...]:
        """(provider field, contact column, length limit) of the mapped columns a person edits."""
        return tuple(
            (rule.field, rule.source, PROFILE_COLUMNS[rule.source])
            for rule in self.fields
            if rule.source in PROFILE_COLUMNS and rule.type is FieldType.text
        )

    def contact_fields(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Provider fields an inbound event carries → contact columns (present but empty:
        None, so the CRM clears the field), clipped to the schema's lengths."""
        out: dict[str, Any] = {}
        for tag, column, limit in self.profile_fields():
            if tag in fields:
                out[column] = _clip(fields.get(tag), limit)
        return out


def _clip(value: Any, limit: int) -> str | None:
    text = value.strip() if isinstance(value, str) else ""
    return text[:limit] or None


def merge_fields(contact: Mapping[str, Any], cfg: MappingConfig) -> dict[str, Any]:
    """The mapped fields (provider field → typed value); ADDRESS when enabled and complete.

    Empty values are omitted, never sent as null: Mailchimp refuses null merge values. The
    provider's client renders the typed values (e.g. a list) its own way.
    """
    out: dict[str, Any] = {}
    for rule in cfg.fields:
        value = rule.value(contact)
        if value is not None:
            out[rule.field] = value
    if cfg.sync_address and all(contact.get(c) for c in ADDRESS_REQUIRED):
        address = {
            "addr1": contact["addr1"],
            "addr2": contact.get("addr2") or "",
            "city": contact["city"],
            "state": contact["state"],
            "zip": contact["zip"],
            "country": contact.get("country") or "",
        }
        out["ADDRESS"] = address
    return out


def digest_of(
    email: str, fields: Mapping[str, Any], interests: Mapping[str, bool] | None = None
) -> str:
    """A stable hash of what we send as data (address, mapped fields, mapped interests).

    Without interests the hash is what it always was: nothing is re-sent for mappings
    without an interest map."""
    doc: dict[str, Any] = {"e": email, "m": fields}
    if interests:
        doc["i"] = interests
    blob = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def kinds_from(settings: Settings) -> frozenset[str] | None:
    """SYNC_KINDS as the planner reads it (None: every kind syncs)."""
    if set(ContactKind) <= settings.SYNC_KINDS:
        return None
    return frozenset(k.value for k in settings.SYNC_KINDS)
