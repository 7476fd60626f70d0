"""The sandbox's in-memory state: applications, grants and tokens, accounts and their data."""

from __future__ import annotations

import bisect
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from app.sandbox.constantcontact import constants as c
from app.sandbox.constantcontact.config import SandboxConfig
from app.sandbox.kit import Clock, DailyQuota, Gate, LogEntry, RequestLog, WindowLimiter

_NODE = 0xFA163E000000 | random.getrandbits(24)  # real ids end in an OpenStack MAC fa:16:3e:…
_CLOCK_SEQ = 0x8000 | random.getrandbits(14)  # RFC 4122 variant bits
_UUID_EPOCH = 0x01B21DD213814000  # 1582-10-15 in 100 ns ticks before the Unix epoch
_last_tick = 0


def new_id() -> str:
    """A time-based (version-1) UUID, like every id Constant Contact mints.

    Built by hand rather than with `uuid.uuid1` (10x slower): a 40,000-row import mints one
    per contact, and ticks only move forward, so ids stay unique within the process.
    """
    global _last_tick
    tick = max(time.time_ns() // 100 + _UUID_EPOCH, _last_tick + 1)
    _last_tick = tick
    low, mid, high = tick & 0xFFFFFFFF, (tick >> 32) & 0xFFFF, (tick >> 48) & 0x0FFF | 0x1000
    return f"{low:08x}-{mid:04x}-{high:04x}-{_CLOCK_SEQ:04x}-{_NODE:012x}"


@dataclass
class App:
    """A developer-portal application: the API key is its client_id."""

    client_id: str
    client_secret: str | None
    name: str
    flow: str = "authorization_code"  # authorization_code | pkce | implicit | device
    refresh_token_type: str = "rotating"  # rotating | long_lived
    redirect_uris: list[str] = field(default_factory=list)  # [] = any http(s) URI
    scopes: list[str] = field(default_factory=lambda: [*c.SCOPES, *c.OIDC_SCOPES])
    pkce: str | None = None  # allowed | required | forbidden; None = the default rule
    active: bool = True

    def pkce_rule(self, config: SandboxConfig) -> str:
        if self.pkce is not None:
            return self.pkce
        return "required" if self.flow == "pkce" else config.pkce_on_confidential


@dataclass
class Contact:
    """One contact of an account; `permission` is `email_address.permission_to_send`."""

    contact_id: str
    email: str | None
    permission: str
    created_at: float
    updated_at: float
    create_source: str
    update_source: str
    email_created_at: float = 0.0
    email_updated_at: float = 0.0
    opt_in_source: str | None = None
    opt_in_date: float | None = None
    opt_out_source: str | None = None
    opt_out_date: float | None = None
    opt_out_reason: str | None = None
    confirm_status: str = "off"
    first_name: str | None = None
    last_name: str | None = None
    job_title: str | None = None
    company_name: str | None = None
    birthday_month: int | None = None
    birthday_day: int | None = None
    anniversary: str | None = None
    deleted_at: float | None = None
    custom_fields: list[dict[str, Any]] = field(default_factory=list)
    phone_numbers: list[dict[str, Any]] = field(default_factory=list)
    street_addresses: list[dict[str, Any]] = field(default_factory=list)
    list_memberships: list[str] = field(default_factory=list)
    taggings: list[str] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    resubscribe_sent_at: float | None = None
    resubscribe_list_ids: list[str] = field(default_factory=list)

    @property
    def sort_key(self) -> tuple[float, str]:
        return (self.created_at, self.contact_id)


@dataclass
class ContactList:
    list_id: str
    name: str
    created_at: float
    updated_at: float
    description: str | None = None
    favorite: bool = False


@dataclass
class Tag:
    tag_id: str
    name: str
    created_at: float
    updated_at: float
    tag_source: str | None = None


@dataclass
class CustomField:
    custom_field_id: str
    label: str
    name: str
    type: str
    created_at: float
    updated_at: float
    choices: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    version: int = 2


@dataclass
class Activity:
    """A bulk activity: its effects apply when it completes (per `activity_*_ms`)."""

    activity_id: str
    kind: str
    payload: dict[str, Any]
    items: int
    created_at: float
    completes_at: float
    state: str = "initialized"
    started_at: float | None = None
    completed_at: float | None = None
    updated_at: float = 0.0
    activity_errors: list[Any] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)


