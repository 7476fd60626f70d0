"""Connecting a Mailchimp account: API key (dc suffix) or OAuth 2, the host rule, the client.

OAuth (reference §6): the authorize URL, the code exchange (Authlib) and the account metadata
(`dc`, `api_endpoint`, `accountname`). Mailchimp tokens do not expire. In live mode the API
base must be `https://<dc>.api.mailchimp.com` (DESIGN §8): a key like `abc-evil.example/x` or
metadata pointing elsewhere is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from pydantic import BaseModel, ConfigDict, Field
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from app.config import Settings
from app.providers.base import (
    Account,
    Audience,
    ClientConfig,
    ConnectRefused,
    ProviderClient,
    RequestLimiter,
    SandboxSeed,
)
from app.providers.mailchimp.client import (
    MailchimpClient,
    check_live_endpoint,
    dc_from_api_key,
    live_api_base,
)
from app.providers.mailchimp.fields import check_rules, ensure_merge_fields, rules_from


class MailchimpCredentials(BaseModel):
    """Mailchimp credentials: an API key (the data center is its suffix), and optionally the
    audience to sync to (otherwise the only one, or chosen later)."""

    model_config = ConfigDict(
        extra="forbid", str_strip_whitespace=True, title="MailchimpCredentials"
    )

    api_key: str = Field(min_length=8, max_length=100, description="<32 hex>-<dc>, e.g. …-us1")
    audience_id: str | None = Field(default=None, min_length=1, max_length=64)


def client_factory(config: ClientConfig) -> ProviderClient:
    """A client for a stored connection; in live mode only at https://<dc>.api.mailchimp.com."""
    endpoint = config.api_endpoint
    if not config.sandbox:
        # Never aim the worker at a host we did not derive ourselves (DESIGN §8).
        endpoint = check_live_endpoint(endpoint, config.dc or "")
    return MailchimpClient(
        config.transport,
        limiter=config.limiter,
        api_base=endpoint,
        api_key=config.credentials.get("api_key"),
        access_token=config.credentials.get("access_token"),
        timeout=config.timeout,
    )


def api_key_account(settings: Settings, api_key: str) -> Account:
    """Derive the API host from the key's data center; the sandbox in sandbox mode."""
    try:
        dc = dc_from_api_key(api_key)
        base = settings.sandbox_url if settings.is_sandbox else live_api_base(dc)
    except ValueError as exc:
        raise ConnectRefused(str(exc), field="api_key") from None
    digest = hashlib.sha256(api_key.encode()).hexdigest()[:24]
    return Account(
        api_base=base,
        dc=dc,
        account_key=f"mailchimp:{dc}:key:{digest}",
        credentials={"api_key": api_key},
        auth_kind="api_key",
    )


# --- OAuth ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    """Where the OAuth endpoints are and who we are to them."""

    client_id: str
    client_secret: str
    redirect_uri: str
    base: str
    timeout: float

    @property
    def authorize_url(self) -> str:
        """The page the popup opens."""
        return f"{self.base}/oauth2/authorize"

    @property
    def token_url(self) -> str:
        """Code → token."""
        return f"{self.base}/oauth2/token"

    @property
    def metadata_url(self) -> str:
        """Token → data center, API endpoint, account."""
        return f"{self.base}/oauth2/metadata"


@dataclass(frozen=True, slots=True)
class OAuthGrant:
    """An access token and what Mailchimp's metadata says about its account."""

    access_token: str
    dc: str
    api_endpoint: str
    account_name: str | None
    account_ref: str  # the account behind the token (account id, else the login's user id)


def _unreached(exc: BaseException) -> bool:
    # Only failures where the request surely never reached Mailchimp are retried: a code is
    # single-use, so a token request that may have arrived is never sent twice.
    return isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout)


def _retrying() -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception(_unreached),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.2, max=2.0),
        reraise=True,
    )


def _client(cfg: OAuthConfig) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=cfg.client_id,
        client_secret=cfg.client_secret,
        # Mailchimp reads the client credentials from the form body.
        token_endpoint_auth_method="client_secret_post",
        redirect_uri=cfg.redirect_uri,
        timeout=cfg.timeout,
    )


