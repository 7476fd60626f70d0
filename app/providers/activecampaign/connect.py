"""Connecting an ActiveCampaign account: its API URL and key, the host rule, the client, the
custom fields of the field map, and the single-tenant configuration.

Host rule (DESIGN §8, §14.5): in live mode the account URL must be
`https://<account>.api-us1.com` (any `api-<region><n>` host) or
`https://<account>.activehosted.com`, with no path beyond `/api/3`, no IP literal, and every
address it resolves to public. In sandbox mode the URL is the sandbox's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from app.config import ActiveCampaignMode, Settings
from app.fieldmap import FieldRule, FieldsRefused, FieldType
from app.providers.activecampaign.client import OPTION_TYPES, ActiveCampaignClient
from app.providers.activecampaign.mapping import is_custom, rule_problems, rules_from
from app.providers.activecampaign.spec import PROVIDER
from app.providers.base import (
    Account,
    Audience,
    ClientConfig,
    ConnectRefused,
    ProviderClient,
    RequestLimiter,
    SandboxSeed,
)

Resolver = Callable[[str], Iterable[str]]
HOST = re.compile(
    r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.(?:api-[a-z]{2}[0-9]{1,2}\.com|activehosted\.com)$"
)
FIELD_TYPES = {
    FieldType.text: "text",
    FieldType.number: "number",
    FieldType.date: "date",
    FieldType.list: "listbox",
}


class ActiveCampaignCredentials(BaseModel):
    """`POST /api/integrations/activecampaign/credentials`: the account's API URL and key
    (Settings → Developer), and optionally the list to sync to."""

    model_config = ConfigDict(
        extra="forbid", str_strip_whitespace=True, title="ActiveCampaignCredentials"
    )

    api_url: str = Field(min_length=8, max_length=300, description="https://<account>.api-us1.com")
    api_key: SecretStr = Field(min_length=8, max_length=200)
    audience_id: str | None = Field(default=None, min_length=1, max_length=32)


def _resolve(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"{host} does not resolve") from exc
    return [str(info[4][0]) for info in infos]


def account_url(url: str, *, resolve: Resolver | None = _resolve) -> str:
    """The account URL by the host rule (`https://<account>.api-us1.com` or
    `…activehosted.com`, public addresses only); ValueError naming the problem otherwise.
    A trailing `/api/3` is dropped: people paste either."""
    parts = urlsplit(url.strip())
    if parts.scheme != "https":
        raise ValueError("The ActiveCampaign API URL must start with https://.")
    host = (parts.hostname or "").lower()
    if parts.username or parts.password or parts.query or parts.fragment or parts.port:
        raise ValueError("The ActiveCampaign API URL must be https://<account>.api-us1.com.")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise ValueError("The ActiveCampaign API URL must name a host, not an IP address.")
    if not HOST.match(host):
        raise ValueError(
            "The ActiveCampaign API URL must be https://<account>.api-us1.com or"
            " https://<account>.activehosted.com (Settings → Developer)."
        )
    if parts.path.rstrip("/") not in ("", "/api/3"):
        raise ValueError("The ActiveCampaign API URL has no path (Settings → Developer).")
    if resolve is not None:
        for address in resolve(host):
            if not ipaddress.ip_address(address.split("%", 1)[0]).is_global:
                raise ValueError(f"{host} resolves to a private or loopback address.")
    return f"https://{host}"


def client_factory(config: ClientConfig) -> ProviderClient:
    """A client for a stored connection; outside the sandbox only at a URL the host rule
    accepts (checked without resolving: the resolution was checked at connect)."""
    base = config.api_endpoint
    if not config.sandbox:
        base = account_url(base, resolve=None)
    return ActiveCampaignClient(
        config.transport,
        api_url=base,
        api_key=str(config.credentials.get("api_key") or ""),
        timeout=config.timeout,
        limiter=config.limiter,
    )


def _account(url: str, api_key: str, *, name: str | None = None) -> Account:
    # The account's limits are per account, every key together: the host names the account.
    host = (urlsplit(url).netloc or url).lower()
    digest = hashlib.sha256(f"{host}".encode()).hexdigest()[:24]
    return Account(
        api_base=url,
        account_key=f"{PROVIDER}:{digest}",
        credentials={"api_key": api_key},
        auth_kind="api_key",
        account_name=name or host,
    )


async def ensure_fields(client: ActiveCampaignClient, rules: Iterable[FieldRule]) -> list[str]:
    """Create the custom fields the rules name by personalization tag and the account lacks;
    the tags created. A field id that does not exist, or a list rule on a field that cannot
    hold several values, is refused naming the entry."""
    custom = [r for r in rules if is_custom(r)]
    if not custom:
        return []
    known = await client.fields()
    created: list[str] = []
    problems: list[str] = []
    for rule in custom:
        entry = known.get(rule.field)
        name = f"FIELD_MAP entry {PROVIDER}.{rule.source}"
        if entry is None and rule.field.isdigit():
            problems.append(f"{name}: ActiveCampaign has no custom field {rule.field}")
            continue
        if entry is None:
            await client.create_field(
                title=rule.display_name, perstag=rule.field, kind=FIELD_TYPES[rule.type]
            )
            created.append(rule.field)
            continue
        if rule.type is FieldType.list and entry["type"] not in OPTION_TYPES:
            problems.append(f"{name}: field {rule.field} is {entry['type']}, which holds one value")
    if problems:
        raise FieldsRefused(problems)
    return created


class ActiveCampaignConnect:
    """ActiveCampaign's connect flow (ConnectFlow): API URL and key, no OAuth."""

    credentials_model: type[BaseModel] | None = ActiveCampaignCredentials

    def account_from_credentials(self, settings: Settings, body: BaseModel) -> Account:
        """The account the URL and key reach (ConnectRefused when the URL breaks the rule)."""
        assert isinstance(body, ActiveCampaignCredentials)
        key = body.api_key.get_secret_value()
        if self.sandbox(settings):
            url = body.api_url.rstrip("/").removesuffix("/api/3")
            if urlsplit(url).scheme not in ("http", "https"):
                raise ConnectRefused("The API URL must be an http(s) URL.", field="api_url")
            return _account(url, key)
        try:
            url = account_url(body.api_url)
        except ValueError as exc:
            raise ConnectRefused(str(exc), field="api_url") from None
        return _account(url, key)

    async def authorize_url(self, settings: Settings, *, state: str) -> str:
        """ActiveCampaign's API has no OAuth."""
        raise NotImplementedError

    async def exchange_code(
        self, settings: Settings, *, code: str, limiter: RequestLimiter | None = None
    ) -> Account:
        """ActiveCampaign's API has no OAuth."""
        raise NotImplementedError

    def sandbox(self, settings: Settings) -> bool:
        """True when ActiveCampaign traffic goes to the built-in emulator."""
        return ActiveCampaignMode.sandbox == settings.ACTIVECAMPAIGN_MODE

    def timeout(self, settings: Settings) -> float:
        """Seconds an ActiveCampaign request may take."""
        return settings.ACTIVECAMPAIGN_TIMEOUT_SECONDS

    def configured(
        self, settings: Settings, seed: SandboxSeed | None
    ) -> tuple[str, Account, Audience] | None:
        """ACTIVECAMPAIGN_API_URL + _API_KEY + _AUDIENCE_ID for ACTIVECAMPAIGN_OWNER; else,
        given the sandbox's seed, its default account for the owner or `demo`."""
        url = settings.ACTIVECAMPAIGN_API_URL or ""
        key = settings.ACTIVECAMPAIGN_API_KEY.get_secret_value()
        audience_id = settings.ACTIVECAMPAIGN_AUDIENCE_ID
        owner = settings.ACTIVECAMPAIGN_OWNER
        audience_name, account_name = None, None
        if not key and seed is not None:
            url, key = settings.activecampaign_sandbox_url, str(seed.credentials["api_key"])
            audience_id, owner = seed.audience_id, owner or "demo"
            audience_name, account_name = seed.audience_name, seed.account_name
        elif key and url and not self.sandbox(settings):
            try:
                url = account_url(url, resolve=None)
            except ValueError as exc:
                raise ConnectRefused(str(exc), field="ACTIVECAMPAIGN_API_URL") from None
        if not url or not key or not audience_id or not owner:
            return None
        account = _account(url.rstrip("/"), key, name=account_name)
        audience = Audience(id=audience_id, name=audience_name or audience_id, member_count=0)
        return owner, account, audience

    async def refresh(
        self, settings: Settings, credentials: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """API keys do not expire."""
        return None

    async def prepare_audience(self, client: Any, audience_id: str, mapping: Any) -> list[str]:
        """Create the custom fields the field map needs (fields are account-wide, visible on
        every list)."""
        return await ensure_fields(client, mapping.fields)

    def check_mapping(self, settings: Settings) -> list[str]:
        """Field ids and personalization tags of the deployment's ActiveCampaign rules."""
        return rule_problems(rules_from(settings.FIELD_MAP))
