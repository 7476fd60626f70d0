"""Constant Contact with several audience mappings (contact lists by rule) and preferences as
list memberships the person may change (issue 17), against the sandbox over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from app.main import Runtime
from app.sandbox.constantcontact import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_LIST_ID,
    ROTATING_CLIENT_ID,
    ROTATING_CLIENT_SECRET,
    SandboxConfig,
    create_app,
)
from tests.conftest import fetch
from tests.connections.conftest import Service, drain, run_reconcile
from tests.connections.test_constantcontact import connect, connection, pull
from tests.sandbox.constantcontact.conftest import Sandbox as CCSandbox
from tests.support.servers import run_server

PID = "constantcontact"
BASE = f"/api/integrations/{PID}/audiences/mappings"


@pytest.fixture
async def cc() -> AsyncIterator[CCSandbox]:
    app = create_app(SandboxConfig(rate_per_second=1000, activity_duration_ms=20))
    async with run_server(app, lifespan="off") as base:
        import httpx

        async with httpx.AsyncClient(base_url=base) as http:
            yield CCSandbox(base, app, http)


@pytest.fixture
async def ccservice(serve: Callable[..., Any], cc: CCSandbox) -> AsyncIterator[Service]:
    async with serve(
        CONSTANTCONTACT_SANDBOX_URL=cc.base,
        CONSTANTCONTACT_CLIENT_ID=ROTATING_CLIENT_ID,
        CONSTANTCONTACT_CLIENT_SECRET=SecretStr(ROTATING_CLIENT_SECRET),
        CONSTANTCONTACT_TIMEOUT_SECONDS=5.0,
    ) as svc:
        yield svc


async def new_list(cc: CCSandbox, name: str) -> str:
    r = await cc.http.post(f"/_control/accounts/{DEFAULT_ACCOUNT_ID}/lists", json={"name": name})
    assert r.status_code == 201, r.text
    return str(r.json()["list_id"])


async def person(cc: CCSandbox, email: str) -> dict[str, Any]:
    return (await cc.dump())[email]


async def add(svc: Service, email: str, **body: Any) -> dict[str, Any]:
    body.setdefault("newsletter_opt_in", True)
    r = await svc.http.post("/api/contacts", json={"email": email, **body}, headers=svc.auth())
    assert r.status_code == 201, r.text
    return dict(r.json())


async def get(svc: Service, contact_id: str) -> dict[str, Any]:
    r = await svc.http.get(f"/api/contacts/{contact_id}", headers=svc.auth())
    assert r.status_code == 200, r.text
    return dict(r.json())


async def settle(runtime: Runtime, svc: Service) -> None:
    while await run_reconcile(runtime, svc.settings) is not None:
        pass
    await drain(runtime, svc.settings)


@pytest.fixture
async def two_lists(ccservice: Service, cc: CCSandbox, runtime: Runtime) -> dict[str, Any]:
    """The default list takes tag `news`, a second contact list takes tag `vip`."""
    await connect(ccservice)
    await settle(runtime, ccservice)
    vip_list = await new_list(cc, "VIP")
    (default,) = (await ccservice.http.get(BASE, headers=ccservice.auth())).json()["items"]
    r = await ccservice.http.put(
        f"{BASE}/{default['id']}",
        json={"audience_id": DEFAULT_LIST_ID, "rule": {"tags_any": ["news"]}},
        headers=ccservice.auth(),
    )
    assert r.status_code == 200, r.text
    r = await ccservice.http.post(
        BASE,
        json={"audience_id": vip_list, "rule": {"tags_any": ["vip"]}},
        headers=ccservice.auth(),
    )
    assert r.status_code == 201, r.text
    await settle(runtime, ccservice)
    return {"default": default["id"], "vip": r.json()["id"], "vip_list": vip_list}


class TestMappings:
    async def test_two_mappings_by_tag_route_contacts_to_their_lists(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime, two_lists: dict[str, Any]
    ) -> None:
        await add(ccservice, "news@example.com", tags=["news"])
        await add(ccservice, "vip@example.com", tags=["vip"])
        both = await add(ccservice, "both@example.com", tags=["news", "vip"])
        await add(ccservice, "none@example.com", tags=["other"])
        await drain(runtime, ccservice.settings)
        people = await cc.dump()
        assert "none@example.com" not in people
        lists = {e: set(p["list_memberships"]) for e, p in people.items()}
        assert lists == {
            "news@example.com": {DEFAULT_LIST_ID},
            "vip@example.com": {two_lists["vip_list"]},
            "both@example.com": {DEFAULT_LIST_ID, two_lists["vip_list"]},
        }
        lines = {s["mapping_id"]: s for s in (await get(ccservice, both["id"]))["sync"]}
        assert set(lines) == {two_lists["default"], two_lists["vip"]}
        assert all(s["status"] == "synced" and s["in_audience"] for s in lines.values())

    async def test_a_tag_change_moves_a_contact_between_lists_with_consent_untouched(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime, two_lists: dict[str, Any]
    ) -> None:
        c = await add(ccservice, "mover@example.com", tags=["news"])
        await drain(runtime, ccservice.settings)
        assert (await person(cc, "mover@example.com"))["list_memberships"] == [DEFAULT_LIST_ID]
        r = await ccservice.http.patch(
            f"/api/contacts/{c['id']}", json={"tags": ["vip"]}, headers=ccservice.auth()
        )
        assert r.status_code == 200, r.text
        await drain(runtime, ccservice.settings)
        moved = await person(cc, "mover@example.com")
        # It left the default list and joined the VIP one; its permission is as it was.
        assert moved["list_memberships"] == [two_lists["vip_list"]]
        assert moved["email_address"]["permission_to_send"] == "explicit"
        (row,) = await fetch(
            runtime, "SELECT newsletter_opt_in FROM contacts WHERE id = :id", id=c["id"]
        )
        assert row["newsletter_opt_in"] is True
        lines = {s["mapping_id"]: s for s in (await get(ccservice, c["id"]))["sync"]}
        assert lines[two_lists["vip"]]["in_audience"] is True
        assert lines[two_lists["default"]]["in_audience"] is False

    async def test_sync_now_per_mapping_reconciles_only_that_list(
        self, ccservice: Service, runtime: Runtime, two_lists: dict[str, Any]
    ) -> None:
        r = await ccservice.http.post(f"{BASE}/{two_lists['vip']}/sync", headers=ccservice.auth())
        assert r.status_code == 202, r.text
        (run,) = await fetch(
            runtime,
            "SELECT mapping_id, progress FROM sync_runs WHERE id = :id",
            id=r.json()["run_id"],
        )
        assert str(run["mapping_id"]) == two_lists["vip"]
        assert run["progress"]["audience_id"] == two_lists["vip_list"]
        await run_reconcile(runtime, ccservice.settings)
        (done,) = await fetch(
            runtime, "SELECT state FROM sync_runs WHERE id = :id", id=r.json()["run_id"]
        )
        assert done["state"] == "done"


WRITES = ("PUT", "POST", "PATCH", "DELETE")


@pytest.fixture
async def prefs(ccservice: Service, cc: CCSandbox, runtime: Runtime) -> dict[str, str]:
    """Three more lists at Constant Contact; the default mapping maps two of them."""
    await connect(ccservice)
    await settle(runtime, ccservice)
    ids = {
        "weekly": await new_list(cc, "Weekly news"),
        "offers": await new_list(cc, "Offers"),
        "events": await new_list(cc, "Events"),  # not ours
    }
    (default,) = (await ccservice.http.get(BASE, headers=ccservice.auth())).json()["items"]
    r = await ccservice.http.put(
        f"{BASE}/{default['id']}",
        json={
            "audience_id": DEFAULT_LIST_ID,
            "rule": {"all": True},
            "interests": {"weekly": ids["weekly"], "offers": ids["offers"]},
        },
        headers=ccservice.auth(),
    )
    assert r.status_code == 200, r.text
    assert r.json()["interests"] == {"weekly": ids["weekly"], "offers": ids["offers"]}
    await settle(runtime, ccservice)
    return ids


async def cc_writes(cc: CCSandbox) -> list[dict[str, Any]]:
    body = (await cc.http.get("/_control/requests")).json()
    items = body.get("requests", body) if isinstance(body, dict) else body
    return [r for r in items if r["method"] in WRITES and "/v3/" in r["path"]]


class TestPreferences:
    async def test_preferences_go_out_as_list_memberships_and_other_lists_stay(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime, prefs: dict[str, str]
    ) -> None:
        c = await add(ccservice, "pref@example.com", preferences=["weekly"])
        await drain(runtime, ccservice.settings)
        got = await person(cc, "pref@example.com")
        assert set(got["list_memberships"]) == {DEFAULT_LIST_ID, prefs["weekly"]}
        # The person joins a list we do not map, by themselves…
        r = await cc.act(
            "pref@example.com",
            "preferences",
            list_ids=[DEFAULT_LIST_ID, prefs["weekly"], prefs["events"]],
        )
        assert r.status_code == 200, r.text
        # …and the CRM changes the preferences: only the mapped lists follow.
        r = await ccservice.http.patch(
            f"/api/contacts/{c['id']}", json={"preferences": ["offers"]}, headers=ccservice.auth()
        )
        assert r.status_code == 200, r.text
        await drain(runtime, ccservice.settings)
        got = await person(cc, "pref@example.com")
        assert set(got["list_memberships"]) == {DEFAULT_LIST_ID, prefs["offers"], prefs["events"]}
        assert got["email_address"]["permission_to_send"] == "explicit"

    async def test_the_persons_change_on_the_preference_page_comes_back_by_the_pull(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime, prefs: dict[str, str]
    ) -> None:
        c = await add(ccservice, "back@example.com", preferences=["weekly", "vip-dinner"])
        await drain(runtime, ccservice.settings)
        r = await cc.act(
            "back@example.com", "preferences", list_ids=[DEFAULT_LIST_ID, prefs["offers"]]
        )
        assert r.status_code == 200, r.text
        await cc.http.delete("/_control/requests")
        conn = await connection(runtime)
        result = await pull(runtime, ccservice.settings, conn["id"])
        assert result is not None
        got = await get(ccservice, c["id"])
        # The mapped ones follow the person; `vip-dinner`, which no list maps, stays.
        assert got["preferences"] == ["vip-dinner", "offers"]
        assert got["newsletter_opt_in"] is True
        (change,) = await fetch(
            runtime,
            "SELECT source, actor, fields FROM contact_changes"
            " WHERE contact_id = :id AND op = 'update'",
            id=c["id"],
        )
        assert change["source"] == "provider" and change["actor"] == "constantcontact:pull"
        assert change["fields"]["decision"] == "provider_newer"
        assert change["fields"]["after"]["preferences"] == ["vip-dinner", "offers"]
        # No echo: nothing is written back.
        await drain(runtime, ccservice.settings)
        assert await cc_writes(cc) == []
        # A second pull over the same window changes nothing.
        await pull(runtime, ccservice.settings, conn["id"])
        assert (await get(ccservice, c["id"]))["preferences"] == ["vip-dinner", "offers"]

    async def test_the_pull_stores_only_news_in_the_inbox_not_our_own_echoes(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime, prefs: dict[str, str]
    ) -> None:
        c = await add(ccservice, "echo@example.com", preferences=["weekly"])
        await drain(runtime, ccservice.settings)
        r = await ccservice.http.patch(
            f"/api/contacts/{c['id']}",
            json={"preferences": ["weekly", "offers"]},
            headers=ccservice.auth(),
        )
        assert r.status_code == 200, r.text
        await drain(runtime, ccservice.settings)
        conn = await connection(runtime)
        inbox = "SELECT event_type, outcome FROM webhook_events WHERE connection_id = :id"
        # Our create and our update came back as profile events: they change nothing we hold.
        await pull(runtime, ccservice.settings, conn["id"])
        assert await fetch(runtime, inbox, id=conn["id"]) == []
        assert (await get(ccservice, c["id"]))["preferences"] == ["weekly", "offers"]
        # The person's own change is news: stored once and applied.
        r = await cc.act("echo@example.com", "preferences", list_ids=[DEFAULT_LIST_ID])
        assert r.status_code == 200, r.text
        await pull(runtime, ccservice.settings, conn["id"])
        assert (await get(ccservice, c["id"]))["preferences"] == []
        (stored,) = await fetch(runtime, inbox, id=conn["id"])
        assert stored["outcome"] == "applied"
        # A pull over the same window stores nothing more.
        await pull(runtime, ccservice.settings, conn["id"])
        assert len(await fetch(runtime, inbox, id=conn["id"])) == 1

    async def test_a_newer_local_change_wins_and_the_next_send_restores_it(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime, prefs: dict[str, str]
    ) -> None:
        c = await add(ccservice, "crm@example.com", preferences=["weekly"])
        await drain(runtime, ccservice.settings)
        await fetch(
            runtime,
            "UPDATE contacts SET preferences_changed_at = now() + interval '1 hour' WHERE id = :id",
            id=c["id"],
        )
        r = await cc.act("crm@example.com", "preferences", list_ids=[DEFAULT_LIST_ID])
        assert r.status_code == 200, r.text
        await pull(runtime, ccservice.settings, (await connection(runtime))["id"])
        assert (await get(ccservice, c["id"]))["preferences"] == ["weekly"]
        changes = await fetch(
            runtime,
            "SELECT fields FROM contact_changes WHERE contact_id = :id AND op = 'update'",
            id=c["id"],
        )
        assert [ch["fields"]["decision"] for ch in changes] == ["crm_newer"]
        await drain(runtime, ccservice.settings)
        got = await person(cc, "crm@example.com")
        assert set(got["list_memberships"]) == {DEFAULT_LIST_ID, prefs["weekly"]}

    async def test_an_unknown_list_is_422_and_a_null_one_is_created(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime, prefs: dict[str, str]
    ) -> None:
        before = await fetch(runtime, "SELECT * FROM audience_mappings")
        (default,) = (await ccservice.http.get(BASE, headers=ccservice.auth())).json()["items"]
        for bad in ("00000000-0000-0000-0000-000000000000", DEFAULT_LIST_ID):
            # Neither an unknown list nor the mapping's own list is a preference.
            r = await ccservice.http.put(
                f"{BASE}/{default['id']}",
                json={
                    "audience_id": DEFAULT_LIST_ID,
                    "rule": {"all": True},
                    "interests": {"x": bad},
                },
                headers=ccservice.auth(),
            )
            assert r.status_code == 422, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
        assert await fetch(runtime, "SELECT * FROM audience_mappings") == before
        r = await ccservice.http.put(
            f"{BASE}/{default['id']}",
            json={
                "audience_id": DEFAULT_LIST_ID,
                "rule": {"all": True},
                "interests": {"weekly": prefs["weekly"], "members-only": None},
            },
            headers=ccservice.auth(),
        )
        assert r.status_code == 200, r.text
        made = r.json()["interests"]["members-only"]
        lists = (await cc.http.get("/_control/accounts")).json()
        assert made in str(lists)
