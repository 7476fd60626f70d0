"""Connection use cases: connect (OAuth or API key), audiences, status, Sync Now, disconnect.

Remote calls come before the request's writes, never inside them: a service reads what it
needs through a short read-only session (`reader`), calls the provider, then writes in the
request's session, which the request commits. Work that must follow the commit (registering
the webhook, whose validating GET must find the committed connection) runs as a background
task with units of work of its own.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from pydantic import BaseModel
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from app.config import Environment, Settings
from app.connections import oauth
from app.connections.crypto import (
    CredentialsError,
    decrypt_credentials,
    encrypt_credentials,
    rotate_credentials,
)
from app.connections.limits import limiter_for
from app.connections.mapping_repository import MappingRepository
from app.connections.notices import QUOTA_NOTICE, REASON_ENDPOINT, notice_for_provider
from app.connections.oauth import OAuthFailure, OAuthNotConfigured
from app.connections.repository import ConnectionRepository
from app.connections.schemas import (
    AudienceRef,
    AudienceRuleOut,
    ConnectMethod,
    ConnectStart,
    CredentialFieldOut,
    IntegrationEntry,
    IntegrationStatus,
    MappingOut,
    RunAccepted,
    SyncRunOut,
)
from app.connections.tokens import token_source
from app.connections.webhook_registration import direct, one_at_a_time, webhook_url
from app.db import session_scope
from app.errors import (
    BadGateway,
    Conflict,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unprocessable,
)
from app.fieldmap import FieldsRefused
from app.providers import registry
from app.providers.base import (
    Account,
    Audience,
    AudienceMissing,
    AuthError,
    ClientConfig,
    ConnectRefused,
    ProviderClient,
    ProviderError,
    QuotaExhausted,
    ThrottledError,
    TransientError,
)
from app.providers.registry import Provider

log = structlog.get_logger(__name__)

# Providers the Settings page names before their package is registered in this build (shown
# as not available); a registered provider of the same name replaces its line.
ANNOUNCED: tuple[tuple[str, str], ...] = (
    ("constantcontact", "Constant Contact"),
    ("activecampaign", "ActiveCampaign"),
    ("mautic", "Mautic"),
)
RUN_SYNC_NOW = "sync_now"
RUN_INITIAL = "initial"
RUN_AUDIENCE_CHANGE = "audience_change"

Reader = async_sessionmaker[AsyncSession]


@dataclass(slots=True)
class OAuthCompleted:
    """A finished OAuth connect: the connection row and how many audiences the account has."""

    connection: RowMapping
    audiences: int
    audience_changed: bool


def refused(exc: ConnectRefused) -> Unprocessable:
    """The 422 a refused credentials body becomes, naming the field."""
    errors = [{"field": exc.field, "message": exc.message}] if exc.field else []
    return Unprocessable(exc.message, extra={"errors": errors} if errors else None)


def oauth_failure(provider: Provider, exc: ConnectRefused) -> Exception:
    """The API error a refused or failed OAuth step becomes."""
    name = provider.spec.display_name
    if exc.code == "oauth_not_configured":
        return OAuthNotConfigured(exc.message, provider=name)
    return OAuthFailure(exc.code, exc.message, status_code=exc.status_code, provider=name)


def oauth_throttled(provider: Provider, exc: ThrottledError) -> OAuthFailure:
    """The connect failure a throttle becomes: when to come back, never a bare 502."""
    name = provider.spec.display_name
    wait = _long_wait(provider, exc)
    if wait is None:
        detail = f"{name} is busy right now; try again in a minute."
        return OAuthFailure("provider_busy", detail, status_code=503, provider=name)
    failure = OAuthFailure(
        "provider_limit", _wait_notice(provider, wait), status_code=503, provider=name
    )
    failure.headers["Retry-After"] = str(math.ceil(wait))
    return failure


def provider_failure(provider: Provider, exc: ProviderError) -> Exception:
    """The API error a provider failure during a user's request becomes."""
    name = provider.spec.display_name
    if isinstance(exc, AuthError):
        fields = provider.spec.connect.credentials
        field = fields[-1].name if fields else "credentials"
        return Unprocessable(
            f"{name} did not accept these credentials.",
            extra={"errors": [{"field": field, "message": f"rejected by {name}"}]},
        )
    if isinstance(exc, ThrottledError) and (wait := _long_wait(provider, exc)) is not None:
        return ServiceUnavailable(
            _wait_notice(provider, wait), headers={"Retry-After": str(math.ceil(wait))}
        )
    if isinstance(exc, TransientError | ThrottledError):
        return ServiceUnavailable(f"{name} is not answering right now; try again in a minute.")
    return BadGateway(f"{name} refused the request: {exc.message}")


# A throttle asking for longer than this is a closed day (a spent quota), not a passing burst:
# "try again in a minute" would be wrong, so the answer says when.
LONG_WAIT_SECONDS = 60.0


