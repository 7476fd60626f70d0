"""Contacts: sync, strict create, list and filters, get/put/delete, the error bodies (§1, §6)."""

from __future__ import annotations

import httpx

from app.sandbox.activecampaign import DEFAULT_LIST_ID
from tests.sandbox.activecampaign.conftest import API, on_list, sync


async def test_sync_creates_then_updates_by_email(ac: httpx.AsyncClient) -> None:
    created = await ac.post(
        f"{API}/contact/sync", json={"contact": {"email": "Ada@Example.com", "firstName": "Ada"}}
    )
    assert created.status_code == 201
    body = created.json()["contact"]
    assert body["email"] == "Ada@Example.com" and isinstance(body["id"], str)
    assert body["links"]["bounceLogs"].endswith(f"/api/3/contacts/{body['id']}/bounceLogs")
    updated = await ac.post(
        f"{API}/contact/sync", json={"contact": {"email": "ada@example.com", "lastName": "L"}}
    )
    assert updated.status_code == 200
    again = updated.json()["contact"]
    assert again["id"] == body["id"]
    assert (again["firstName"], again["lastName"]) == ("Ada", "L")  # absent keeps
    assert again["organization"] is None and again["bounced_date"] is None
    assert len(again["links"]) == 18
    cleared = await sync(ac, "ada@example.com", firstName="")
    assert cleared["firstName"] == ""  # "" clears


async def test_sync_requires_a_valid_email(ac: httpx.AsyncClient) -> None:
    missing = await ac.post(f"{API}/contact/sync", json={"contact": {"firstName": "X"}})
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["source"] == {"pointer": "/data/attributes/email"}
    bad = await ac.post(f"{API}/contact/sync", json={"contact": {"email": "not-an-email"}})
    assert bad.status_code == 422
    assert bad.json() == {
        "errors": [
            {
                "title": "Contact Email Address is not valid.",
                "detail": "",
                "code": "email_invalid",
                "source": {"pointer": "/data/attributes/email"},
            }
        ]
    }


async def test_strict_create_and_the_duplicate_body(ac: httpx.AsyncClient) -> None:
    first = await ac.post(f"{API}/contacts", json={"contact": {"email": "b@example.com"}})
    assert first.status_code == 201
    short = first.json()["contact"]
    assert "bounced_hard" not in short and short["email_empty"] is False
    dup = await ac.post(f"{API}/contacts", json={"contact": {"email": "B@example.com"}})
    assert dup.status_code == 422
    assert dup.json() == {
        "errors": [
            {
                "title": "Email address already exists in the system",
                "detail": "",
                "code": "duplicate",
                "source": {"pointer": "/data/attributes/email"},
            }
        ]
    }


async def test_list_filters_paging_and_string_total(ac: httpx.AsyncClient) -> None:
    ids = [(await sync(ac, f"p{i}@example.com", firstName=f"P{i}"))["id"] for i in range(5)]
    await sync(ac, "a+b@example.com")
    page = (await ac.get(f"{API}/contacts", params={"limit": 2, "offset": 1})).json()
    assert page["meta"]["total"] == "6"
    assert [x["id"] for x in page["contacts"]] == ids[1:3]
    assert page["scoreValues"] == [] and page["contacts"][0]["scoreValues"] == []
    exact = (await ac.get(f"{API}/contacts", params={"email": "a+b@example.com"})).json()
    assert [x["email"] for x in exact["contacts"]] == ["a+b@example.com"]
    # An unencoded + is a space: nobody matches, still 200 with an empty page.
    unencoded = await ac.get(f"{API}/contacts?email=a+b@example.com")
    assert unencoded.status_code == 200 and unencoded.json()["contacts"] == []
    # A misspelled parameter is ignored: everyone comes back.
    loose = (await ac.get(f"{API}/contacts", params={"emial": "p1@example.com"})).json()
    assert loose["meta"]["total"] == "6"
    greater = (await ac.get(f"{API}/contacts", params={"id_greater": ids[3]})).json()
    assert [x["id"] for x in greater["contacts"]] == [ids[4], str(int(ids[4]) + 1)]
    desc = (await ac.get(f"{API}/contacts", params={"orders[id]": "DESC", "limit": 1})).json()
    assert desc["contacts"][0]["email"] == "a+b@example.com"
    capped = (await ac.get(f"{API}/contacts", params={"limit": 500})).json()
    assert capped["meta"]["page_input"]["limit"] == 100
    like = (await ac.get(f"{API}/contacts", params={"email_like": "p3"})).json()
    assert [x["id"] for x in like["contacts"]] == [ids[3]]