@dataclass
class Account:
    """A Constant Contact account (`encoded_account_id`) and its one logged-in user."""

    id: str
    organization_name: str
    first_name: str
    last_name: str
    login_email: str
    uid: str
    platform_user_id: str
    created_at: float
    role: str = "account_owner"
    confirmed_opt_in: bool = False
    time_zone_id: str = "US/Eastern"
    country_code: str = "US"
    state_code: str = "MA"
    contacts: dict[str, Contact] = field(default_factory=dict)
    by_email: dict[str, Contact] = field(default_factory=dict)
    order: list[tuple[float, str]] = field(default_factory=list)  # sort keys, ascending
    lists: dict[str, ContactList] = field(default_factory=dict)
    tags: dict[str, Tag] = field(default_factory=dict)
    custom_fields: dict[str, CustomField] = field(default_factory=dict)
    activities: dict[str, Activity] = field(default_factory=dict)
    pending_activities: deque[Activity] = field(default_factory=deque)
    signup_seen: dict[str, float] = field(default_factory=dict)  # email key → last write

    def add_contact(self, contact: Contact, email_key: str | None) -> None:
        self.contacts[contact.contact_id] = contact
        if email_key is not None:
            self.by_email[email_key] = contact
        bisect.insort(self.order, contact.sort_key)


@dataclass
class AuthCode:
    code: str
    client_id: str
    account_id: str
    redirect_uri: str
    scopes: list[str]
    challenge: str | None
    challenge_method: str | None
    nonce: str | None
    created: float
    used: bool = False


@dataclass
class DeviceCode:
    device_code: str
    user_code: str
    client_id: str
    scopes: list[str]
    created: float
    account_id: str | None = None  # set once the user approves
    denied: bool = False


@dataclass
class Grant:
    """One consent (app, account, scopes) and its chain of refresh tokens."""

    grant_id: str
    client_id: str
    account_id: str
    scopes: list[str]
    created: float
    current_refresh: str | None = None
    chain: list[dict[str, Any]] = field(default_factory=list)  # every refresh token issued
    revoked: bool = False


@dataclass
class RefreshToken:
    value: str
    grant_id: str
    issued_at: float
    last_used: float
    superseded_at: float | None = None


@dataclass
class AccessToken:
    jti: str
    token: str
    client_id: str
    account_id: str
    scopes: list[str]
    issued_at: float
    expires_at: float
    grant_id: str | None
    revoked: bool = False


