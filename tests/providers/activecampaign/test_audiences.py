"""ActiveCampaign with several audience mappings (lists by rule, issue 17): the service and
the sandbox over real HTTP, real PostgreSQL, the worker draining the queue."""

from __future__ import annotations

from typing import Any

import pytest

from app.main import Runtime
from tests.conftest import fetch
from tests.connections.conftest import run_reconcile
from tests.providers.activecampaign.conftest import LIST, Ac, Service
from tests.providers.activecampaign.test_flow import connected, drain, person

BASE = "/api/integrations/activecampaign/audiences/mappings"


async def settle(runtime: Runtime, svc: Service) -> None:
    while await run_reconcile(runtime, svc.settings) is not None:
        pass
    await drain(runtime, svc.settings)


@pytest.fixture
async def two_lists(service: Service, ac: Ac, runtime: Runtime) -> dict[str, Any]:
    """The default list takes tag `news`, a second list takes tag `vip`."""
    await connected(service, ac, runtime)
    await settle(runtime, service)
    vip_list = await ac.new_list("VIP")
    (default,) = (await service.http.get(BASE, headers=service.auth())).json()["items"]
    r = await service.http.put(
        f"{BASE}/{default['id']}",
        json={"audience_id": LIST, "rule": {"tags_any": ["news"]}},
        headers=service.auth(),
    )
    assert r.status_code == 200, r.text
    r = await service.http.post(
        BASE, json={"audience_id": vip_list, "rule": {"tags_any": ["vip"]}}, headers=service.auth()
    )
    assert r.status_code == 201, r.text
    await settle(runtime, service)
    return {"default": default["id"], "vip": r.json()["id"], "vip_list": vip_list}


def statuses(found: dict[str, Any]) -> dict[str, int]:
    return {str(k): int(v["status"]) for k, v in found["lists"].items()}


class TestMappings:
    async def test_two_mappings_by_tag_route_contacts_to_their_lists(
        self, service: Service, ac: Ac, runtime: Runtime, two_lists: dict[str, Any]
    ) -> None:
        await service.create(email="news@example.com", tags=["news"])
        await service.create(email="vip@example.com", tags=["vip"])
        both = await service.create(email="both@example.com", tags=["news", "vip"])
        await service.create(email="none@example.com", tags=["other"])
        await drain(runtime, service.settings)
        vip = two_lists["vip_list"]
        assert statuses(await person(ac, "news@example.com")) == {LIST: 1}
        assert statuses(await person(ac, "vip@example.com")) == {vip: 1}
        assert statuses(await person(ac, "both@example.com")) == {LIST: 1, vip: 1}
        assert await ac.person("none@example.com") is None
        lines = {s["mapping_id"]: s for s in (await service.get(both["id"]))["sync"]}
        assert set(lines) == {two_lists["default"], two_lists["vip"]}
        assert all(s["status"] == "synced" and s["in_audience"] for s in lines.values())

    async def test_a_tag_change_joins_the_new_list_and_leaves_the_old_without_an_unsubscribe(
        self, service: Service, ac: Ac, runtime: Runtime, two_lists: dict[str, Any]
    ) -> None:
        c = await service.create(email="mover@example.com", tags=["news"])
        await drain(runtime, service.settings)
        before = await person(ac, "mover@example.com")
        assert statuses(before) == {LIST: 1}
        await service.patch(c["id"], tags=["vip"])
        await drain(runtime, service.settings)
        after = await person(ac, "mover@example.com")
        # The same contact, now active on the VIP list. ActiveCampaign has no removal from
        # a list other than the person's unsubscribe (status 2), so the old list keeps its
        # active status (consent untouched) and only our tag leaves it (DESIGN §14.5).
        assert after["id"] == before["id"]
        assert statuses(after) == {LIST: 1, two_lists["vip_list"]: 1}
        assert set(after["tags"].values()) == {"vip"}
        (row,) = await fetch(
            runtime, "SELECT newsletter_opt_in FROM contacts WHERE id = :id", id=c["id"]
        )
        assert row["newsletter_opt_in"] is True
        lines = {s["mapping_id"]: s for s in (await service.get(c["id"]))["sync"]}
        assert lines[two_lists["vip"]]["in_audience"] is True
        assert lines[two_lists["default"]]["in_audience"] is False
        assert lines[two_lists["default"]]["remote_status"] == "archived"
        # Back to `news`: the default mapping takes it again (its status is still active, so
        # no re-subscribe is needed and nothing is refused).
        await service.patch(c["id"], tags=["news"])
        await drain(runtime, service.settings)
        lines = {s["mapping_id"]: s for s in (await service.get(c["id"]))["sync"]}
        assert lines[two_lists["default"]]["in_audience"] is True
        assert lines[two_lists["default"]]["status"] == "synced"
        assert statuses(await person(ac, "mover@example.com")) == {
            LIST: 1,
            two_lists["vip_list"]: 1,
        }

    async def test_a_leave_keeps_the_tags_another_mapping_still_pushes(
        self, service: Service, ac: Ac, runtime: Runtime, two_lists: dict[str, Any]
    ) -> None:
        # Tags are the contact's, not a list's: leaving the `news` list must not take away
        # `vip`, which the VIP mapping still pushes for the same person.
        c = await service.create(email="both@example.com", tags=["news", "vip"])
        await drain(runtime, service.settings)
        assert set((await person(ac, "both@example.com"))["tags"].values()) == {"news", "vip"}
        await service.patch(c["id"], tags=["vip", "gold"])
        await drain(runtime, service.settings)
        after = await person(ac, "both@example.com")
        assert set(after["tags"].values()) == {"vip", "gold"}
        lines = {s["mapping_id"]: s for s in (await service.get(c["id"]))["sync"]}
        assert lines[two_lists["default"]]["in_audience"] is False
        assert lines[two_lists["vip"]]["status"] == "synced"
        # The VIP mapping's later change still removes what nobody wants any more.
        await service.patch(c["id"], tags=["vip"])
        await drain(runtime, service.settings)
        assert set((await person(ac, "both@example.com"))["tags"].values()) == {"vip"}

    async def test_sync_now_per_mapping_reconciles_only_that_list(
        self, service: Service, runtime: Runtime, two_lists: dict[str, Any]
    ) -> None:
        r = await service.http.post(f"{BASE}/{two_lists['vip']}/sync", headers=service.auth())
        assert r.status_code == 202, r.text
        (run,) = await fetch(
            runtime,
            "SELECT mapping_id, progress FROM sync_runs WHERE id = :id",
            id=r.json()["run_id"],
        )
        assert str(run["mapping_id"]) == two_lists["vip"]
        assert run["progress"]["audience_id"] == two_lists["vip_list"]
        await run_reconcile(runtime, service.settings)
        (done,) = await fetch(
            runtime, "SELECT state FROM sync_runs WHERE id = :id", id=r.json()["run_id"]
        )
        assert done["state"] == "done"

    async def test_a_preference_map_is_422_until_activecampaign_lists_are_built_as_preferences(
        self, service: Service, runtime: Runtime, two_lists: dict[str, Any]
    ) -> None:
        before = await fetch(runtime, "SELECT * FROM audience_mappings ORDER BY id")
        r = await service.http.put(
            f"{BASE}/{two_lists['vip']}",
            json={
                "audience_id": two_lists["vip_list"],
                "rule": {"tags_any": ["vip"]},
                "interests": {"weekly": LIST},
            },
            headers=service.auth(),
        )
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["errors"][0]["field"] == "interests"
        assert await fetch(runtime, "SELECT * FROM audience_mappings ORDER BY id") == before
