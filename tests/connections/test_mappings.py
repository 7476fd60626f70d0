"""Several audiences per connection, each with a rule (issue 17), against the sandbox."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from app.main import Runtime
from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID
from tests.conftest import fetch
from tests.connections.conftest import OTHER, Service, drain, run_reconcile, sandbox_webhooks
from tests.support.sync import Sandbox, wait_for

BASE = "/api/integrations/mailchimp/audiences/mappings"


def h(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode()).hexdigest()


async def connect(service: Service) -> None:
    r = await service.http.post(
        "/api/integrations/mailchimp/api-key",
        json={"api_key": DEFAULT_API_KEY, "audience_id": DEFAULT_LIST_ID},
        headers=service.auth(),
    )
    assert r.status_code == 200, r.text


async def second_list(sandbox: Sandbox, name: str = "VIP audience") -> str:
    """Another audience in the sandbox account (POST /_control/accounts/{id}/lists)."""
    accounts = (await sandbox.http.get("/_control/accounts")).json()["accounts"]
    r = await sandbox.http.post(
        f"/_control/accounts/{accounts[0]['id']}/lists", json={"name": name}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def list_members(sandbox: Sandbox, list_id: str) -> dict[str, dict[str, Any]]:
    body = (await sandbox.http.get(f"/_control/lists/{list_id}/members")).json()
    return {m["email_address"].lower(): m for m in body["members"]}


async def contact(service: Service, email: str, **body: Any) -> dict[str, Any]:
    body.setdefault("newsletter_opt_in", True)
    r = await service.http.post(
        "/api/contacts", json={"email": email, **body}, headers=service.auth()
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def mappings(service: Service, owner: str | None = None) -> list[dict[str, Any]]:
    r = await service.http.get(BASE, headers=service.auth(*([owner] if owner else [])))
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def settle(runtime: Runtime, service: Service) -> None:
    """Run every queued reconcile run, then drain the queue."""
    while await run_reconcile(runtime, service.settings) is not None:
        pass
    await drain(runtime, service.settings)


@pytest.fixture
async def two_audiences(service: Service, sandbox: Sandbox, runtime: Runtime) -> dict[str, Any]:
    """The default audience takes tag `news`, a second audience (mapped) takes tag `vip`."""
    await connect(service)
    await run_reconcile(runtime, service.settings)
    vip_list = await second_list(sandbox)
    (default,) = await mappings(service)
    r = await service.http.put(
        f"{BASE}/{default['id']}",
        json={"audience_id": DEFAULT_LIST_ID, "rule": {"tags_any": ["news"]}},
        headers=service.auth(),
    )
    assert r.status_code == 200, r.text
    r = await service.http.post(
        BASE,
        json={"audience_id": vip_list, "rule": {"tags_any": ["VIP"]}},
        headers=service.auth(),
    )
    assert r.status_code == 201, r.text
    vip = r.json()
    await settle(runtime, service)
    return {"default": default["id"], "vip": vip["id"], "vip_list": vip_list}


class TestDefault:
    async def test_a_connection_has_one_mapping_with_the_rule_all_and_the_connections_id(
        self, service: Service
    ) -> None:
        await connect(service)

        async def registered() -> bool:
            # The webhook is registered in the background after connect: compare the two
            # views once it is, not across the moment it flips.
            return all(m["webhook_registered"] for m in (await service.status())["mappings"])

        await wait_for(registered, within=20)
        status = await service.status()
        (only,) = status["mappings"]
        assert only["id"] == status["connection_id"]
        assert only["default"] is True
        assert only["rule"] == {"all": True, "kinds": None, "tags_any": None, "tags_all": None}
        assert only["audience"]["id"] == DEFAULT_LIST_ID
        assert await mappings(service) == status["mappings"]


class TestRouting:
    async def test_two_mappings_by_tag_route_contacts_to_their_audiences(
        self,
        service: Service,
        sandbox: Sandbox,
        runtime: Runtime,
        two_audiences: dict[str, Any],
    ) -> None:
        await contact(service, "news@example.com", tags=["news"])
        await contact(service, "vip@example.com", tags=["vip"])
        both = await contact(service, "both@example.com", tags=["news", "vip"])
        await contact(service, "none@example.com", tags=["other"])
        await drain(runtime, service.settings)

        default = await list_members(sandbox, DEFAULT_LIST_ID)
        vip = await list_members(sandbox, two_audiences["vip_list"])
        assert {k for k, m in default.items() if m["status"] == "subscribed"} == {
            "news@example.com",
            "both@example.com",
        }
        assert {k for k, m in vip.items() if m["status"] == "subscribed"} == {
            "vip@example.com",
            "both@example.com",
        }
        # The contact's sync lists both mappings, each with its state.
        got = (await service.http.get(f"/api/contacts/{both['id']}", headers=service.auth())).json()
        lines = {line["mapping_id"]: line for line in got["sync"]}
        assert set(lines) == {two_audiences["default"], two_audiences["vip"]}
        assert all(line["status"] == "synced" and line["in_audience"] for line in lines.values())
        # GET /api/contacts?audience= lists what a mapping's rule selects.
        r = await service.http.get(
            "/api/contacts", params={"audience": two_audiences["vip"]}, headers=service.auth()
        )
        assert r.status_code == 200, r.text
        assert {c["email"] for c in r.json()["items"]} == {"vip@example.com", "both@example.com"}

    async def test_a_tag_change_moves_a_contact_between_audiences_with_consent_untouched(
        self,
        service: Service,
        sandbox: Sandbox,
        runtime: Runtime,
        two_audiences: dict[str, Any],
    ) -> None:
        c = await contact(service, "mover@example.com", tags=["news"])
        await drain(runtime, service.settings)
        assert (await list_members(sandbox, DEFAULT_LIST_ID))["mover@example.com"][
            "status"
        ] == "subscribed"
        assert "mover@example.com" not in await list_members(sandbox, two_audiences["vip_list"])

        r = await service.http.patch(
            f"/api/contacts/{c['id']}", json={"tags": ["vip"]}, headers=service.auth()
        )
        assert r.status_code == 200, r.text
        await drain(runtime, service.settings)
        # It left the default audience as a local delete would (archived, not unsubscribed)…
        left = (await list_members(sandbox, DEFAULT_LIST_ID))["mover@example.com"]
        assert left["status"] == "archived"
        # …and joined the VIP audience, subscribed.
        joined = (await list_members(sandbox, two_audiences["vip_list"]))["mover@example.com"]
        assert joined["status"] == "subscribed"
        (row,) = await fetch(
            runtime,
            "SELECT newsletter_opt_in, email_status FROM contacts WHERE id = :id",
            id=c["id"],
        )
        assert row == {"newsletter_opt_in": True, "email_status": "ok"}
        changes = await fetch(
            runtime,
            "SELECT fields FROM contact_changes WHERE contact_id = :id AND op = 'update'"
            " ORDER BY id",
            id=c["id"],
        )
        assert not any("newsletter_opt_in" in (ch["fields"].get("after") or {}) for ch in changes)

        # And back: it returns to the default audience and leaves the VIP one.
        r = await service.http.patch(
            f"/api/contacts/{c['id']}", json={"tags": ["news"]}, headers=service.auth()
        )
        await drain(runtime, service.settings)
        assert (await list_members(sandbox, DEFAULT_LIST_ID))["mover@example.com"][
            "status"
        ] == "subscribed"
        assert (await list_members(sandbox, two_audiences["vip_list"]))["mover@example.com"][
            "status"
        ] == "archived"

    async def test_a_rule_change_reconciles_the_mapping(
        self,
        service: Service,
        sandbox: Sandbox,
        runtime: Runtime,
        two_audiences: dict[str, Any],
    ) -> None:
        await contact(service, "gold@example.com", tags=["gold"])
        await drain(runtime, service.settings)
        assert "gold@example.com" not in await list_members(sandbox, two_audiences["vip_list"])
        r = await service.http.put(
            f"{BASE}/{two_audiences['vip']}",
            json={"audience_id": two_audiences["vip_list"], "rule": {"tags_any": ["vip", "gold"]}},
            headers=service.auth(),
        )
        assert r.status_code == 200, r.text
        assert r.json()["rule"]["tags_any"] == ["gold", "vip"]
        await settle(runtime, service)
        vip = await list_members(sandbox, two_audiences["vip_list"])
        assert vip["gold@example.com"]["status"] == "subscribed"

    async def test_sync_now_per_mapping_reconciles_only_that_audience(
        self, service: Service, runtime: Runtime, two_audiences: dict[str, Any]
    ) -> None:
        r = await service.http.post(f"{BASE}/{two_audiences['vip']}/sync", headers=service.auth())
        assert r.status_code == 202, r.text
        (run,) = await fetch(
            runtime,
            "SELECT mapping_id, progress FROM sync_runs WHERE id = :id",
            id=r.json()["run_id"],
        )
        assert str(run["mapping_id"]) == two_audiences["vip"]
        assert run["progress"]["audience_id"] == two_audiences["vip_list"]
        await run_reconcile(runtime, service.settings)
        (done,) = await fetch(
            runtime, "SELECT state FROM sync_runs WHERE id = :id", id=r.json()["run_id"]
        )
        assert done["state"] == "done"


class TestValidation:
    async def snapshot(self, runtime: Runtime) -> list[dict[str, Any]]:
        return await fetch(runtime, "SELECT * FROM audience_mappings ORDER BY created_at")

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"audience_id": "nope1234", "rule": {"all": True}}, "audience_id"),
            ({"audience_id": DEFAULT_LIST_ID, "rule": {"tags_any": ["x"]}}, "audience_id"),
            ({"audience_id": "LIST", "rule": {}}, "rule"),
            ({"audience_id": "LIST", "rule": {"tags_any": []}}, "rule"),
            ({"audience_id": "LIST", "rule": {"all": True, "kinds": ["lead"]}}, "rule"),
            ({"audience_id": "LIST", "rule": {"kinds": ["martian"]}}, "rule.kinds.0"),
        ],
    )
    async def test_bad_input_is_422_problem_json_and_nothing_is_written(
        self,
        service: Service,
        sandbox: Sandbox,
        runtime: Runtime,
        body: dict[str, Any],
        field: str,
    ) -> None:
        await connect(service)
        other = await second_list(sandbox)
        body = {
            **body,
            "audience_id": other if body["audience_id"] == "LIST" else body["audience_id"],
        }
        before = await self.snapshot(runtime)
        runs = await fetch(runtime, "SELECT count(*) AS n FROM sync_runs")
        r = await service.http.post(BASE, json=body, headers=service.auth())
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert field in {e["field"] for e in r.json()["errors"]}
        assert await self.snapshot(runtime) == before
        assert await fetch(runtime, "SELECT count(*) AS n FROM sync_runs") == runs

    async def test_two_mappings_on_one_audience_is_422(
        self, service: Service, sandbox: Sandbox, runtime: Runtime
    ) -> None:
        await connect(service)
        other = await second_list(sandbox)
        r = await service.http.post(
            BASE, json={"audience_id": other, "rule": {"all": True}}, headers=service.auth()
        )
        assert r.status_code == 201, r.text
        before = await self.snapshot(runtime)
        r = await service.http.post(
            BASE, json={"audience_id": other, "rule": {"kinds": ["lead"]}}, headers=service.auth()
        )
        assert r.status_code == 422, r.text
        assert await self.snapshot(runtime) == before
        # Moving the VIP mapping onto the default audience is refused too.
        vip = (await mappings(service))[1]
        r = await service.http.put(
            f"{BASE}/{vip['id']}",
            json={"audience_id": DEFAULT_LIST_ID, "rule": {"all": True}},
            headers=service.auth(),
        )
        assert r.status_code == 422, r.text
        assert await self.snapshot(runtime) == before

    async def test_the_default_mapping_cannot_be_deleted(self, service: Service) -> None:
        await connect(service)
        (default,) = await mappings(service)
        r = await service.http.delete(f"{BASE}/{default['id']}", headers=service.auth())
        assert r.status_code == 409, r.text


class TestIsolation:
    async def test_another_owners_mapping_is_404_everywhere(
        self, service: Service, sandbox: Sandbox, runtime: Runtime
    ) -> None:
        await connect(service)
        other_list = await second_list(sandbox)
        r = await service.http.post(
            BASE, json={"audience_id": other_list, "rule": {"all": True}}, headers=service.auth()
        )
        mine = r.json()["id"]
        # The other owner has its own connection to the same account.
        r = await service.http.post(
            "/api/integrations/mailchimp/api-key",
            json={"api_key": DEFAULT_API_KEY, "audience_id": DEFAULT_LIST_ID},
            headers=service.auth(OTHER),
        )
        assert r.status_code == 200, r.text
        before = await fetch(runtime, "SELECT * FROM audience_mappings ORDER BY id")
        auth = service.auth(OTHER)
        body = {"audience_id": other_list, "rule": {"kinds": ["lead"]}}
        assert (await service.http.get(f"{BASE}/{mine}", headers=auth)).status_code == 404
        assert (
            await service.http.put(f"{BASE}/{mine}", json=body, headers=auth)
        ).status_code == 404
        assert (await service.http.delete(f"{BASE}/{mine}", headers=auth)).status_code == 404
        assert (await service.http.post(f"{BASE}/{mine}/sync", headers=auth)).status_code == 404
        r = await service.http.get("/api/contacts", params={"audience": mine}, headers=auth)
        assert r.status_code == 404
        assert mine not in {m["id"] for m in await mappings(service, OTHER)}
        assert await fetch(runtime, "SELECT * FROM audience_mappings ORDER BY id") == before

    async def test_not_connected_is_404(self, service: Service) -> None:
        r = await service.http.get(BASE, headers=service.auth())
        assert r.status_code == 404


class TestInboundAndWebhooks:
    async def test_a_mapped_audience_has_our_webhook_and_its_events_update_its_mirror(
        self,
        service: Service,
        sandbox: Sandbox,
        runtime: Runtime,
        two_audiences: dict[str, Any],
    ) -> None:
        vip_list = two_audiences["vip_list"]
        assert len(await sandbox_webhooks(sandbox, vip_list)) == 1
        vip = next(m for m in await mappings(service) if m["id"] == two_audiences["vip"])
        assert vip["webhook_registered"] is True
        c = await contact(service, "both2@example.com", tags=["news", "vip"])
        await drain(runtime, service.settings)
        # The person unsubscribes from the VIP audience only.
        r = await sandbox.http.post(
            f"/_control/lists/{vip_list}/actions/unsubscribe", json={"email": "both2@example.com"}
        )
        assert r.status_code == 200, r.text

        async def arrived() -> bool:
            rows = await fetch(
                runtime, "SELECT newsletter_opt_in FROM contacts WHERE id = :id", id=c["id"]
            )
            return rows[0]["newsletter_opt_in"] is False

        await wait_for(arrived, within=20)
        mirrors = {
            str(r["mapping_id"]): r["remote_status"]
            for r in await fetch(
                runtime,
                "SELECT mapping_id, remote_status FROM sync_state WHERE email_key = :k",
                k="both2@example.com",
            )
        }
        assert mirrors == {
            two_audiences["vip"]: "unsubscribed",
            two_audiences["default"]: "subscribed",
        }
        # Consent is the contact's one flag: the other audience follows at the next send.
        await drain(runtime, service.settings)
        assert (await list_members(sandbox, DEFAULT_LIST_ID))["both2@example.com"][
            "status"
        ] == "unsubscribed"

    async def test_deleting_a_mapping_retires_its_webhook_and_leaves_its_members(
        self,
        service: Service,
        sandbox: Sandbox,
        runtime: Runtime,
        two_audiences: dict[str, Any],
    ) -> None:
        await contact(service, "stays@example.com", tags=["vip"])
        await drain(runtime, service.settings)
        r = await service.http.delete(f"{BASE}/{two_audiences['vip']}", headers=service.auth())
        assert r.status_code == 204, r.text
        assert await sandbox_webhooks(sandbox, two_audiences["vip_list"]) == []
        vip = await list_members(sandbox, two_audiences["vip_list"])
        assert vip["stays@example.com"]["status"] == "subscribed"
        left = await fetch(
            runtime,
            "SELECT count(*) AS n FROM sync_state WHERE mapping_id = :m",
            m=two_audiences["vip"],
        )
        assert left == [{"n": 0}]
        assert [m["id"] for m in await mappings(service)] == [two_audiences["default"]]
