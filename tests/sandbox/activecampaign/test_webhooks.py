"""Webhooks (§8): CRUD and validation, form-encoded PHP-style payloads, `events`, `sources`
and `listid` honoured, never retried, a 410 deactivates, duplicates on a knob."""

from __future__ import annotations

from typing import Any

import httpx

from app.sandbox.activecampaign import DEFAULT_LIST_ID
from tests.sandbox.activecampaign.conftest import API, Receiver, deliveries, on_list, sync

ACTIONS = f"/_control/lists/{DEFAULT_LIST_ID}/actions"
SOURCES = ["public", "admin", "system"]  # not `api`: our own writes do not echo back


async def hook(ac: httpx.AsyncClient, url: str, **body: Any) -> dict[str, Any]:
    webhook = {"name": "sync", "url": url, "events": ["subscribe", "unsubscribe", "update"]}
    response = await ac.post(f"{API}/webhooks", json={"webhook": {**webhook, **body}})
    assert response.status_code == 201, response.text
    return response.json()["webhook"]  # type: ignore[no-any-return]


async def test_crud_validation_and_event_catalogue(ac: httpx.AsyncClient) -> None:
    missing = await ac.post(f"{API}/webhooks", json={"webhook": {"name": "x", "url": "http://h"}})
    assert missing.status_code == 422
    wrong = await ac.post(
        f"{API}/webhooks",
        json={
            "webhook": {"name": "x", "url": "http://h/x", "events": ["nope"], "sources": ["api"]}
        },
    )
    assert wrong.status_code == 422
    made = await hook(ac, "http://127.0.0.1:9/x", sources=SOURCES, listid=DEFAULT_LIST_ID)
    assert made["listid"] == DEFAULT_LIST_ID and made["sources"] == SOURCES
    put = await ac.put(f"{API}/webhooks/{made['id']}", json={"webhook": {"name": "renamed"}})
    assert put.json()["webhook"]["name"] == "renamed"
    assert (await ac.get(f"{API}/webhooks")).json()["meta"]["total"] == "1"
    for path in ("webhook/events", "webhooks/events"):
        events = (await ac.get(f"{API}/{path}")).json()
        assert events["meta"]["total"] == 25 and "contact_tag_added" in events["webhookEvents"]
    assert (await ac.delete(f"{API}/webhooks/{made['id']}")).json() == {}
    gone = await ac.get(f"{API}/webhooks/{made['id']}")
    assert gone.status_code == 404


async def test_peoples_actions_fire_public_and_system(
    ac: httpx.AsyncClient, receiver: Receiver
) -> None:
    field = (await ac.post(f"{API}/fields", json={"field": {"title": "Badge name"}})).json()
    fid = field["field"]["id"]
    await hook(
        ac, receiver.url, sources=SOURCES, events=["subscribe", "unsubscribe", "update", "bounce"]
    )
    signup = await ac.post(
        f"{ACTIONS}/signup",
        json={"email": "p@example.com", "first_name": "Pat", "fields": {fid: "Patty"}},
    )
    assert signup.status_code == 200
    await ac.post(f"{ACTIONS}/profile", json={"email": "p@example.com", "last_name": "Lee"})
    await ac.post(f"{ACTIONS}/unsubscribe", json={"email": "p@example.com", "reason": "too many"})
    await ac.post(f"{ACTIONS}/bounce", json={"email": "p@example.com"})
    await deliveries(ac)
    kinds = [dict(p)["type"] for p in receiver.posts]
    assert kinds == ["subscribe", "update", "unsubscribe", "bounce"]
    subscribe, update, unsubscribe, bounce = (dict(p) for p in receiver.posts)
    assert subscribe["initiated_from"] == "public" and subscribe["list"] == DEFAULT_LIST_ID
    assert subscribe["contact[email]"] == "p@example.com"
    assert subscribe["contact[fields][badge_name]"] == "Patty"
    assert subscribe[f"contact[fields][{fid}]"] == "Patty"
    assert update["contact[last_name]"] == "Lee" and update["list"] == "0"
    assert unsubscribe["unsubscribe[reason]"] == "too many"
    assert bounce["initiated_from"] == "system"
    contact = (await ac.get(f"{API}/contacts", params={"email": "p@example.com"})).json()
    assert contact["contacts"][0]["bounced_hard"] == "1"


