"""Fixtures of the Constant Contact sandbox tests: a sandbox served over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.sandbox.constantcontact import SandboxApp, SandboxConfig, create_app
from app.sandbox.constantcontact.state import SandboxState
from tests.support.servers import run_server

REDIRECT = "http://app.test/callback"


@dataclass
class Sandbox:
    """A running sandbox: its base URL, its app and state, and an HTTP client on it."""

    base: str
    app: SandboxApp
    http: httpx.AsyncClient

    @property
    def state(self) -> SandboxState:
        return self.app.state.sandbox  # type: ignore[no-any-return]

    async def configure(self, **changes: Any) -> None:
        response = await self.http.patch("/_control/config", json=changes)
        assert response.status_code == 200, response.text

    async def mint(self, **body: Any) -> dict[str, Any]:
        response = await self.http.post("/_control/tokens", json=body)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    async def api(self, **body: Any) -> httpx.AsyncClient:
        """A client of `/v3` with a fresh access token (default app and account)."""
        token = (await self.mint(**body))["access_token"]
        return httpx.AsyncClient(
            base_url=f"{self.base}/v3", headers={"authorization": f"Bearer {token}"}
        )

    async def act(self, email: str, action: str, **body: Any) -> httpx.Response:
        return await self.http.post(f"/_control/contacts/{email}/actions/{action}", json=body)

    async def dump(self) -> dict[str, dict[str, Any]]:
        """Every contact by e-mail, as the control API shows them."""
        contacts = (await self.http.get("/_control/contacts")).json()["contacts"]
        return {c["email_address"]["address"]: c for c in contacts}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """A fresh sandbox on an ephemeral port; the rate limit is lifted unless a test sets it."""
    app = create_app(SandboxConfig(rate_per_second=10_000, activity_duration_ms=20))
    async with (
        run_server(app, lifespan="off") as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        yield Sandbox(base, app, http)


@pytest.fixture
async def api(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    client = await sandbox.api()
    async with client:
        yield client
