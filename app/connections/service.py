"""Connection use cases: connect with an API key, status for the Settings page, bootstrap."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Environment, Settings
from app.connections.crypto import encrypt_credentials
from app.connections.notices import notice_for
from app.connections.repository import ConnectionRepository
from app.connections.schemas import AudienceRef, IntegrationStatus
from app.errors import BadGateway, NotFound, ServiceUnavailable, Unprocessable
from app.providers.base import (
    Audience,
    AuthError,
    ProviderError,
    ThrottledError,
    TransientError,
)
from app.providers.mailchimp.client import MailchimpClient, dc_from_api_key, live_api_base

log = structlog.get_logger(__name__)

MAILCHIMP = "mailchimp"


@dataclass(slots=True)
class MailchimpAccount:
    """Where and how to reach one Mailchimp account."""

    api_base: str
    dc: str
    account_key: str
    credentials: dict[str, Any]


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


class ConnectionService:
    """Create and describe connections to Mailchimp."""

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
        except ProviderError as exc:
            raise provider_failure(exc) from None
        audience = choose_audience(audiences, audience_id)
        return await self.save(
            session,
            settings=settings,
            owner_id=owner_id,
            account=account,
            auth_kind="api_key",
            account_name=None,
            audience=audience,
        )

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
        row = await repo.upsert(owner_id, MAILCHIMP, values)
        same_audience = previous is not None and previous["audience_id"] == row["audience_id"]
        if previous is not None and not same_audience:
            await repo.drop_sync_rows(row["id"])
        if audience is not None and not same_audience:
            queued = await repo.enqueue_all(owner_id=owner_id, connection_id=row["id"])
            log.info("connections.initial_sync_queued", connection=str(row["id"]), queued=queued)
        return row

    async def status(self, session: AsyncSession, *, owner_id: str) -> IntegrationStatus:
        """The Settings page line for Mailchimp."""
        repo = ConnectionRepository(session)
        row = await repo.get(owner_id, MAILCHIMP)
        if row is None:
            return IntegrationStatus(provider=MAILCHIMP, connected=False)
        counts = await repo.counts(row["id"])
        return IntegrationStatus(
            provider=MAILCHIMP,
            connected=True,
            connection_id=row["id"],
            account_name=row["account_name"],
            audience=AudienceRef(id=row["audience_id"], name=row["audience_name"])
            if row["audience_id"]
            else None,
            status=row["status"],
            notice=notice_for(row["status"], row["status_reason"]),
            last_synced_at=row["last_synced_at"],
            pending=counts["pending"],
            failed=counts["failed"],
        )

    async def require(self, session: AsyncSession, *, owner_id: str) -> RowMapping:
        """The owner's Mailchimp connection, or 404."""
        row = await ConnectionRepository(session).get(owner_id, MAILCHIMP)
        if row is None:
            raise NotFound("Mailchimp is not connected.")
        return row


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
