"""Mautic with several audience mappings (segments by rule, issue 17): the service and the
Mautic sandbox over TCP, real PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from app.main import Runtime
from tests.conftest import fetch
from tests.connections import test_mautic_flows as flows
from tests.connections.conftest import Service, drain, run_reconcile, wait_for
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


def tags_of(person: dict[str, Any]) -> set[str]:
    return {t["tag"] if isinstance(t, dict) else str(t) for t in person.get("tags") or []}


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

    async def test_a_leave_keeps_the_tags_another_mapping_still_pushes(
        self, connected: Service, mautic: Mautic, runtime: Runtime, two_segments: dict[str, Any]
    ) -> None:
        # Tags are the contact's, not a segment's: leaving the `news` segment must not take
        # away `vip`, which the VIP mapping still pushes for the same person.
        crm = Crm(connected)
        c = await crm.create(email="both@example.com", tags=["news", "vip"])
        await drain(runtime, connected.settings)
        assert tags_of((await remote(mautic))["both@example.com"]) == {"news", "vip"}
        await crm.patch(c["id"], tags=["vip", "gold"])
        await drain(runtime, connected.settings)
        after = (await remote(mautic))["both@example.com"]
        assert segments(after) == {two_segments["vip_segment"]}
        assert tags_of(after) == {"vip", "gold"}
        await crm.patch(c["id"], tags=["vip"])
        await drain(runtime, connected.settings)
        assert tags_of((await remote(mautic))["both@example.com"]) == {"vip"}

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


WRITES = ("PUT", "PATCH", "POST", "DELETE")


@pytest.fixture
async def prefs(connected: Service, mautic: Mautic, runtime: Runtime) -> dict[str, str]:
    """Three more segments; the default mapping maps two of them as preferences."""
    await settle(runtime, connected)
    ids = {
        "weekly": await mautic.new_segment("Weekly news"),
        "offers": await mautic.new_segment("Offers"),
        "events": await mautic.new_segment("Events"),  # not ours
    }
    (default,) = (await connected.http.get(BASE, headers=connected.auth())).json()["items"]
    r = await connected.http.put(
        f"{BASE}/{default['id']}",
        json={
            "audience_id": mautic.segment,
            "rule": {"all": True},
            "interests": {"weekly": ids["weekly"], "offers": ids["offers"]},
        },
        headers=connected.auth(),
    )
    assert r.status_code == 200, r.text
    assert r.json()["interests"] == {"weekly": ids["weekly"], "offers": ids["offers"]}
    await settle(runtime, connected)
    return ids


async def mautic_writes(mautic: Mautic) -> list[dict[str, Any]]:
    return [r for r in await mautic.requests() if r["method"] in WRITES and "/api/" in r["path"]]


async def changes_of(runtime: Runtime, contact_id: str) -> list[dict[str, Any]]:
    return await fetch(
        runtime,
        "SELECT source, fields FROM contact_changes WHERE contact_id = :id AND op = 'update'"
        " ORDER BY id",
        id=contact_id,
    )


class TestPreferences:
    async def test_preferences_go_out_as_segments_and_other_segments_stay(
        self, connected: Service, mautic: Mautic, runtime: Runtime, prefs: dict[str, str]
    ) -> None:
        crm = Crm(connected)
        c = await crm.create(email="pref@example.com", preferences=["weekly"])
        await drain(runtime, connected.settings)
        got = (await remote(mautic))["pref@example.com"]
        assert segments(got) == {mautic.segment, prefs["weekly"]}
        # The person joins a segment we do not map…
        await mautic.act("preferences", "pref@example.com", add=[prefs["events"]])
        # …and the CRM changes the preferences: only the mapped segments follow.
        await crm.patch(c["id"], preferences=["offers"])
        await drain(runtime, connected.settings)
        got = (await remote(mautic))["pref@example.com"]
        assert segments(got) == {mautic.segment, prefs["offers"], prefs["events"]}
        assert not got.get("doNotContact")
        assert (await crm.get(c["id"]))["newsletter_opt_in"] is True

    async def test_the_persons_change_at_the_preference_centre_comes_back_without_echo(
        self, connected: Service, mautic: Mautic, runtime: Runtime, prefs: dict[str, str]
    ) -> None:
        crm = Crm(connected)
        c = await crm.create(email="back@example.com", preferences=["weekly", "vip-dinner"])
        await drain(runtime, connected.settings)
        await mautic.http.delete("/_control/requests")
        await mautic.act(
            "preferences", "back@example.com", add=[prefs["offers"]], remove=[prefs["weekly"]]
        )

        async def arrived() -> bool:
            return (await crm.get(c["id"]))["preferences"] == ["vip-dinner", "offers"]

        await wait_for(arrived, within=10)
        changes = await changes_of(runtime, c["id"])
        assert changes and all(ch["source"] == "webhook:mautic" for ch in changes)
        assert {ch["fields"]["decision"] for ch in changes} == {"provider_newer"}
        assert changes[-1]["fields"]["after"]["preferences"] == ["vip-dinner", "offers"]
        # No echo: nothing is written back.
        await drain(runtime, connected.settings)
        assert await mautic_writes(mautic) == []
        got = (await remote(mautic))["back@example.com"]
        assert segments(got) == {mautic.segment, prefs["offers"]}

    async def test_a_newer_local_change_wins_and_the_next_send_restores_it(
        self, connected: Service, mautic: Mautic, runtime: Runtime, prefs: dict[str, str]
    ) -> None:
        crm = Crm(connected)
        c = await crm.create(email="crm@example.com", preferences=["weekly"])
        await drain(runtime, connected.settings)
        await fetch(
            runtime,
            "UPDATE contacts SET preferences_changed_at = now() + interval '1 hour' WHERE id = :id",
            id=c["id"],
        )
        await mautic.act("preferences", "crm@example.com", remove=[prefs["weekly"]])

        async def recorded() -> bool:
            return any(
                ch["fields"].get("decision") == "crm_newer"
                for ch in await changes_of(runtime, c["id"])
            )

        await wait_for(recorded, within=10)
        assert (await crm.get(c["id"]))["preferences"] == ["weekly"]
        await drain(runtime, connected.settings)
        got = (await remote(mautic))["crm@example.com"]
        assert segments(got) == {mautic.segment, prefs["weekly"]}

    async def test_a_preference_map_on_another_mapping_is_read_back(
        self, connected: Service, mautic: Mautic, runtime: Runtime, prefs: dict[str, str]
    ) -> None:
        # Mautic's segment change names no audience: it is read with every mapping whose
        # preference map names that segment, not only the default one.
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
            json={
                "audience_id": vip_segment,
                "rule": {"tags_any": ["vip"]},
                "interests": {"weekly": prefs["weekly"], "offers": prefs["offers"]},
            },
            headers=connected.auth(),
        )
        assert r.status_code == 201, r.text
        await settle(runtime, connected)
        crm = Crm(connected)
        c = await crm.create(email="vp@example.com", tags=["vip"], preferences=["weekly", "x"])
        await drain(runtime, connected.settings)
        got = (await remote(mautic))["vp@example.com"]
        assert segments(got) == {vip_segment, prefs["weekly"]}
        await mautic.act(
            "preferences", "vp@example.com", add=[prefs["offers"]], remove=[prefs["weekly"]]
        )

        async def arrived() -> bool:
            return (await crm.get(c["id"]))["preferences"] == ["x", "offers"]

        await wait_for(arrived, within=10)
        changes = await changes_of(runtime, c["id"])
        assert {ch["fields"]["decision"] for ch in changes} == {"provider_newer"}
        await drain(runtime, connected.settings)
        assert segments((await remote(mautic))["vp@example.com"]) == {
            vip_segment,
            prefs["offers"],
        }

    async def test_an_unknown_segment_is_422_and_a_null_one_is_created_on_the_centre(
        self, connected: Service, mautic: Mautic, runtime: Runtime, prefs: dict[str, str]
    ) -> None:
        before = await fetch(runtime, "SELECT * FROM audience_mappings")
        (default,) = (await connected.http.get(BASE, headers=connected.auth())).json()["items"]
        for bad in ("9999", mautic.segment):
            r = await connected.http.put(
                f"{BASE}/{default['id']}",
                json={
                    "audience_id": mautic.segment,
                    "rule": {"all": True},
                    "interests": {"x": bad},
                },
                headers=connected.auth(),
            )
            assert r.status_code == 422, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
        assert await fetch(runtime, "SELECT * FROM audience_mappings") == before
        r = await connected.http.put(
            f"{BASE}/{default['id']}",
            json={
                "audience_id": mautic.segment,
                "rule": {"all": True},
                "interests": {"weekly": prefs["weekly"], "members-only": None},
            },
            headers=connected.auth(),
        )
        assert r.status_code == 200, r.text
        made = r.json()["interests"]["members-only"]
        segment = (await mautic.api.get(f"/segments/{made}")).json()["list"]
        assert segment["name"] == "members-only" and segment["isPreferenceCenter"] is True
