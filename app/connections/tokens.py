"""Expiring access tokens (DESIGN §14.4): renewed before they expire by exactly one process per
connection, and the new credentials committed before the new token is used.

Two workers renewing one connection at once would burn a single-use refresh token (Constant
Contact, Mautic's authorization-code grant) or waste a token request (Mautic's client
credentials). So the renewal runs under the connection row's lock (`SELECT … FOR UPDATE`):
the first process in renews and commits; the others wait on the lock, then read the committed
token and use it. A renewal the provider refuses (`invalid_grant`, a revoked client) puts the
connection in `error` ("Reconnect <Provider>") in the same transaction.

Clients never see this module: the client factory gets a `StoredTokens` as
`ClientConfig.tokens` (`app.providers.base.TokenSource`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections.crypto import CredentialsError, decrypt_credentials, encrypt_credentials
from app.connections.notices import REASON_CREDENTIALS
from app.connections.repository import ConnectionRepository
from app.providers.base import ACCESS_TOKEN, EXPIRES_AT, AuthError
from app.providers.registry import Provider

log = structlog.get_logger(__name__)

# Renew this long before expiry (clock skew between processes and the provider, a slow
# request); a short-lived token (a sandbox knob) renews at a fifth of its life instead.
MARGIN_SECONDS = 120.0
# When the core last renewed the token (wall clock): its lifetime scales the margin.
RENEWED_AT = "renewed_at"

Reader = async_sessionmaker[AsyncSession]


def margin_for(credentials: Mapping[str, Any], margin: float = MARGIN_SECONDS) -> float:
    """Seconds before expiry at which the token counts as expiring."""
    expires, renewed = credentials.get(EXPIRES_AT), credentials.get(RENEWED_AT)
    if isinstance(expires, int | float) and isinstance(renewed, int | float):
        return min(margin, max(0.0, (expires - renewed) / 5))
    return margin


def needs_renewal(
    credentials: Mapping[str, Any],
    *,
    rejected: str | None = None,
    margin: float = MARGIN_SECONDS,
    now: float | None = None,
) -> bool:
    """True when there is no token, it is the one the provider refused, or it expires soon."""
    token = credentials.get(ACCESS_TOKEN)
    if not token or (rejected is not None and token == rejected):
        return True
    expires = credentials.get(EXPIRES_AT)
    if not isinstance(expires, int | float):
        return True
    return expires - (time.time() if now is None else now) <= margin_for(credentials, margin)


def _gone(provider: Provider) -> AuthError:
    name = provider.spec.display_name
    return AuthError(f"{name} is no longer connected (reconnect {name})")


def _decrypt(settings: Settings, provider: Provider, ciphertext: str) -> dict[str, Any]:
    try:
        return decrypt_credentials(settings, ciphertext)
    except CredentialsError:
        name = provider.spec.display_name
        message = f"The stored {name} credentials cannot be read; reconnect {name}."
        raise AuthError(message) from None


async def fresh_credentials(
    maker: Reader,
    settings: Settings,
    provider: Provider,
    connection_id: uuid.UUID,
    *,
    rejected: str | None = None,
    margin: float = MARGIN_SECONDS,
    lock_timeout: float = 60.0,
) -> dict[str, Any]:
    """The connection's credentials with an access token valid beyond `margin`.

    Renews (`provider.connect.refresh`) under the row lock when the stored token is missing,
    expiring, or `rejected` (the one a 401 refused), and commits before returning; a process
    that waited on the lock returns what the winner committed. AuthError when the provider
    refuses the renewal (the connection is then `error`) or the connection is gone.
    """
    async with maker() as read:
        row = await ConnectionRepository(read).credentials_of(connection_id)
    if row is None:
        raise _gone(provider)
    creds = _decrypt(settings, provider, row["credentials"])
    if not needs_renewal(creds, rejected=rejected, margin=margin):
        return creds
    refused: AuthError | None = None
    async with maker() as session, session.begin():
        repo = ConnectionRepository(session)
        row = await repo.credentials_of(connection_id, lock=True, lock_timeout=lock_timeout)
        if row is None:
            raise _gone(provider)
        creds = _decrypt(settings, provider, row["credentials"])
        if not needs_renewal(creds, rejected=rejected, margin=margin):
            return creds  # another process renewed while we waited for the lock
        started = time.time()
        try:
            renewed = await provider.connect.refresh(settings, creds)
        except AuthError as exc:
            # Committed with the lock's transaction: nothing is retried until reconnected.
            await repo.set_error(connection_id, reason=REASON_CREDENTIALS, error=exc.message)
            refused = exc
            renewed = None
        if renewed is not None:
            renewed = dict(renewed) | {RENEWED_AT: started}
            await repo.set_credentials(connection_id, encrypt_credentials(settings, renewed))
    # The transaction has committed: only now may anyone use the new token.
    if refused is not None:
        log.warning(
            "connections.token_refused", connection=str(connection_id), error=refused.message
        )
        raise refused
    if renewed is None:
        return creds
    log.info(
        "connections.token_renewed",
        connection=str(connection_id),
        provider=provider.id,
        expires_in=round(float(renewed.get(EXPIRES_AT) or started) - started),
    )
    return renewed


class StoredTokens:
    """A connection's `TokenSource` (app.providers.base): the credentials cached in this
    process, renewed through `fresh_credentials` (one renewal per process at a time; one
    process per connection)."""

    def __init__(
        self,
        maker: Reader,
        settings: Settings,
        provider: Provider,
        connection_id: uuid.UUID,
        *,
        initial: Mapping[str, Any] | None = None,
        margin: float = MARGIN_SECONDS,
    ) -> None:
        self._maker = maker
        self._settings = settings
        self._provider = provider
        self._connection_id = connection_id
        self._margin = margin
        self._creds: dict[str, Any] | None = dict(initial) if initial is not None else None
        self._lock = asyncio.Lock()
        # Tokens the provider refused (401) in this process: their stored expiry still says
        # valid (a revocation, an early expiry), so without this every request taking the
        # cached token while the renewal runs would be sent only to be refused again.
        self._refused: set[str] = set()

    def _valid(self, rejected: str | None = None) -> dict[str, Any] | None:
        creds = self._creds
        if creds is None or needs_renewal(creds, rejected=rejected, margin=self._margin):
            return None
        if creds.get(ACCESS_TOKEN) in self._refused:
            return None
        return creds

    async def access_token(self, *, stale: str | None = None) -> str:
        """The token to send now (renewed first when expiring); `stale` is one the provider
        just refused (401): renewed unless another process already did."""
        creds = await (self.credentials() if stale is None else self.renewed(stale))
        token = creds.get(ACCESS_TOKEN)
        if not isinstance(token, str) or not token:
            name = self._provider.spec.display_name
            raise AuthError(f"{name} gave no access token (reconnect {name})")
        return token

    async def credentials(self) -> Mapping[str, Any]:
        """Credentials with a token valid beyond the margin (renewed first if needed)."""
        found = self._valid()
        if found is not None:
            return found
        async with self._lock:
            found = self._valid()
            if found is None:
                found = self._creds = await fresh_credentials(
                    self._maker,
                    self._settings,
                    self._provider,
                    self._connection_id,
                    margin=self._margin,
                )
            return found

    async def renewed(self, rejected: str) -> Mapping[str, Any]:
        """Credentials with a token other than `rejected` (renewed unless someone did)."""
        # Marked before waiting for the lock: callers of `credentials()` meanwhile wait for
        # the renewal instead of sending the refused token.
        if rejected:
            self._refused.add(rejected)
        async with self._lock:
            found = self._valid(rejected)
            if found is None:
                found = self._creds = await fresh_credentials(
                    self._maker,
                    self._settings,
                    self._provider,
                    self._connection_id,
                    rejected=rejected,
                    margin=self._margin,
                )
                # Only the newest refusal can matter again: the set stays small.
                self._refused = {rejected} if rejected else set()
            return found


def token_source(
    maker: Reader,
    settings: Settings,
    provider: Provider,
    connection_id: uuid.UUID,
    credentials: Mapping[str, Any],
) -> StoredTokens | None:
    """The TokenSource a stored connection's client gets (None when its tokens never expire)."""
    if not provider.spec.connect.token_expires:
        return None
    return StoredTokens(maker, settings, provider, connection_id, initial=credentials)
