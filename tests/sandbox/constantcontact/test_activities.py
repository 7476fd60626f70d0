"""Bulk activities: queued, polled to completion, their effects and status counts."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from app.sandbox.constantcontact import DEFAULT_LIST_ID
from tests.sandbox.constantcontact.conftest import Sandbox


async def _poll(api: httpx.AsyncClient, created: httpx.Response) -> dict[str, Any]:
    """Follow `_links.self` until the activity completes (the sandbox sets how long)."""
    assert created.status_code in (201, 202), created.text
    href = created.json()["_links"]["self"]["href"].removeprefix("/v3")
    for _ in range(400):
        body = (await api.get(href)).json()
        if body["state"] == "completed":
            return body  # type: ignore[no-any-return]
        assert body["state"] in ("initialized", "processing")
        await asyncio.sleep(0.02)
    raise AssertionError("the activity never completed")


async def test_json_import_creates_updates_and_keeps_unsubscribed_off_lists(
    sandbox: Sandbox, api: httpx.AsyncClient
) -> None:
    await sandbox.configure(activity_duration_ms=200)
    await api.post("/contact_custom_fields", json={"label": "Shoe size", "type": "string"})
    existing = await api.post(
        "/contacts",
        json={
            "email_address": {"address": "old@example.com"},
            "first_name": "Old",
            "create_source": "Account",
        },
    )
    await sandbox.act("old@example.com", "unsubscribe")
    created = await api.post(
        "/activities/contacts_json_import",
        json={
            "import_data": [
                {"email": "new@example.com", "first_name": "New", "cf:Shoe_size": "42"},
                {"email": "old@example.com", "last_name": "Timer"},
                {"email": "not an email"},
            ],
            "list_ids": [DEFAULT_LIST_ID],
        },
    )
    assert created.status_code == 201
    first = created.json()
    assert first["state"] == "initialized" and first["percent_done"] == 0
    assert first["status"]["items_total_count"] == 3
    done = await _poll(api, created)
    assert done["percent_done"] == 100 and "completed_at" in done
    assert done["status"] == {
        "items_total_count": 3,
        "items_completed_count": 3,
        "person_count": 2,
        "error_count": 1,
        "correctable_count": 0,
        "cannot_add_to_list_count": 1,
    }
    assert len(done["activity_errors"]) == 1 and isinstance(done["activity_errors"][0], str)
    people = await sandbox.dump()
    new = people["new@example.com"]
    assert new["email_address"]["permission_to_send"] == "implicit"
    assert new["email_address"]["opt_in_source"] == "Account"
    assert new["list_memberships"] == [DEFAULT_LIST_ID]
    assert new["custom_fields"][0]["value"] == "42"
    old = people["old@example.com"]
    assert old["contact_id"] == existing.json()["contact_id"]
    assert old["first_name"] == "Old" and old["last_name"] == "Timer"  # only what was sent
    assert old["list_memberships"] == []
    assert old["email_address"]["permission_to_send"] == "unsubscribed"


async def test_import_limits(sandbox: Sandbox, api: httpx.AsyncClient) -> None:
    await sandbox.configure(import_max_contacts=2, import_max_bytes=100)
    too_many = await api.post(
        "/activities/contacts_json_import",
        json={
            "import_data": [{"email": f"m{i}@example.com"} for i in range(3)],
            "list_ids": [DEFAULT_LIST_ID],
        },
    )
    assert too_many.status_code == 400
    no_lists = await api.post(
        "/activities/contacts_json_import", json={"import_data": [{"email": "a@example.com"}]}
    )
    assert no_lists.status_code == 400
    # past the byte limit the rest is dropped silently
    rows = [
        {"email": "a@example.com", "first_name": "x" * 40},
        {"email": "b@example.com", "first_name": "y" * 40},
    ]
    cut = await api.post(
        "/activities/contacts_json_import",
        json={"import_data": rows, "list_ids": [DEFAULT_LIST_ID]},
    )
    done = await _poll(api, cut)
    assert done["status"]["items_total_count"] == 1
    assert set(await sandbox.dump()) == {"a@example.com"}


async def test_list_tag_and_delete_activities(sandbox: Sandbox, api: httpx.AsyncClient) -> None:
    other = (await api.post("/contact_lists", json={"name": "Other"})).json()["list_id"]
    tag = (await api.post("/contact_tags", json={"name": "T"})).json()["tag_id"]
    ids = []
    for i in range(3):
        response = await api.post(
            "/contacts",
            json={
                "email_address": {"address": f"b{i}@example.com"},
                "create_source": "Account",
                "list_memberships": [DEFAULT_LIST_ID],
            },
        )
        ids.append(response.json()["contact_id"])
    added = await _poll(
        api,
        await api.post(
            "/activities/add_list_memberships",
            json={
                "source": {"list_ids": [DEFAULT_LIST_ID]},
                "exclude": {"contact_ids": [ids[2]]},
                "list_ids": [other],
            },
        ),
    )
    assert added["status"]["items_total_count"] == 2 and added["status"]["list_count"] == 1
    tagged = await _poll(
        api,
        await api.post(
            "/activities/contacts_taggings_add",
            json={"source": {"contact_ids": ids[:1]}, "tag_ids": [tag]},
        ),
    )
    assert "results" in tagged["_links"]
    people = await sandbox.dump()
    assert people["b0@example.com"]["list_memberships"] == [DEFAULT_LIST_ID, other]
    assert people["b2@example.com"]["list_memberships"] == [DEFAULT_LIST_ID]
    assert people["b0@example.com"]["taggings"] == [tag]
    await _poll(
        api,
        await api.post(
            "/activities/remove_list_memberships",
            json={"source": {"contact_ids": ids}, "list_ids": [other]},
        ),
    )
    await _poll(
        api,
        await api.post(
            "/activities/contacts_taggings_remove",
            json={"source": {"tag_ids": [tag]}, "tag_ids": [tag]},
        ),
    )
    deleted = await _poll(
        api, await api.post("/activities/contact_delete", json={"contact_ids": ids[:2]})
    )
    assert deleted["status"]["items_completed_count"] == 2
    people = await sandbox.dump()
    assert people["b0@example.com"]["taggings"] == []
    assert (
        "deleted_at" in people["b0@example.com"]
        and people["b0@example.com"]["list_memberships"] == []
    )
    assert people["b2@example.com"]["list_memberships"] == [DEFAULT_LIST_ID]
    # adding a deleted contact to a list un-deletes it
    await _poll(
        api,
        await api.post(
            "/activities/add_list_memberships",
            json={"source": {"contact_ids": ids[:1]}, "list_ids": [DEFAULT_LIST_ID]},
        ),
    )
    assert "deleted_at" not in (await sandbox.dump())["b0@example.com"]
    listing = await api.get("/activities", params={"state": "completed", "limit": 2})
    assert len(listing.json()["activities"]) == 2
    assert listing.json()["_links"]["next"]["href"].startswith("/v3/activities?cursor=")


async def test_list_tag_and_field_deletes_are_activities(
    sandbox: Sandbox, api: httpx.AsyncClient
) -> None:
    doomed = (await api.post("/contact_lists", json={"name": "Doomed"})).json()["list_id"]
    tag = (await api.post("/contact_tags", json={"name": "Gone"})).json()["tag_id"]
    await api.post(
        "/contacts",
        json={
            "email_address": {"address": "m@example.com"},
            "create_source": "Account",
            "list_memberships": [doomed, DEFAULT_LIST_ID],
            "taggings": [tag],
        },
    )
    list_delete = await api.delete(f"/contact_lists/{doomed}")
    assert list_delete.status_code == 202
    assert list_delete.headers["location"] == list_delete.json()["_links"]["self"]["href"]
    await _poll(api, list_delete)
    await _poll(api, await api.delete(f"/contact_tags/{tag}"))
    person = (await sandbox.dump())["m@example.com"]
    assert person["list_memberships"] == [DEFAULT_LIST_ID] and person["taggings"] == []
    assert (await api.get(f"/contact_lists/{doomed}")).status_code == 404
    field = (await api.post("/contact_custom_fields", json={"label": "F", "type": "string"})).json()
    await _poll(
        api,
        await api.post(
            "/activities/custom_fields_delete",
            json={"custom_field_ids": [field["custom_field_id"]]},
        ),
    )
    assert (await api.get(f"/contact_custom_fields/{field['custom_field_id']}")).status_code == 404


async def test_queue_of_activities_is_capped(sandbox: Sandbox, api: httpx.AsyncClient) -> None:
    await sandbox.configure(activity_queue_limit=2, activity_duration_ms=60_000)
    body = {"contact_ids": ["00000000-0000-1000-8000-000000000000"]}
    for _ in range(2):
        assert (await api.post("/activities/contact_delete", json=body)).status_code == 201
    full = await api.post("/activities/contact_delete", json=body)
    assert full.status_code == 429
    assert full.json() == [
        {
            "error_key": "activities.queue.full",
            "error_message": "Too many requests. You exceeded 2 queued activities for this "
            "user account.",
        }
    ]
    await sandbox.http.post("/_control/clock/advance", json={"seconds": 120})
    assert (await api.post("/activities/contact_delete", json=body)).status_code == 201
