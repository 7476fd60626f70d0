"""`import/bulk_import` and `import/info` (§5): limits, validation, asynchronous completion,
the refusal to re-subscribe, no webhooks, the callback."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from app.sandbox.activecampaign import DEFAULT_LIST_ID
from tests.sandbox.activecampaign.conftest import API, Receiver, deliveries, on_list, sync

IMPORT = f"{API}/import/bulk_import"


def person(i: int, **extra: Any) -> dict[str, Any]:
    return {"email": f"bulk{i}@example.com", "first_name": f"B{i}", **extra}


async def advance(ac: httpx.AsyncClient, seconds: float = 5) -> None:
    await ac.post("/_control/clock", json={"advance_seconds": seconds})


async def test_import_runs_waiting_active_completed(ac: httpx.AsyncClient) -> None:
    field = (await ac.post(f"{API}/fields", json={"field": {"title": "Team"}})).json()["field"]
    queued = await ac.post(
        IMPORT,
        json={
            "contacts": [
                person(
                    i,
                    tags=["attendee"],
                    fields=[{"id": int(field["id"]), "value": "||red||blue||"}],
                    subscribe=[{"listid": int(DEFAULT_LIST_ID)}],
                )
                for i in range(3)
            ]
        },
    )
    assert queued.status_code == 200
    body = queued.json()
    assert body["Success"] == 1 and body["queued_contacts"] == 3
    assert body["message"] == "Contact import queued"
    info = (await ac.get(f"{API}/import/info", params={"batchId": body["batchId"]})).json()
    assert info == {"status": "waiting", "success": [], "failure": []}
    assert (await ac.get(f"{API}/contacts")).json()["meta"]["total"] == "0"
    await advance(ac, 0.6)
    info = (await ac.get(f"{API}/import/info", params={"batchId": body["batchId"]})).json()
    assert info["status"] == "active"
    await advance(ac)
    info = (await ac.get(f"{API}/import/info", params={"batchId": body["batchId"]})).json()
    assert info["status"] == "completed" and len(info["success"]) == 3
    dump = (await ac.get(f"/_control/lists/{DEFAULT_LIST_ID}/contacts")).json()["contacts"]
    assert {d["first_name"] for d in dump} == {"B0", "B1", "B2"}
    assert all(d["tags"] == {next(iter(d["tags"])): "attendee"} for d in dump)
    assert all(d["fields"][field["id"]]["value"] == "||red||blue||" for d in dump)
    overview = (await ac.get(IMPORT)).json()
    assert overview["recentlyCompleted"][0]["contacts"] == "3"


async def test_import_limits_and_validation(ac: httpx.AsyncClient) -> None:
    too_many = await ac.post(IMPORT, json={"contacts": [person(i) for i in range(251)]})
    assert too_many.status_code == 400 and too_many.json()["success"] == 0
    padding = "x" * 400_001
    too_big = await ac.post(
        IMPORT,
        content=orjson.dumps({"contacts": [person(1, last_name=padding)]}),
        headers={"content-type": "application/json"},
    )
    assert too_big.status_code == 400
    invalid = await ac.post(IMPORT, json={"contacts": [person(1), {"email": "nope"}]})
    assert invalid.status_code == 400
    assert invalid.json()["failureReasons"] == [
        {"contact": 1, "failureReason": "Field\u2018 email\u2019 incorrect format"}
    ]
    missing = await ac.get(f"{API}/import/info")
    assert missing.json() == {"success": 0, "message": "'batchId' is a required field."}


async def test_single_contact_imports_are_twenty_a_minute(ac: httpx.AsyncClient) -> None:
    statuses = [
        (await ac.post(IMPORT, json={"contacts": [person(i)]})).status_code for i in range(21)
    ]
    assert statuses == [200] * 20 + [429]
    refused = await ac.post(IMPORT, json={"contacts": [person(99)]})
    assert refused.json() == {
        "success": 0,
        "message": "Rate limit exceeded.",
        "failureReasons": [
            "Up to 20 imports may be requested per minute.Please batch contacts into larger "
            "requests, or retry this request in a minute."
        ],
    }
    # Multi-contact imports have their own 100 a minute.
    assert (await ac.post(IMPORT, json={"contacts": [person(1), person(2)]})).status_code == 200
    await ac.patch("/_control/config", json={"bulk_import_rate_status": 400})
    assert (await ac.post(IMPORT, json={"contacts": [person(3)]})).status_code == 400
    await advance(ac, 61)
    assert (await ac.post(IMPORT, json={"contacts": [person(4)]})).status_code == 200


async def test_multi_contact_imports_are_a_hundred_a_minute(ac: httpx.AsyncClient) -> None:
    two = {"contacts": [person(1), person(2)]}
    statuses = [(await ac.post(IMPORT, json=two)).status_code for _ in range(101)]
    assert statuses.count(200) == 100 and statuses[-1] == 429


async def test_import_never_resubscribes_and_fires_no_webhooks(
    ac: httpx.AsyncClient, receiver: Receiver
) -> None:
    await ac.post(
        f"{API}/webhooks",
        json={
            "webhook": {
                "name": "all",
                "url": receiver.url,
                "events": ["subscribe", "unsubscribe", "update"],
                "sources": ["public", "admin", "api", "system"],
            }
        },
    )
    gone = await sync(ac, "bulk1@example.com")
    await on_list(ac, gone["id"], DEFAULT_LIST_ID, 2)
    await deliveries(ac)
    receiver.posts.clear()
    queued = await ac.post(
        IMPORT,
        json={
            "contacts": [
                person(1, subscribe=[{"listid": DEFAULT_LIST_ID}]),
                person(2, subscribe=[{"listid": DEFAULT_LIST_ID}]),
            ]
        },
    )
    await advance(ac)
    info = await ac.get(f"{API}/import/info", params={"batchId": queued.json()["batchId"]})
    assert info.json()["failure"] == ["bulk1@example.com"]
    assert len(info.json()["success"]) == 1
    dump = (await ac.get(f"/_control/lists/{DEFAULT_LIST_ID}/contacts")).json()["contacts"]
    statuses = {d["email"]: d["lists"][DEFAULT_LIST_ID]["status"] for d in dump}
    assert statuses == {"bulk1@example.com": 2, "bulk2@example.com": 1}
    await deliveries(ac)
    assert receiver.posts == []


async def test_import_info_false_knob_and_callback(
    ac: httpx.AsyncClient, receiver: Receiver
) -> None:
    await ac.patch("/_control/config", json={"import_info_false_seconds": 1.0})
    queued = await ac.post(
        IMPORT,
        json={
            "contacts": [person(1), person(2)],
            "callback": {
                "url": receiver.url,
                "requestType": "POST",
                "detailed_results": "true",
                "params": [{"key": "token", "value": "t1"}],
            },
        },
    )
    batch = queued.json()["batchId"]
    early = await ac.get(f"{API}/import/info", params={"batchId": batch})
    assert early.content == b"false"
    await ac.patch("/_control/config", json={"import_callback_format": "form"})
    await advance(ac)
    done = (await ac.get(f"{API}/import/info", params={"batchId": batch})).json()
    assert done["status"] == "completed"
    log = await deliveries(ac)
    callback = next(d for d in log if d.get("type") == "import_callback")
    assert callback["status"] == 200
    form = dict(receiver.posts[-1])
    assert form["batchId"] == batch and form["token"] == "t1" and form["success"] == "2"


async def test_import_can_be_missing_on_an_account(ac: httpx.AsyncClient) -> None:
    await ac.patch("/_control/config", json={"bulk_import_enabled": False})
    missing = await ac.post(IMPORT, json={"contacts": [person(1)]})
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