def _long_wait(provider: Provider, exc: ThrottledError) -> float | None:
    """Seconds the provider takes no requests for, when that is longer than a minute."""
    wait = exc.retry_after
    if wait is None and isinstance(exc, QuotaExhausted):
        # The provider's own "quota spent" names no time: daily quotas reset at 00:00 UTC.
        now = datetime.now(UTC)
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        wait = (midnight - now).total_seconds()
    return wait if wait is not None and wait > LONG_WAIT_SECONDS else None


def _wait_notice(provider: Provider, wait: float) -> str:
    """What a user's request answers while the provider's limits are closed for a while."""
    name = provider.spec.display_name
    if provider.spec.limits.daily_quota_per_application:
        return QUOTA_NOTICE.format(name=name) + "; try again then."
    return f"{name} asks us to wait {math.ceil(wait / 60)} minutes; try again then."


def fields_refused(provider: Provider, exc: FieldsRefused) -> Unprocessable:
    """The API error a field map the audience cannot hold becomes (nothing is saved)."""
    return Unprocessable(
        f"{provider.spec.display_name} cannot hold the configured field map (FIELD_MAP) in this"
        f" {provider.spec.audience_noun}: " + str(exc),
        extra={"errors": [{"field": "FIELD_MAP", "message": p} for p in exc.problems]},
    )


async def prepare_audience(
    provider: Provider, settings: Settings, client: ProviderClient, audience_id: str
) -> None:
    """Create the provider fields FIELD_MAP needs in the audience (FieldsRefused names entries)."""
    await provider.connect.prepare_audience(client, audience_id, provider.mapping(settings))


class EndpointRefused(Conflict):
    """Live mode: the stored API endpoint breaks the provider's host rule (DESIGN §8)."""

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason


async def _mark_endpoint_refused(reader: Reader, row: RowMapping, exc: EndpointRefused) -> None:
    # Its own unit of work: the request's session rolls back with the 409 it answers.
    log.error("connections.endpoint_refused", connection=str(row["id"]), error=exc.reason)
    async with session_scope(reader) as write:
        await ConnectionRepository(write).set_error(
            row["id"], reason=REASON_ENDPOINT, error=exc.reason
        )


def account_client(
    provider: Provider,
    settings: Settings,
    transport: httpx.AsyncBaseTransport,
    account: Account,
) -> ProviderClient:
    """A client for an account about to be connected (credentials checked before storing)."""
    return provider.client(
        ClientConfig(
            transport=transport,
            api_endpoint=account.api_base,
            credentials=account.credentials,
            timeout=provider.connect.timeout(settings),
            sandbox=provider.connect.sandbox(settings),
            dc=account.dc,
            limiter=limiter_for(
                provider, account_key=account.account_key, tenant=account.account_key
            ),
        )
    )


def client_for(
    provider: Provider,
    settings: Settings,
    transport: httpx.AsyncBaseTransport,
    row: RowMapping,
    maker: Reader,
) -> ProviderClient:
    """A client for a stored connection (credentials decrypted in memory only); an expiring
    token is renewed through `maker`'s sessions, one process at a time (DESIGN §14.4)."""
    name = provider.spec.display_name
    try:
        creds = decrypt_credentials(settings, row["credentials"])
    except CredentialsError:
        raise Conflict(
            f"The stored {name} credentials cannot be read (ENCRYPTION_KEYS changed);"
            f" reconnect {name}."
        ) from None
    try:
        return provider.client(
            ClientConfig(
                transport=transport,
                api_endpoint=row["api_endpoint"],
                credentials=creds,
                timeout=provider.connect.timeout(settings),
                sandbox=provider.connect.sandbox(settings),
                dc=row["dc"],
                tokens=token_source(maker, settings, provider, row["id"], creds),
                limiter=limiter_for(
                    provider, account_key=row["account_key"], tenant=str(row["id"])
                ),
            )
        )
    except ValueError as exc:
        raise EndpointRefused(
            f"Reconnect {name}: the saved connection does not point at {name}'s API,"
            " so nothing is sent to it.",
            reason=str(exc),
        ) from None


def _pkce(provider: Provider, settings: Settings, nonce: str) -> dict[str, str]:
    """The PKCE verifier of a connect attempt, for providers that use PKCE (none otherwise).

    Derived from the attempt's single-use nonce under the state key, so nothing is stored and
    only this service can compute it: the callback recomputes it from the verified `state`.
    """
    if not provider.spec.connect.pkce:
        return {}
    return {"code_verifier": oauth.pkce_verifier(settings, nonce)}


def _run_out(row: RowMapping) -> SyncRunOut:
    return SyncRunOut.model_validate(dict(row))


