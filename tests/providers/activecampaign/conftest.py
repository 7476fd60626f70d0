"""Fixtures of the ActiveCampaign client tests: the sandbox over real HTTP and a client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.config import ActiveCampaignMode
from app.providers.activecampaign.client import ActiveCampaignClient
from app.providers.base import ContactPayload
from app.sandbox.activecampaign import DEFAULT_API_KEY, DEFAULT_LIST_ID, AcConfig, create_app
from app.sandbox.activecampaign.app import ActiveCampaignSandbox
from app.sandbox.activecampaign.state import AcState
from tests.support.servers import run_server

LIST = DEFAULT_LIST_ID


@dataclass
class Ac:
    """The running sandbox: its URL, its state, the control API and the raw API."""

    url: str
    state: AcState
    http: httpx.AsyncClient
    api: httpx.AsyncClient

    async def configure(self, **changes: Any) -> None:
        response = await self.http.patch("/_control/config", json=changes)
        assert response.status_code == 200, response.text

    async def act(self, action: str, email: str, list_id: str = LIST, **body: Any) -> None:
        response = await self.http.post(
            f"/_control/lists/{list_id}/actions/{action}", json={"email": email, **body}
        )
        assert response.status_code == 200, response.text

    async def dump(self, list_id: str = LIST) -> list[dict[str, Any]]:
        response = await self.http.get(f"/_control/lists/{list_id}/contacts")
        assert response.status_code == 200, response.text
        body = response.json()
        return body.get("contacts", body) if isinstance(body, dict) else body  # type: ignore[no-any-return]

    async def person(self, email: str) -> dict[str, Any] | None:
        response = await self.http.get("/_control/accounts/sandbox/contacts")
        body = response.json()
        items = body.get("contacts", body) if isinstance(body, dict) else body
        return next((c for c in items if c["email"].lower() == email.lower()), None)

    async def requests(self) -> list[dict[str, Any]]:
        body = (await self.http.get("/_control/requests")).json()
        return body.get("requests", body) if isinstance(body, dict) else body  # type: ignore[no-any-return]

    async def new_list(self, name: str) -> str:
        response = await self.http.post("/_control/accounts/sandbox/lists", json={"name": name})
        assert response.status_code in (200, 201), response.text
        body = response.json()
        return str((body.get("list") or body)["id"])


@pytest.fixture
def sandbox() -> ActiveCampaignSandbox:
    # The 5/s limit has its own tests; functional tests run unthrottled and fast imports.
    return create_app(AcConfig(rate_limit_per_second=10_000, import_stage_seconds=0.05))


@pytest.fixture
async def ac(sandbox: ActiveCampaignSandbox) -> AsyncIterator[Ac]:
    async with (
        run_server(sandbox, lifespan="off") as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
        httpx.AsyncClient(
            base_url=f"{url}/api/3", headers={"Api-Token": DEFAULT_API_KEY}, timeout=10
        ) as api,
    ):
        yield Ac(url, sandbox.state.sandbox, http, api)


@pytest.fixture
async def client(ac: Ac) -> AsyncIterator[ActiveCampaignClient]:
    async with httpx.AsyncHTTPTransport() as transport:
        yield ActiveCampaignClient(
            transport,
            api_url=ac.url,
            api_key=DEFAULT_API_KEY,
            timeout=10,
            import_poll=(0.05, 0.1),
        )


class Unlimited:
    """A RequestLimiter that admits everything (the engine's limiter, minus its limits)."""

    def slot(self, op: str | None = None) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()


@pytest.fixture
async def limited(ac: Ac) -> AsyncIterator[ActiveCampaignClient]:
    """A client as the engine builds it (a limiter given): throttles are the engine's."""
    async with httpx.AsyncHTTPTransport() as transport:
        yield ActiveCampaignClient(
            transport, api_url=ac.url, api_key=DEFAULT_API_KEY, timeout=10, limiter=Unlimited()
        )


def payload(email: str, **kw: Any) -> ContactPayload:
    """A payload with our usual defaults (a new person subscribes)."""
    kw.setdefault("fields", {})
    kw.setdefault("consent_if_new", "subscribed")
    kw.setdefault("unseen", True)  # never pushed by us, as the planner says of a first push
    return ContactPayload(email_address=email, **kw)


# --- the service over TCP (ActiveCampaign's deliveries must reach it) ------------------------

FIELD_MAP = {
    "activecampaign": {
        "custom_fields.dietary": {"field": "DIETARY", "type": "list", "label": "Dietary"},
        "custom_fields.badge_name": {"field": "BADGE_NAME", "label": "Badge name"},
    }
}


@dataclass
class Service:
    """The service on a real port, and its settings."""

    url: str
    http: httpx.AsyncClient
    settings: Any
    auth: Any

    async def connect(self, ac: Ac, owner: str = "owner-a", **body: Any) -> httpx.Response:
        return await self.http.post(
            "/api/integrations/activecampaign/credentials",
            json={"api_url": ac.url, "api_key": DEFAULT_API_KEY, **body},
            headers=self.auth(owner),
        )

    async def create(self, owner: str = "owner-a", **contact: Any) -> dict[str, Any]:
        contact.setdefault("newsletter_opt_in", True)
        r = await self.http.post("/api/contacts", json=contact, headers=self.auth(owner))
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    async def patch(self, contact_id: str, owner: str = "owner-a", **changes: Any) -> None:
        r = await self.http.patch(
            f"/api/contacts/{contact_id}", json=changes, headers=self.auth(owner)
        )
        assert r.status_code == 200, r.text

    async def get(self, contact_id: str, owner: str = "owner-a") -> dict[str, Any]:
        r = await self.http.get(f"/api/contacts/{contact_id}", headers=self.auth(owner))
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def serving(
    settings: Any, runtime: Any, auth: Any, ac: Ac, **overrides: Any
) -> AsyncIterator[Service]:
    """The service over TCP, aimed at this test's ActiveCampaign sandbox."""
    from app.fieldmap import load_field_map
    from app.main import create_app
    from tests.support.servers import free_port

    port = free_port()
    configured = settings.model_copy(
        update={
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "FIELD_MAP": load_field_map(FIELD_MAP),
            "ACTIVECAMPAIGN_MODE": ActiveCampaignMode.sandbox,
            "ACTIVECAMPAIGN_SANDBOX_URL": ac.url,
            "ACTIVECAMPAIGN_TIMEOUT_SECONDS": 5.0,
            "MAILCHIMP_TIMEOUT_SECONDS": 5.0,
            "SYNC_BACKOFF_BASE_SECONDS": 0.05,
            "SYNC_BACKOFF_MAX_SECONDS": 0.5,
            "SYNC_POLL_INTERVAL_SECONDS": 0.2,
            **overrides,
        }
    )
    app = create_app(configured, runtime=runtime)
    async with (
        run_server(app, port=port) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        yield Service(url=url, http=http, settings=configured, auth=auth)


@pytest.fixture
async def service(settings: Any, runtime: Any, auth: Any, ac: Ac) -> AsyncIterator[Service]:
    async with serving(settings, runtime, auth, ac) as svc:
        yield svc