async def authorization_url(cfg: OAuthConfig, state: str) -> str:
    """Mailchimp's authorize page for this app, redirect URI and `state`."""
    async with _client(cfg) as client:
        url, _ = client.create_authorization_url(cfg.authorize_url, state=state)
    return str(url)


async def exchange_code(cfg: OAuthConfig, code: str) -> OAuthGrant:
    """Code → access token (Authlib) → metadata (`dc`, `api_endpoint`, `accountname`)."""
    try:
        async with _client(cfg) as client:
            async for attempt in _retrying():
                with attempt:
                    token = await client.fetch_token(
                        cfg.token_url, grant_type="authorization_code", code=code
                    )
            access_token = str(token.get("access_token") or "")
            if not access_token:
                raise ConnectRefused(
                    "Mailchimp did not issue an access token; start again.",
                    code="exchange_failed",
                    status_code=400,
                )
            async for attempt in _retrying():
                with attempt:
                    # Mailchimp documents `Authorization: OAuth <token>` for the metadata call.
                    response = await client.request(
                        "GET",
                        cfg.metadata_url,
                        headers={
                            "Authorization": f"OAuth {access_token}",
                            "Accept": "application/json",
                        },
                        withhold_token=True,
                    )
    except OAuthError as exc:
        reason = exc.error or "oauth_error"
        raise ConnectRefused(
            f"Mailchimp refused the authorization code ({reason}); start again.",
            code="exchange_failed",
            status_code=502 if reason not in ("invalid_grant",) else 400,
        ) from None
    except httpx2.HTTPStatusError as exc:
        raise ConnectRefused(
            f"Mailchimp's token endpoint answered {exc.response.status_code}; try again.",
            code="exchange_failed",
            status_code=502,
        ) from None
    except httpx2.HTTPError as exc:
        raise ConnectRefused(
            f"Mailchimp could not be reached ({type(exc).__name__}); try again in a minute.",
            code="provider_unavailable",
            status_code=503,
        ) from None
    if response.status_code != 200:
        raise ConnectRefused(
            f"Mailchimp's account metadata answered {response.status_code}; start again.",
            code="exchange_failed",
            status_code=502,
        )
    try:
        meta: dict[str, Any] = response.json()
    except ValueError:
        meta = {}
    dc = str(meta.get("dc") or "")
    endpoint = str(meta.get("api_endpoint") or "")
    if not dc or not endpoint:
        raise ConnectRefused(
            "Mailchimp's account metadata names no data center; start again.",
            code="exchange_failed",
            status_code=502,
        )
    login = meta.get("login") if isinstance(meta.get("login"), dict) else {}
    ref = meta.get("account_id") or meta.get("user_id") or (login or {}).get("login_id") or dc
    return OAuthGrant(
        access_token=access_token,
        dc=dc,
        api_endpoint=endpoint,
        account_name=str(meta["accountname"]) if meta.get("accountname") else None,
        account_ref=str(ref),
    )


def oauth_account(settings: Settings, grant: OAuthGrant) -> Account:
    """The account an OAuth grant reaches; in live mode only at https://<dc>.api.mailchimp.com."""
    if settings.is_sandbox:
        base = settings.sandbox_url
    else:
        try:
            base = check_live_endpoint(grant.api_endpoint, grant.dc)
        except ValueError:
            raise ConnectRefused(
                "Mailchimp's answer pointed the API at an unexpected host, so nothing was"
                " connected. Try again, or contact support if it persists.",
                code="foreign_host",
                status_code=502,
            ) from None
    return Account(
        api_base=base,
        dc=grant.dc,
        account_key=f"mailchimp:{grant.dc}:account:{grant.account_ref}",
        credentials={"access_token": grant.access_token},
        auth_kind="oauth",
        account_name=grant.account_name,
    )