class SandboxState:
    """Everything the sandbox holds; `app.state.sandbox` is one of these."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.initial_config = (config or SandboxConfig()).copy()
        self.config = self.initial_config.copy()
        self.clock = Clock()
        self.requests = RequestLog(self.config.request_log_size, scope_key="account")
        self._reset_limits()
        self._reset_data()

    def _reset_limits(self) -> None:
        config = self.config
        self.gate = Gate(self.clock, config.seed)
        self.gate.start_outage(config.outage_seconds)
        # 4/s and 10,000 a day per application (or account: `quota_key`), all tenants together
        self.rate = WindowLimiter(config.rate_per_second, 1.0, name="throttled")
        self.quota = DailyQuota(config.daily_quota, name="quota_exceeded")
        self.endpoint_limiters: dict[str, WindowLimiter] = {}

    # -- clock -----------------------------------------------------------------------------

    def now(self) -> float:
        """The sandbox clock: real time plus what the control API advanced it by."""
        return self.clock.now()

    @property
    def clock_offset(self) -> float:
        return self.clock.offset

    @clock_offset.setter
    def clock_offset(self, value: float) -> None:
        self.clock.offset = value

    # -- lifecycle -------------------------------------------------------------------------

    def _reset_data(self) -> None:
        self.apps: dict[str, App] = {}
        self.accounts: dict[str, Account] = {}
        self.codes: dict[str, AuthCode] = {}
        self.device_codes: dict[str, DeviceCode] = {}
        self.grants: dict[str, Grant] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.access_tokens: dict[str, AccessToken] = {}  # by token text
        self.tokens_by_jti: dict[str, AccessToken] = {}
        self.emails: list[dict[str, Any]] = []  # confirmation / resubscribe emails "sent"
        for client_id, secret, name, flow, kind in (
            (
                c.ROTATING_CLIENT_ID,
                c.ROTATING_CLIENT_SECRET,
                "Rotating app",
                "authorization_code",
                "rotating",
            ),
            (
                c.LONG_LIVED_CLIENT_ID,
                c.LONG_LIVED_CLIENT_SECRET,
                "Long-lived app",
                "authorization_code",
                "long_lived",
            ),
            (c.PKCE_CLIENT_ID, None, "PKCE app", "pkce", "rotating"),
            (c.DEVICE_CLIENT_ID, None, "Device app", "device", "rotating"),
        ):
            self.apps[client_id] = App(client_id, secret, name, flow, kind)
        account = self.create_account(
            account_id=c.DEFAULT_ACCOUNT_ID,
            login_email=c.DEFAULT_LOGIN_EMAIL,
            uid=c.DEFAULT_UID,
            platform_user_id=c.DEFAULT_PLATFORM_USER_ID,
        )
        self.create_list(account, c.DEFAULT_LIST_NAME, list_id=c.DEFAULT_LIST_ID)

    def reset(self) -> None:
        """One account with one list, the four apps, no contacts; startup configuration."""
        self.config = self.initial_config.copy()
        self.clock.reset()
        self.requests.clear()
        self.requests.resize(self.config.request_log_size)
        self._reset_limits()
        self._reset_data()

    def patch_config(self, changes: dict[str, Any]) -> None:
        """`PATCH /_control/config`; ValueError on a bad value (nothing changed then)."""
        self.config.patch(changes)
        if "seed" in changes:
            self.gate.reseed(self.config.seed)
        if "outage_seconds" in changes:
            self.gate.start_outage(self.config.outage_seconds)
        if "request_log_size" in changes:
            self.requests.resize(self.config.request_log_size)
        self.rate.limit = self.config.rate_per_second
        self.quota.limit = self.config.daily_quota

    def config_view(self) -> dict[str, Any]:
        return {**self.config.to_dict(), "outage_remaining_seconds": self.gate.outage_remaining()}

    def log_request(self, entry: LogEntry) -> None:
        """One API request in the log (`GET /_control/requests`)."""
        self.requests.append(entry)

    # -- accounts and their objects ---------------------------------------------------------

    def create_account(
        self,
        *,
        account_id: str | None = None,
        organization_name: str = "Sandbox Org",
        first_name: str = "Sam",
        last_name: str = "Owner",
        login_email: str | None = None,
        uid: str | None = None,
        platform_user_id: str | None = None,
        role: str = "account_owner",
        confirmed_opt_in: bool = False,
    ) -> Account:
        account_id = account_id or "a" + secrets.token_hex(6)
        if account_id in self.accounts:
            raise ValueError("an account with this id exists")
        if role not in c.ROLES:
            raise ValueError(f"role is one of {', '.join(c.ROLES)}")
        account = Account(
            id=account_id,
            organization_name=organization_name,
            first_name=first_name,
            last_name=last_name,
            login_email=login_email or f"owner+{account_id}@sandbox.example",
            uid=uid or "00u" + secrets.token_hex(8)[:17],
            platform_user_id=platform_user_id or new_id(),
            created_at=self.now(),
            role=role,
            confirmed_opt_in=confirmed_opt_in,
        )
        self.accounts[account.id] = account
        return account

    def create_list(
        self,
        account: Account,
        name: str,
        *,
        list_id: str | None = None,
        description: str | None = None,
        favorite: bool = False,
    ) -> ContactList:
        now = self.now()
        item = ContactList(list_id or new_id(), name, now, now, description, favorite)
        account.lists[item.list_id] = item
        return item

    def email_key(self, email: str) -> str:
        """How e-mails are matched (knob `email_case_sensitive`)."""
        email = email.strip()
        return email if self.config.email_case_sensitive else email.lower()

    def record_email(self, account: Account, contact: Contact, kind: str, **extra: Any) -> None:
        """A confirmation or resubscribe e-mail the sandbox "sent" (`GET /_control/emails`)."""
        self.emails.append(
            {
                "kind": kind,
                "account_id": account.id,
                "contact_id": contact.contact_id,
                "email": contact.email,
                "sent_at": self.now(),
                **extra,
            }
        )
