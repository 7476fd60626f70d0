"""The sandbox's whole in-memory state: accounts, audiences, OAuth, logs, fault dice."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from app.sandbox.kit import Clock, Gate, InFlight, RequestLog
from app.sandbox.mailchimp import clock, errors
from app.sandbox.mailchimp import constants as c
from app.sandbox.mailchimp.audience import (
    Audience,
    IdSource,
    Interest,
    InterestCategory,
    Member,
    MergeField,
    Webhook,
)
from app.sandbox.mailchimp.config import SandboxConfig
from app.sandbox.mailchimp.errors import ApiError
from app.sandbox.mailchimp.webhooks import WebhookHub

SNAPSHOT_VERSION = 1


@dataclass
class Account:
    """A Mailchimp account: one API key, one OAuth app, one login, its audiences."""

    id: str
    name: str
    dc: str
    api_key: str
    client_id: str
    client_secret: str
    login_email: str
    login_name: str
    user_id: int
    created: float
    lists: dict[str, Audience] = field(default_factory=dict)


@dataclass(slots=True)
class AuthCode:
    code: str
    client_id: str
    account_id: str
    redirect_uri: str
    created: float


def derive_token(account_id: str, client_id: str, client_secret: str) -> str:
    """The OAuth access token of (account, app): stable, so it survives restarts."""
    return hashlib.sha256(f"{account_id}:{client_id}:{client_secret}".encode()).hexdigest()[:32]


DEFAULT_ACCESS_TOKEN = derive_token(
    c.DEFAULT_ACCOUNT_ID, c.DEFAULT_CLIENT_ID, c.DEFAULT_CLIENT_SECRET
)


class SandboxState:
    """Everything the sandbox holds; `app.state.sandbox` is one of these."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.initial_config = (config or SandboxConfig()).copy()
        self.config = self.initial_config.copy()
        self.hub = WebhookHub(lambda: self.config)
        self.clock = Clock()
        self.gate = Gate(self.clock, self.config.seed)
        self.requests = RequestLog(self.config.request_log_size)
        self._reset_data()
        self._apply_runtime_config(outage=True)

    # -- lifecycle ------------------------------------------------------------------------

    def _reset_data(self) -> None:
        self.ids = IdSource(0)
        self.accounts: dict[str, Account] = {}
        self.lists: dict[str, Audience] = {}
        self.keys: dict[str, Account] = {}
        self.clients: dict[str, Account] = {}
        self.tokens: dict[str, Account] = {}
        self.codes: dict[str, AuthCode] = {}
        self._auth_cache: dict[str, Account | None] = {}
        self.create_account(
            account_id=c.DEFAULT_ACCOUNT_ID,
            name=c.DEFAULT_ACCOUNT_NAME,
            api_key=c.DEFAULT_API_KEY,
            client_id=c.DEFAULT_CLIENT_ID,
            client_secret=c.DEFAULT_CLIENT_SECRET,
            login_email=c.DEFAULT_LOGIN_EMAIL,
            list_id=c.DEFAULT_LIST_ID,
            list_name=c.DEFAULT_LIST_NAME,
        )

    def reset(self) -> None:
        """The default account and audience, nothing else; the configuration of startup."""
        self.config = self.initial_config.copy()
        self._reset_data()
        self.requests = RequestLog(self.config.request_log_size)
        self.hub.clear()
        self._apply_runtime_config(outage=True)

    @property
    def in_flight(self) -> InFlight:
        """Requests being served, per account."""
        return self.gate.in_flight

    def _apply_runtime_config(self, *, outage: bool) -> None:
        self.gate.reseed(self.config.seed)
        if outage:
            self.gate.start_outage(self.config.outage_seconds)

    def patch_config(self, changes: dict[str, Any]) -> None:
        """PATCH /_control/config; raise ValueError on a bad value."""
        self.config.patch(changes)
        if "seed" in changes:
            self.gate.reseed(self.config.seed)
        if "outage_seconds" in changes:
            self.gate.start_outage(self.config.outage_seconds)
        if "request_log_size" in changes:
            self.requests.resize(self.config.request_log_size)

    def config_view(self) -> dict[str, Any]:
        view = self.config.to_dict()
        view["outage_remaining_seconds"] = self.gate.outage_remaining()
        return view

    # -- accounts and audiences -----------------------------------------------------------

    def create_account(
        self,
        *,
        account_id: str | None = None,
        name: str | None = None,
        dc: str = c.DEFAULT_DC,
        api_key: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        login_email: str | None = None,
        list_id: str | None = None,
        list_name: str | None = None,
        with_list: bool = True,
    ) -> Account:
        account_id = account_id or secrets.token_hex(13)[:25]
        if account_id in self.accounts:
            raise ValueError(f"account {account_id} exists")
        api_key = api_key or f"{secrets.token_hex(16)}-{dc}"
        if api_key in self.keys:
            raise ValueError("api_key already belongs to an account")
        client_id = client_id or str(100_000_000_000 + secrets.randbelow(900_000_000_000))
        if client_id in self.clients:
            raise ValueError("client_id already belongs to an account")
        name = name or f"Sandbox Account {len(self.accounts) + 1}"
        login = login_email or f"owner+{account_id[:8]}@sandbox.example.com"
        account = Account(
            id=account_id,
            name=name,
            dc=dc,
            api_key=api_key,
            client_id=client_id,
            client_secret=client_secret or secrets.token_hex(24),
            login_email=login,
            login_name=login.split("@", 1)[0],
            user_id=int(hashlib.md5(account_id.encode()).hexdigest()[:8], 16),
            created=clock.now(),
        )
        self.accounts[account.id] = account
        self.keys[account.api_key] = account
        self.clients[account.client_id] = account
        self._auth_cache.clear()
        if with_list:
            self.create_list(account, name=list_name, list_id=list_id)
        return account

    def create_list(
        self, account: Account, *, name: str | None = None, list_id: str | None = None
    ) -> Audience:
        list_id = list_id or self.ids.hex(10)
        if list_id in self.lists:
            raise ValueError(f"list {list_id} exists")
        audience = Audience(
            list_id,
            account.id,
            name or f"Audience {len(account.lists) + 1}",
            web_id=int(hashlib.md5(list_id.encode()).hexdigest()[:6], 16),
            created=clock.now(),
            ids=self.ids,
            config_ref=lambda: self.config,
            sink=self.hub.sink,
        )
        account.lists[list_id] = audience
        self.lists[list_id] = audience
        return audience

    def audience_for(self, account: Account, list_id: str) -> Audience:
        audience = account.lists.get(list_id)
        if audience is None:
            raise errors.not_found()
        return audience

    # -- authentication -------------------------------------------------------------------

    def authenticate(self, header: str | None) -> Account:
        """The account of an `Authorization` header (Basic key, Bearer key or token)."""
        if not header:
            raise ApiError(401, "API Key Missing", c.KEY_MISSING)
        cached = self._auth_cache.get(header, False)
        if cached is not False:
            if cached is None:
                raise ApiError(401, "API Key Invalid", c.KEY_INVALID)
            return cached  # type: ignore[return-value]
        account = self._resolve(header)
        if len(self._auth_cache) > 10_000:
            self._auth_cache.clear()
        self._auth_cache[header] = account
        if account is None:
            raise ApiError(401, "API Key Invalid", c.KEY_INVALID)
        return account

    def _resolve(self, header: str) -> Account | None:
        scheme, _, credential = header.strip().partition(" ")
        scheme = scheme.lower()
        credential = credential.strip()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(credential, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
            credential = decoded.partition(":")[2] if ":" in decoded else decoded
            return self.keys.get(credential)
        if scheme == "bearer":
            return self.keys.get(credential) or self.account_for_token(credential)
        return None

    def account_for_token(self, token: str) -> Account | None:
        account = self.tokens.get(token)
        if account is not None:
            return account
        for candidate in self.accounts.values():  # tokens are derived: recognise old ones
            for app in self.accounts.values():
                if derive_token(candidate.id, app.client_id, app.client_secret) == token:
                    self.tokens[token] = candidate
                    return candidate
        return None

    # -- OAuth ----------------------------------------------------------------------------

    def issue_code(self, client: Account, account: Account, redirect_uri: str) -> str:
        code = secrets.token_hex(16)
        self.codes[code] = AuthCode(code, client.client_id, account.id, redirect_uri, clock.now())
        return code

    def exchange_code(
        self, code: str, client_id: str, client_secret: str, redirect_uri: str | None
    ) -> str | None:
        """The access token, or None for a bad, reused, expired or mismatched code."""
        client = self.clients.get(client_id)
        grant = self.codes.pop(code, None)
        if client is None or grant is None or client.client_secret != client_secret:
            return None
        if grant.client_id != client_id:
            return None
        if redirect_uri is not None and redirect_uri != grant.redirect_uri:
            return None
        if clock.now() - grant.created > self.config.oauth_code_ttl_seconds:
            return None
        account = self.accounts.get(grant.account_id)
        if account is None:
            return None
        token = derive_token(account.id, client.client_id, client.client_secret)
        self.tokens[token] = account
        return token

    # -- snapshots ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        accounts = []
        for account in self.accounts.values():
            lists = []
            for aud in account.lists.values():
                lists.append(
                    {
                        "id": aud.id,
                        "name": aud.name,
                        "web_id": aud.web_id,
                        "created": aud.created,
                        "next_merge_id": aud.next_merge_id,
                        "next_tag_id": aud.next_tag_id,
                        "merge_fields": [_slots(mf) for mf in aud.merge_fields.values()],
                        "tag_ids": aud.tag_ids,
                        "members": [_slots(m) for m in aud.members.values()],
                        "forgotten": aud.forgotten,
                        "webhooks": [_slots(w) for w in aud.webhooks.values()],
                        "interest_categories": [
                            _slots(cat) for cat in aud.interest_categories.values()
                        ],
                        "interests": [_slots(i) for i in aud.interests.values()],
                    }
                )
            data = {k: v for k, v in account.__dict__.items() if k != "lists"}
            accounts.append({**data, "lists": lists})
        return {
            "version": SNAPSHOT_VERSION,
            "accounts": accounts,
            "tokens": {t: a.id for t, a in self.tokens.items()},
            "next_seq": self.ids.seq,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError("unknown snapshot version")
        self.accounts.clear()
        self.lists.clear()
        self.keys.clear()
        self.clients.clear()
        self.tokens.clear()
        self._auth_cache.clear()
        self.ids = IdSource(int.from_bytes(os.urandom(4), "big"))
        self.ids.seq = int(snap.get("next_seq", 0))
        for data in snap["accounts"]:
            lists = data.pop("lists")
            account = Account(**data)
            self.accounts[account.id] = account
            self.keys[account.api_key] = account
            self.clients[account.client_id] = account
            for item in lists:
                aud = Audience(
                    item["id"],
                    account.id,
                    item["name"],
                    web_id=item["web_id"],
                    created=item["created"],
                    ids=self.ids,
                    config_ref=lambda: self.config,
                    sink=self.hub.sink,
                    default_fields=False,
                )
                for mf in item["merge_fields"]:
                    aud.merge_fields[mf["tag"]] = MergeField(**mf)
                aud.merge_fields_changed()
                aud.next_merge_id = item["next_merge_id"]
                aud.next_tag_id = item["next_tag_id"]
                aud.tag_ids = dict(item["tag_ids"])
                aud.forgotten = dict(item["forgotten"])
                for m in item["members"]:
                    member = Member(**m)
                    aud.members[member.uid] = member
                    aud.by_hash[member.hash] = member
                for w in item["webhooks"]:
                    webhook = Webhook(**w)
                    aud.webhooks[webhook.id] = webhook
                # Older snapshots have no interest groups.
                for cat in item.get("interest_categories", ()):
                    aud.interest_categories[cat["id"]] = InterestCategory(**cat)
                for i in item.get("interests", ()):
                    aud.interests[i["id"]] = Interest(**i)
                account.lists[aud.id] = aud
                self.lists[aud.id] = aud
                self.ids.used.add(aud.id)
        for token, account_id in snap.get("tokens", {}).items():
            if account_id in self.accounts:
                self.tokens[token] = self.accounts[account_id]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(orjson.dumps(self.snapshot()))
        tmp.replace(path)

    def load(self, path: Path) -> bool:
        if not path.exists():
            return False
        self.restore(orjson.loads(path.read_bytes()))
        return True


def _slots(obj: Any) -> dict[str, Any]:
    out = {}
    for name in obj.__slots__:
        value = getattr(obj, name)
        out[name] = dict(value) if isinstance(value, MappingProxyType) else value
    return out
