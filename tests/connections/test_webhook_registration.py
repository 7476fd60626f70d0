"""The webhook URL the service registers, and what the status says when registering fails."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx

from app.config import Settings
from app.main import Runtime, create_app
from tests.conftest import fetch
from tests.connections.conftest import (
    DEFAULT_API_KEY,
    LogCapture,
    Service,
    run_reconcile,
    sandbox_webhooks,
    service_settings,
)
from tests.support.servers import free_port, run_server
from tests.support.sync import Sandbox, wait_for


async def _webhook_state(runtime: Runtime) -> dict[str, Any] | None:
    rows = await fetch(runtime, "SELECT webhook_id, webhook_error FROM connections")
    return rows[0] if rows else None


class TestDevelopmentUrl:
    def test_the_default_public_url_follows_the_served_port(self, sync_settings: Settings) -> None:
        settings = sync_settings.model_copy(update={"PUBLIC_BASE_URL": "", "PORT": 8765})
        assert settings.public_base_url == "http://127.0.0.1:8765"
        pinned = settings.model_copy(update={"PUBLIC_BASE_URL": "https://crm.example.com/"})
        assert pinned.public_base_url == "https://crm.example.com"

    async def test_a_service_on_another_port_registers_a_webhook_that_reaches_it(
        self,
        sync_settings: Settings,
        runtime: Runtime,
        sandbox: Sandbox,
        auth: Callable[..., dict[str, str]],
    ) -> None:
        port = free_port()
        assert port != 8000
        # No PUBLIC_BASE_URL: the development default must say this port, not 8000.
        settings = service_settings(sync_settings, port, PUBLIC_BASE_URL="", PORT=port)
        app = create_app(settings, runtime=runtime)
        async with (
            run_server(app, port=port) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            r = await http.post(
                "/api/integrations/mailchimp/credentials",
                json={"api_key": DEFAULT_API_KEY},
                headers=auth(),
            )
            assert r.status_code == 200, r.text

            async def registered() -> bool:
                state = await _webhook_state(runtime)
                return bool(state and state["webhook_id"])

            await wait_for(registered, within=20)
        (hook,) = await sandbox_webhooks(sandbox)
        assert hook["url"].startswith(f"http://127.0.0.1:{port}/api/webhooks/mailchimp/")


class TestRegistrationFailure:
    async def test_the_status_says_why_the_webhook_is_not_registered(
        self, serve: Callable[..., Any], runtime: Runtime, sandbox: Sandbox
    ) -> None:
        # Port 9 (discard) answers nothing: Mailchimp's validating GET fails.
        async with serve(PUBLIC_BASE_URL="http://127.0.0.1:9") as svc:
            svc_: Service = svc
            r = await svc_.http.post(
                "/api/integrations/mailchimp/credentials",
                json={"api_key": DEFAULT_API_KEY},
                headers=svc_.auth(),
            )
            assert r.status_code == 200, r.text

            async def failed() -> bool:
                state = await _webhook_state(runtime)
                return bool(state and state["webhook_error"])

            await wait_for(failed, within=20)
            status = await svc_.status()
        assert status["webhook_registered"] is False
        assert status["webhook_error"].startswith("Webhook not registered:")
        assert await sandbox_webhooks(sandbox) == []

    async def test_the_reconcile_log_line_carries_the_reason(
        self, serve: Callable[..., Any], runtime: Runtime, sandbox: Sandbox
    ) -> None:
        async with serve(PUBLIC_BASE_URL="http://127.0.0.1:9") as svc:
            r = await svc.http.post(
                "/api/integrations/mailchimp/credentials",
                json={"api_key": DEFAULT_API_KEY},
                headers=svc.auth(),
            )
            assert r.status_code == 200, r.text
            root = logging.getLogger()
            capture = LogCapture(root.handlers[0].formatter if root.handlers else None)
            root.addHandler(capture)
            try:
                await run_reconcile(runtime, svc.settings)
            finally:
                root.removeHandler(capture)
        lines = [line for line in capture.lines if "sync.reconcile.webhook_failed" in line]
        assert lines, capture.lines[-20:]
        assert "Webhook not registered" in lines[0]
        state = await _webhook_state(runtime)
        assert state is not None and state["webhook_error"].startswith("Webhook not registered:")


class TestOneWebhook:
    async def test_registrations_at_once_create_one_webhook_and_delete_none(
        self, serve: Callable[..., Any], runtime: Runtime, sandbox: Sandbox
    ) -> None:
        """The connect's background registration, another API replica's and a reconcile run
        all keep the webhook at once: one is created, none is created twice and deleted (the
        duplicate a later Sync Now would delete)."""
        import asyncio

        from app.connections.service import connection_service

        async with serve() as svc:
            r = await svc.http.post(
                "/api/integrations/mailchimp/credentials",
                json={"api_key": DEFAULT_API_KEY},
                headers=svc.auth(),
            )
            assert r.status_code == 200, r.text
            (row,) = await fetch(runtime, "SELECT id FROM connections")
            transport = httpx.AsyncHTTPTransport()
            try:
                await asyncio.gather(
                    *(
                        connection_service.register_webhook(
                            maker=runtime.sessionmaker,
                            settings=svc.settings,
                            transport=transport,
                            connection_id=row["id"],
                        )
                        for _ in range(3)
                    ),
                    run_reconcile(runtime, svc.settings),
                )
            finally:
                await transport.aclose()
            await wait_for(lambda: _registered(runtime), within=20)
        assert len(await sandbox_webhooks(sandbox)) == 1
        hooks = [r for r in await sandbox.requests() if "/webhooks" in r["path"]]
        assert len([r for r in hooks if r["method"] == "POST"]) == 1
        assert [r for r in hooks if r["method"] == "DELETE"] == []
        (state,) = await fetch(runtime, "SELECT webhook_id FROM connections")
        assert state["webhook_id"] == (await sandbox_webhooks(sandbox))[0]["id"]


async def _registered(runtime: Runtime) -> bool:
    state = await _webhook_state(runtime)
    return bool(state and state["webhook_id"])


class TimeoutAfterCreate(httpx.AsyncBaseTransport):
    """Forwards requests; the first webhook create is applied by the provider but its answer
    never arrives (a read timeout)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.timed_out = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if (
            request.method == "POST"
            and request.url.path.endswith("/webhooks")
            and not self.timed_out
        ):
            await response.aread()
            self.timed_out = True
            raise httpx.ReadTimeout("answer lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_create_whose_answer_was_lost_is_not_sent_again(
    serve: Callable[..., Any], runtime: Runtime, sandbox: Sandbox
) -> None:
    """The reconcile's retry lists the webhooks again and keeps the one the lost answer
    created, rather than creating a second (which the next run would delete)."""
    import asyncio

    from app.sync.engine import SyncEngine
    from app.sync.reconcile import Reconciler

    async with serve() as svc:
        r = await svc.http.post(
            "/api/integrations/mailchimp/credentials",
            json={"api_key": DEFAULT_API_KEY},
            headers=svc.auth(),
        )
        assert r.status_code == 200, r.text
        await wait_for(lambda: _registered(runtime), within=20)
        for hook in await sandbox_webhooks(sandbox):  # someone deletes it at Mailchimp
            await sandbox.api("DELETE", f"/lists/{hook['list_id']}/webhooks/{hook['id']}")
        await sandbox.clear_requests()
        transport = TimeoutAfterCreate()
        engine = SyncEngine(runtime.engine, svc.settings, transport=transport)
        stop = asyncio.Event()
        slots = asyncio.create_task(engine.slots.run(stop))
        try:
            await Reconciler(svc.settings).run_once(engine)
        finally:
            stop.set()
            engine.slots.wake.set()
            await slots
            await engine.aclose()
            await transport.aclose()
        assert transport.timed_out
    hooks = [r for r in await sandbox.requests() if "/webhooks" in r["path"]]
    assert len([r for r in hooks if r["method"] == "POST"]) == 1
    assert [r for r in hooks if r["method"] == "DELETE"] == []
    (hook,) = await sandbox_webhooks(sandbox)
    (state,) = await fetch(runtime, "SELECT webhook_id, webhook_error FROM connections")
    assert state == {"webhook_id": hook["id"], "webhook_error": None}
