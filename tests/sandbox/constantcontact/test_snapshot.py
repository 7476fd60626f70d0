"""The state snapshot: a restarted sandbox keeps its contacts, grants and signing key."""

from __future__ import annotations

from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from app.sandbox.constantcontact import ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET, create_app


async def test_restart_keeps_contacts_tokens_and_refresh_chain(tmp_path: Path) -> None:
    path = tmp_path / "cc.json"
    first = create_app(state_file=path)
    async with LifespanManager(first):
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(transport=transport, base_url="http://cc.test") as client:
            minted = (await client.post("/_control/tokens")).json()
            headers = {"authorization": f"Bearer {minted['access_token']}"}
            created = await client.post(
                "/v3/contacts",
                headers=headers,
                json={"email_address": {"address": "keep@example.com"}, "create_source": "Account"},
            )
            assert created.status_code == 201
            keys = (await client.get("/oauth2/default/v1/keys")).json()
    assert path.exists()
    second = create_app(state_file=path)
    transport = httpx.ASGITransport(app=second)
    async with httpx.AsyncClient(transport=transport, base_url="http://cc.test") as client:
        assert (await client.get("/oauth2/default/v1/keys")).json() == keys
        got = await client.get(f"/v3/contacts/{created.json()['contact_id']}", headers=headers)
        assert got.status_code == 200
        assert got.json()["email_address"]["address"] == "keep@example.com"
        refreshed = await client.post(
            "/oauth2/default/v1/token",
            data={"grant_type": "refresh_token", "refresh_token": minted["refresh_token"]},
            auth=(ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET),
        )
        assert refreshed.status_code == 200
        reused = await client.post(
            "/oauth2/default/v1/token",
            data={"grant_type": "refresh_token", "refresh_token": minted["refresh_token"]},
            auth=(ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET),
        )
        assert reused.json()["error"] == "invalid_grant"


async def test_an_unreadable_snapshot_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "cc.json"
    path.write_text("{not json")
    app = create_app(state_file=path)
    assert list(app.state.sandbox.accounts) == ["p07e1l8cdif9dl"]
