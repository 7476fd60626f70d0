"""Preferences both ways: Mailchimp interest groups mapped to a contact's `preferences`."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest

from app.main import Runtime
from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID
from tests.conftest import fetch
from tests.connections.conftest import Service, drain, run_reconcile
from tests.support.sync import Sandbox, wait_for

LIST = DEFAULT_LIST_ID
BASE = "/api/integrations/mailchimp/audiences/mappings"
WRITES = ("PUT", "PATCH", "POST", "DELETE")


def h(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode()).hexdigest()


async def interest(sandbox: Sandbox, category: str, name: str) -> str:
    cats = (await sandbox.api("GET", f"/lists/{LIST}/interest-categories")).json()["categories"]
    cat = next((c for c in cats if c["title"] == category), None)
    if cat is None:
        r = await sandbox.api(
            "POST", f"/lists/{LIST}/interest-categories", json={"title": category}
        )
        assert r.status_code == 200, r.text
        cat = r.json()
    r = await sandbox.api(
        "POST", f"/lists/{LIST}/interest-categories/{cat['id']}/interests", json={"name": name}
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def member_interests(sandbox: Sandbox, email: str) -> dict[str, bool]:
    r = await sandbox.api("GET", f"/lists/{LIST}/members/{h(email)}")
    assert r.status_code == 200, r.text
    return dict(r.json()["interests"])


async def contact(service: Service, email: str, **body: Any) -> dict[str, Any]:
    body.setdefault("newsletter_opt_in", True)
    r = await service.http.post(
        "/api/contacts", json={"email": email, **body}, headers=service.auth()
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def get(service: Service, contact_id: str) -> dict[str, Any]:
    r = await service.http.get(f"/api/contacts/{contact_id}", headers=service.auth())
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.fixture
async def groups(service: Service, sandbox: Sandbox, runtime: Runtime) -> dict[str, str]:
    """Three interests at Mailchimp; the default mapping maps two of them."""
    r = await service.http.post(
        "/api/integrations/mailchimp/api-key",
        json={"api_key": DEFAULT_API_KEY, "audience_id": LIST},
        headers=service.auth(),
    )
    assert r.status_code == 200, r.text
    await run_reconcile(runtime, service.settings)
    ids = {
        "weekly": await interest(sandbox, "Topics", "Weekly news"),
        "offers": await interest(sandbox, "Topics", "Offers"),
        "events": await interest(sandbox, "Topics", "Events"),  # not ours
    }
    (default,) = (await service.http.get(BASE, headers=service.auth())).json()["items"]
    r = await service.http.put(
        f"{BASE}/{default['id']}",
        json={
            "audience_id": LIST,
            "rule": {"all": True},
            "interests": {"weekly": ids["weekly"], "offers": ids["offers"]},
        },
        headers=service.auth(),
    )
    assert r.status_code == 200, r.text
    assert r.json()["interests"] == {"weekly": ids["weekly"], "offers": ids["offers"]}
    while await run_reconcile(runtime, service.settings) is not None:
        pass
    return ids


async def test_preferences_go_out_and_unmapped_interests_are_never_touched(
    service: Service, sandbox: Sandbox, runtime: Runtime, groups: dict[str, str]
) -> None:
    c = await contact(service, "pref@example.com", preferences=["weekly"])
    await drain(runtime, service.settings)
    assert await member_interests(sandbox, "pref@example.com") == {
        groups["weekly"]: True,
        groups["offers"]: False,
        groups["events"]: False,
    }
    # Someone ticks the interest we do not map, at Mailchimp…
    r = await sandbox.api(
        "PATCH",
        f"/lists/{LIST}/members/{h('pref@example.com')}",
        json={"interests": {groups["events"]: True}},
    )
    assert r.status_code == 200, r.text
    # …and the CRM changes the preferences: only the mapped interests follow.
    r = await service.http.patch(
        f"/api/contacts/{c['id']}", json={"preferences": ["offers"]}, headers=service.auth()
    )
    assert r.status_code == 200, r.text
    assert r.json()["preferences_changed_at"] is not None
    await drain(runtime, service.settings)
    assert await member_interests(sandbox, "pref@example.com") == {
        groups["weekly"]: False,
        groups["offers"]: True,
        groups["events"]: True,
    }


async def test_a_profile_edit_at_mailchimp_comes_back_when_newer_without_echo(
    service: Service, sandbox: Sandbox, runtime: Runtime, groups: dict[str, str]
) -> None:
    c = await contact(service, "back@example.com", preferences=["weekly", "vip-dinner"])
    await drain(runtime, service.settings)
    await sandbox.clear_requests()
    r = await sandbox.act("profile", "back@example.com", interests=["Offers", "Events"])
    assert r.status_code == 200, r.text

    async def arrived() -> bool:
        return (await get(service, c["id"]))["preferences"] == ["vip-dinner", "offers"]

    try:
        await wait_for(arrived, within=10)
    except AssertionError:
        events = await fetch(runtime, "SELECT event_type, outcome, payload FROM webhook_events")
        deliveries = (await sandbox.http.get("/_control/webhook-deliveries")).json()
        raise AssertionError(f"{events} {deliveries}") from None
    changes = await fetch(
        runtime,
        "SELECT source, fields FROM contact_changes WHERE contact_id = :id AND op = 'update'",
        id=c["id"],
    )
    assert [ch["source"] for ch in changes] == ["webhook:mailchimp"]
    assert changes[0]["fields"]["after"]["preferences"] == ["vip-dinner", "offers"]
    assert changes[0]["fields"]["decision"] == "provider_newer"
    # No echo: nothing is sent back.
    await drain(runtime, service.settings)
    writes = [r for r in await sandbox.requests() if r["method"] in WRITES and "/3.0/" in r["path"]]
    assert writes == []


async def test_a_newer_local_change_wins_and_the_next_send_restores_it(
    service: Service, sandbox: Sandbox, runtime: Runtime, groups: dict[str, str]
) -> None:
    c = await contact(service, "crm@example.com", preferences=["weekly"])
    await drain(runtime, service.settings)
    # The CRM's change is surely later than the person's edit below.
    await fetch(
        runtime,
        "UPDATE contacts SET preferences_changed_at = now() + interval '1 hour' WHERE id = :id",
        id=c["id"],
    )
    r = await sandbox.act("profile", "crm@example.com", interests=["Offers"])
    assert r.status_code == 200, r.text

    async def recorded() -> bool:
        rows = await fetch(
            runtime,
            "SELECT fields FROM contact_changes WHERE contact_id = :id AND op = 'update'",
            id=c["id"],
        )
        return any(r["fields"].get("decision") == "crm_newer" for r in rows)

    await wait_for(recorded, within=20)
    assert (await get(service, c["id"]))["preferences"] == ["weekly"]
    await drain(runtime, service.settings)
    got = await member_interests(sandbox, "crm@example.com")
    assert got[groups["weekly"]] is True and got[groups["offers"]] is False


async def test_an_unknown_interest_id_is_422_and_nothing_is_written(
    service: Service, runtime: Runtime, groups: dict[str, str]
) -> None:
    before = await fetch(runtime, "SELECT * FROM audience_mappings")
    (default,) = (await service.http.get(BASE, headers=service.auth())).json()["items"]
    r = await service.http.put(
        f"{BASE}/{default['id']}",
        json={"audience_id": LIST, "rule": {"all": True}, "interests": {"x": "nope"}},
        headers=service.auth(),
    )
    assert r.status_code == 422, r.text
    assert await fetch(runtime, "SELECT * FROM audience_mappings") == before


async def test_the_pull_brings_a_change_that_no_webhook_told(
    service: Service, sandbox: Sandbox, runtime: Runtime, groups: dict[str, str]
) -> None:
    import asyncio

    from app.sync.engine import SyncEngine
    from app.sync.pull import pull_connection

    c = await contact(service, "pulled@example.com", preferences=["weekly"])
    await drain(runtime, service.settings)
    # An API change at Mailchimp fires no webhook to us (sources: api off).
    r = await sandbox.api(
        "PATCH",
        f"/lists/{LIST}/members/{h('pulled@example.com')}",
        json={"interests": {groups["weekly"]: False, groups["offers"]: True}},
    )
    assert r.status_code == 200, r.text
    engine = SyncEngine(runtime.engine, service.settings)
    stop = asyncio.Event()
    slots = asyncio.create_task(engine.slots.run(stop))
    try:
        result = await pull_connection(engine, uuid.UUID(c["sync"][0]["connection_id"]))
    finally:
        stop.set()
        engine.slots.wake.set()
        await slots
        await engine.aclose()
    assert result is not None
    assert result.outcomes["preferences_applied"] == 1
    assert (await get(service, c["id"]))["preferences"] == ["offers"]
    (change,) = await fetch(
        runtime,
        "SELECT source, actor FROM contact_changes WHERE contact_id = :id AND op = 'update'",
        id=c["id"],
    )
    assert change == {"source": "provider", "actor": "mailchimp:pull"}
