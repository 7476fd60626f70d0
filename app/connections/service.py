"""Connection use cases: connect (OAuth or API key), audiences, status, Sync Now, disconnect.

Remote calls come before the request's writes, never inside them: a service reads what it
needs through a short read-only session (`reader`), calls Mailchimp, then writes in the
request's session, which the request commits. Work that must follow the commit (registering
the webhook, whose validating GET must find the committed connection) runs as a background
task with units of work of its own.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Environment, Settings
from app.connections import oauth
from app.connections.crypto import (
    CredentialsError,
    decrypt_credentials,
    encrypt_credentials,
    rotate_credentials,
)
from app.connections.notices import REASON_ENDPOINT, notice_for
from app.connections.oauth import OAuthFailure, OAuthGrant
from app.connections.repository import ConnectionRepository
from app.connections.schemas import (
    AudienceRef,
    ConnectStart,
    IntegrationEntry,
    IntegrationStatus,
    RunAccepted,
    SyncRunOut,
)
from app.connections.webhook_registration import ensure_webhook, remove_webhooks, webhook_url
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
from app.providers.base import (
    Audience,
    AudienceMissing,
    AuthError,
    ProviderError,
    ThrottledError,
    TransientError,
)
from app.providers.mailchimp.client import (
    MailchimpClient,
    check_live_endpoint,
    dc_from_api_key,
    live_api_base,
)
from app.providers.mailchimp.fields import ensure_merge_fields, rules_from

log = structlog.get_logger(__name__)

MAILCHIMP = "mailchimp"
# Every provider the Settings page lists; only Mailchimp can be connected so far.
PROVIDERS: tuple[tuple[str, str, bool], ...] = (
    (MAILCHIMP, "Mailchimp", True),
    ("constant_contact", "Constant Contact", False),
    ("activecampaign", "ActiveCampaign", False),
    ("mautic", "Mautic", False),
)
RUN_SYNC_NOW = "sync_now"
RUN_INITIAL = "initial"
RUN_AUDIENCE_CHANGE = "audience_change"

Reader = async_sessionmaker[AsyncSession]


@dataclass(slots=True)
class MailchimpAccount:
    """Where and how to reach one Mailchimp account."""

    api_base: str
    dc: str
    account_key: str
    credentials: dict[str, Any]


@dataclass(slots=True)
class OAuthCompleted:
    """A finished OAuth connect: the connection row and how many audiences the account has."""

    connection: RowMapping
    audiences: int
    audience_changed: bool


def api_key_account(settings: Settings, api_key: str) -> MailchimpAccount:
    """Derive the API host from the key's data center; the sandbox in sandbox mode."""
    try:
        dc = dc_from_api_key(api_key)
        base = settings.sandbox_url if settings.is_sandbox else live_api_base(dc)
    except ValueError as exc:
        raise Unprocessable(
            str(exc), extra={"errors": [{"field": "api_key", "message": str(exc)}]}
        ) from None
    digest = hashlib.sha256(api_key.encode()).hexdigest()[:24]
    return MailchimpAccount(
        api_base=base,
        dc=dc,
        account_key=f"mailchimp:{dc}:key:{digest}",
        credentials={"api_key": api_key},
    )


def oauth_account(settings: Settings, grant: OAuthGrant) -> MailchimpAccount:
    """The account an OAuth grant reaches; in live mode only at https://<dc>.api.mailchimp.com."""
    if settings.is_sandbox:
        base = settings.sandbox_url
    else:
        try:
            base = check_live_endpoint(grant.api_endpoint, grant.dc)
        except ValueError:
            raise OAuthFailure(
                "foreign_host",
                "Mailchimp's answer pointed the API at an unexpected host, so nothing was"
                " connected. Try again, or contact support if it persists.",
                status_code=502,
            ) from None
    return MailchimpAccount(
        api_base=base,
        dc=grant.dc,
        account_key=f"mailchimp:{grant.dc}:account:{grant.account_ref}",
        credentials={"access_token": grant.access_token},
    )


def provider_failure(exc: ProviderError) -> Exception:
    """The API error a provider failure during a user's request becomes."""
    if isinstance(exc, AuthError):
        return Unprocessable(
            "Mailchimp did not accept these credentials.",
            extra={"errors": [{"field": "api_key", "message": "rejected by Mailchimp"}]},
        )
    if isinstance(exc, TransientError | ThrottledError):
        return ServiceUnavailable("Mailchimp is not answering right now; try again in a minute.")
    return BadGateway(f"Mailchimp refused the request: {exc.message}")