def mapping_out(row: RowMapping) -> MappingOut:
    """An audience mapping as the API shows it (a row of MappingRepository.list)."""
    constrained = {k: row[k] for k in ("kinds", "tags_any", "tags_all")}
    return MappingOut(
        id=row["id"],
        audience=AudienceRef(id=row["audience_id"], name=row["audience_name"]),
        rule=AudienceRuleOut(all=not any(constrained.values()), **constrained),
        default=row["is_default"],
        members=row["members"],
        pending=row["pending"],
        failed=row["failed"],
        webhook_registered=row["registered_webhook"] is not None,
        last_run=SyncRunOut.model_validate(row["last_run"]) if row["last_run"] else None,
        interests={i["name"]: i["id"] for i in row["interests"] or []},
    )


class ConnectionService:
    """Create, describe, re-point and remove connections to any registered provider."""

    # --- connect ---------------------------------------------------------------------------

    async def connect_credentials(
        self,
        session: AsyncSession,
        *,
        provider: Provider,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        owner_id: str,
        body: BaseModel,
    ) -> RowMapping:
        """Check the credentials against the provider, pick the audience, store them encrypted."""
        try:
            account = provider.connect.account_from_credentials(settings, body)
        except ConnectRefused as exc:
            raise refused(exc) from None
        client = account_client(provider, settings, transport, account)
        try:
            # Remote calls first: no database transaction is open while they run.
            await client.ping()
            audiences = await client.list_audiences()
            audience = choose_audience(provider, audiences, getattr(body, "audience_id", None))
            if audience is not None:
                await prepare_audience(provider, settings, client, audience.id)
        except ProviderError as exc:
            raise provider_failure(provider, exc) from None
        except FieldsRefused as exc:
            raise fields_refused(provider, exc) from None
        return await self.save(
            session,
            provider=provider,
            settings=settings,
            owner_id=owner_id,
            account=account,
            audience=audience,
        )

    async def start_oauth(
        self, session: AsyncSession, *, provider: Provider, settings: Settings, owner_id: str
    ) -> ConnectStart:
        """The authorize URL for the popup, with a signed single-use `state` for this owner."""
        if "oauth" not in provider.spec.connect.kinds:
            raise NotFound(f"{provider.spec.display_name} connects with credentials, not OAuth.")
        nonce = oauth.new_nonce()
        try:
            state, expires = oauth.sign_state(settings, owner_id=owner_id, nonce=nonce)
        except OAuthNotConfigured as exc:
            raise OAuthNotConfigured(exc.detail, provider=provider.spec.display_name) from None
        try:
            url = await provider.connect.authorize_url(
                settings, state=state, **_pkce(provider, settings, nonce)
            )
        except ConnectRefused as exc:
            raise oauth_failure(provider, exc) from None
        expires_at = datetime.fromtimestamp(expires, UTC)
        await ConnectionRepository(session).add_state(
            nonce=nonce, owner_id=owner_id, provider=provider.id, expires_at=expires_at
        )
        return ConnectStart(authorize_url=url, expires_at=expires_at)

    async def complete_oauth(
        self,
        session: AsyncSession,
        *,
        provider: Provider,
        reader: Reader,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        state: str | None,
        code: str | None,
        error: str | None,
        caller: str | None,
    ) -> OAuthCompleted:
        """The callback (see `_complete_oauth`); a refusal is titled with the provider's name."""
        try:
            return await self._complete_oauth(
                session,
                provider=provider,
                reader=reader,
                settings=settings,
                transport=transport,
                state=state,
                code=code,
                error=error,
                caller=caller,
            )
        except OAuthFailure as exc:
            exc.named(provider.spec.display_name)
            raise
        except OAuthNotConfigured as exc:
            raise OAuthNotConfigured(exc.detail, provider=provider.spec.display_name) from None

    async def _complete_oauth(
        self,
        session: AsyncSession,
        *,
        provider: Provider,
        reader: Reader,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        state: str | None,
        code: str | None,
        error: str | None,
        caller: str | None,
    ) -> OAuthCompleted:
        """The callback: verify `state`, exchange the code, read the account, store it.

        Every refusal raises OAuthFailure before anything is written; the nonce is spent in
        the same transaction that stores the connection, so a failure leaves it unused and a
        success can never be replayed.
        """
        name = provider.spec.display_name
        if error:
            if error == "access_denied":
                raise OAuthFailure(
                    "access_denied", f"{name} was not connected: access was declined."
                )
            raise OAuthFailure("provider_error", f"{name} answered with an error ({error}).")
        claims = oauth.verify_state(settings, state)
        if caller is not None and caller != claims.owner_id:
            raise OAuthFailure(
                "state_owner", "This connection link was started by another user.", status_code=403
            )
        async with reader() as read:
            repo = ConnectionRepository(read)
            nonce_row = await repo.state(claims.nonce)
            previous = await repo.get(claims.owner_id, provider.id)
        if nonce_row is None or nonce_row["provider"] != provider.id:
            raise OAuthFailure("state_invalid", "This connection link is not valid; start again.")
        if nonce_row["owner_id"] != claims.owner_id:
            raise OAuthFailure(
                "state_owner", "This connection link was started by another user.", status_code=403
            )
        if nonce_row["used_at"] is not None:
            raise OAuthFailure("state_used", "This connection link was already used; start again.")
        if nonce_row["expired"]:
            raise OAuthFailure(
                "state_expired", "This connection link has expired (after 10 minutes); start again."
            )
        if not code:
            raise OAuthFailure("code_missing", f"{name} sent no authorization code; start again.")

        try:
            account = await provider.connect.exchange_code(
                settings,
                code=code,
                # Before the exchange the account is unknown: the application's limits hold.
                limiter=limiter_for(
                    provider,
                    account_key=f"{provider.id}:connect",
                    tenant=f"connect:{claims.owner_id}",
                ),
                **_pkce(provider, settings, claims.nonce),
            )
        except ConnectRefused as exc:
            raise oauth_failure(provider, exc) from None
        except ThrottledError as exc:
            raise oauth_throttled(provider, exc) from None
        client = account_client(provider, settings, transport, account)
        try:
            audiences = await client.list_audiences()
        except ThrottledError as exc:
            raise oauth_throttled(provider, exc) from None
        except ProviderError as exc:
            raise OAuthFailure(
                "provider_error",
                f"{name} did not list the account's audiences ({exc.message}); try again.",
                status_code=502,
            ) from None
        if not audiences:
            noun = provider.spec.audience_noun
            raise OAuthFailure(
                "no_audience",
                f"This {name} account has no {noun} yet. Create one in {name}, then connect again.",
                status_code=422,
            )
        audience = audiences[0] if len(audiences) == 1 else None
        keep = previous is not None and any(a.id == previous["audience_id"] for a in audiences)
        if keep and audience is None and previous is not None:
            # Reconnecting an account with several audiences keeps the one already chosen.
            audience = next(a for a in audiences if a.id == previous["audience_id"])
        if audience is not None:
            try:
                await prepare_audience(provider, settings, client, audience.id)
            except FieldsRefused as exc:
                raise OAuthFailure(
                    "fields_refused",
                    f"{name} cannot hold the configured field map (FIELD_MAP) in this"
                    f" {provider.spec.audience_noun}: {exc}",
                    status_code=422,
                ) from None
            except ThrottledError as exc:
                raise oauth_throttled(provider, exc) from None
            except ProviderError as exc:
                raise OAuthFailure(
                    "provider_error",
                    f"{name} did not accept the audience's merge fields ({exc.message});"
                    " try again.",
                    status_code=502,
                ) from None
        if previous is not None and (audience is None or previous["audience_id"] != audience.id):
            await self._retire_webhook(provider, settings, transport, previous, reader)

        repo = ConnectionRepository(session)
        if not await repo.consume_state(nonce=claims.nonce, owner_id=claims.owner_id):
            raise OAuthFailure("state_used", "This connection link was already used; start again.")
        row = await self.save(
            session,
            provider=provider,
            settings=settings,
            owner_id=claims.owner_id,
            account=account,
            audience=audience,
        )
        changed = previous is None or previous["audience_id"] != row["audience_id"]
        log.info(
            "connections.oauth_connected",
            provider=provider.id,
            owner=claims.owner_id,
            connection=str(row["id"]),
            status=row["status"],
            audiences=len(audiences),
        )
        return OAuthCompleted(row, len(audiences), changed and row["audience_id"] is not None)

    async def save(
        self,
        session: AsyncSession,
        *,
        provider: Provider,
        settings: Settings,
        owner_id: str,
        account: Account,
        audience: Audience | None,
    ) -> RowMapping:
        """Create or replace the owner's connection to a provider; a new audience, a new
        mirror."""
        repo = ConnectionRepository(session)
        previous = await repo.get(owner_id, provider.id)
        values: dict[str, Any] = {
            "auth_kind": account.auth_kind,
            "credentials": encrypt_credentials(settings, account.credentials),
            "account_key": account.account_key,
            "account_name": account.account_name,
            "dc": account.dc,
            "api_endpoint": account.api_base,
            "audience_id": audience.id if audience else None,
            "audience_name": audience.name if audience else None,
            "webhook_token": secrets.token_urlsafe(32),
            "status": "active" if audience else "needs_audience",
            "status_reason": None,
            "last_error": None,
            "cooldown_until": None,
            "consecutive_failures": 0,
            "next_probe_at": None,
        }
        same_audience = previous is not None and previous["audience_id"] == values["audience_id"]
        if not same_audience:
            values |= {"webhook_id": None, "last_full_sync_at": None}
        row = await repo.upsert(owner_id, provider.id, values)
        if previous is not None and not same_audience:
            await repo.cancel_runs(row["id"], "the audience changed")
            await repo.drop_sync_rows(row["id"])
            await repo.drop_other_mappings(row["id"])
        if audience is not None and not same_audience:
            kind = RUN_INITIAL if previous is None or not previous["audience_id"] else None
            await self._start_full_sync(repo, row, kind or RUN_AUDIENCE_CHANGE)
        return row

    async def _start_full_sync(
        self, repo: ConnectionRepository, row: RowMapping, kind: str
    ) -> None:
        # The first sync into an audience is a reconcile run: members that already match are
        # adopted without a write, the rest is queued at bulk priority (DESIGN §6.5).
        run = await repo.create_run(
            connection_id=row["id"],
            owner_id=row["owner_id"],
            kind=kind,
            dry_run=False,
            audience_id=row["audience_id"],
        )
        log.info(
            "connections.full_sync_queued",
            connection=str(row["id"]),
            kind=kind,
            run=str(run["id"]) if run else None,
        )

    # --- audiences -------------------------------------------------------------------------

    async def audiences(
        self,
        *,
        provider: Provider,
        reader: Reader,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        owner_id: str,
    ) -> list[Audience]:
        """The connected account's audiences, as the provider lists them now."""
        row = await self._read(reader, provider, owner_id)
        try:
            return await client_for(provider, settings, transport, row, reader).list_audiences()
        except EndpointRefused as exc:
            await _mark_endpoint_refused(reader, row, exc)
            raise
        except ProviderError as exc:
            raise provider_failure(provider, exc) from None

    async def choose_audience(
        self,
        session: AsyncSession,
        *,
        provider: Provider,
        reader: Reader,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        owner_id: str,
        audience_id: str,
    ) -> tuple[RowMapping, bool]:
        """Sync to `audience_id` from now on: a new mirror and a full reconcile into it.

        Returns the connection and whether the audience changed (choosing the current one
        again changes nothing).
        """
        row = await self._read(reader, provider, owner_id)
        try:
            client = client_for(provider, settings, transport, row, reader)
        except EndpointRefused as exc:
            await _mark_endpoint_refused(reader, row, exc)
            raise
        try:
            audience = await client.get_audience(audience_id)
        except AudienceMissing:
            raise _unknown_audience(provider, audience_id) from None
        except ProviderError as exc:
            raise provider_failure(provider, exc) from None
        if row["audience_id"] == audience.id:
            return row, False
        try:
            await prepare_audience(provider, settings, client, audience.id)
        except ProviderError as exc:
            raise provider_failure(provider, exc) from None
        except FieldsRefused as exc:
            raise fields_refused(provider, exc) from None
        await self._retire_webhook(provider, settings, transport, row, reader)
        repo = ConnectionRepository(session)
        current = await repo.lock(row["id"])
        if current is None:
            raise _not_connected(provider)
        await repo.cancel_runs(row["id"], "the audience changed")
        await repo.drop_sync_rows(row["id"])
        updated = await repo.set_audience(
            row["id"], audience_id=audience.id, audience_name=audience.name
        )
        kind = RUN_INITIAL if not current["audience_id"] else RUN_AUDIENCE_CHANGE
        await self._start_full_sync(repo, updated, kind)
        log.info("connections.audience_chosen", connection=str(row["id"]), audience=audience.id)
        return updated, True

    # --- webhook ---------------------------------------------------------------------------

    async def register_webhook(
        self,
        *,
        maker: Reader,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        connection_id: uuid.UUID,
    ) -> str | None:
        """Register the audience webhook after a connect (a background task; best effort).

        Failures are recorded (`last_error`, and the status's webhook line); every reconcile
        run tries again.
        """
        async with maker() as read:
            row = await ConnectionRepository(read).by_id(connection_id)
        if row is None or not row["audience_id"]:
            return None
        provider = registry.find(row["provider"])
        if provider is None or provider.spec.capabilities.inbound != "webhook":
            return None
        url = webhook_url(settings.public_base_url, provider.id, row["webhook_token"])
        webhook_id: str | None = None
        error: str | None = None
        try:
            client = client_for(provider, settings, transport, row, maker)
            # A passing failure (5xx, timeout, throttle) is retried a few times right away;
            # a refusal is recorded at once, and every reconcile run tries again.
            async with one_at_a_time(maker.begin, connection_id):
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type((TransientError, ThrottledError)),
                    stop=stop_after_attempt(3),
                    wait=wait_exponential(multiplier=0.5, max=4.0),
                    reraise=True,
                ):
                    with attempt:
                        webhook_id = await provider.inbound.ensure_webhook(
                            client,
                            row["audience_id"],
                            url=url,
                            webhook_token=row["webhook_token"],
                            call=direct,
                        )
        except (ProviderError, Conflict, ValueError) as exc:
            error = f"Webhook not registered: {getattr(exc, 'message', None) or exc}"
            log.warning(
                "connections.webhook_failed", connection=str(connection_id), url=url, error=error
            )
        async with session_scope(maker) as write:
            await ConnectionRepository(write).set_webhook(
                connection_id, audience_id=row["audience_id"], webhook_id=webhook_id, error=error
            )
        return webhook_id

    async def _retire_webhook(
        self,
        provider: Provider,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        row: RowMapping,
        reader: Reader,
    ) -> None:
        """Delete our webhook from the connection's current audience (best effort)."""
        await self.retire_webhook(
            provider,
            settings,
            transport,
            row,
            reader,
            audience_id=row["audience_id"],
            webhook_id=row["webhook_id"],
        )

    async def retire_webhook(
        self,
        provider: Provider,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        row: RowMapping,
        reader: Reader,
        *,
        audience_id: str | None,
        webhook_id: str | None,
    ) -> None:
        """Delete our webhook from one audience of the connection (best effort)."""
        if not audience_id or provider.spec.capabilities.inbound != "webhook":
            return
        try:
            client = client_for(provider, settings, transport, row, reader)
            await provider.inbound.remove_webhooks(
                client,
                audience_id,
                webhook_token=row["webhook_token"],
                known_id=webhook_id,
                call=direct,
            )
        except (ProviderError, Conflict, ValueError) as exc:
            log.warning(
                "connections.webhook_not_removed",
                connection=str(row["id"]),
                error=getattr(exc, "message", None) or str(exc),
            )

    # --- Sync Now --------------------------------------------------------------------------

    async def sync_now(
        self,
        session: AsyncSession,
        *,
        provider: Provider,
        settings: Settings,
        owner_id: str,
        dry_run: bool,
        mapping_id: uuid.UUID | None = None,
    ) -> RunAccepted:
        """Queue a reconcile run of one audience mapping (default: the connection's own
        audience); the one under way when there is one; 429 within the hour."""
        name = provider.spec.display_name
        repo = ConnectionRepository(session)
        found = await repo.get(owner_id, provider.id)
        if found is None:
            raise _not_connected(provider)
        row = await repo.lock(found["id"])  # one decision at a time per connection
        if row is None:
            raise _not_connected(provider)
        if not row["audience_id"]:
            raise Conflict(f"Choose the {name} {provider.spec.audience_noun} to sync to first.")
        if row["status"] == "error":
            raise Conflict(
                notice_for_provider(row["status"], row["status_reason"], provider.id)
                or f"Reconnect {name}."
            )
        audience_id = row["audience_id"]
        if mapping_id is not None:
            mapping = await MappingRepository(session).get(row["id"], mapping_id)
            if mapping is None:
                raise NotFound("No such audience mapping.")
            audience_id = mapping["audience_id"]
        active = await repo.active_run(row["id"], dry_run=dry_run, mapping_id=mapping_id)
        if active is not None:
            return RunAccepted(run_id=active["id"], state=active["state"], dry_run=dry_run)
        interval = settings.SYNC_NOW_MIN_INTERVAL_SECONDS
        last = await repo.last_requested_run(
            row["id"], dry_run=dry_run, kind=RUN_SYNC_NOW, mapping_id=mapping_id
        )
        if last is not None and last["state"] != "cancelled" and last["age_seconds"] < interval:
            wait = max(1, math.ceil(interval - float(last["age_seconds"])))
            what = "A dry run" if dry_run else "Sync Now"
            raise TooManyRequests(
                f"{what} runs at most once every {interval // 60} minutes; try again in"
                f" {math.ceil(wait / 60)} minutes.",
                headers={"Retry-After": str(wait)},
                extra={"retry_after": wait, "last_run_id": str(last["id"])},
            )
        run = await repo.create_run(
            connection_id=row["id"],
            owner_id=owner_id,
            kind=RUN_SYNC_NOW,
            dry_run=dry_run,
            audience_id=audience_id,
            mapping_id=mapping_id,
        )
        if run is None:  # pragma: no cover - the row lock serialises requests
            raise Conflict("A sync is already under way.")
        log.info("connections.sync_now", connection=str(row["id"]), run=str(run["id"]), dry=dry_run)
        return RunAccepted(run_id=run["id"], state=run["state"], dry_run=dry_run)

    async def run_status(
        self, session: AsyncSession, *, provider: Provider, owner_id: str, run_id: uuid.UUID
    ) -> SyncRunOut:
        """One run of the owner's connection to this provider, with counts and progress."""
        row = await ConnectionRepository(session).run(owner_id, run_id)
        if row is None:
            raise NotFound("No such sync run.")
        return _run_out(row)

    # --- disconnect ------------------------------------------------------------------------

    async def disconnect(
        self,
        session: AsyncSession,
        *,
        provider: Provider,
        reader: Reader,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        owner_id: str,
    ) -> None:
        """Delete our webhook (best effort, while we still hold the credentials), then the
        connection with its credentials, queue, mirror and runs. Members stay at the
        provider."""
        row = await self._read(reader, provider, owner_id)
        await self._retire_webhook(provider, settings, transport, row, reader)
        async with reader() as read:
            others = [
                m for m in await MappingRepository(read).list(row["id"]) if not m["is_default"]
            ]
        for other in others:
            await self.retire_webhook(
                provider,
                settings,
                transport,
                row,
                reader,
                audience_id=other["audience_id"],
                webhook_id=other["webhook_id"],
            )
        await ConnectionRepository(session).delete(row["id"])
        log.info(
            "connections.disconnected",
            provider=provider.id,
            owner=owner_id,
            connection=str(row["id"]),
        )

    # --- status ----------------------------------------------------------------------------

    async def status(
        self, session: AsyncSession, *, provider: Provider, owner_id: str
    ) -> IntegrationStatus:
        """The Settings page line for one provider."""
        repo = ConnectionRepository(session)
        row = await repo.get(owner_id, provider.id)
        if row is None:
            return IntegrationStatus(provider=provider.id, connected=False)
        counts = await repo.counts(row["id"])
        last = await repo.last_run(row["id"])
        return IntegrationStatus(
            provider=provider.id,
            connected=True,
            connection_id=row["id"],
            account_name=row["account_name"],
            audience=AudienceRef(id=row["audience_id"], name=row["audience_name"])
            if row["audience_id"]
            else None,
            status=row["status"],
            notice=notice_for_provider(
                row["status"], row["status_reason"], provider.id, stuck=counts["stuck"]
            ),
            last_synced_at=row["last_synced_at"],
            pending=counts["pending"],
            failed=counts["failed"],
            last_full_sync_at=row["last_full_sync_at"],
            webhook_registered=row["webhook_id"] is not None,
            webhook_error=row["webhook_error"] if row["webhook_id"] is None else None,
            last_run=_run_out(last) if last is not None else None,
            mappings=[mapping_out(m) for m in await MappingRepository(session).list(row["id"])],
        )

    async def integrations(self, session: AsyncSession, *, owner_id: str) -> list[IntegrationEntry]:
        """Every registered provider's line for the Settings page, connected or not, with how
        it connects."""
        out = []
        for provider in registry.all_providers():
            status = await self.status(session, provider=provider, owner_id=owner_id)
            spec = provider.spec
            out.append(
                IntegrationEntry(
                    **status.model_dump(),
                    name=spec.display_name,
                    available=True,
                    audience_noun=spec.audience_noun,
                    connect=[
                        ConnectMethod(
                            kind=kind,
                            fields=[
                                CredentialFieldOut(
                                    name=f.name, label=f.label, kind=f.kind, help=f.help
                                )
                                for f in spec.connect.credentials
                            ]
                            if kind == "credentials"
                            else [],
                        )
                        for kind in spec.connect.kinds
                    ],
                )
            )
        names = {entry.name for entry in out}
        for provider_id, name in ANNOUNCED:
            if name not in names:
                out.append(
                    IntegrationEntry(
                        provider=provider_id, connected=False, name=name, available=False
                    )
                )
        return out

    async def require(
        self, session: AsyncSession, *, provider: Provider, owner_id: str
    ) -> RowMapping:
        """The owner's connection to the provider, or 404."""
        row = await ConnectionRepository(session).get(owner_id, provider.id)
        if row is None:
            raise _not_connected(provider)
        return row

    async def _read(self, reader: Reader, provider: Provider, owner_id: str) -> RowMapping:
        # A short read-only unit of work: no transaction stays open during the remote calls.
        async with reader() as read:
            return await self.require(read, provider=provider, owner_id=owner_id)


