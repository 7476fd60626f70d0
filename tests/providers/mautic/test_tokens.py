"""Token renewal in the core (DESIGN §14.4) with the Mautic sandbox's short tokens: one
process renews, the new credentials are committed before use, a refusal means `error`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import MauticMode, Settings
from app.connections.crypto import decrypt_credentials
from app.connections.notices import notice_for
from app.connections.service import connection_service
from app.connections.tokens import StoredTokens, fresh_credentials, needs_renewal
from app.db import make_sessionmaker, session_scope
from app.main import Runtime
from app.providers.base import ACCESS_TOKEN, EXPIRES_AT, Audience, AuthError, ClientConfig
from app.providers.mautic import connect, inbound, mapping, spec
from app.providers.registry import Provider
from app.sandbox.mautic import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from tests.conftest import fetch
from tests.providers.mautic.conftest import Mautic

PROVIDER = Provider(
    spec=spec.SPEC,
    client=connect.client_factory,
    mapping=mapping.from_settings,
    inbound=inbound.MauticInbound(),
    connect=connect.MauticConnect(),
)


@pytest.fixture
def mautic_settings(settings: Settings, mautic: Mautic) -> Settings:
    return settings.model_copy(
        update={"MAUTIC_MODE": MauticMode.sandbox, "MAUTIC_SANDBOX_URL": mautic.url}
    )


async def _connect(
    runtime: Runtime, settings: Settings, mautic: Mautic, *, secret: str = DEFAULT_CLIENT_SECRET
) -> dict[str, Any]:
    account = connect._account(settings, mautic.url, DEFAULT_CLIENT_ID, secret)
    async with session_scope(runtime.sessionmaker) as session:
        row = await connection_service.save(
            session,
            provider=PROVIDER,
            settings=settings,
            owner_id="owner-m",
            account=account,
            audience=Audience(id=mautic.segment, name="CRM", member_count=0),
        )
    return dict(row)


async def _token_requests(mautic: Mautic) -> int:
    return sum(1 for r in await mautic.requests() if "/oauth/v2/token" in str(r.get("path")))


async def _stored(runtime: Runtime, settings: Settings, connection_id: Any) -> dict[str, Any]:
    sql = "SELECT credentials FROM connections WHERE id = :id"
    rows = await fetch(runtime, sql, id=connection_id)
    return decrypt_credentials(settings, rows[0]["credentials"])


async def test_two_processes_renewing_at_once_make_one_token_request(
    runtime: Runtime, mautic_settings: Settings, mautic: Mautic
) -> None:
    row = await _connect(runtime, mautic_settings, mautic)
    await mautic.http.delete("/_control/requests")
    # Two engines: two pools, as two worker processes would have.
    other = create_async_engine(runtime.engine.url)
    try:
        a = StoredTokens(runtime.sessionmaker, mautic_settings, PROVIDER, row["id"])
        b = StoredTokens(make_sessionmaker(other), mautic_settings, PROVIDER, row["id"])
        got = await asyncio.gather(*(t.credentials() for t in (a, b, a, b)))
    finally:
        await other.dispose()
    assert len({c[ACCESS_TOKEN] for c in got}) == 1
    assert await _token_requests(mautic) == 1
    stored = await _stored(runtime, mautic_settings, row["id"])
    # Committed, encrypted, with its expiry, before anyone used it.
    assert stored[ACCESS_TOKEN] == got[0][ACCESS_TOKEN]
    assert stored[EXPIRES_AT] > time.time() + 3000
    assert stored["client_secret"] == DEFAULT_CLIENT_SECRET


async def test_an_expiring_token_is_renewed_before_use_and_the_new_one_committed(
    runtime: Runtime, mautic_settings: Settings, mautic: Mautic
) -> None:
    await mautic.configure(access_token_lifetime_seconds=10)
    row = await _connect(runtime, mautic_settings, mautic)
    first = await fresh_credentials(runtime.sessionmaker, mautic_settings, PROVIDER, row["id"])
    # A fifth of a 10 s life is the margin: 9 s later it counts as expiring.
    assert not needs_renewal(first)
    assert needs_renewal(first, now=time.time() + 9)
    await mautic.http.delete("/_control/requests")
    again = await fresh_credentials(runtime.sessionmaker, mautic_settings, PROVIDER, row["id"])
    assert again[ACCESS_TOKEN] == first[ACCESS_TOKEN]  # still fresh: no request
    assert await _token_requests(mautic) == 0


async def test_a_401_renews_once_for_every_process_and_the_call_succeeds(
    runtime: Runtime, mautic_settings: Settings, mautic: Mautic
) -> None:
    row = await _connect(runtime, mautic_settings, mautic)
    other = create_async_engine(runtime.engine.url)
    transport = httpx.AsyncHTTPTransport()
    try:
        clients = []
        for maker in (runtime.sessionmaker, make_sessionmaker(other)):
            creds = await fresh_credentials(maker, mautic_settings, PROVIDER, row["id"])
            tokens = StoredTokens(maker, mautic_settings, PROVIDER, row["id"], initial=creds)
            config = ClientConfig(
                transport=transport,
                api_endpoint=mautic.url,
                credentials=creds,
                timeout=5,
                sandbox=True,
                tokens=tokens,
            )
            clients.append(PROVIDER.client(config))
        # Revoked early (Mautic's tokens can be): both workers meet a 401 at once.
        await mautic.http.post("/_control/tokens/expire")
        await mautic.http.delete("/_control/requests")
        await asyncio.gather(*(c.ping() for c in clients))
    finally:
        await transport.aclose()
        await other.dispose()
    assert await _token_requests(mautic) == 1


async def test_while_a_refused_token_is_renewed_no_caller_is_handed_it(
    runtime: Runtime, mautic_settings: Settings, mautic: Mautic
) -> None:
    row = await _connect(runtime, mautic_settings, mautic)
    first = await fresh_credentials(runtime.sessionmaker, mautic_settings, PROVIDER, row["id"])
    tokens = StoredTokens(runtime.sessionmaker, mautic_settings, PROVIDER, row["id"], initial=first)
    # Revoked early: its stored expiry (an hour) still says valid. One request met the 401
    # and renews; the others asking meanwhile must wait for the new token, not send the old.
    await mautic.http.post("/_control/tokens/expire")
    await mautic.http.delete("/_control/requests")
    old = first[ACCESS_TOKEN]
    renewing = asyncio.create_task(tokens.access_token(stale=old))
    await asyncio.sleep(0)  # the renewal has started
    meanwhile = await asyncio.gather(*(tokens.access_token() for _ in range(3)))
    new = await renewing
    assert new != old and meanwhile == [new] * 3
    assert await _token_requests(mautic) == 1


async def test_a_refused_renewal_puts_the_connection_in_error_with_reconnect_mautic(
    runtime: Runtime, mautic_settings: Settings, mautic: Mautic
) -> None:
    row = await _connect(runtime, mautic_settings, mautic, secret="revoked-secret")
    tokens = StoredTokens(runtime.sessionmaker, mautic_settings, PROVIDER, row["id"])
    with pytest.raises(AuthError):
        await tokens.credentials()
    state = (
        await fetch(
            runtime, "SELECT status, status_reason FROM connections WHERE id = :id", id=row["id"]
        )
    )[0]
    assert state["status"] == "error"
    notice = notice_for(state["status"], state["status_reason"], provider="Mautic")
    assert notice is not None and notice.startswith("Reconnect Mautic")
    stored = await _stored(runtime, mautic_settings, row["id"])
    assert ACCESS_TOKEN not in stored
