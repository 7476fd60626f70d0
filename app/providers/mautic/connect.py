"""Connecting a Mautic instance: the credentials body, the host rule, the client factory and
the `ConnectFlow` (instance URL + an admin-created OAuth2 client, client_credentials grant).

Mautic's access tokens live an hour and the client_credentials grant has no refresh token:
`refresh` fetches a new token with the pair. The core calls it (`app.connections.tokens`),
one process per connection at a time, and stores the token encrypted with its expiry.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from app.config import MauticMode, Settings
from app.providers.base import (
    ACCESS_TOKEN,
    EXPIRES_AT,
    Account,
    Audience,
    ClientConfig,
    ConnectRefused,
    ProviderClient,
    RequestLimiter,
    SandboxSeed,
)
from app.providers.mautic.client import MauticClient
from app.providers.mautic.mapping import alias_problems, rules_from
from app.providers.mautic.spec import PROVIDER

Resolver = Callable[[str], Iterable[str]]


class MauticCredentials(BaseModel):
    """`POST /api/integrations/mautic/credentials`: the instance and an OAuth2 client created
    by an administrator (only those may use client_credentials)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, title="MauticCredentials")

    base_url: str = Field(min_length=8, max_length=300, description="https://mautic.example.com")
    client_id: str = Field(min_length=3, max_length=200)
    client_secret: SecretStr = Field(min_length=3, max_length=200)
    audience_id: str | None = Field(default=None, min_length=1, max_length=32)


def _resolve(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"{host} does not resolve") from exc
    return [str(info[4][0]) for info in infos]


def instance_url(
    url: str, *, allow_private: bool = False, resolve: Resolver | None = _resolve
) -> str:
    """The instance's root URL by the host rule (DESIGN §8): https, a host name (no IP
    literal, no credentials, query or fragment), every address it resolves to public unless
    `allow_private` (MAUTIC_ALLOW_PRIVATE_HOSTS); ValueError naming the problem otherwise.
    A trailing `/api` is dropped: people paste either."""
    parts = urlsplit(url.strip())
    if parts.scheme != "https":
        raise ValueError("The Mautic URL must start with https://.")
    host = parts.hostname or ""
    if not host or parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("The Mautic URL must be https://<host>[/path], nothing else.")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise ValueError("The Mautic URL must name a host, not an IP address.")
    if not allow_private and resolve is not None:
        for address in resolve(host):
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if not ip.is_global:
                raise ValueError(f"{host} resolves to a private or loopback address.")
    port = f":{parts.port}" if parts.port else ""
    path = parts.path.rstrip("/").removesuffix("/api")
    return f"https://{host.lower()}{port}{path}"


def client_factory(config: ClientConfig) -> ProviderClient:
    """A client for a stored connection; outside the sandbox only at a URL the host rule
    accepts (checked without resolving: the resolution was checked at connect)."""
    base = config.api_endpoint
    if not config.sandbox:
        base = instance_url(base, allow_private=True, resolve=None)
    return MauticClient(
        config.transport,
        base_url=base,
        client_id=str(config.credentials.get("client_id") or ""),
        client_secret=str(config.credentials.get("client_secret") or ""),
        timeout=config.timeout,
        limiter=config.limiter,
        tokens=config.tokens,
        webhook_secret=config.credentials.get("webhook_secret"),
    )


def _account(settings: Settings, base: str, client_id: str, client_secret: str) -> Account:
    host = urlsplit(base).hostname or base
    # The limits' account scope is the instance: MAUTIC_MAX_CONCURRENCY holds per instance,
    # whichever owners and clients reach it.
    digest = hashlib.sha256(base.encode()).hexdigest()[:24]
    return Account(
        api_base=base,
        account_key=f"mautic:{digest}",
        credentials={
            "base_url": base,
            "client_id": client_id,
            "client_secret": client_secret,
            # Our webhook's signing secret (Mautic signs each delivery with it): one per
            # connection, encrypted with the rest, set on the hook we register.
            "webhook_secret": secrets.token_urlsafe(32),
        },
        auth_kind="client_credentials",
        account_name=host,
    )