def _not_connected(provider: Provider) -> NotFound:
    return NotFound(f"{provider.spec.display_name} is not connected.")


def _unknown_audience(provider: Provider, audience_id: str) -> Unprocessable:
    return Unprocessable(
        f"The {provider.spec.display_name} account has no {provider.spec.audience_noun}"
        f" {audience_id}.",
        extra={"errors": [{"field": "audience_id", "message": "unknown audience"}]},
    )


async def reencrypt_credentials(settings: Settings, session: AsyncSession) -> int:
    """Re-encrypt every stored credential under the newest ENCRYPTION_KEYS key.

    Rotation: put a new key first in ENCRYPTION_KEYS (older ones still decrypt), run this,
    then drop the old key. Returns how many connections were re-encrypted.
    """
    repo = ConnectionRepository(session)
    rows = await repo.all_credentials()
    for row in rows:
        await repo.set_credentials(row["id"], rotate_credentials(settings, row["credentials"]))
    return len(rows)


def choose_audience(
    provider: Provider, audiences: list[Audience], audience_id: str | None
) -> Audience | None:
    """The requested audience (422 if unknown), else the only one, else none yet."""
    if audience_id is not None:
        for audience in audiences:
            if audience.id == audience_id:
                return audience
        raise _unknown_audience(provider, audience_id)
    if len(audiences) == 1:
        return audiences[0]
    return None


