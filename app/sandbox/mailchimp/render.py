"""The JSON Mailchimp answers with, and `fields` / `exclude_fields` projection."""

from __future__ import annotations

from typing import Any

import orjson

from app.sandbox.mailchimp import clock
from app.sandbox.mailchimp.audience import Audience, Member, MergeField, Webhook

SCHEMA = "https://us1.api.mailchimp.com/schema/3.0"


def link(rel: str, href: str, method: str = "GET", schema: str | None = None) -> dict[str, str]:
    out = {"rel": rel, "href": href, "method": method}
    if schema:
        out["targetSchema" if method == "GET" else "schema"] = f"{SCHEMA}/{schema}"
    return out


_HASH = b"@@SUBSCRIBER_HASH@@"
_link_templates: dict[tuple[str, str], bytes] = {}
STATS = {"avg_open_rate": 0, "avg_click_rate": 0}
NO_LOCATION = {
    "latitude": 0,
    "longitude": 0,
    "gmtoff": 0,
    "dstoff": 0,
    "country_code": "",
    "timezone": "",
    "region": "",
}


def _location(location: Any) -> dict[str, Any]:
    return {
        **NO_LOCATION,
        "latitude": location.get("latitude", 0),
        "longitude": location.get("longitude", 0),
    }


def member_links(base: str, list_id: str, subscriber_hash: str) -> orjson.Fragment:
    """The member's `_links`, pre-serialised from a per-(base, list) template: the hot path."""
    template = _link_templates.get((base, list_id))
    if template is None:
        if len(_link_templates) > 1000:
            _link_templates.clear()
        href = f"{base}/3.0/lists/{list_id}/members/{_HASH.decode()}"
        template = orjson.dumps(
            [
                link("self", href, "GET", "Lists/Members/Response.json"),
                link("parent", f"{base}/3.0/lists/{list_id}/members", "GET"),
                link("update", href, "PATCH", "Lists/Members/PATCH.json"),
                link("upsert", href, "PUT", "Lists/Members/PUT.json"),
                link("delete", href, "DELETE"),
                link("delete_permanent", f"{href}/actions/delete-permanent", "POST"),
                link("tags", f"{href}/tags", "GET"),
            ]
        )
        _link_templates[(base, list_id)] = template
    return orjson.Fragment(template.replace(_HASH, subscriber_hash.encode()))


def member(m: Member, aud: Audience, base: str) -> dict[str, Any]:
    """A member as reference §1.7 shows it (empty merge fields as "")."""
    merges = m.merge
    merge_fields = {tag: merges.get(tag, "") for tag in aud.merge_tags}
    first = merges.get("FNAME", "")
    last = merges.get("LNAME", "")
    tag_ids = aud.tag_ids
    location = m.location
    return {
        "id": m.hash,
        "email_address": m.email,
        "unique_email_id": m.uid,
        "contact_id": m.contact_id,
        "full_name": f"{first} {last}".strip() if first or last else "",
        "web_id": m.web_id,
        "email_type": m.email_type,
        "status": m.status,
        "consents_to_one_to_one_messaging": True,
        "merge_fields": merge_fields,
        "stats": STATS,
        "ip_signup": m.ip_signup,
        "timestamp_signup": m.timestamp_signup,
        "ip_opt": m.ip_opt,
        "timestamp_opt": m.timestamp_opt,
        "member_rating": 2,
        "last_changed": clock.iso(m.last_changed),
        "language": m.language,
        "vip": m.vip,
        "email_client": "",
        "location": _location(location) if location else NO_LOCATION,
        "source": m.source,
        "tags_count": len(m.tags),
        "tags": [{"id": tag_ids[name], "name": name} for name in m.tags],
        # Mailchimp shows every interest of the audience, chosen or not.
        **(
            {"interests": {i: bool(m.interests.get(i)) for i in aud.interests}}
            if aud.interests
            else {}
        ),
        "list_id": aud.id,
        "_links": member_links(base, aud.id, m.hash),
    }


