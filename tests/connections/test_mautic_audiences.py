"""Mautic with several audience mappings (segments by rule, issue 17): the service and the
Mautic sandbox over TCP, real PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from app.main import Runtime
from tests.conftest import fetch
from tests.connections import test_mautic_flows as flows
from tests.connections.conftest import Service, drain, run_reconcile
from tests.connections.test_mautic_flows import Crm, remote
from tests.providers.mautic.conftest import Mautic

mautic = flows.mautic
sync_settings = flows.sync_settings
connected = flows.connected
BASE = "/api/integrations/mautic/audiences/mappings"


async def settle(runtime: Runtime, svc: Service) -> None:
    while await run_reconcile(runtime, svc.settings) is not None:
        pass
    await drain(runtime, svc.settings)


@pytest.fixture
async def two_segments(connected: Service, mautic: Mautic, runtime: Runtime) -> dict[str, Any]:
    """The default segment takes tag `news`, a second segment takes tag `vip`."""
    await settle(runtime, connected)
    vip_segment = await mautic.new_segment("VIP")
    (default,) = (await connected.http.get(BASE, headers=connected.auth())).json()["items"]
    r = await connected.http.put(
        f"{BASE}/{default['id']}",
        json={"audience_id": mautic.segment, "rule": {"tags_any": ["news"]}},
        headers=connected.auth(),
    )
    assert r.status_code == 200, r.text
    r = await connected.http.post(
        BASE,
        json={"audience_id": vip_segment, "rule": {"tags_any": ["vip"]}},
        headers=connected.auth(),
    )
    assert r.status_code == 201, r.text
    await settle(runtime, connected)
    # Both audiences carry our webhook (the default mapping's is the connection's own).
    items = (await connected.http.get(BASE, headers=connected.auth())).json()["items"]
    assert [m["webhook_registered"] for m in items] == [True, True]
    return {"default": default["id"], "vip": r.json()["id"], "vip_segment": vip_segment}


def segments(person: dict[str, Any]) -> set[str]:
    return {str(s) for s in person["segments"]}


class TestMappings:
    async def test_two_mappings_by_tag_route_contacts_to_their_segments(
        self, connected: Service, mautic: Mautic, runtime: Runtime, two_segments: dict[str, Any]
    ) -> None:
        crm = Crm(connected)
        await crm.create(email="news@example.com", tags=["news"])
        await crm.create(email="vip@example.com", tags=["vip"])
        both = await crm.create(email="both@example.com", tags=["news", "vip"])
        await crm.create(email="none@example.com", tags=["other"])
        await drain(runtime, connected.settings)
        people = await remote(mautic)
        assert "none@example.com" not in people
        vip = two_segments["vip_segment"]
        assert segments(people["news@example.com"]) == {mautic.segment}
        assert segments(people["vip@example.com"]) == {vip}
        assert segments(people["both@example.com"]) == {mautic.segment, vip}
        lines = {s["mapping_id"]: s for s in (await crm.get(both["id"]))["sync"]}
        assert set(lines) == {two_segments["default"], two_segments["vip"]}
        assert all(s["status"] == "synced" and s["in_audience"] for s in lines.values())

    async def test_a_tag_change_moves_a_contact_between_segments_with_consent_untouched(
        self, connected: Service, mautic: Mautic, runtime: Runtime, two_segments: dict[str, Any]
    ) -> None:
        crm = Crm(connected)
        c = await crm.create(email="mover@example.com", tags=["news"])
        await drain(runtime, connected.settings)
        before = (await remote(mautic))["mover@example.com"]
        assert segments(before) == {mautic.segment}
        await crm.patch(c["id"], tags=["vip"])
        await drain(runtime, connected.settings)
        after = (await remote(mautic))["mover@example.com"]
        # The same Mautic contact (a leave never deletes a person the CRM still holds), only
        # in the VIP segment now, with no do-not-contact entry.
        assert after["id"] == before["id"]
        assert segments(after) == {two_segments["vip_segment"]}
        assert not after.get("doNotContact")
        (row,) = await fetch(
            runtime, "SELECT newsletter_opt_in FROM contacts WHERE id = :id", id=c["id"]
        )
        assert row["newsletter_opt_in"] is True
        lines = {s["mapping_id"]: s for s in (await crm.get(c["id"]))["sync"]}
        assert lines[two_segments["vip"]]["in_audience"] is True
        assert lines[two_segments["default"]]["in_audience"] is False
        # And back.
        await crm.patch(c["id"], tags=["news"])
        await drain(runtime, connected.settings)
        assert segments((await remote(mautic))["mover@example.com"]) == {mautic.segment}

    async def test_sync_now_per_mapping_reconciles_only_that_segment(
        self, connected: Service, runtime: Runtime, two_segments: dict[str, Any]
    ) -> None:
        r = await connected.http.post(
            f"{BASE}/{two_segments['vip']}/sync", headers=connected.auth()
        )
        assert r.status_code == 202, r.text
        (run,) = await fetch(
            runtime,
            "SELECT mapping_id, progress FROM sync_runs WHERE id = :id",
            id=r.json()["run_id"],
        )
        assert str(run["mapping_id"]) == two_segments["vip"]
        assert run["progress"]["audience_id"] == two_segments["vip_segment"]
        await run_reconcile(runtime, connected.settings)
        (done,) = await fetch(
            runtime, "SELECT state FROM sync_runs WHERE id = :id", id=r.json()["run_id"]
        )
        assert done["state"] == "done"
