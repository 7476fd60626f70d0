"""The sandbox's whole state: the instance, OAuth clients and tokens, webhooks, the clock."""

from __future__ import annotations

import base64
import binascii
import hashlib
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

from app.sandbox.kit import Clock, Gate, RequestLog
from app.sandbox.mautic import constants as c
from app.sandbox.mautic import errors, render
from app.sandbox.mautic.config import MauticConfig
from app.sandbox.mautic.model import Company, Contact, Instance, Segment, User
from app.sandbox.mautic.webhooks import WebhookHub

GRANT_CODE, GRANT_REFRESH, GRANT_CLIENT = (
    "authorization_code",
    "refresh_token",
    "client_credentials",
)


def random_id() -> str:
    """FOSOAuthServerBundle's random: base36 of 32 random bytes."""
    n = int.from_bytes(secrets.token_bytes(32), "big")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"


def gen_token() -> str:
    """oauth2-php `genAccessToken`: 86 chars of `[A-Za-z0-9_-]`."""
    digest = hashlib.sha256(secrets.token_bytes(32)).hexdigest()
    return (
        base64.b64encode(digest.encode()).decode().translate(str.maketrans("+/", "-_")).rstrip("=")
    )


@dataclass
class Client:
    """An API credential (Settings → API Credentials)."""

    public_id: str
    secret: str
    name: str
    redirect_uris: list[str]
    grants: set[str]


@dataclass
class Token:
    token: str
    client_id: str
    user: User | None
    expires_at: float


@dataclass
class AuthCode:
    code: str
    client_id: str
    user: User
    redirect_uri: str
    expires_at: float


@dataclass
class Principal:
    """Who a request runs as: a user (Basic, auth-code tokens) or a client's role."""

    user: User | None
    bucket: str  # rate-limit bucket: the token, or one shared key for Basic
    client_id: str | None = None


@dataclass
class RateWindow:
    reset_at: float
    calls: int = 0


