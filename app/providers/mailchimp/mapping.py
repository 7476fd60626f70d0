"""Contact → Mailchimp merge fields: the deployment's rules (FIELD_MAP, MAILCHIMP_* settings)
and how merge fields read back compare with what we send."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.config import Settings
from app.providers.mailchimp.client import merge_values
from app.providers.mailchimp.fields import rules_from
from app.providers.mapping import MappingConfig, kinds_from


def from_settings(settings: Settings) -> MappingConfig:
    """The deployment's Mailchimp mapping (FIELD_MAP, ADDRESS, double opt-in, SYNC_KINDS)."""
    return MappingConfig(
        sync_address=settings.MAILCHIMP_SYNC_ADDRESS,
        double_opt_in=settings.MAILCHIMP_DOUBLE_OPT_IN,
        fields=rules_from(settings.FIELD_MAP, settings.MAILCHIMP_MERGE_FIELD_MAP),
        kinds=kinds_from(settings),
        reoptin="double_opt_in",
        same=same_merge_fields,
    )


def same_merge_fields(
    cfg: MappingConfig, ours: Mapping[str, Any], theirs: Mapping[str, Any]
) -> bool:
    """Whether a member's merge fields already hold what we would send."""
    return comparable(ours) == remote_fields(theirs, mapped_tags(cfg))


def _scalar(value: Any) -> str:
    return str(value).strip()


def remote_fields(merge: Mapping[str, Any], tags: Sequence[str]) -> dict[str, Any]:
    """A member's merge fields, limited to the tags we map, empty values dropped (as we send)."""
    out: dict[str, Any] = {}
    for tag in tags:
        value = merge.get(tag)
        if isinstance(value, dict):
            if any(value.get(k) for k in ("addr1", "city", "state", "zip")):
                out[tag] = {k: _scalar(value.get(k) or "") for k in sorted(value)}
        elif value is not None and _scalar(value) != "":
            out[tag] = _scalar(value)
    return out


def comparable(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Our merge fields in the same shape as remote_fields (strings, sorted address keys)."""
    out: dict[str, Any] = {}
    for tag, value in merge_values(dict(fields)).items():
        if isinstance(value, dict):
            out[tag] = {k: _scalar(value.get(k) or "") for k in sorted(value)}
        else:
            out[tag] = _scalar(value)
    return out


def mapped_tags(cfg: MappingConfig) -> list[str]:
    """Every merge tag the service writes."""
    tags = [r.field for r in cfg.fields]
    if cfg.sync_address and "ADDRESS" not in tags:
        tags.append("ADDRESS")
    return tags