def audience(aud: Audience, base: str, account_name: str) -> dict[str, Any]:
    href = f"{base}/3.0/lists/{aud.id}"
    return {
        "id": aud.id,
        "web_id": aud.web_id,
        "name": aud.name,
        "contact": {
            "company": account_name,
            "address1": "675 Ponce de Leon Ave NE",
            "address2": "Suite 5000",
            "city": "Atlanta",
            "state": "GA",
            "zip": "30308",
            "country": "US",
            "phone": "",
        },
        "permission_reminder": "You signed up for updates on our website.",
        "use_archive_bar": True,
        "campaign_defaults": {
            "from_name": account_name,
            "from_email": "news@sandbox.example.com",
            "subject": "",
            "language": "en",
        },
        "notify_on_subscribe": "",
        "notify_on_unsubscribe": "",
        "date_created": clock.iso(aud.created),
        "list_rating": 0,
        "email_type_option": False,
        "subscribe_url_short": f"{base}/subscribe/{aud.id}",
        "subscribe_url_long": f"{base}/subscribe?u={aud.account_id}&id={aud.id}",
        "beamer_address": f"us1-{aud.id}@inbound.sandbox.example.com",
        "visibility": "prv",
        "double_optin": False,
        "has_welcome": False,
        "marketing_permissions": False,
        "modules": [],
        "stats": aud.stats(),
        "_links": [
            link("self", href, "GET", "Lists/Response.json"),
            link("parent", f"{base}/3.0/lists", "GET", "Lists/CollectionResponse.json"),
            link("members", f"{href}/members", "GET", "Lists/Members/CollectionResponse.json"),
            link("merge-fields", f"{href}/merge-fields", "GET"),
            link("webhooks", f"{href}/webhooks", "GET"),
            link("batch-sub-unsub-members", href, "POST", "Lists/BatchPOST.json"),
        ],
    }


def merge_field(mf: MergeField, aud: Audience, base: str) -> dict[str, Any]:
    href = f"{base}/3.0/lists/{aud.id}/merge-fields/{mf.merge_id}"
    return {
        "merge_id": mf.merge_id,
        "tag": mf.tag,
        "name": mf.name,
        "type": mf.type,
        "required": mf.required,
        "default_value": mf.default_value,
        "public": mf.public,
        "display_order": mf.display_order,
        "options": mf.options,
        "help_text": mf.help_text,
        "list_id": aud.id,
        "_links": [
            link("self", href, "GET"),
            link("parent", f"{base}/3.0/lists/{aud.id}/merge-fields", "GET"),
            link("update", href, "PATCH"),
            link("delete", href, "DELETE"),
        ],
    }


def webhook(w: Webhook, aud: Audience, base: str) -> dict[str, Any]:
    href = f"{base}/3.0/lists/{aud.id}/webhooks/{w.id}"
    return {
        "id": w.id,
        "url": w.url,
        "events": dict(w.events),
        "sources": dict(w.sources),
        "list_id": aud.id,
        "_links": [
            link("self", href, "GET"),
            link("parent", f"{base}/3.0/lists/{aud.id}/webhooks", "GET"),
            link("update", href, "PATCH"),
            link("delete", href, "DELETE"),
        ],
    }


# -- projection ---------------------------------------------------------------------------

Tree = dict[str, "Tree"]


def parse_fields(spec: str) -> Tree:
    """`members.email_address,total_items` -> {"members": {"email_address": {}}, ...}."""
    tree: Tree = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        node = tree
        for part in item.split("."):
            node = node.setdefault(part, {})
    return tree


def include(value: Any, tree: Tree) -> Any:
    if isinstance(value, list):
        return [include(v, tree) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, sub in tree.items():
            if key in value:
                out[key] = include(value[key], sub) if sub else value[key]
        return out
    return value


def exclude(value: Any, tree: Tree) -> Any:
    if isinstance(value, list):
        return [exclude(v, tree) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            sub = tree.get(key)
            if sub is None:
                out[key] = item
            elif sub:
                out[key] = exclude(item, sub)
        return out
    return value


def project(value: Any, fields: str | None, exclude_fields: str | None) -> Any:
    if fields:
        value = include(value, parse_fields(fields))
    if exclude_fields:
        value = exclude(value, parse_fields(exclude_fields))
    return value
