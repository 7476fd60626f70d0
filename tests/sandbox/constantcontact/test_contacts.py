"""Contacts: create/409, sign_up_form, list filters and cursors, PUT, delete, resubscribe."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import pytest

from app.sandbox.constantcontact import DEFAULT_LIST_ID
from tests.sandbox.constantcontact.conftest import Sandbox


async def _create(api: httpx.AsyncClient, email: str, **body: Any) -> dict[str, Any]:
    response = await api.post(
        "/contacts",
        json={"email_address": {"address": email}, "create_source": "Account", **body},
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def _signup(api: httpx.AsyncClient, email: str, **body: Any) -> httpx.Response:
    return await api.post(
        "/contacts/sign_up_form",
        json={"email_address": email, "list_memberships": [DEFAULT_LIST_ID], **body},
    )


async def test_create_echoes_core_properties_and_409_names_the_contact(
    api: httpx.AsyncClient,
) -> None:
    created = await _create(
        api, "Ada@Example.com", first_name="Ada", list_memberships=[DEFAULT_LIST_ID]
    )
    assert created["email_address"]["address"] == "Ada@Example.com"
    assert created["email_address"]["permission_to_send"] == "implicit"
    assert created["email_address"]["opt_in_source"] == "Account"
    assert created["email_address"]["confirm_status"] == "off"
    assert created["create_source"] == "Account" and created["first_name"] == "Ada"
    assert created["created_at"].endswith("Z") and len(created["created_at"]) == 20
    assert "list_memberships" not in created
    duplicate = await api.post(
        "/contacts",
        json={"email_address": {"address": "ada@example.com"}, "create_source": "Account"},
    )
    assert duplicate.status_code == 409
    assert duplicate.json() == [
        {
            "error_key": "contacts.api.conflict",
            "error_message": f"Email already exists for contact {created['contact_id']}",
        }
    ]


async def test_create_validation_errors_are_arrays(api: httpx.AsyncClient) -> None:
    missing = await api.post("/contacts", json={"email_address": {"address": "x@example.com"}})
    assert missing.status_code == 400
    assert missing.json() == [
        {
            "error_key": "contacts.api.validation.error",
            "error_message": "create_source is missing, create_source does not have a valid value",
        }
    ]
    long_name = await api.post(
        "/contacts",
        json={
            "email_address": {"address": "y@example.com"},
            "create_source": "Account",
            "first_name": "x" * 51,
        },
    )
    assert long_name.status_code == 400
    unknown_list = await api.post(
        "/contacts",
        json={
            "email_address": {"address": "z@example.com"},
            "create_source": "Account",
            "list_memberships": ["00000000-0000-1000-8000-000000000000"],
        },
    )
    assert unknown_list.status_code == 400
    text = await api.post("/contacts", content=b"{}", headers={"content-type": "text/plain"})
    assert text.status_code == 415
    broken = await api.post(
        "/contacts", content=b'{"a": 1,}', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    birthday = await api.post(
        "/contacts",
        json={
            "email_address": {"address": "b@example.com"},
            "create_source": "Account",
            "birthday_month": 11,
        },
    )
    assert birthday.status_code == 400
    listed = await api.get("/contacts")
    assert listed.json()["contacts"] == []  # nothing half-written


async def test_sign_up_form_201_then_200_append_only(
    sandbox: Sandbox, api: httpx.AsyncClient
) -> None:
    other = (await api.post("/contact_lists", json={"name": "Other"})).json()["list_id"]
    first = await _signup(api, "form@example.com", first_name="Form")
    assert first.status_code == 201
    assert set(first.json()) == {"contact_id", "action"}
    assert first.json()["action"] == "created"
    second = await api.post(
        "/contacts/sign_up_form",
        json={"email_address": "form@example.com", "list_memberships": [other]},
    )
    assert second.status_code == 200
    assert second.json() == {"contact_id": first.json()["contact_id"], "action": "updated"}
    contact = (await sandbox.dump())["form@example.com"]
    assert contact["list_memberships"] == [DEFAULT_LIST_ID, other]
    assert contact["first_name"] == "Form"  # partial update keeps it
    assert contact["email_address"]["permission_to_send"] == "explicit"
    assert contact["email_address"]["opt_in_source"] == "Contact"
    missing = await api.post(
        "/contacts/sign_up_form",
        json={
            "email_address": "n@example.com",
            "list_memberships": ["00000000-0000-1000-8000-000000000000"],
        },
    )
    assert missing.status_code == 404
    assert missing.json()[0]["error_key"] == "contacts.api.not_found"
    no_list = await api.post("/contacts/sign_up_form", json={"email_address": "n@example.com"})
    assert no_list.status_code == 400
    too_long = await _signup(api, "x" * 45 + "@example.com")
    assert too_long.status_code == 400  # 50 characters at most here


@pytest.mark.parametrize(
    ("rule", "source", "resubscribed"),
    [
        ("always", "Contact", True),
        ("account_optouts_only", "Contact", False),
        ("account_optouts_only", "Account", True),
        ("never", "Account", False),
    ],
)
async def test_sign_up_form_resubscribes_per_knob(
    sandbox: Sandbox, api: httpx.AsyncClient, rule: str, source: str, resubscribed: bool
) -> None:
    await sandbox.configure(signup_form_resubscribes=rule)
    created = await _create(api, "out@example.com", list_memberships=[DEFAULT_LIST_ID])
    put = await api.put(
        f"/contacts/{created['contact_id']}",
        json={
            "email_address": {"address": "out@example.com", "permission_to_send": "unsubscribed"},
            "update_source": source,
        },
    )
    assert put.status_code == 200
    assert put.json()["email_address"]["opt_out_source"] == source
    again = await _signup(api, "out@example.com")
    assert again.status_code == 200
    block = (await sandbox.dump())["out@example.com"]["email_address"]
    if resubscribed:
        assert block["permission_to_send"] == "explicit"
        assert "opt_out_date" not in block
    else:
        assert block["permission_to_send"] == "unsubscribed"


async def test_list_filters_cursors_and_last_page(sandbox: Sandbox, api: httpx.AsyncClient) -> None:
    ids = [(await _create(api, f"p{i}@example.com"))["contact_id"] for i in range(5)]
    seen: list[str] = []
    response = await api.get("/contacts", params={"limit": 2, "include_count": "true"})
    pages = 0
    while True:
        body = response.json()
        pages += 1
        assert body["contacts_count"] == 5
        seen += [c["contact_id"] for c in body["contacts"]]
        href = body["_links"].get("next", {}).get("href")
        if href is None:
            assert body["_links"] == {}
            break
        assert href.startswith("/v3/contacts?cursor=")
        assert "limit=2" in base64.b64decode(href.split("cursor=")[1]).decode()
        response = await api.get(href.removeprefix("/v3"))
    assert pages == 3 and seen == ids  # created_at order, nothing twice
    await sandbox.configure(last_page_links="omit")
    last = await api.get("/contacts", params={"limit": 10})
    assert "_links" not in last.json()
    exact = await api.get("/contacts", params={"email": "P3@EXAMPLE.COM"})
    assert [c["contact_id"] for c in exact.json()["contacts"]] == [ids[3]]
    bad = await api.get("/contacts", params={"limit": 501})
    assert bad.status_code == 400
    bad_status = await api.get("/contacts", params={"status": "gone"})
    assert bad_status.status_code == 400


async def test_status_list_and_date_filters(sandbox: Sandbox, api: httpx.AsyncClient) -> None:
    on_list = await _create(api, "on@example.com", list_memberships=[DEFAULT_LIST_ID])
    off_list = await _create(api, "off@example.com")
    await sandbox.http.post("/_control/clock/advance", json={"seconds": 10})
    now = (await sandbox.http.get("/_control/clock")).json()["now"]
    mark = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    await sandbox.http.post("/_control/clock/advance", json={"seconds": 5})
    assert (
        await sandbox.act("off@example.com", "unsubscribe", reason="too many")
    ).status_code == 200
    await api.delete(f"/contacts/{on_list['contact_id']}")

    async def ids(**params: str) -> list[str]:
        response = await api.get("/contacts", params=params)
        assert response.status_code == 200, response.text
        return [c["contact_id"] for c in response.json()["contacts"]]

    assert await ids() == [off_list["contact_id"]]  # deleted ones only on request
    assert await ids(status="all") == [on_list["contact_id"], off_list["contact_id"]]
    assert await ids(status="deleted") == [on_list["contact_id"]]
    assert await ids(status="active") == []
    # PYSDK's format: fractions and +0000
    sdk_mark = mark.replace("Z", ".000000+0000")
    assert await ids(status="unsubscribed", optout_after=sdk_mark) == [off_list["contact_id"]]
    assert await ids(updated_after=mark, status="all") == [
        on_list["contact_id"],
        off_list["contact_id"],
    ]
    assert await ids(created_after=mark) == []
    listed = await api.get(
        "/contacts", params={"status": "unsubscribed", "include": "list_memberships"}
    )
    block = listed.json()["contacts"][0]["email_address"]
    assert block["opt_out_source"] == "Contact" and block["opt_out_reason"] == "too many"
    assert listed.json()["contacts"][0]["update_source"] == "Contact"
    second = await _create(api, "two@example.com", list_memberships=[DEFAULT_LIST_ID])
    assert await ids(lists=DEFAULT_LIST_ID) == [second["contact_id"]]


async def test_get_include_and_id_errors(api: httpx.AsyncClient) -> None:
    tag = (await api.post("/contact_tags", json={"name": "VIP"})).json()["tag_id"]
    created = await _create(
        api,
        "inc@example.com",
        list_memberships=[DEFAULT_LIST_ID],
        taggings=[tag],
        notes=[{"content": "hello"}],
    )
    core = (await api.get(f"/contacts/{created['contact_id']}")).json()
    assert "taggings" not in core and "list_memberships" not in core
    full = await api.get(
        f"/contacts/{created['contact_id']}", params={"include": "taggings,list_memberships,notes"}
    )
    assert full.json()["taggings"] == [tag]
    assert full.json()["notes"][0]["content"] == "hello"
    malformed = await api.get("/contacts/not-a-uuid")
    assert malformed.status_code == 400
    assert malformed.json() == [
        {
            "error_key": "contacts.api.validation.error",
            "error_message": "contact_id is in an invalid format.",
        }
    ]
    unknown = await api.get("/contacts/00000000-0000-1000-8000-000000000000")
    assert unknown.status_code == 404
    assert unknown.json() == [
        {
            "error_key": "contacts.api.not_found",
            "error_message": "The requested resource was not found.",
        }
    ]


async def test_put_is_a_full_update_of_core_fields_only(
    sandbox: Sandbox, api: httpx.AsyncClient
) -> None:
    tag = (await api.post("/contact_tags", json={"name": "Theirs"})).json()["tag_id"]
    created = await _create(
        api,
        "put@example.com",
        first_name="Ann",
        job_title="CEO",
        list_memberships=[DEFAULT_LIST_ID],
        taggings=[tag],
    )
    url = f"/contacts/{created['contact_id']}"
    no_source = await api.put(url, json={"email_address": {"address": "put@example.com"}})
    assert no_source.status_code == 400
    put = await api.put(
        url,
        json={
            "email_address": {"address": "put@example.com"},
            "last_name": "Lee",
            "update_source": "Account",
        },
    )
    assert put.status_code == 200
    stored = (await sandbox.dump())["put@example.com"]
    assert "first_name" not in stored and "job_title" not in stored  # nulled
    assert stored["last_name"] == "Lee"
    assert stored["list_memberships"] == [DEFAULT_LIST_ID] and stored["taggings"] == [tag]
    replaced = await api.put(
        url,
        json={
            "email_address": {"address": "put@example.com"},
            "list_memberships": [],
            "update_source": "Account",
        },
    )
    assert replaced.status_code == 200
    assert (await sandbox.dump())["put@example.com"]["list_memberships"] == []
    other = await _create(api, "other@example.com")
    clash = await api.put(
        url,
        json={"email_address": {"address": "other@example.com"}, "update_source": "Account"},
    )
    assert clash.status_code == 409
    assert clash.json()[0]["error_message"] == (
        f"Email already exists for contact {other['contact_id']}"
    )


@pytest.mark.parametrize(
    ("rule", "status", "permission"),
    [
        ("reject_contact_optouts", 400, "unsubscribed"),
        ("allow", 200, "implicit"),
        ("ignore", 200, "unsubscribed"),
    ],
)
async def test_put_cannot_resubscribe_a_person_who_unsubscribed(
    sandbox: Sandbox, api: httpx.AsyncClient, rule: str, status: int, permission: str
) -> None:
    await sandbox.configure(put_resubscribe=rule)
    created = await _create(api, "safe@example.com")
    await sandbox.act("safe@example.com", "unsubscribe")
    response = await api.put(
        f"/contacts/{created['contact_id']}",
        json={
            "email_address": {"address": "safe@example.com", "permission_to_send": "implicit"},
            "update_source": "Account",
        },
    )
    assert response.status_code == status, response.text
    stored = (await sandbox.dump())["safe@example.com"]
    assert stored["email_address"]["permission_to_send"] == permission


async def test_delete_keeps_the_contact_deleted_and_blocks_post(
    sandbox: Sandbox, api: httpx.AsyncClient
) -> None:
    created = await _create(api, "del@example.com", list_memberships=[DEFAULT_LIST_ID])
    url = f"/contacts/{created['contact_id']}"
    assert (await api.delete(url)).status_code == 204
    assert (await api.delete(url)).status_code == 204  # idempotent
    got = (await api.get(url, params={"include": "list_memberships"})).json()
    assert len(got["deleted_at"]) == 10  # a date
    assert got["list_memberships"] == []
    assert got["email_address"]["permission_to_send"] == "implicit"  # not unsubscribed
    again = await api.post(
        "/contacts",
        json={"email_address": {"address": "del@example.com"}, "create_source": "Account"},
    )
    assert again.status_code == 409
    contact_put = await api.put(
        url, json={"email_address": {"address": "del@example.com"}, "update_source": "Contact"}
    )
    assert contact_put.status_code == 400
    revived = await _signup(api, "del@example.com")
    assert revived.status_code == 200
    back = (await api.get(url, params={"include": "list_memberships"})).json()
    assert "deleted_at" not in back and back["list_memberships"] == [DEFAULT_LIST_ID]
    await sandbox.configure(delete_deleted_status=404)
    await api.delete(url)
    assert (await api.delete(url)).status_code == 404


async def test_resubscribe_sends_one_email_and_waits_for_the_person(
    sandbox: Sandbox, api: httpx.AsyncClient
) -> None:
    created = await _create(api, "back@example.com", list_memberships=[DEFAULT_LIST_ID])
    url = f"/contacts/resubscribe/{created['contact_id']}"
    not_yet = await api.put(url, json={"list_ids": [DEFAULT_LIST_ID]})
    assert not_yet.status_code == 400  # only an unsubscribed contact gets one
    await sandbox.act("back@example.com", "unsubscribe")
    first = await api.put(url, json={"list_ids": [DEFAULT_LIST_ID]})
    assert first.status_code == 200
    assert (await sandbox.dump())["back@example.com"]["email_address"][
        "permission_to_send"
    ] == "pending_confirmation"
    second = await api.put(url, json={"list_ids": [DEFAULT_LIST_ID]})
    assert second.status_code == 409
    assert second.json()[0]["error_key"] == "contacts.api.conflict"
    emails = (await sandbox.http.get("/_control/emails")).json()["emails"]
    assert [e["kind"] for e in emails] == ["resubscribe"]
    confirmed = await sandbox.act("back@example.com", "confirm_resubscribe")
    assert confirmed.status_code == 200
    block = confirmed.json()["email_address"]
    assert block["permission_to_send"] == "explicit" and block["confirm_status"] == "confirmed"
    assert confirmed.json()["list_memberships"] == [DEFAULT_LIST_ID]
    third = await api.put(url, json={"list_ids": [DEFAULT_LIST_ID]})
    assert third.status_code == 409  # once, ever


async def test_counts(sandbox: Sandbox, api: httpx.AsyncClient) -> None:
    await _create(api, "c1@example.com")
    await _signup(api, "c2@example.com")
    await _create(api, "c3@example.com")
    await sandbox.act("c3@example.com", "unsubscribe")
    counts = (await api.get("/contacts/counts")).json()
    assert counts == {"total": 3, "explicit": 1, "implicit": 1, "pending": 0, "unsubscribed": 1}


async def test_sign_up_form_treats_an_unanswered_resubscribe_as_opted_out(
    sandbox: Sandbox, api: httpx.AsyncClient
) -> None:
    await sandbox.configure(signup_form_resubscribes="never")
    created = await _create(api, "wait@example.com")
    await sandbox.act("wait@example.com", "unsubscribe")
    sent = await api.put(
        f"/contacts/resubscribe/{created['contact_id']}", json={"list_ids": [DEFAULT_LIST_ID]}
    )
    assert sent.status_code == 200
    assert (await _signup(api, "wait@example.com")).status_code == 200
    block = (await sandbox.dump())["wait@example.com"]["email_address"]
    assert block["permission_to_send"] == "pending_confirmation"
