"""Fixtures of the connection tests: the sandbox and the service, both over real TCP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.main import Runtime, create_app
from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID
from app.sync.engine import SyncEngine
from app.sync.reconcile import Reconciler
from tests.support.servers import free_port, run_server
from tests.support.sync import Sandbox, wait_for
from tests.sync import conftest as sync_fixtures

OWNER = "owner-a"
OTHER = "owner-b"
SPA_ORIGIN = "http://localhost:5173"


# A fresh Mailchimp sandbox on a real port: the sync tests' fixture.
sandbox = sync_fixtures.sandbox


@pytest.fixture
def sync_settings(settings: Settings, sandbox: Sandbox) -> Settings:
    """The session's settings aimed at this test's sandbox, with short timeouts."""
    return settings.model_copy(
        update={
            "MAILCHIMP_SANDBOX_URL": sandbox.url,
            "MAILCHIMP_TIMEOUT_SECONDS": 5.0,
            "SYNC_BACKOFF_BASE_SECONDS": 0.05,
            "SYNC_BACKOFF_MAX_SECONDS": 0.5,
            "SYNC_POLL_INTERVAL_SECONDS": 0.2,
        }
    )


@dataclass
class Service:
    """The service on a real port (Mailchimp's webhook validation GET must reach it)."""

    url: str
    http: httpx.AsyncClient
    settings: Settings
    app: Any
    auth: Callable[..., dict[str, str]]

    async def connect(self, owner: str = OWNER) -> str:
        """POST …/connect → the authorize URL."""
        r = await self.http.post("/api/integrations/mailchimp/connect", headers=self.auth(owner))
        assert r.status_code == 200, r.text
        return str(r.json()["authorize_url"])

    async def status(self, owner: str = OWNER) -> dict[str, Any]:
        """GET /api/integrations/mailchimp."""
        r = await self.http.get("/api/integrations/mailchimp", headers=self.auth(owner))
        assert r.status_code == 200, r.text
        return dict(r.json())


async def authorize(url: str, *, decision: str = "auto") -> str:
    """Follow the authorize URL at the sandbox as the user's browser; returns the callback URL."""
    extra = "&auto=1" if decision == "auto" else f"&decision={decision}"
    async with httpx.AsyncClient(timeout=30) as browser:
        r = await browser.get(url + extra, follow_redirects=False)
    assert r.status_code == 302, r.text
    return str(r.headers["location"])


def service_settings(sync_settings: Settings, port: int, **overrides: Any) -> Settings:
    """Settings of the served service: its public URL, the SPA origin, more overrides."""
    return sync_settings.model_copy(
        update={
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "CORS_ORIGINS": [SPA_ORIGIN],
            **overrides,
        }
    )


@pytest.fixture
def serve(
    sync_settings: Settings, runtime: Runtime, auth: Callable[..., dict[str, str]]
) -> Callable[..., Any]:
    """Start the service over TCP with settings overrides: `async with serve(**kw) as svc`."""
    import contextlib

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Service]:
        port = free_port()
        settings = service_settings(sync_settings, port, **overrides)
        app = create_app(settings, runtime=runtime)
        async with (
            run_server(app, port=port) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            yield Service(url=url, http=http, settings=settings, app=app, auth=auth)

    return start


@pytest.fixture
async def service(serve: Callable[..., Any]) -> AsyncIterator[Service]:
    """The service over TCP with the test's sandbox."""
    async with serve() as svc:
        yield svc


async def sandbox_webhooks(sb: Sandbox, list_id: str = DEFAULT_LIST_ID) -> list[Any]:
    """The audience's webhooks as Mailchimp lists them."""
    r = await sb.api("GET", f"/lists/{list_id}/webhooks")
    assert r.status_code == 200, r.text
    return list(r.json()["webhooks"])


async def run_reconcile(
    runtime: Runtime, settings: Settings, *, worker_id: str | None = None, **kw: Any
) -> Any:
    """Claim and execute one reconcile run with the account gates working (no queue drain)."""
    engine = SyncEngine(runtime.engine, settings, worker_id=worker_id)
    stop = asyncio.Event()
    slots = asyncio.create_task(engine.slots.run(stop))
    try:
        return await Reconciler(settings, **kw).run_once(engine)
    finally:
        stop.set()
        engine.slots.wake.set()
        await slots
        await engine.aclose()


async def drain(runtime: Runtime, settings: Settings) -> None:
    """Send every queued row (the worker's normal pass)."""
    engine = SyncEngine(runtime.engine, settings)
    try:
        await engine.run_until_idle(limit_seconds=60)
    finally:
        await engine.aclose()


class LogCapture(logging.Handler):
    """Every log line as the service renders it."""

    def __init__(self, formatter: logging.Formatter | None) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


__all__ = [
    "DEFAULT_API_KEY",
    "OTHER",
    "OWNER",
    "LogCapture",
    "Service",
    "authorize",
    "drain",
    "run_reconcile",
    "sandbox_webhooks",
    "wait_for",
]
