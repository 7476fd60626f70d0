"""`serve` in sandbox mode mounts the Mautic sandbox at /_sandbox/mautic and keeps its data."""

from __future__ import annotations

import httpx
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import Runtime, create_app
from app.sandbox.mautic import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET


async def test_serve_mounts_the_mautic_sandbox_and_saves_it_on_stop(
    settings: Settings, runtime: Runtime
) -> None:
    assert settings.is_sandbox
    state_file = settings.DATA_DIR / "sandbox-mautic.json"
    state_file.unlink(missing_ok=True)
    app = create_app(settings, runtime=runtime)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver/_sandbox/mautic"
        ) as http:
            assert (await http.get("/api/contacts")).status_code == 401
            token = await http.post(
                "/oauth/v2/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": DEFAULT_CLIENT_ID,
                    "client_secret": DEFAULT_CLIENT_SECRET,
                },
            )
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            created = await http.post(
                "/api/contacts/new", json={"email": "served@x.com"}, headers=headers
            )
            assert created.status_code == 201
            assert created.headers["location"] == (
                f"http://testserver/_sandbox/mautic/api/contacts/{created.json()['contact']['id']}"
            )
    assert b"served@x.com" in state_file.read_bytes()
    state_file.unlink()