async def test_api_writes_fire_only_for_api_hooks(
    ac: httpx.AsyncClient, receiver: Receiver
) -> None:
    await hook(ac, receiver.url, sources=SOURCES)
    c = await sync(ac, "api@example.com")
    await on_list(ac, c["id"], DEFAULT_LIST_ID, 1)
    await sync(ac, "api@example.com", firstName="Changed")
    await deliveries(ac)
    assert receiver.posts == []
    await hook(
        ac,
        receiver.url,
        sources=["api"],
        events=["update", "contact_tag_added", "contact_tag_removed"],
    )
    await sync(ac, "api@example.com", firstName="Again")
    tag = (await ac.post(f"{API}/tags", json={"tag": {"tag": "vip"}})).json()["tag"]
    ct = await ac.post(
        f"{API}/contactTags", json={"contactTag": {"contact": c["id"], "tag": tag["id"]}}
    )
    await ac.delete(f"{API}/contactTags/{ct.json()['contactTag']['id']}")
    await deliveries(ac)
    posts = [dict(p) for p in receiver.posts]
    assert [p["type"] for p in posts] == ["update", "contact_tag_added", "contact_tag_removed"]
    assert all(p["initiated_from"] == "api" for p in posts)
    assert posts[1]["tag"] == "vip" and posts[1]["contact[tags]"] == "vip"
    assert not any(k.startswith("contact[fields]") for k in posts[1])


async def test_listid_and_events_are_honoured(ac: httpx.AsyncClient, receiver: Receiver) -> None:
    other = await ac.post("/_control/accounts/sandbox/lists", json={"name": "Other"})
    other_id = other.json()["id"]
    await hook(ac, receiver.url, sources=SOURCES, listid=other_id, events=["unsubscribe"])
    await ac.post(f"{ACTIONS}/signup", json={"email": "l@example.com"})
    await ac.post(f"{ACTIONS}/unsubscribe", json={"email": "l@example.com"})
    await ac.post(f"/_control/lists/{other_id}/actions/signup", json={"email": "l@example.com"})
    await ac.post(
        f"/_control/lists/{other_id}/actions/unsubscribe", json={"email": "l@example.com"}
    )
    await deliveries(ac)
    posts = [dict(p) for p in receiver.posts]
    assert [(p["type"], p["list"]) for p in posts] == [("unsubscribe", other_id)]


async def test_never_retried_and_deactivated_on_410(
    ac: httpx.AsyncClient, receiver: Receiver
) -> None:
    down = await hook(ac, "http://127.0.0.1:9/closed", sources=SOURCES)
    gone = await hook(ac, receiver.gone_url, sources=SOURCES)
    await ac.post(f"{ACTIONS}/signup", json={"email": "d@example.com"})
    log = await deliveries(ac)
    by_hook = {d["webhook_id"]: d for d in log}
    assert (
        by_hook[down["id"]]["error"] and len([d for d in log if d["webhook_id"] == down["id"]]) == 1
    )
    assert by_hook[gone["id"]]["status"] == 410
    await ac.post(f"{ACTIONS}/profile", json={"email": "d@example.com", "first_name": "D"})
    await deliveries(ac)
    assert receiver.gone_hits == 1  # inactive now: no second delivery
    accounts = (await ac.get("/_control/accounts")).json()["accounts"]
    states = {w["id"]: w["active"] for w in accounts[0]["webhooks"]}
    assert states == {down["id"]: True, gone["id"]: False}
    assert (await ac.get(f"{API}/webhooks/{gone['id']}")).status_code == 200  # still listed


async def test_at_least_once_duplicates(ac: httpx.AsyncClient, receiver: Receiver) -> None:
    await ac.patch("/_control/config", json={"webhook_duplicate_rate": 1.0})
    await hook(ac, receiver.url, sources=SOURCES)
    await ac.post(f"{ACTIONS}/signup", json={"email": "twice@example.com"})
    log = await deliveries(ac)
    assert len(receiver.of("subscribe")) == 2
    assert [d["duplicate"] for d in log] == [False, True]