def fields_refused(exc: FieldsRefused) -> Unprocessable:
    """The API error a field map the audience cannot hold becomes (nothing is saved)."""
    return Unprocessable(
        "Mailchimp cannot hold the configured field map (FIELD_MAP) in this audience: " + str(exc),
        extra={"errors": [{"field": "FIELD_MAP", "message": p} for p in exc.problems]},
    )


async def prepare_audience(settings: Settings, client: MailchimpClient, audience_id: str) -> None:
    """Create the merge fields FIELD_MAP needs in the audience (FieldsRefused names entries)."""
    rules = rules_from(settings.FIELD_MAP, settings.MAILCHIMP_MERGE_FIELD_MAP)
    await ensure_merge_fields(client, audience_id, rules)


def client_for(
    settings: Settings, transport: httpx.AsyncBaseTransport, row: RowMapping
) -> MailchimpClient:
    """A client for a stored connection (credentials decrypted in memory only)."""
    try:
        creds = decrypt_credentials(settings, row["credentials"])
    except CredentialsError:
        raise Conflict(
            "The stored Mailchimp credentials cannot be read (ENCRYPTION_KEYS changed);"
            " reconnect Mailchimp."
        ) from None
    endpoint = row["api_endpoint"]
    if not settings.is_sandbox:
        try:
            endpoint = check_live_endpoint(endpoint, row["dc"] or "")
        except ValueError as exc:
            raise EndpointRefused(
                "Reconnect Mailchimp: the saved connection does not point at Mailchimp's API,"
                " so nothing is sent to it.",
                reason=str(exc),
            ) from None
    return MailchimpClient(
        transport,
        api_base=endpoint,
        api_key=creds.get("api_key"),
        access_token=creds.get("access_token"),
        timeout=settings.MAILCHIMP_TIMEOUT_SECONDS,
    )


class EndpointRefused(Conflict):
    """Live mode: the stored API endpoint is not https://<dc>.api.mailchimp.com (DESIGN §8)."""

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


def _run_out(row: RowMapping) -> SyncRunOut:
    return SyncRunOut.model_validate(dict(row))


