"""Serializers: entities as Mautic's API and webhooks show them (reference §1.1, §3, §4, §7)."""

from __future__ import annotations

import time
from typing import Any

from app.sandbox.mautic import fields as F
from app.sandbox.mautic.encoding import php_serialize
from app.sandbox.mautic.model import (
    Campaign,
    Company,
    Contact,
    Dnc,
    Hook,
    Instance,
    Segment,
    Stage,
    Tag,
    User,
)


def iso(ts: float | None) -> str | None:
    """JMS `c` format, UTC: `2025-08-05T10:00:02+00:00`."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts))


def _user_name(user: User | None) -> str | None:
    return user.full_name if user is not None else None


def publish(
    is_published: bool,
    date_added: float,
    date_modified: float | None,
    created_by: User | None,
    modified_by: User | None,
) -> dict[str, Any]:
    """`FormEntity` publish details, in output order."""
    return {
        "isPublished": is_published,
        "dateAdded": iso(date_added),
        "dateModified": iso(date_modified),
        "createdBy": created_by.id if created_by else None,
        "createdByUser": _user_name(created_by),
        "modifiedBy": modified_by.id if modified_by else None,
        "modifiedByUser": _user_name(modified_by) if modified_by else " ",
    }


def field_value(f: F.Field, value: Any) -> Any:
    if f.type == "number" or f.alias == "points":
        number = F.to_number(value)
        return number if number is not None or f.alias != "points" else 0
    return value


def _field_head(f: F.Field) -> dict[str, Any]:
    return {
        "id": str(f.id),
        "label": f.label,
        "alias": f.alias,
        "type": f.type,
        "group": f.group,
        "object": "lead",
        "is_fixed": "1" if f.is_fixed else "0",
        "properties": php_serialize(f.properties) if f.properties else "a:0:{}",
        "default_value": f.default_value,
    }


def _field_entry(f: F.Field, value: Any, head: dict[str, Any]) -> dict[str, Any]:
    value = field_value(f, value)
    entry = dict(head)
    entry["value"] = value
    entry["normalizedValue"] = value if value is not None else ""
    return entry


Layout = list[tuple[F.Field, dict[str, Any], dict[str, Any], Any]]


def _layout(instance: Instance) -> Layout:
    """Published fields in order with their fixed entry keys and their entry and value when
    empty, cached until a field changes."""
    cached = instance.layout_cache
    if cached is None or cached[0] != instance.fields_version:
        fields = sorted(instance.fields.values(), key=lambda x: (x.order, x.id))
        heads = [(f, _field_head(f)) for f in fields if f.is_published]
        layout = [(f, h, _field_entry(f, None, h), field_value(f, None)) for f, h in heads]
        cached = (instance.fields_version, layout)
        instance.layout_cache = cached
    return cached[1]


def contact_fields(instance: Instance, contact: Contact, *, with_all: bool) -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = {g: {} for g in F.GROUPS}
    flat: dict[str, Any] = {"id": contact.id}
    values = contact.values
    for f, head, empty, empty_value in _layout(instance):
        value = contact.points if f.alias == "points" else values.get(f.alias)
        group = groups.get(f.group)
        if group is None:
            group = groups[f.group] = {}
        if value is None:
            # Most fields of a contact are empty: one shared entry each (rendered output is
            # only ever serialized, never changed), not a new one per contact per request.
            group[f.alias] = empty
            flat[f.alias] = empty_value
            continue
        group[f.alias] = _field_entry(f, value, head)
        flat[f.alias] = field_value(f, value)
    out: dict[str, Any] = {g: (entries or []) for g, entries in groups.items()}
    if with_all:
        out["all"] = flat
    return out


def user(u: User | None) -> dict[str, Any] | None:
    if u is None:
        return None
    return {"id": u.id, "username": u.username, "firstName": u.first_name, "lastName": u.last_name}


def dnc(record: Dnc) -> dict[str, Any]:
    return {
        "id": record.id,
        "dateAdded": iso(record.date_added),
        "reason": record.reason,
        "comments": record.comments,
        "channel": record.channel,
        "channelId": record.channel_id,
    }


def tag(t: Tag) -> dict[str, Any]:
    return {"id": t.id, "tag": t.tag, "description": t.description}


def stage(s: Stage | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"id": s.id, "name": s.name, "weight": s.weight, "description": s.description}


def contact(
    instance: Instance,
    c: Contact,
    *,
    minimal: bool = False,
    webhook: bool = False,
    deleted: bool = False,
) -> dict[str, Any]:
    """A contact: API form (with `fields.all`), `minimal`, or webhook form (without it)."""
    out = publish(True, c.date_added, c.date_modified, c.created_by, c.modified_by)
    out["id"] = None if deleted else c.id
    out["points"] = c.points
    out["color"] = None
    out["fields"] = contact_fields(instance, c, with_all=not webhook)
    if minimal:
        return out
    key = instance.config.ip_address_key
    owner = instance.users.get(c.owner_id) if c.owner_id is not None else None
    out.update(
        {
            "lastActive": iso(c.last_active),
            "owner": user(owner),
            "ipAddresses": [
                {key: ip, "id": i + 1, "ipDetails": _ip_details()} for i, ip in enumerate(c.ips)
            ],
            "tags": [tag(instance.tag(name)) for name in c.tags],
            "utmtags": [],
            "stage": stage(instance.stages.get(c.stage_id)) if c.stage_id else None,
            "dateIdentified": iso(c.date_identified),
            "preferredProfileImage": "gravatar",
            "doNotContact": [dnc(r) for r in c.dnc.values()],
            "frequencyRules": [],
        }
    )
    return out


def _ip_details() -> dict[str, str]:
    return dict.fromkeys(
        [
            "city",
            "region",
            "zipcode",
            "country",
            "latitude",
            "longitude",
            "isp",
            "organization",
            "timezone",
            "extra",
        ],
        "",
    )


def strip_nulls(value: Any) -> Any:
    """JMS without `serializeNull` (DNC add/remove answers) leaves null keys out."""
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value]
    return value


def segment(s: Segment) -> dict[str, Any]:
    out = publish(s.is_published, s.date_added, s.date_modified, s.created_by, s.modified_by)
    out.update(
        {
            "id": s.id,
            "name": s.name,
            "publicName": s.public_name,
            "alias": s.alias,
            "description": s.description,
            "category": None,
            "filters": s.filters,
            "isGlobal": s.is_global,
            "isPreferenceCenter": s.is_preference_center,
        }
    )
    return out


def company(c: Company) -> dict[str, Any]:
    """A company with its one core field (the sandbox keeps only the name)."""
    out = publish(True, c.date_added, None, c.created_by, None)
    entry = {
        "id": "1",
        "label": "Company Name",
        "alias": "companyname",
        "type": "text",
        "group": "core",
        "object": "company",
        "is_fixed": "1",
        "properties": "a:0:{}",
        "default_value": None,
        "value": c.name,
        "normalizedValue": c.name,
    }
    out.update(
        {
            "id": c.id,
            "fields": {
                "core": {"companyname": entry},
                "professional": [],
                "other": [],
                "all": {"id": c.id, "companyname": c.name},
            },
            "score": 0,
        }
    )
    return out


def campaign(c: Campaign) -> dict[str, Any]:
    out = publish(c.is_published, c.date_added, c.date_modified, c.created_by, None)
    out.update(
        {
            "id": c.id,
            "name": c.name,
            "category": None,
            "description": c.description,
            "allowRestart": c.allow_restart,
            "publishUp": None,
            "publishDown": None,
            "events": [],
            "forms": [],
            "lists": [],
            "canvasSettings": None,
        }
    )
    return out


def field(f: F.Field) -> dict[str, Any]:
    out = publish(f.is_published, f.date_added, None, None, None)
    out["modifiedByUser"] = None
    out.update(
        {
            "id": f.id,
            "label": f.label,
            "alias": f.alias,
            "type": f.type,
            "group": f.group,
            "order": f.order,
            "object": "lead",
            "defaultValue": f.default_value,
            "isRequired": f.is_required,
            "isFixed": f.is_fixed,
            "isListable": True,
            "isVisible": True,
            "isShortVisible": True,
            "isPubliclyUpdatable": False,
            "isUniqueIdentifier": f.is_unique,
            "properties": f.properties if f.properties else [],
        }
    )
    return out


def hook(h: Hook) -> dict[str, Any]:
    out = publish(h.is_published, h.date_added, h.date_modified, h.created_by, h.modified_by)
    out.update(
        {
            "id": h.id,
            "name": h.name,
            "description": h.description,
            "webhookUrl": h.url,
            "secret": h.secret,
            "eventsOrderbyDir": h.events_orderby_dir,
            "category": None,
            "triggers": list(h.triggers),
        }
    )
    return out


def keyed(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A PHP array indexed by id as JSON: an object keyed by id (`{}` when empty)."""
    return {str(item["id"]): item for item in items}
