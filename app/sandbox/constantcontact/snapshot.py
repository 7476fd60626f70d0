"""A JSON snapshot of the whole state (and the signing key), so `make run` survives restarts:
connections keep their grants, tokens still verify, contacts stay."""

from __future__ import annotations

import os
from collections import deque
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import orjson

from app.sandbox.constantcontact import keys
from app.sandbox.constantcontact.state import (
    AccessToken,
    Account,
    Activity,
    App,
    Contact,
    ContactList,
    CustomField,
    Grant,
    RefreshToken,
    SandboxState,
    Tag,
)

VERSION = 1
_ACCOUNT_TABLES = {
    "contacts": Contact,
    "lists": ContactList,
    "tags": Tag,
    "custom_fields": CustomField,
    "activities": Activity,
}
_ID_FIELDS = {
    "contacts": "contact_id",
    "lists": "list_id",
    "tags": "tag_id",
    "custom_fields": "custom_field_id",
    "activities": "activity_id",
}
_DERIVED = {"by_email", "order", "pending_activities", "signup_seen"}


def _account(account: Account) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(account):
        if f.name in _DERIVED:
            continue
        value = getattr(account, f.name)
        out[f.name] = [asdict(v) for v in value.values()] if f.name in _ACCOUNT_TABLES else value
    return out


def save(state: SandboxState, path: Path) -> None:
    """Write the snapshot atomically (a temporary file, then a rename)."""
    data = {
        "version": VERSION,
        "key": keys.export_key(),
        "clock_offset": state.clock_offset,
        "apps": [asdict(a) for a in state.apps.values()],
        "accounts": [_account(a) for a in state.accounts.values()],
        "grants": [asdict(g) for g in state.grants.values()],
        "refresh_tokens": [asdict(t) for t in state.refresh_tokens.values()],
        "access_tokens": [
            asdict(t) for t in state.access_tokens.values() if t.expires_at > state.now()
        ],
        "emails": state.emails,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(data))
    os.replace(tmp, path)


def load(state: SandboxState, path: Path) -> bool:
    """Replace the state with the snapshot's; False when there is none. ValueError if broken."""
    if not path.exists():
        return False
    data = orjson.loads(path.read_bytes())
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError("not a snapshot of this sandbox version")
    keys.restore_key(data["key"])
    state.clock_offset = float(data["clock_offset"])
    state.apps = {a["client_id"]: App(**a) for a in data["apps"]}
    state.accounts = {}
    for raw in data["accounts"]:
        tables = {name: raw.pop(name) for name in _ACCOUNT_TABLES}
        account = Account(**raw)
        for name, cls in _ACCOUNT_TABLES.items():
            items = [cls(**item) for item in tables[name]]
            key = _ID_FIELDS[name]
            setattr(account, name, {getattr(i, key): i for i in items})
        for contact in account.contacts.values():
            if contact.email is not None:
                account.by_email[state.email_key(contact.email)] = contact
        account.order = sorted(c.sort_key for c in account.contacts.values())
        account.pending_activities = deque(
            sorted(
                (a for a in account.activities.values() if a.state != "completed"),
                key=lambda a: a.completes_at,
            )
        )
        state.accounts[account.id] = account
    state.grants = {g["grant_id"]: Grant(**g) for g in data["grants"]}
    state.refresh_tokens = {t["value"]: RefreshToken(**t) for t in data["refresh_tokens"]}
    state.access_tokens = {t["token"]: AccessToken(**t) for t in data["access_tokens"]}
    state.tokens_by_jti = {t.jti: t for t in state.access_tokens.values()}
    state.emails = list(data["emails"])
    return True
