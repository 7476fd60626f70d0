"""`serve` in sandbox mode mounts the sandbox at /_sandbox/constantcontact and keeps its
snapshot in DATA_DIR when it stops."""

from __future__ import annotations

from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import Runtime, create_app

ROOT = "/_sandbox/constantcontact"


async def test_the_service_mounts_the_sandbox_and_saves_it(
    settings: Settings, runtime: Runtime, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"DATA_DIR": tmp_path})
    service = create_app(settings, runtime=runtime)
    async with LifespanManager(service) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc.test") as client:
            token = (await client.post(f"{ROOT}/_control/tokens")).json()["access_token"]
            summary = await client.get(
                f"{ROOT}/v3/account/summary", headers={"authorization": f"Bearer {token}"}
            )
            assert summary.status_code == 200
            assert summary.json()["encoded_account_id"] == "p07e1l8cdif9dl"
            page = await client.get(
                f"{ROOT}/oauth2/default/v1/authorize",
                params={
                    "client_id": "1c8ef7b2-3f1a-4b7e-9a52-6d1f0c4e2a01",
                    "redirect_uri": "http://svc.test/cb",
                    "response_type": "code",
                    "scope": "contact_data offline_access",
                },
            )
            assert "Allow" in page.text
    assert (tmp_path / "sandbox-constantcontact.json").exists()
