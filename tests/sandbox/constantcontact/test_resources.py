"""Lists, tags, custom fields, the account, scopes and privileges."""

from __future__ import annotations

import httpx

from app.sandbox.constantcontact import DEFAULT_ACCOUNT_ID, DEFAULT_LIST_ID
from tests.sandbox.constantcontact.conftest import Sandbox


async def test_account_summary_and_privileges(sandbox: Sandbox, api: httpx.AsyncClient) -> None:
    summary = await api.get("/account/summary", params={"extra_fields": "physical_address"})
    assert summary.json()["encoded_account_id"] == DEFAULT_ACCOUNT_ID
    assert summary.json()["physical_address"]["city"]
    no_scope = await sandbox.api(scopes=["contact_data"])
    async with no_scope:
        forbidden = await no_scope.get("/account/summary")
        assert forbidden.status_code == 403
        assert forbidden.json()[0]["error_key"] == "forbidden"
        assert (await no_scope.get("/account/user/privileges")).status_code == 200  # no scope
        assert (await no_scope.get("/contacts")).status_code == 200
    account_only = await sandbox.api(scopes=["account_read"])
    async with account_only:
        assert (await account_only.get("/contacts")).status_code == 403


async def test_campaign_creators_cannot_touch_contacts(
    sandbox: Sandbox, api: httpx.AsyncClient
) -> None:
    patched = await sandbox.http.patch(
        f"/_control/accounts/{DEFAULT_ACCOUNT_ID}", json={"role": "campaign_creator"}
    )
    assert patched.status_code == 200
    assert (await api.get("/contacts")).status_code == 403
    privileges = (await api.get("/account/user/privileges")).json()
    assert "contacts:write" not in {p["privilege_name"] for p in privileges}


async def test_lists_crud_counts_and_conflicts(sandbox: Sandbox, api: httpx.AsyncClient) -> None:
    created = await api.post("/contact_lists", json={"name": "News", "description": "d"})
    assert created.status_code == 201
    body = created.json()
    assert body["favorite"] is False and "membership_count" not in body
    dup = await api.post("/contact_lists", json={"name": "news"})
    assert dup.status_code == 409 and dup.json()[0]["error_key"] == "contacts.api.conflict"
    await api.post(
        "/contacts",
        json={
            "email_address": {"address": "l@example.com"},
            "create_source": "Account",
            "list_memberships": [body["list_id"]],
        },
    )
    await sandbox.act("l@example.com", "unsubscribe")
    counted = await api.get(
        f"/contact_lists/{body['list_id']}", params={"include_membership_count": "all"}
    )
    assert counted.json()["membership_count"] == 1
    active = await api.get(
        f"/contact_lists/{body['list_id']}", params={"include_membership_count": "active"}
    )
    assert active.json()["membership_count"] == 0
    renamed = await api.put(
        f"/contact_lists/{body['list_id']}", json={"name": "Renamed", "favorite": True}
    )
    assert renamed.json()["name"] == "Renamed" and renamed.json()["favorite"] is True
    page = await api.get("/contact_lists", params={"limit": 1, "include_count": "true"})
    assert page.json()["lists_count"] == 2
    assert page.json()["lists"][0]["list_id"] == DEFAULT_LIST_ID
    nxt = page.json()["_links"]["next"]["href"]
    second = await api.get(nxt.removeprefix("/v3"))
    assert [x["name"] for x in second.json()["lists"]] == ["Renamed"]
    assert second.json()["_links"] == {}
    await sandbox.configure(max_lists=2)
    assert (await api.post("/contact_lists", json={"name": "Third"})).status_code == 400


async def test_tags_and_custom_fields(api: httpx.AsyncClient) -> None:
    tag = await api.post("/contact_tags", json={"name": "VIP", "tag_source": "ESTY"})
    assert tag.status_code == 201 and tag.json()["tag_source"] == "ESTY"
    assert (await api.post("/contact_tags", json={"name": "vip"})).status_code == 409
    renamed = await api.put(f"/contact_tags/{tag.json()['tag_id']}", json={"name": "VIP2"})
    assert renamed.json()["name"] == "VIP2"
    field = await api.post(
        "/contact_custom_fields",
        json={
            "label": "Favourite car",
            "type": "single_select",
            "choices": [{"choice_label": "Tesla"}],
        },
    )
    assert field.status_code == 201
    body = field.json()
    assert body["name"] == "Favourite_car"
    assert body["choices"][0]["choice_id"] == 1  # an int, as the SDK requires
    assert (
        await api.post("/contact_custom_fields", json={"label": "Favourite car", "type": "string"})
    ).status_code == 409
    put = await api.put(f"/contact_custom_fields/{body['custom_field_id']}", json={"label": "Car"})
    assert put.json()["label"] == "Car" and "choices" not in put.json()  # omitted → null
    contact = await api.post(
        "/contacts",
        json={
            "email_address": {"address": "cf@example.com"},
            "create_source": "Account",
            "custom_fields": [{"custom_field_id": body["custom_field_id"], "value": "Tesla"}],
        },
    )
    assert contact.status_code == 201
    unknown = await api.post(
        "/contacts",
        json={
            "email_address": {"address": "cf2@example.com"},
            "create_source": "Account",
            "custom_fields": [
                {"custom_field_id": "00000000-0000-1000-8000-000000000000", "value": "x"}
            ],
        },
    )
    assert unknown.status_code == 400
    assert (
        await api.delete(f"/contact_custom_fields/{body['custom_field_id']}")
    ).status_code == 204
    got = await api.get(
        f"/contacts/{contact.json()['contact_id']}", params={"include": "custom_fields"}
    )
    assert got.json()["custom_fields"] == []


async def test_unknown_paths_and_methods(api: httpx.AsyncClient) -> None:
    missing = await api.get("/nothing_here")
    assert missing.status_code == 404
    assert missing.json()[0]["error_key"] == "contacts.api.not_found"
    wrong = await api.delete("/contacts")
    assert wrong.status_code == 405