class MailchimpConnect:
    """Mailchimp's connect flow (ConnectFlow)."""

    credentials_model: type[BaseModel] | None = MailchimpCredentials

    def __init__(self, sandbox_seed: Callable[[], SandboxSeed | None] | None = None) -> None:
        self._seed = sandbox_seed or (lambda: None)

    def account_from_credentials(self, settings: Settings, body: BaseModel) -> Account:
        """The account an API key reaches (ConnectRefused for a malformed key)."""
        assert isinstance(body, MailchimpCredentials)
        return api_key_account(settings, body.api_key)

    def oauth_config(self, settings: Settings) -> OAuthConfig:
        """The OAuth app of this deployment; in sandbox mode the sandbox's default app."""
        client_id = settings.MAILCHIMP_CLIENT_ID
        client_secret = settings.MAILCHIMP_CLIENT_SECRET.get_secret_value()
        seed = self._seed() if settings.is_sandbox else None
        if (not client_id or not client_secret) and seed is not None and seed.oauth_client:
            client_id, client_secret = seed.oauth_client
        if not client_id or not client_secret:
            raise ConnectRefused(
                "Set MAILCHIMP_CLIENT_ID and MAILCHIMP_CLIENT_SECRET (a Mailchimp OAuth app) to"
                " connect accounts with OAuth, or connect with an API key.",
                code="oauth_not_configured",
                status_code=503,
            )
        redirect = settings.MAILCHIMP_REDIRECT_URI or (
            settings.public_base_url + "/api/integrations/mailchimp/callback"
        )
        return OAuthConfig(
            client_id=client_id,
            client_secret=client_secret,
            redirect_uri=redirect,
            base=settings.oauth_base,
            timeout=settings.MAILCHIMP_TIMEOUT_SECONDS,
        )

    async def authorize_url(self, settings: Settings, *, state: str) -> str:
        """Mailchimp's authorize page for this app."""
        return await authorization_url(self.oauth_config(settings), state)

    async def exchange_code(
        self, settings: Settings, *, code: str, limiter: RequestLimiter | None = None
    ) -> Account:
        """Code → token → metadata → the account (host rule applied); the metadata endpoint
        is not the API, so `limiter` has nothing to hold."""
        grant = await exchange_code(self.oauth_config(settings), code)
        return oauth_account(settings, grant)

    def sandbox(self, settings: Settings) -> bool:
        """True when Mailchimp traffic goes to the built-in emulator (MAILCHIMP_MODE)."""
        return settings.is_sandbox

    def timeout(self, settings: Settings) -> float:
        """Seconds a Mailchimp request may take."""
        return settings.MAILCHIMP_TIMEOUT_SECONDS

    def configured(
        self, settings: Settings, seed: SandboxSeed | None
    ) -> tuple[str, Account, Audience] | None:
        """MAILCHIMP_API_KEY + MAILCHIMP_AUDIENCE_ID for MAILCHIMP_OWNER; else, given the
        sandbox's seed, its default account for MAILCHIMP_OWNER or `demo`."""
        api_key = settings.MAILCHIMP_API_KEY.get_secret_value()
        audience_id = settings.MAILCHIMP_AUDIENCE_ID
        owner = settings.MAILCHIMP_OWNER
        audience_name, account_name = None, None
        if not api_key and seed is not None:
            api_key, audience_id, owner = (
                str(seed.credentials["api_key"]),
                seed.audience_id,
                (owner or "demo"),
            )
            audience_name, account_name = seed.audience_name, seed.account_name
        if not api_key or not audience_id or not owner:
            return None
        account = api_key_account(settings, api_key)
        account.account_name = account_name
        audience = Audience(id=audience_id, name=audience_name or audience_id, member_count=0)
        return owner, account, audience

    async def refresh(
        self, settings: Settings, credentials: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Mailchimp tokens do not expire: nothing to refresh."""
        return None

    async def prepare_audience(self, client: Any, audience_id: str, mapping: Any) -> list[str]:
        """Create the merge fields the field map needs and the audience lacks."""
        return await ensure_merge_fields(client, audience_id, mapping.fields)

    def check_mapping(self, settings: Settings) -> list[str]:
        """Merge-tag syntax and reserved tags of the deployment's Mailchimp rules."""
        return check_rules(rules_from(settings.FIELD_MAP, settings.MAILCHIMP_MERGE_FIELD_MAP))