class MauticConnect:
    """Mautic's connect flow (ConnectFlow): a credentials form, no OAuth popup."""

    credentials_model: type[BaseModel] | None = MauticCredentials

    def __init__(self, sandbox_seed: Callable[[], SandboxSeed | None] | None = None) -> None:
        self._seed = sandbox_seed or (lambda: None)

    def sandbox(self, settings: Settings) -> bool:
        """True when Mautic traffic goes to the built-in emulator (MAUTIC_MODE)."""
        return settings.MAUTIC_MODE is MauticMode.sandbox

    def timeout(self, settings: Settings) -> float:
        """Seconds a Mautic request may take."""
        return settings.MAUTIC_TIMEOUT_SECONDS

    def base_url(self, settings: Settings, url: str, *, field: str = "base_url") -> str:
        """The instance root a typed URL names: the sandbox's in sandbox mode, else the URL
        by the host rule (ConnectRefused naming `field`)."""
        if self.sandbox(settings):
            return settings.mautic_sandbox_url
        try:
            return instance_url(url, allow_private=settings.MAUTIC_ALLOW_PRIVATE_HOSTS)
        except ValueError as exc:
            raise ConnectRefused(str(exc), field=field) from None

    def account_from_credentials(self, settings: Settings, body: BaseModel) -> Account:
        """The instance and client a credentials body names (no remote call: the service
        fetches a token and lists segments before anything is stored)."""
        assert isinstance(body, MauticCredentials)
        base = self.base_url(settings, body.base_url)
        return _account(settings, base, body.client_id, body.client_secret.get_secret_value())

    async def authorize_url(self, settings: Settings, *, state: str) -> str:
        """Mautic connects with client credentials only (no popup)."""
        raise NotImplementedError("Mautic connects with an instance URL and an API client")

    async def exchange_code(
        self, settings: Settings, *, code: str, limiter: RequestLimiter | None = None
    ) -> Account:
        """Mautic connects with client credentials only (no popup)."""
        raise NotImplementedError("Mautic connects with an instance URL and an API client")

    def configured(
        self, settings: Settings, seed: SandboxSeed | None
    ) -> tuple[str, Account, Audience] | None:
        """MAUTIC_BASE_URL + MAUTIC_CLIENT_ID/_SECRET + MAUTIC_AUDIENCE_ID for MAUTIC_OWNER;
        else, given the sandbox's seed, its default client and segment for MAUTIC_OWNER or
        `demo`."""
        client_id = settings.MAUTIC_CLIENT_ID
        secret = settings.MAUTIC_CLIENT_SECRET.get_secret_value()
        audience_id, owner = settings.MAUTIC_AUDIENCE_ID, settings.MAUTIC_OWNER
        url = settings.MAUTIC_BASE_URL or ""
        audience_name, account_name = None, None
        if not client_id and seed is not None:
            client_id = str(seed.credentials["client_id"])
            secret = str(seed.credentials["client_secret"])
            audience_id, owner = seed.audience_id, owner or "demo"
            audience_name, account_name = seed.audience_name, seed.account_name
        if not client_id or not secret or not audience_id or not owner:
            return None
        if not url and not self.sandbox(settings):
            return None
        account = _account(
            settings, self.base_url(settings, url, field="MAUTIC_BASE_URL"), client_id, secret
        )
        account.account_name = account_name or account.account_name
        audience = Audience(id=audience_id, name=audience_name or audience_id, member_count=0)
        return owner, account, audience

    async def refresh(
        self, settings: Settings, credentials: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """A new client_credentials token (the grant has no refresh token: the pair asks)."""
        base = str(credentials.get("base_url") or "")
        if not self.sandbox(settings):
            base = instance_url(base, allow_private=True, resolve=None)
        async with httpx.AsyncHTTPTransport() as transport:
            client = MauticClient(
                transport,
                base_url=base,
                client_id=str(credentials.get("client_id") or ""),
                client_secret=str(credentials.get("client_secret") or ""),
                timeout=self.timeout(settings),
            )
            asked = time.time()
            token, lifetime = await client.request_token()
        return dict(credentials) | {ACCESS_TOKEN: token, EXPIRES_AT: asked + lifetime}

    async def prepare_audience(self, client: Any, audience_id: str, mapping: Any) -> list[str]:
        """Create the contact fields the field map needs and the instance lacks."""
        assert isinstance(client, MauticClient)
        return await client.ensure_fields(mapping.fields)

    def check_mapping(self, settings: Settings) -> list[str]:
        """Every FIELD_MAP `mautic` entry Mautic cannot hold, and every MAUTIC_ENROLLMENT rule
        whose score field is not a numeric custom field of FIELD_MAP's, named."""
        problems = alias_problems(rules_from(settings.FIELD_MAP))
        non_numeric = {
            r.custom_key
            for r in settings.FIELD_MAP.rules(PROVIDER, ())
            if r.is_custom and r.type.value != "number"
        }
        for i, rule in enumerate(settings.MAUTIC_ENROLLMENT or (), start=1):
            if rule.score_field and rule.score_field in non_numeric:
                problems.append(
                    f"MAUTIC_ENROLLMENT rule {i}: score_field {rule.score_field!r} is mapped"
                    " as a non-numeric field in FIELD_MAP"
                )
        return problems