@dataclass
class MauticState:
    """Everything the sandbox holds; `app.state.sandbox` is one of these."""

    initial_config: MauticConfig
    config: MauticConfig = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.initial_config.copy()
        self.clock = Clock()
        self.gate = Gate(self.clock, self.config.seed)
        self.bug_rng = random.Random(self.config.seed)
        self.gate.start_outage(self.config.outage_seconds)
        self.requests = RequestLog(self.config.request_log_size, scope_key="client_id")
        # Seconds the sandbox's own work on a request took lately, batch (True) or single:
        # held back from its latency, so the answer leaves at the latency (app._latency).
        self.handling: dict[bool, float] = {}
        self.hub = WebhookHub(lambda: self.instance, lambda: self.config, self.now)
        self._reset_data()

    # -- lifecycle ------------------------------------------------------------------------

    def now(self) -> float:
        """The sandbox's clock (`/_control/clock` moves it)."""
        return self.clock.now()

    def _reset_data(self) -> None:
        self.instance = Instance(self.config, self.now, self.emit)
        self.admin = self.instance.add_user(c.ADMIN_USERNAME, c.ADMIN_PASSWORD, "admin", "admin")
        self.clients: dict[str, Client] = {}
        self.tokens: dict[str, Token] = {}
        self.refresh_tokens: dict[str, Token] = {}
        self.codes: dict[str, AuthCode] = {}
        self.rate: dict[str, RateWindow] = {}
        self.add_client(
            "Audience Sync",
            [c.DEFAULT_REDIRECT_URI],
            admin=True,
            public_id=c.DEFAULT_CLIENT_ID,
            secret=c.DEFAULT_CLIENT_SECRET,
        )
        self.add_client(
            "Created by a non-admin",
            [c.DEFAULT_REDIRECT_URI],
            admin=False,
            public_id=c.USER_CLIENT_ID,
            secret=c.USER_CLIENT_SECRET,
        )
        if self.config.demo_data:
            self.instance.save_segment(None, {"name": c.DEMO_SEGMENT_NAME}, self.admin, put=False)
            self.instance.create_campaign(c.DEMO_CAMPAIGN_NAME, actor=self.admin)

    def reset(self) -> None:
        """A fresh instance with the configuration of startup; the clock back to now."""
        self.config = self.initial_config.copy()
        self.clock.reset()
        self.gate.reseed(self.config.seed)
        self.gate.start_outage(self.config.outage_seconds)
        self.gate.in_flight.clear()
        self.hub.clear()
        self.requests = RequestLog(self.config.request_log_size, scope_key="client_id")
        self._reset_data()

    def patch_config(self, changes: dict[str, Any]) -> None:
        """PATCH /_control/config; raise ValueError on a bad value (nothing changed then)."""
        self.config.patch(changes)
        self.instance.config = self.config
        if "seed" in changes:
            self.gate.reseed(self.config.seed)
            self.bug_rng.seed(self.config.seed)
            self.hub.rng.seed(self.config.seed)
        if "webhook_fault_rates" in changes:
            self.hub.rng.seed(self.config.seed)
        if "outage_seconds" in changes:
            self.gate.start_outage(self.config.outage_seconds)
        if "request_log_size" in changes:
            self.requests.resize(self.config.request_log_size)

    def config_view(self) -> dict[str, Any]:
        view = self.config.to_dict()
        view["outage_remaining_seconds"] = self.gate.outage_remaining()
        return view

    # -- events -----------------------------------------------------------------------------

    def emit(self, trigger: str, payload: dict[str, Any]) -> None:
        """Render the event now (a snapshot, as Mautic serializes at dispatch) and queue it."""
        instance = self.instance
        if not any(h.is_published and trigger in h.triggers for h in instance.hooks.values()):
            return  # nobody listens: skip rendering (bulk writes stay cheap)
        item: dict[str, Any] = {}
        for key, value in payload.items():
            if isinstance(value, Contact):
                deleted = trigger == "mautic.lead_post_delete"
                item[key] = render.contact(instance, value, webhook=True, deleted=deleted)
            elif isinstance(value, Segment):
                item[key] = render.segment(value)
            elif isinstance(value, Company):
                item[key] = render.company(value)
            else:
                item[key] = value
        self.hub.record(trigger, item)

    # -- OAuth ------------------------------------------------------------------------------

    def add_client(
        self,
        name: str,
        redirect_uris: list[str],
        *,
        admin: bool,
        public_id: str | None = None,
        secret: str | None = None,
    ) -> Client:
        """Only clients created by an admin get client_credentials (ClientController)."""
        grants = {GRANT_CODE, GRANT_REFRESH} | ({GRANT_CLIENT} if admin else set())
        db_id = len(self.clients) + 1
        client = Client(
            public_id or f"{db_id}_{random_id()}",
            secret or random_id(),
            name,
            redirect_uris,
            grants,
        )
        self.clients[client.public_id] = client
        return client

    def issue(self, client: Client, user: User | None, *, refresh: bool) -> dict[str, Any]:
        """oauth2-php `createAccessToken`: the body, in its key order."""
        now = self.now()
        token = Token(
            gen_token(), client.public_id, user, now + self.config.access_token_lifetime_seconds
        )
        self.tokens[token.token] = token
        body: dict[str, Any] = {
            "access_token": token.token,
            "expires_in": int(self.config.access_token_lifetime_seconds),
            "token_type": "bearer",
            "scope": self.config.token_scope,
        }
        if refresh:
            rt = Token(
                gen_token(),
                client.public_id,
                user,
                now + self.config.refresh_token_lifetime_seconds,
            )
            self.refresh_tokens[rt.token] = rt
            body["refresh_token"] = rt.token
        return body

    # -- authentication -----------------------------------------------------------------------

    def authenticate(
        self, authorization: str | None, query_token: str | None, body_token: str | None
    ) -> Principal:
        """Basic or Bearer (header, `access_token` in the query or the body); raise ApiError."""
        config = self.config
        locale = config.locale
        if authorization and authorization[:5].lower() == "basic":
            if not config.api_enable_basic_auth:
                raise errors.listener(403, errors.BASIC_DISABLED, "access_denied")
            user = self._basic_user(authorization[5:].strip())
            if user is None:
                raise errors.listener(
                    401,
                    errors.translate("Authorization denied, invalid credentials.", locale),
                    "access_denied",
                )
            return Principal(user, "basic")
        bearer = None
        if authorization and authorization[:6].lower() == "bearer":
            bearer = authorization[6:].strip()
        given = [t for t in (bearer, query_token, body_token) if t]
        if len(given) > 1:
            raise errors.oauth(
                "invalid_request",
                "Only one method may be used to authenticate at a time (Auth header, GET or POST).",
            )
        if not given:
            raise errors.listener(
                401, errors.translate(config.no_credentials_message, locale), "access_denied"
            )
        token = self.tokens.get(given[0])
        if token is None:
            raise errors.listener(
                401,
                errors.translate("The access token provided is invalid.", locale),
                "invalid_grant",
            )
        if token.expires_at <= self.now():
            raise errors.listener(
                401,
                errors.translate("The access token provided has expired.", locale),
                "invalid_grant",
            )
        return Principal(token.user, token.token, token.client_id)

    def _basic_user(self, encoded: str) -> User | None:
        try:
            username, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        for user in self.instance.users.values():
            if secrets.compare_digest(user.username, username) and secrets.compare_digest(
                user.password, password
            ):
                return user
        return None

    def rate_check(self, principal: Principal) -> dict[str, str]:
        """RateLimitBundle: a fixed hourly window per bucket; raise 429; return the headers."""
        limit = self.config.api_rate_limiter_limit
        if limit <= 0:
            return {}
        now = self.now()
        window = self.rate.get(principal.bucket)
        if window is None or now >= window.reset_at:
            window = RateWindow(now + 3600)
            self.rate[principal.bucket] = window
        window.calls += 1
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - window.calls)),
            "X-RateLimit-Reset": str(int(window.reset_at)),
        }
        if window.calls > limit:
            exc = errors.rate_limited(limit, self.config.rate_limit_html_content_type)
            exc.headers.update(headers)
            raise exc
        return headers