async def test_list_by_list_status_and_updated_after(ac: httpx.AsyncClient) -> None:
    a = await sync(ac, "a@example.com")
    b = await sync(ac, "b@example.com")
    await on_list(ac, a["id"], DEFAULT_LIST_ID, 1)
    await on_list(ac, b["id"], DEFAULT_LIST_ID, 2)
    active = (
        await ac.get(f"{API}/contacts", params={"listid": DEFAULT_LIST_ID, "status": 1})
    ).json()
    assert [x["id"] for x in active["contacts"]] == [a["id"]]
    unsub = (
        await ac.get(f"{API}/contacts", params={"listid": DEFAULT_LIST_ID, "status": 2})
    ).json()
    assert [x["id"] for x in unsub["contacts"]] == [b["id"]]
    await ac.post("/_control/clock", json={"advance_seconds": 3600})
    stamp = (await ac.get("/_control/clock")).json()["now"]
    await sync(ac, "a@example.com", firstName="Later")
    from datetime import UTC, datetime

    after = datetime.fromtimestamp(stamp - 1, UTC).isoformat()
    recent = (await ac.get(f"{API}/contacts", params={"filters[updated_after]": after})).json()
    assert [x["id"] for x in recent["contacts"]] == [a["id"]]


async def test_get_put_delete_and_not_found(ac: httpx.AsyncClient) -> None:
    c = await sync(ac, "c@example.com", firstName="C")
    await on_list(ac, c["id"], DEFAULT_LIST_ID, 1)
    got = (await ac.get(f"{API}/contacts/{c['id']}")).json()
    assert got["contactLists"][0]["status"] == "1"
    assert got["contact"]["contactLists"] == [got["contactLists"][0]["id"]]
    put = await ac.put(
        f"{API}/contacts/{c['id']}", json={"contact": {"email": "c2@example.com", "phone": "1"}}
    )
    assert put.status_code == 200 and put.json()["contact"]["email"] == "c2@example.com"
    other = await sync(ac, "other@example.com")
    clash = await ac.put(
        f"{API}/contacts/{other['id']}", json={"contact": {"email": "c2@example.com"}}
    )
    assert clash.status_code == 422 and clash.json()["errors"][0]["code"] == "duplicate"
    deleted = await ac.delete(f"{API}/contacts/{c['id']}")
    assert (deleted.status_code, deleted.json()) == (200, {})
    again = await ac.delete(f"{API}/contacts/{c['id']}")
    assert again.status_code == 404
    assert again.json() == {"message": f"No Result found for Subscriber with id {c['id']}"}
    assert again.headers["content-type"] == "application/json"


async def test_trailing_slash_auth_and_html_404(sandbox: object, ac: httpx.AsyncClient) -> None:
    assert (await ac.get(f"{API}/contacts/")).status_code == 200
    unknown = await ac.get(f"{API}/nothing/here")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("text/html")
    assert "<title>404 Not Found</title>" in unknown.text
    assert (await ac.get("/somewhere-else")).headers["content-type"].startswith("text/html")
    bad = await ac.get(f"{API}/users/me", headers={"Api-Token": "wrong"})
    assert (bad.status_code, bad.json()) == (403, {"message": "Forbidden"})
    await ac.patch("/_control/config", json={"auth_failure_status": 401})
    bad = await ac.get(f"{API}/users/me", headers={"Api-Token": "wrong"})
    assert (bad.status_code, bad.json()) == (401, {"message": "Unauthorized"})
    me = await ac.get(f"{API}/users/me")
    assert me.status_code == 200 and me.headers["x-request-id"]
