"""The sandbox's data as JSON, so `serve` keeps its Mautic across restarts (`state_file`)."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from app.sandbox.mautic import fields as F
from app.sandbox.mautic.model import (
    Campaign,
    Company,
    Contact,
    Dnc,
    Hook,
    Membership,
    QueueRow,
    Segment,
    Stage,
    Tag,
    User,
)
from app.sandbox.mautic.state import AuthCode, Client, Token

if TYPE_CHECKING:
    from app.sandbox.mautic.state import MauticState

VERSION = 1
_USER_REFS = ("created_by", "modified_by", "user")


def _plain(obj: Any) -> dict[str, Any]:
    """A dataclass as JSON-able data, user references as ids."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in _USER_REFS:
            out[f.name] = value.id if value is not None else None
        elif isinstance(value, set):
            out[f.name] = sorted(value)
        elif f.name in ("dnc", "members", "removed"):
            out[f.name] = {str(k): asdict(v) for k, v in value.items()}
        else:
            out[f.name] = value
    return out


def dump(state: MauticState) -> dict[str, Any]:
    inst = state.instance
    return {
        "version": VERSION,
        "ids": inst._ids,
        "users": [asdict(u) for u in inst.users.values()],
        "fields": [asdict(f) for f in inst.fields.values()],
        "contacts": [_plain(c) for c in inst.contacts.values()],
        "tags": [asdict(t) for t in inst.tags.values()],
        "segments": [_plain(s) for s in inst.segments.values()],
        "campaigns": [_plain(c) for c in inst.campaigns.values()],
        "stages": [asdict(s) for s in inst.stages.values()],
        "companies": [_plain(c) for c in inst.companies.values()],
        "hooks": [_plain(h) for h in inst.hooks.values()],
        "queue": [asdict(r) for r in inst.queue.values()],
        "clients": [_plain(c) for c in state.clients.values()],
        "tokens": [_plain(t) for t in state.tokens.values()],
        "refresh_tokens": [_plain(t) for t in state.refresh_tokens.values()],
        "codes": [_plain(c) for c in state.codes.values()],
    }


def restore(state: MauticState, data: dict[str, Any]) -> None:
    """Replace the state's data with a dump's; raise ValueError/KeyError/TypeError if unusable."""
    if data.get("version") != VERSION:
        raise ValueError(f"snapshot version {data.get('version')!r} is not {VERSION}")
    inst = state.instance
    users = {int(u["id"]): User(**u) for u in data["users"]}

    def user(uid: Any) -> User | None:
        return users.get(int(uid)) if uid is not None else None

    def refs(item: dict[str, Any]) -> dict[str, Any]:
        return {k: (user(v) if k in _USER_REFS else v) for k, v in item.items()}

    def members(raw: dict[str, Any]) -> dict[int, Membership]:
        return {int(k): Membership(**v) for k, v in raw.items()}

    inst.users = users
    inst.fields = {f["alias"]: F.Field(**f) for f in data["fields"]}
    inst.fields_version += 1
    inst.contacts = {}
    inst.by_email = {}
    for raw in data["contacts"]:
        item = refs(raw)
        item["dnc"] = {k: Dnc(**v) for k, v in item["dnc"].items()}
        contact = Contact(**item)
        inst.contacts[contact.id] = contact
        inst._index(contact, None)
    inst.tags = {t["tag"].lower(): Tag(**t) for t in data["tags"]}
    inst.segments = {}
    for raw in data["segments"]:
        item = refs(raw)
        item["members"] = members(item["members"])
        inst.segments[item["id"]] = Segment(**item)
    inst.campaigns = {}
    for raw in data["campaigns"]:
        item = refs(raw)
        item["members"] = members(item["members"])
        item["removed"] = members(item["removed"])
        inst.campaigns[item["id"]] = Campaign(**item)
    inst.stages = {s["id"]: Stage(**s) for s in data["stages"]}
    inst.companies = {}
    for raw in data.get("companies", []):
        item = refs(raw)
        item["members"] = members(item["members"])
        inst.companies[item["id"]] = Company(**item)
    inst.hooks = {h["id"]: Hook(**refs(h)) for h in data["hooks"]}
    inst.queue = {r["id"]: QueueRow(**r) for r in data["queue"]}
    inst._ids = {str(k): int(v) for k, v in data["ids"].items()}
    state.admin = next(iter(users.values()))
    state.clients = {}
    for raw in data["clients"]:
        raw = {**raw, "grants": set(raw["grants"])}
        state.clients[raw["public_id"]] = Client(**raw)
    state.tokens = {t["token"]: Token(**refs(t)) for t in data["tokens"]}
    state.refresh_tokens = {t["token"]: Token(**refs(t)) for t in data["refresh_tokens"]}
    state.codes = {c["code"]: AuthCode(**refs(c)) for c in data["codes"]}


def save(state: MauticState, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(dump(state)))
    tmp.replace(path)


def load(state: MauticState, path: Path) -> bool:
    if not path.exists():
        return False
    restore(state, orjson.loads(path.read_bytes()))
    return True