_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
SANDBOX_PATH = "/_sandbox/"  # where `serve` mounts every built-in sandbox (app.wiring.mount)


def _builtin_sandbox_moved(stored: str, current: str) -> bool:
    """True when `stored` is this service's built-in sandbox (loopback, the same
    `/_sandbox/<id>` path) at another address than `current`, the one it is served at now."""
    old, new = urlsplit(stored), urlsplit(current)
    return (
        stored.rstrip("/") != current.rstrip("/")
        and new.path.startswith(SANDBOX_PATH)
        and old.scheme == "http"
        and (old.hostname or "") in _LOOPBACK
        and old.path.rstrip("/") == new.path.rstrip("/")
    )


async def _repoint_to_sandbox(
    session: AsyncSession, settings: Settings, row: RowMapping, account: Account
) -> bool:
    """Aim a seeded connection at the built-in sandbox where this process serves it now.

    A `.data/` directory outlives the port: the demo connections stored by a run on another
    port (or host) reach nothing, and no contact would go out. Only a connection that points
    at our own built-in sandbox moves, never one to a provider; every credential holding the
    old address (Mautic's `base_url`) moves with it, the rest (tokens, the webhook secret)
    stays.
    """
    stored = str(row["api_endpoint"] or "")
    if not _builtin_sandbox_moved(stored, account.api_base):
        return False
    try:
        creds = decrypt_credentials(settings, row["credentials"])
    except CredentialsError:
        return False  # unreadable: the status already asks for a reconnect
    moved = {k: account.api_base if v == stored else v for k, v in creds.items()}
    await ConnectionRepository(session).set_address(
        row["id"],
        api_endpoint=account.api_base,
        account_key=account.account_key,
        credentials=encrypt_credentials(settings, moved),
    )
    log.info(
        "connections.sandbox_repointed",
        connection=str(row["id"]),
        provider=row["provider"],
        old=stored,
        new=account.api_base,
    )
    return True


