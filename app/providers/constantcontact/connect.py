"""Connecting a Constant Contact account: OAuth 2 authorization code with PKCE, the account
summary, rotating refresh tokens, the host rule, the client.

Reference §0: the authorize and token endpoints are fixed (`authz.constantcontact.com`), the
scopes `account_read contact_data offline_access` (no refresh token without the last), the
client authenticates by Basic `id:secret` (or by its id alone for a public PKCE app), access
tokens live 24 h and rotating refresh tokens are single-use: `refresh` returns the new pair,
which the core commits before the new access token is used (app/connections/tokens.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from pydantic import BaseModel

from app.config import Settings
from app.providers.base import (
    Account,
    Audience,
    AuthError,
    ClientConfig,
    ConnectRefused,
    ProviderClient,
    ProviderError,
    RequestLimiter,
    SandboxSeed,
    ThrottledError,
    TransientError,
)
from app.providers.constantcontact.client import (
    LIVE_API_BASE,
    ConstantContactClient,
    check_live_base,
)
from app.providers.constantcontact.mapping import check_rules, rules_from
from app.providers.constantcontact.spec import DISPLAY_NAME, SCOPES

LIVE_AUTH_BASE = "https://authz.constantcontact.com/oauth2/default/v1"
DEFAULT_TTL = 86_400


def client_factory(config: ClientConfig) -> ProviderClient:
    """A client for a stored connection; in live mode only at https://api.cc.email/v3."""
    base = config.api_endpoint if config.sandbox else check_live_base(config.api_endpoint)
    return ConstantContactClient(
        config.transport,
        api_base=base,
        access_token=config.credentials.get("access_token"),
        tokens=config.tokens,
        timeout=config.timeout,
        limiter=config.limiter,
    )


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    """Where the authorization server is and who we are to it."""

    client_id: str
    client_secret: str | None  # None: a public PKCE app
    redirect_uri: str
    auth_base: str
    api_base: str
    timeout: float
    pkce: bool

    @property
    def authorize_url(self) -> str:
        """The page the popup opens."""
        return f"{self.auth_base}/authorize"

    @property
    def token_url(self) -> str:
        """Code → tokens, refresh → tokens."""
        return f"{self.auth_base}/token"


