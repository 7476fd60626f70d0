"""Fixtures of the Mautic client tests: the sandbox over real HTTP, a segment, a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.providers.base import ContactPayload
from app.providers.mautic.client import MauticClient
from app.sandbox.mautic import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, create_app
from tests.support.servers import run_server


@dataclass
class Mautic:
    """The running sandbox: its URL, control/API helpers and our segment's id."""

    url: str
    http: httpx.AsyncClient
    api: httpx.AsyncClient
    segment: str

    async def configure(self, **changes: Any) -> None:
        response = await self.http.patch("/_control/config", json=changes)
        assert response.status_code == 200, response.text

    async def act(self, action: str, email: str, **body: Any) -> None:
        response = await self.http.post(
            f"/_control/actions/{action}", json={"email": email, **body}
        )
        assert response.status_code == 200, response.text

    async def contact(self, contact_id: str | int) -> dict[str, Any]:
        response = await self.api.get(f"/contacts/{contact_id}")
        assert response.status_code == 200, response.text
        return response.json()["contact"]  # type: ignore[no-any-return]

    async def exists(self, contact_id: str | int) -> bool:
        return (await self.api.get(f"/contacts/{contact_id}")).status_code == 200

    async def segment_ids(self, contact_id: str | int) -> set[str]:
        lists = (await self.api.get(f"/contacts/{contact_id}/segments")).json()["lists"]
        return {str(s["id"]) for s in (lists.values() if isinstance(lists, dict) else lists)}

    async def new_contact(self, **fields: Any) -> dict[str, Any]:
        response = await self.api.post("/contacts/new", json=fields)
        assert response.status_code in (200, 201), response.text
        return response.json()["contact"]  # type: ignore[no-any-return]

    async def new_segment(self, name: str) -> str:
        response = await self.api.post("/segments/new", json={"name": name})
        assert response.status_code == 201, response.text
        return str(response.json()["list"]["id"])

    async def requests(self) -> list[dict[str, Any]]:
        body = (await self.http.get("/_control/requests")).json()
        return body.get("requests", body) if isinstance(body, dict) else body  # type: ignore[no-any-return]


@pytest.fixture
async def mautic() -> AsyncIterator[Mautic]:
    app = create_app()
    async with run_server(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        token = (
            await http.post(
                "/oauth/v2/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": DEFAULT_CLIENT_ID,
                    "client_secret": DEFAULT_CLIENT_SECRET,
                },
            )
        ).json()["access_token"]
        async with httpx.AsyncClient(
            base_url=f"{url}/api", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ) as api:
            segment = (await api.post("/segments/new", json={"name": "CRM"})).json()["list"]
            yield Mautic(url, http, api, str(segment["id"]))


@pytest.fixture
async def client(mautic: Mautic) -> AsyncIterator[MauticClient]:
    transport = httpx.AsyncHTTPTransport()
    async with transport:
        yield MauticClient(
            transport,
            base_url=mautic.url,
            client_id=DEFAULT_CLIENT_ID,
            client_secret=DEFAULT_CLIENT_SECRET,
            timeout=10,
        )


def payload(email: str, **kw: Any) -> ContactPayload:
    """A payload with our usual defaults (a new person subscribes)."""
    kw.setdefault("fields", {})
    kw.setdefault("consent_if_new", "subscribed")
    return ContactPayload(email_address=email, **kw)