class ConnectionService:
    """Create, describe, re-point and remove connections to Mailchimp."""

    # --- connect ---------------------------------------------------------------------------

    async def connect_api_key(
        self,
        session: AsyncSession,
        *,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        owner_id: str,
        api_key: str,
        audience_id: str | None,
    ) -> RowMapping:
        """Check the key against Mailchimp, pick the audience, store the key encrypted."""
        account = api_key_account(settings, api_key)
        client = MailchimpClient(
            transport,
            api_base=account.api_base,
            api_key=api_key,
            timeout=settings.MAILCHIMP_TIMEOUT_SECONDS,
        )
        try:
            # Remote calls first: no database transaction is open while they run.
            await client.ping()
            audiences = await client.list_audiences()
            audience = choose_audience(audiences, audience_id)
            if audience is not None:
                await prepare_audience(settings, client, audience.id)
        except ProviderError as exc:
            raise provider_failure(exc) from None
        except FieldsRefused as exc:
            raise fields_refused(exc) from None
        return await self.save(
            session,
            settings=settings,
            owner_id=owner_id,
            account=account,
            auth_kind="api_key",
            account_name=None,
            audience=audience,
        )

    async def start_oauth(
        self, session: AsyncSession, *, settings: Settings, owner_id: str
    ) -> ConnectStart:
        """The authorize URL for the popup, with a signed single-use `state` for this owner."""
        cfg = oauth.oauth_config(settings)
        nonce = oauth.new_nonce()
        state, expires = oauth.sign_state(settings, owner_id=owner_id, nonce=nonce)
        url = await oauth.authorization_url(cfg, state)
        expires_at = datetime.fromtimestamp(expires, UTC)
        await ConnectionRepository(session).add_state(
            nonce=nonce, owner_id=owner_id, provider=MAILCHIMP, expires_at=expires_at
        )
        return ConnectStart(authorize_url=url, expires_at=expires_at)

    async def complete_oauth(
        self,
        session: AsyncSession,
        *,
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
        if error:
            if error == "access_denied":
                raise OAuthFailure(
                    "access_denied", "Mailchimp was not connected: access was declined."
                )
            raise OAuthFailure("provider_error", f"Mailchimp answered with an error ({error}).")
        claims = oauth.verify_state(settings, state)
        if caller is not None and caller != claims.owner_id:
            raise OAuthFailure(
                "state_owner", "This connection link was started by another user.", status_code=403
            )
        async with reader() as read:
            repo = ConnectionRepository(read)
            nonce_row = await repo.state(claims.nonce)
            previous = await repo.get(claims.owner_id, MAILCHIMP)
        if nonce_row is None:
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
            raise OAuthFailure("code_missing", "Mailchimp sent no authorization code; start again.")

        grant = await oauth.exchange_code(oauth.oauth_config(settings), code)
        account = oauth_account(settings, grant)
        client = MailchimpClient(
            transport,
            api_base=account.api_base,
            access_token=grant.access_token,
            timeout=settings.MAILCHIMP_TIMEOUT_SECONDS,
        )
        try:
            audiences = await client.list_audiences()
        except ProviderError as exc:
            raise OAuthFailure(
                "provider_error",
                f"Mailchimp did not list the account's audiences ({exc.message}); try again.",
                status_code=502,
            ) from None
        if not audiences:
            raise OAuthFailure(
                "no_audience",
                "This Mailchimp account has no audience yet. Create one in Mailchimp, then"
                " connect again.",
                status_code=422,
            )
        audience = audiences[0] if len(audiences) == 1 else None
        keep = previous is not None and any(a.id == previous["audience_id"] for a in audiences)
        if keep and audience is None and previous is not None:
            # Reconnecting an account with several audiences keeps the one already chosen.
            audience = next(a for a in audiences if a.id == previous["audience_id"])
        if audience is not None:
            try:
                await prepare_audience(settings, client, audience.id)
            except FieldsRefused as exc:
                raise OAuthFailure(
                    "fields_refused",
                    "Mailchimp cannot hold the configured field map (FIELD_MAP) in this"
                    f" audience: {exc}",
                    status_code=422,
                ) from None
            except ProviderError as exc:
                raise OAuthFailure(
                    "provider_error",
                    f"Mailchimp did not accept the audience's merge fields ({exc.message});"
                    " try again.",
                    status_code=502,
                ) from None
        if previous is not None and (audience is None or previous["audience_id"] != audience.id):
            await self._retire_webhook(settings, transport, previous)

        repo = ConnectionRepository(session)
        if not await repo.consume_state(nonce=claims.nonce, owner_id=claims.owner_id):
            raise OAuthFailure("state_used", "This connection link was already used; start again.")
        row = await self.save(
            session,
            settings=settings,
            owner_id=claims.owner_id,
            account=account,
            auth_kind="oauth",
            account_name=grant.account_name,
            audience=audience,
        )
        changed = previous is None or previous["audience_id"] != row["audience_id"]
        log.info(
            "connections.oauth_connected",
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
        settings: Settings,
        owner_id: str,
        account: MailchimpAccount,
        auth_kind: str,
        account_name: str | None,
        audience: Audience | None,
    ) -> RowMapping:
        """Create or replace the owner's Mailchimp connection; a new audience, a new mirror."""
        repo = ConnectionRepository(session)
        previous = await repo.get(owner_id, MAILCHIMP)
        values: dict[str, Any] = {
            "auth_kind": auth_kind,
            "credentials": encrypt_credentials(settings, account.credentials),
            "account_key": account.account_key,
            "account_name": account_name,
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
        row = await repo.upsert(owner_id, MAILCHIMP, values)
        if previous is not None and not same_audience:
            await repo.cancel_runs(row["id"], "the audience changed")
            await repo.drop_sync_rows(row["id"])
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
        reader: Reader,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        owner_id: str,
    ) -> list[Audience]:
        """The connected account's audiences, as Mailchimp lists them now."""
        row = await self._read(reader, owner_id)
        try:
            return await client_for(settings, transport, row).list_audiences()
        except EndpointRefused as exc:
            await _mark_endpoint_refused(reader, row, exc)
            raise
        except ProviderError as exc:
            raise provider_failure(exc) from None

    async def choose_audience(
        self,
        session: AsyncSession,
        *,
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
        row = await self._read(reader, owner_id)
        try:
            client = client_for(settings, transport, row)
        except EndpointRefused as exc:
            await _mark_endpoint_refused(reader, row, exc)
            raise
        try:
            audience = await client.get_audience(audience_id)
        except AudienceMissing:
            raise Unprocessable(
                f"The Mailchimp account has no audience {audience_id}.",
                extra={"errors": [{"field": "audience_id", "message": "unknown audience"}]},
            ) from None
        except ProviderError as exc:
            raise provider_failure(exc) from None
        if row["audience_id"] == audience.id:
            return row, False
        try:
            await prepare_audience(settings, client, audience.id)
        except ProviderError as exc:
            raise provider_failure(exc) from None
        except FieldsRefused as exc:
            raise fields_refused(exc) from None
        await self._retire_webhook(settings, transport, row)
        repo = ConnectionRepository(session)
        current = await repo.lock(row["id"])
        if current is None:
            raise NotFound("Mailchimp is not connected.")
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

        Failures are recorded in `last_error`; every reconcile run tries again.
        """
        async with maker() as read:
            row = await ConnectionRepository(read).by_id(connection_id)
        if row is None or not row["audience_id"]:
            return None
        url = webhook_url(settings.PUBLIC_BASE_URL, row["webhook_token"])
        webhook_id: str | None = None
        error: str | None = None
        try:
            client = client_for(settings, transport, row)
            result = await ensure_webhook(
                client, row["audience_id"], url=url, webhook_token=row["webhook_token"]
            )
            webhook_id = result.webhook_id
        except (ProviderError, Conflict, ValueError) as exc:
            error = f"Webhook not registered: {getattr(exc, 'message', None) or exc}"
            log.warning("connections.webhook_failed", connection=str(connection_id), error=error)
        async with session_scope(maker) as write:
            await ConnectionRepository(write).set_webhook(
                connection_id, audience_id=row["audience_id"], webhook_id=webhook_id, error=error
            )
        return webhook_id

    async def _retire_webhook(
        self, settings: Settings, transport: httpx.AsyncBaseTransport, row: RowMapping
    ) -> None:
        """Delete our webhook from the connection's current audience (best effort)."""
        if not row["audience_id"]:
            return
        try:
            client = client_for(settings, transport, row)
            await remove_webhooks(
                client,
                row["audience_id"],
                webhook_token=row["webhook_token"],
                known_id=row["webhook_id"],
            )
        except (ProviderError, Conflict, ValueError) as exc:
            log.warning(
                "connections.webhook_not_removed",
                connection=str(row["id"]),
                error=getattr(exc, "message", None) or str(exc),
            )

    # --- Sync Now --------------------------------------------------------------------------

    async def sync_now(
        self, session: AsyncSession, *, settings: Settings, owner_id: str, dry_run: bool
    ) -> RunAccepted:
        """Queue a reconcile run; the one under way when there is one; 429 within the hour."""
        repo = ConnectionRepository(session)
        found = await repo.get(owner_id, MAILCHIMP)
        if found is None:
            raise NotFound("Mailchimp is not connected.")
        row = await repo.lock(found["id"])  # one decision at a time per connection
        if row is None:
            raise NotFound("Mailchimp is not connected.")
        if not row["audience_id"]:
            raise Conflict("Choose the Mailchimp audience to sync to first.")
        if row["status"] == "error":
            raise Conflict(
                notice_for(row["status"], row["status_reason"]) or "Reconnect Mailchimp."
            )
        active = await repo.active_run(row["id"], dry_run=dry_run)
        if active is not None:
            return RunAccepted(run_id=active["id"], state=active["state"], dry_run=dry_run)
        interval = settings.SYNC_NOW_MIN_INTERVAL_SECONDS
        last = await repo.last_requested_run(row["id"], dry_run=dry_run, kind=RUN_SYNC_NOW)
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
            audience_id=row["audience_id"],
        )
        if run is None:  # pragma: no cover - the row lock serialises requests
            raise Conflict("A sync is already under way.")
        log.info("connections.sync_now", connection=str(row["id"]), run=str(run["id"]), dry=dry_run)
        return RunAccepted(run_id=run["id"], state=run["state"], dry_run=dry_run)

    async def run_status(
        self, session: AsyncSession, *, owner_id: str, run_id: uuid.UUID
    ) -> SyncRunOut:
        """One run of the owner's, with counts and progress."""
        row = await ConnectionRepository(session).run(owner_id, run_id)
        if row is None:
            raise NotFound("No such sync run.")
        return _run_out(row)

    # --- disconnect ------------------------------------------------------------------------

    async def disconnect(
        self,
        session: AsyncSession,
        *,
        reader: Reader,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        owner_id: str,
    ) -> None:
        """Delete our webhook (best effort, while we still hold the credentials), then the
        connection with its credentials, queue, mirror and runs. Members stay in Mailchimp."""
        row = await self._read(reader, owner_id)
        await self._retire_webhook(settings, transport, row)
        await ConnectionRepository(session).delete(row["id"])
        log.info("connections.disconnected", owner=owner_id, connection=str(row["id"]))

    # --- status ----------------------------------------------------------------------------

    async def status(self, session: AsyncSession, *, owner_id: str) -> IntegrationStatus:
        """The Settings page line for Mailchimp."""
        repo = ConnectionRepository(session)
        row = await repo.get(owner_id, MAILCHIMP)
        if row is None:
            return IntegrationStatus(provider=MAILCHIMP, connected=False)
        counts = await repo.counts(row["id"])
        last = await repo.last_run(row["id"])
        return IntegrationStatus(
            provider=MAILCHIMP,
            connected=True,
            connection_id=row["id"],
            account_name=row["account_name"],
            audience=AudienceRef(id=row["audience_id"], name=row["audience_name"])
            if row["audience_id"]
            else None,
            status=row["status"],
            notice=notice_for(row["status"], row["status_reason"], stuck=counts["stuck"]),
            last_synced_at=row["last_synced_at"],
            pending=counts["pending"],
            failed=counts["failed"],
            last_full_sync_at=row["last_full_sync_at"],
            webhook_registered=row["webhook_id"] is not None,
            last_run=_run_out(last) if last is not None else None,
        )

    async def integrations(self, session: AsyncSession, *, owner_id: str) -> list[IntegrationEntry]:
        """Every provider's line for the Settings page."""
        out = []
        for provider, name, available in PROVIDERS:
            if provider == MAILCHIMP:
                status = await self.status(session, owner_id=owner_id)
            else:
                status = IntegrationStatus(provider=provider, connected=False)
            out.append(IntegrationEntry(**status.model_dump(), name=name, available=available))
        return out

    async def require(self, session: AsyncSession, *, owner_id: str) -> RowMapping:
        """The owner's Mailchimp connection, or 404."""
        row = await ConnectionRepository(session).get(owner_id, MAILCHIMP)
        if row is None:
            raise NotFound("Mailchimp is not connected.")
        return row

    async def _read(self, reader: Reader, owner_id: str) -> RowMapping:
        # A short read-only unit of work: no transaction stays open during the remote calls.
        async with reader() as read:
            return await self.require(read, owner_id=owner_id)


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


def choose_audience(audiences: list[Audience], audience_id: str | None) -> Audience | None:
    """The requested audience (422 if unknown), else the only one, else none yet."""
    if audience_id is not None:
        for audience in audiences:
            if audience.id == audience_id:
                return audience
        raise Unprocessable(
            f"The Mailchimp account has no audience {audience_id}.",
            extra={"errors": [{"field": "audience_id", "message": "unknown audience"}]},
        )
    if len(audiences) == 1:
        return audiences[0]
    return None


async def ensure_configured_connection(settings: Settings, session: AsyncSession) -> None:
    """Single-tenant seed: MAILCHIMP_API_KEY + MAILCHIMP_AUDIENCE_ID for MAILCHIMP_OWNER.

    In development, sandbox mode, with nothing configured, the demo owner is connected to the
    sandbox's default account, so a newcomer's first contact syncs. No remote call is made here (the
    sandbox may be served by this very process, not listening yet); the worker finds out.
    """
    api_key = settings.MAILCHIMP_API_KEY.get_secret_value()
    audience_id = settings.MAILCHIMP_AUDIENCE_ID
    owner = settings.MAILCHIMP_OWNER
    names: tuple[str | None, str | None] = (None, None)
    if not api_key and settings.is_sandbox and settings.ENVIRONMENT is Environment.development:
        from app.sandbox.mailchimp.constants import (
            DEFAULT_ACCOUNT_NAME,
            DEFAULT_API_KEY,
            DEFAULT_LIST_ID,
            DEFAULT_LIST_NAME,
        )

        api_key, audience_id, owner = DEFAULT_API_KEY, DEFAULT_LIST_ID, owner or "demo"
        names = (DEFAULT_ACCOUNT_NAME, DEFAULT_LIST_NAME)
    if not api_key or not audience_id or not owner:
        return
    if await ConnectionRepository(session).get(owner, MAILCHIMP) is not None:
        return
    account = api_key_account(settings, api_key)
    await connection_service.save(
        session,
        settings=settings,
        owner_id=owner,
        account=account,
        auth_kind="api_key",
        account_name=names[0],
        audience=Audience(id=audience_id, name=names[1] or audience_id, member_count=0),
    )
    log.info("connections.configured", owner=owner, audience=audience_id)


connection_service = ConnectionService()
