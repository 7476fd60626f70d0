"""Fixtures of the inbound tests: the service served over real TCP so the sandbox can deliver
its webhooks to it, a webhook registered at the sandbox, and the contacts API over HTTP."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.main import Runtime, create_app
from app.sync.engine import SyncEngine
from tests.conftest import fetch
from tests.support.servers import run_server
from tests.support.sync import Sandbox, queue_empty, wait_for
from tests.sync import conftest as sync_fixtures
from tests.sync.conftest import OWNER

# The sync tests' fixtures: a sandbox on a real port, settings aimed at it, OWNER's connection
# to its default audience, engines on the test database.
sandbox = sync_fixtures.sandbox
sync_settings = sync_fixtures.sync_settings
connection = sync_fixtures.connection
make_engine = sync_fixtures.make_engine

EVENTS = {
    "subscribe": True,
    "unsubscribe": True,
    "profile": True,
    "cleaned": True,
    "upemail": True,
    "campaign": True,
}


Engine = Callable[..., SyncEngine]


def md5(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode()).hexdigest()


@pytest.fixture
def service_overrides() -> dict[str, Any]:
    """Settings of the served service (tests parametrize this fixture to change them)."""
    return {}


@pytest.fixture
async def service(
    sync_settings: Settings, runtime: Runtime, service_overrides: dict[str, Any]
) -> AsyncIterator[str]:
    """The service over real HTTP (no in-process worker); its base URL."""
    settings = sync_settings.model_copy(update=service_overrides)
    async with run_server(create_app(settings, runtime=runtime)) as url:
        yield url


class Crm:
    """The contacts API of OWNER, over HTTP."""

    def __init__(self, http: httpx.AsyncClient, token: str) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {token}"}

    async def create(self, **body: Any) -> dict[str, Any]:
        body.setdefault("newsletter_opt_in", True)
        r = await self.http.post("/api/contacts", json=body, headers=self.headers)
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def patch(self, contact_id: str, **body: Any) -> dict[str, Any]:
        r = await self.http.patch(f"/api/contacts/{contact_id}", json=body, headers=self.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def get(self, contact_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/api/contacts/{contact_id}", headers=self.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())


@pytest.fixture
async def http(service: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the served service."""
    async with httpx.AsyncClient(base_url=service, timeout=30) as client:
        yield client


@pytest.fixture
def crm(http: httpx.AsyncClient, token_for: Callable[..., str]) -> Crm:
    return Crm(http, token_for(OWNER))


@dataclass
class Hook:
    """The connection's webhook address and what the sandbox delivered to it."""

    sandbox: Sandbox
    http: httpx.AsyncClient
    url: str
    path: str

    async def deliveries(self) -> list[dict[str, Any]]:
        body = (await self.sandbox.http.get("/_control/webhook-deliveries")).json()
        return list(body["deliveries"])

    async def settled(self) -> bool:
        body = (await self.sandbox.http.get("/_control/webhook-deliveries")).json()
        return bool(body["pending"] == 0)

    async def act(self, action: str, email: str, **body: Any) -> dict[str, Any]:
        """A person's action in Mailchimp; returns once its webhook was delivered."""
        before = len(await self.deliveries())
        r = await self.sandbox.act(action, email, **body)
        assert r.status_code == 200, r.text

        async def delivered() -> bool:
            entries = await self.deliveries()
            return len(entries) > before and await self.settled()

        await wait_for(delivered, within=20)
        last = (await self.deliveries())[-1]
        assert last["delivered"], last
        return last

    async def post(
        self, body: bytes | str, *, path: str | None = None, **kw: Any
    ) -> httpx.Response:
        """POST a form body to our receiver, as Mailchimp would."""
        content = body.encode() if isinstance(body, str) else body
        headers = {"Content-Type": "application/x-www-form-urlencoded", **kw.pop("headers", {})}
        return await self.http.post(path or self.path, content=content, headers=headers, **kw)


@pytest.fixture
def receiver(
    service: str, sandbox: Sandbox, connection: dict[str, Any], http: httpx.AsyncClient
) -> Hook:
    """The connection's webhook address on the served service (not registered anywhere)."""
    path = f"/api/webhooks/mailchimp/{connection['webhook_token']}"
    return Hook(sandbox=sandbox, http=http, url=service + path, path=path)


@pytest.fixture
async def hook(receiver: Hook, sandbox: Sandbox) -> Hook:
    """The audience's webhook registered at the sandbox (user and admin sources, not api),
    pointing at the served service — what the connect flow's ensure_webhook() sets up."""
    await sandbox.configure(webhook_retry_delays=[0.05, 0.05])
    r = await sandbox.api(
        "POST",
        f"/lists/{sandbox.list_id}/webhooks",
        json={
            "url": receiver.url,
            "events": EVENTS,
            "sources": {"user": True, "admin": True, "api": False},
        },
    )
    assert r.status_code == 200, r.text  # the sandbox validated our URL with a GET
    return receiver


async def drain(make_engine: Engine) -> None:
    """Run the worker until nothing is due."""
    engine = make_engine()
    try:
        await engine.run_until_idle(limit_seconds=30)
    finally:
        await engine.aclose()


async def one(runtime: Runtime, sql: str, **params: Any) -> dict[str, Any]:
    rows = await fetch(runtime, sql, **params)
    assert len(rows) == 1, rows
    return rows[0]


async def count(runtime: Runtime, table: str, where: str = "true", **params: Any) -> int:
    rows = await fetch(runtime, f"SELECT count(*) AS n FROM {table} WHERE {where}", **params)
    return int(rows[0]["n"])


@pytest.fixture
async def ada(
    crm: Crm, make_engine: Engine, sandbox: Sandbox, connection: dict[str, Any]
) -> dict[str, Any]:
    """A consenting contact, pushed: a subscribed member; the request log starts empty."""
    contact = await crm.create(
        email="ada@example.com", first_name="Ada", last_name="Lovelace", tags=["vip"]
    )
    await drain(make_engine)
    assert (await sandbox.members())["ada@example.com"]["status"] == "subscribed"
    await sandbox.clear_requests()
    return contact


async def contact_row(runtime: Runtime, key: str) -> dict[str, Any]:
    return await one(runtime, "SELECT * FROM contacts WHERE email_key = :k", k=key)


async def mirror_row(runtime: Runtime, key: str) -> dict[str, Any]:
    return await one(runtime, "SELECT * FROM sync_state WHERE email_key = :k", k=key)


async def assert_no_echo(runtime: Runtime, sandbox: Sandbox, make_engine: Engine) -> None:
    """Nothing queued, and a drained worker makes no request at all."""
    assert await queue_empty(runtime)
    await drain(make_engine)
    assert await sandbox.requests() == []