async def ensure_configured_connection(
    settings: Settings, session: AsyncSession
) -> list[uuid.UUID]:
    """Single-tenant seeds: each provider's credentials from the environment for its owner.

    In development, a provider in sandbox mode with nothing configured connects the demo owner
    to its sandbox's default account, so a newcomer's first contact syncs; a demo connection
    stored while the sandbox was served at another address is aimed at the current one. No
    remote call is made here (the sandbox may be served by this very process, not listening
    yet); the worker finds out. Returns the connections re-aimed, whose webhooks must follow
    (`reregister_webhooks`, once the sandbox listens).
    """
    moved: list[uuid.UUID] = []
    for provider in registry.all_providers():
        seed = None
        if provider.connect.sandbox(settings) and settings.ENVIRONMENT is Environment.development:
            seed = provider.sandbox_seed()
        try:
            configured = provider.connect.configured(settings, seed)
        except ConnectRefused as exc:
            log.error("connections.configured_refused", provider=provider.id, error=exc.message)
            continue
        if configured is None:
            continue
        owner, account, audience = configured
        existing = await ConnectionRepository(session).get(owner, provider.id)
        if existing is not None:
            if seed is not None and await _repoint_to_sandbox(session, settings, existing, account):
                moved.append(existing["id"])
            continue
        await connection_service.save(
            session,
            provider=provider,
            settings=settings,
            owner_id=owner,
            account=account,
            audience=audience,
        )
        log.info("connections.configured", provider=provider.id, owner=owner, audience=audience.id)
    return moved


async def reregister_webhooks(
    maker: Reader,
    settings: Settings,
    transport: httpx.AsyncBaseTransport,
    connection_ids: list[uuid.UUID],
    *,
    within: float = 60.0,
) -> None:
    """Register the webhooks of connections re-aimed at the built-in sandbox at the current
    address (theirs point at the old one), once the sandbox, served by this process,
    accepts connections (a background task of start-up)."""
    async with maker() as read:
        rows = [r for i in connection_ids if (r := await ConnectionRepository(read).by_id(i))]
    for row in rows:
        where = urlsplit(str(row["api_endpoint"]))
        if not await _listening(where.hostname or "127.0.0.1", where.port or 80, within):
            log.warning("connections.sandbox_not_listening", endpoint=row["api_endpoint"])
            return
        try:
            await connection_service.register_webhook(
                maker=maker, settings=settings, transport=transport, connection_id=row["id"]
            )
        except Exception as exc:  # best effort: every reconcile run keeps it registered too
            log.warning("connections.webhook_failed", connection=str(row["id"]), error=repr(exc))


async def _listening(host: str, port: int, within: float) -> bool:
    """Wait until `host:port` accepts a TCP connection (False after `within` seconds)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return True


connection_service = ConnectionService()