def credentials_from(token: Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """What we store of a token response (encrypted): the pair and when the access expires."""
    issued = now if now is not None else time.time()
    lifetime = float(token.get("expires_in") or DEFAULT_TTL)
    return {
        "access_token": str(token["access_token"]),
        "refresh_token": str(token.get("refresh_token") or ""),
        "expires_at": issued + lifetime,
        "lifetime": lifetime,
        "scope": str(token.get("scope") or ""),
    }


def _client(cfg: OAuthConfig) -> AsyncOAuth2Client:
    # Basic `id:secret` for a confidential app; a public app authenticates by its id alone
    # in the body (the sandbox and CC accept both, reference §0.4).
    return AsyncOAuth2Client(
        client_id=cfg.client_id,
        client_secret=cfg.client_secret,
        token_endpoint_auth_method="client_secret_basic" if cfg.client_secret else "none",
        redirect_uri=cfg.redirect_uri,
        scope=" ".join(SCOPES),
        code_challenge_method="S256" if cfg.pkce else None,
        timeout=cfg.timeout,
    )


async def authorization_url(cfg: OAuthConfig, state: str, code_verifier: str | None) -> str:
    """The authorize page for this app, redirect URI, scopes, `state` and PKCE challenge."""
    async with _client(cfg) as client:
        kwargs = {"code_verifier": code_verifier} if cfg.pkce and code_verifier else {}
        url, _ = client.create_authorization_url(cfg.authorize_url, state=state, **kwargs)
    return str(url)


def _refused(exc: OAuthError) -> ConnectRefused:
    reason = exc.error or "oauth_error"
    return ConnectRefused(
        f"Constant Contact refused the authorization code ({reason}); start again.",
        code="exchange_failed",
        status_code=400 if reason in ("invalid_grant", "invalid_request") else 502,
    )


async def exchange(cfg: OAuthConfig, code: str, code_verifier: str | None) -> dict[str, Any]:
    """Code (+ verifier) → tokens. A code is single-use: a request that may have arrived is
    never sent twice."""
    kwargs = {"code_verifier": code_verifier} if cfg.pkce and code_verifier else {}
    try:
        async with _client(cfg) as client:
            token = await client.fetch_token(
                cfg.token_url, grant_type="authorization_code", code=code, **kwargs
            )
    except OAuthError as exc:
        raise _refused(exc) from None
    except httpx2.HTTPStatusError as exc:
        raise ConnectRefused(
            f"Constant Contact's token endpoint answered {exc.response.status_code}; try again.",
            code="exchange_failed",
            status_code=502,
        ) from None
    except httpx2.HTTPError as exc:
        raise ConnectRefused(
            f"Constant Contact could not be reached ({type(exc).__name__}); try again.",
            code="provider_unavailable",
            status_code=503,
        ) from None
    if not token.get("access_token"):
        raise ConnectRefused(
            "Constant Contact issued no access token; start again.",
            code="exchange_failed",
            status_code=400,
        )
    if not token.get("refresh_token"):
        raise ConnectRefused(
            "Constant Contact issued no refresh token (the app must allow offline_access);"
            " start again.",
            code="exchange_failed",
            status_code=400,
        )
    return dict(token)


async def refresh_pair(cfg: OAuthConfig, refresh_token: str) -> dict[str, Any]:
    """refresh_token → a new pair; AuthError for `invalid_grant` (rotated, expired, revoked)
    or a refused client, TransientError for anything that may pass."""
    try:
        async with _client(cfg) as client:
            token = await client.fetch_token(
                cfg.token_url, grant_type="refresh_token", refresh_token=refresh_token
            )
    except OAuthError as exc:
        reason = exc.error or "oauth_error"
        if reason in ("invalid_grant", "invalid_client", "unauthorized_client"):
            raise AuthError(
                f"Constant Contact refused the refresh token ({reason})", status=400
            ) from None
        raise TransientError(f"Constant Contact's token endpoint said {reason}") from None
    except httpx2.HTTPStatusError as exc:
        raise TransientError(
            f"Constant Contact's token endpoint answered {exc.response.status_code}",
            status=exc.response.status_code,
        ) from None
    except httpx2.HTTPError as exc:
        raise TransientError(f"Constant Contact's token endpoint: {type(exc).__name__}") from None
    if not token.get("access_token"):
        raise TransientError("Constant Contact's token endpoint issued no access token")
    return dict(token)


class ConstantContactConnect:
    """Constant Contact's connect flow (ConnectFlow)."""

    credentials_model: type[BaseModel] | None = None

    def __init__(self, sandbox_seed: Callable[[], SandboxSeed | None] | None = None) -> None:
        self._seed = sandbox_seed or (lambda: None)

    # --- where things are ---------------------------------------------------------------

    def sandbox(self, settings: Settings) -> bool:
        """True when Constant Contact traffic goes to the built-in emulator."""
        return settings.constantcontact_sandbox

    def timeout(self, settings: Settings) -> float:
        """Seconds a Constant Contact request may take."""
        return settings.CONSTANTCONTACT_TIMEOUT_SECONDS

    def _root(self, settings: Settings) -> str:
        return settings.constantcontact_sandbox_url

    def api_base(self, settings: Settings) -> str:
        """The V3 API base: the sandbox's, or https://api.cc.email/v3."""
        return self._root(settings) + "/v3" if self.sandbox(settings) else LIVE_API_BASE

    def oauth_config(self, settings: Settings) -> OAuthConfig:
        """The OAuth app of this deployment; in sandbox mode the sandbox's rotating app."""
        client_id = settings.CONSTANTCONTACT_CLIENT_ID
        secret: str | None = settings.CONSTANTCONTACT_CLIENT_SECRET.get_secret_value() or None
        seed = self._seed() if self.sandbox(settings) else None
        if not client_id and seed is not None and seed.oauth_client:
            client_id, secret = seed.oauth_client
        if not client_id:
            raise ConnectRefused(
                "Set CONSTANTCONTACT_CLIENT_ID (and CONSTANTCONTACT_CLIENT_SECRET unless the app"
                " is a PKCE app) to connect Constant Contact accounts.",
                code="oauth_not_configured",
                status_code=503,
            )
        redirect = settings.CONSTANTCONTACT_REDIRECT_URI or (
            settings.public_base_url + "/api/integrations/constantcontact/callback"
        )
        sandbox = self.sandbox(settings)
        return OAuthConfig(
            client_id=client_id,
            client_secret=secret or None,
            redirect_uri=redirect,
            auth_base=(self._root(settings) + "/oauth2/default/v1") if sandbox else LIVE_AUTH_BASE,
            api_base=self.api_base(settings),
            timeout=settings.CONSTANTCONTACT_TIMEOUT_SECONDS,
            # A public app must use PKCE; a confidential one does unless the operator's app
            # refuses PKCE parameters (reference §0.3, unverified).
            pkce=settings.CONSTANTCONTACT_PKCE or not secret,
        )

    # --- OAuth ----------------------------------------------------------------------------

    def account_from_credentials(self, settings: Settings, body: BaseModel) -> Account:
        """Constant Contact connects through OAuth only."""
        raise ConnectRefused("Constant Contact connects through OAuth only.", code="oauth_only")

    async def authorize_url(
        self, settings: Settings, *, state: str, code_verifier: str | None = None
    ) -> str:
        """The authorize page (PKCE S256 challenge of `code_verifier`)."""
        return await authorization_url(self.oauth_config(settings), state, code_verifier)

    async def exchange_code(
        self,
        settings: Settings,
        *,
        code: str,
        code_verifier: str | None = None,
        limiter: RequestLimiter | None = None,
    ) -> Account:
        """Code → tokens → `account/summary` (under `limiter`: the application's rate and
        quota) → the account."""
        cfg = self.oauth_config(settings)
        token = await exchange(cfg, code, code_verifier)
        credentials = credentials_from(token)
        summary = await self._summary(settings, cfg, credentials, limiter)
        account_id = str(summary.get("encoded_account_id") or "")
        if not account_id:
            raise ConnectRefused(
                "Constant Contact's account summary names no account; start again.",
                code="exchange_failed",
                status_code=502,
            )
        return Account(
            api_base=cfg.api_base,
            account_key=f"constantcontact:account:{account_id}",
            credentials=credentials,
            auth_kind="oauth",
            account_name=str(summary.get("organization_name") or account_id),
        )

    async def _summary(
        self,
        settings: Settings,
        cfg: OAuthConfig,
        credentials: Mapping[str, Any],
        limiter: RequestLimiter | None = None,
    ) -> dict[str, Any]:
        async with httpx.AsyncHTTPTransport() as transport:
            client = ConstantContactClient(
                transport,
                api_base=cfg.api_base,
                access_token=str(credentials["access_token"]),
                timeout=cfg.timeout,
                limiter=limiter,
            )
            try:
                return await client.account_summary()
            except ThrottledError:
                raise  # a burst or a closed day: the service answers with when to come back
            except ProviderError as exc:
                raise ConnectRefused(
                    f"Constant Contact did not show the account ({exc.message}); start again.",
                    code="exchange_failed",
                    status_code=502,
                ) from None

    async def refresh(
        self, settings: Settings, credentials: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """A new pair from the refresh token (rotating: the old one is spent by this call).

        The demo connection of a development sandbox starts without tokens: the sandbox's
        control API mints its first pair.
        """
        cfg = self.oauth_config(settings)
        refresh_token = str(credentials.get("refresh_token") or "")
        if not refresh_token and credentials.get("sandbox_seed") and self.sandbox(settings):
            token = await self._mint(settings, cfg, credentials.get("account_id"))
        elif not refresh_token:
            raise AuthError("no refresh token is stored; reconnect Constant Contact")
        else:
            token = await refresh_pair(cfg, refresh_token)
        fresh = credentials_from(token)
        if not fresh["refresh_token"]:
            fresh["refresh_token"] = refresh_token  # long-lived apps may leave it out
        # The full credentials: what was stored, the new pair over it (the core stores this).
        out = {k: v for k, v in credentials.items() if k != "sandbox_seed"}
        return out | fresh

    async def _mint(self, settings: Settings, cfg: OAuthConfig, account_id: Any) -> dict[str, Any]:
        seed = self._seed()
        body = {"client_id": cfg.client_id}
        if account_id:
            body["account_id"] = str(account_id)
        elif seed is not None and seed.credentials.get("account_id"):
            body["account_id"] = str(seed.credentials["account_id"])
        try:
            async with httpx2.AsyncClient(timeout=cfg.timeout) as http:
                response = await http.post(self._root(settings) + "/_control/tokens", json=body)
        except httpx2.HTTPError as exc:
            raise TransientError(f"the sandbox is not answering ({type(exc).__name__})") from None
        if response.status_code != 201:
            raise TransientError(f"the sandbox minted no token ({response.status_code})")
        return dict(response.json())

    # --- single-tenant and development ---------------------------------------------------

    def configured(
        self, settings: Settings, seed: SandboxSeed | None
    ) -> tuple[str, Account, Audience] | None:
        """Development with the sandbox: its default account for CONSTANTCONTACT_OWNER (or
        `demo`), with no tokens yet (the first request mints them). Live accounts connect
        through OAuth only."""
        if seed is None or not self.sandbox(settings):
            return None
        owner = settings.CONSTANTCONTACT_OWNER or "demo"
        account = Account(
            api_base=self.api_base(settings),
            account_key=f"constantcontact:account:{seed.credentials.get('account_id')}",
            credentials={"sandbox_seed": True, "account_id": seed.credentials.get("account_id")},
            auth_kind="oauth",
            account_name=seed.account_name,
        )
        audience = Audience(id=seed.audience_id, name=seed.audience_name, member_count=0)
        return owner, account, audience

    async def prepare_audience(self, client: Any, audience_id: str, mapping: Any) -> list[str]:
        """Create the custom fields the field map names and the account lacks (by name)."""
        from app.providers.constantcontact.client import CORE_FIELDS, UUID_PATTERN

        assert isinstance(client, ConstantContactClient)
        fields = await client.custom_fields()
        known = {str(f.get(k) or "").lower() for f in fields for k in ("name", "label")}
        ids = {str(f.get("custom_field_id")) for f in fields}
        created = []
        for rule in mapping.fields:
            name = rule.field
            if name in CORE_FIELDS:
                continue
            if UUID_PATTERN.match(name):
                if name not in ids:
                    from app.fieldmap import FieldsRefused

                    raise FieldsRefused(
                        [f"FIELD_MAP entry constantcontact.{rule.source}: no custom field {name}"]
                    )
                continue
            if name.lower() in known:
                continue
            body = await client.create_custom_field(rule.label or name)
            created.append(str(body.get("custom_field_id") or name))
            known.add(name.lower())
        if created:
            await client.custom_fields()
        return created

    def check_mapping(self, settings: Settings) -> list[str]:
        """Problems Constant Contact has with the deployment's FIELD_MAP entries."""
        return check_rules(rules_from(settings.FIELD_MAP))


__all__ = ["DISPLAY_NAME", "ConstantContactConnect", "client_factory", "credentials_from"]
