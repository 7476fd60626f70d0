"""Disconnect, reconnect, and the Settings page's provider list."""

from __future__ import annotations

from typing import Any

from app.main import Runtime
from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID
from tests.conftest import fetch
from tests.connections.conftest import Service, authorize, drain, run_reconcile, sandbox_webhooks
from tests.support.sync import Sandbox, wait_for


async def count(runtime: Runtime, table: str) -> int:
    rows = await fetch(runtime, f"SELECT count(*) AS n FROM {table}")
    return int(rows[0]["n"])


async def webhook_registered(runtime: Runtime) -> bool:
    rows = await fetch(runtime, "SELECT webhook_id FROM connections")
    return bool(rows and rows[0]["webhook_id"])


class TestDisconnect:
    async def test_disconnect_then_reconnect(
        self, service: Service, sandbox: Sandbox, runtime: Runtime
    ) -> None:
        for email in ("a@example.com", "b@example.com"):
            r = await service.http.post(
                "/api/contacts",
                json={"email": email, "first_name": "X", "newsletter_opt_in": True},
                headers=service.auth(),
            )
            assert r.status_code == 201
        connected = await service.http.post(
            "/api/integrations/mailchimp/api-key",
            json={"api_key": DEFAULT_API_KEY},
            headers=service.auth(),
        )
        assert connected.status_code == 200
        await wait_for(lambda: webhook_registered(runtime), within=20)
        await run_reconcile(runtime, service.settings)
        await drain(runtime, service.settings)
        assert len(await sandbox.members()) == 2
        # Something still owed and a mirror: both go with the connection.
        r = await service.http.post(
            "/api/contacts",
            json={"email": "c@example.com", "newsletter_opt_in": True},
            headers=service.auth(),
        )
        assert r.status_code == 201
        assert await count(runtime, "sync_queue") == 1
        assert await count(runtime, "sync_state") == 2

        gone = await service.http.delete("/api/integrations/mailchimp", headers=service.auth())
        assert gone.status_code == 204
        assert await sandbox_webhooks(sandbox) == []
        for table in ("connections", "sync_queue", "sync_state", "sync_runs"):
            assert await count(runtime, table) == 0, table
        members = await sandbox.members()
        assert {m["status"] for m in members.values()} == {"subscribed"}  # they stay
        assert (await service.status())["connected"] is False
        again = await service.http.delete("/api/integrations/mailchimp", headers=service.auth())
        assert again.status_code == 404

        # Connecting again (OAuth this time) adopts the members already there: no writes.
        page = await service.http.get(await authorize(await service.connect()))
        assert page.status_code == 200
        status = await service.status()
        assert status["status"] == "active"
        assert status["audience"]["id"] == DEFAULT_LIST_ID
        await sandbox.clear_requests()
        run_id = await run_reconcile(runtime, service.settings)
        (run,) = await fetch(
            runtime, "SELECT kind, counts FROM sync_runs WHERE id = :id", id=run_id
        )
        assert run["kind"] == "initial"
        assert run["counts"]["matched"] == 2
        assert run["counts"]["to_push"] == 1  # c@, created while disconnected
        await wait_for(lambda: webhook_registered(runtime), within=20)
        assert len(await sandbox_webhooks(sandbox)) == 1
        member_writes = [
            r for r in await sandbox.requests() if r["method"] != "GET" and "/members" in r["path"]
        ]
        assert member_writes == []


class TestIntegrationList:
    async def test_every_provider_is_listed(self, service: Service) -> None:
        r = await service.http.get("/api/integrations", headers=service.auth())
        assert r.status_code == 200
        items: list[dict[str, Any]] = r.json()["items"]
        # Registered providers first (registration order), then those only announced.
        assert [(i["provider"], i["available"], i["connected"]) for i in items] == [
            ("mailchimp", True, False),
            ("constantcontact", True, False),
            ("activecampaign", True, False),
            ("mautic", True, False),
        ]
        assert items[0]["name"] == "Mailchimp"

    async def test_the_api_needs_a_token(self, service: Service) -> None:
        for method, path in (
            ("GET", "/api/integrations"),
            ("POST", "/api/integrations/mailchimp/connect"),
            ("POST", "/api/integrations/mailchimp/sync"),
            ("DELETE", "/api/integrations/mailchimp"),
        ):
            r = await service.http.request(method, path)
            assert r.status_code == 401, path

    async def test_sync_now_needs_a_connection(self, service: Service) -> None:
        r = await service.http.post("/api/integrations/mailchimp/sync", headers=service.auth())
        assert r.status_code == 404
