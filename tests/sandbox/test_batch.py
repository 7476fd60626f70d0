"""Batch subscribe `POST /lists/{id}` (reference §3.1)."""

from __future__ import annotations

import httpx

from tests.sandbox.conftest import LIST, Members, assert_problem


async def test_new_members(mc: httpx.AsyncClient, members: Members) -> None:
    response = await mc.post(
        LIST,
        json={
            "members": [
                {
                    "email_address": f"b{i}@example.com",
                    "status": "subscribed",
                    "merge_fields": {"FNAME": f"B{i}"},
                    "tags": ["Batch"],
                }
                for i in range(3)
            ]
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["total_created"] == 3
    assert body["total_updated"] == 0
    assert body["error_count"] == 0
    assert body["errors"] == []
    assert [m["email_address"] for m in body["new_members"]] == [
        "b0@example.com",
        "b1@example.com",
        "b2@example.com",
    ]
    assert body["new_members"][0]["tags"][0]["name"] == "Batch"
    assert "_links" in body


async def test_existing_without_update_existing(mc: httpx.AsyncClient, members: Members) -> None:
    await members.make("old@example.com", "subscribed")
    body = (
        await mc.post(
            LIST,
            json={
                "members": [
                    {"email_address": "old@example.com", "status": "subscribed"},
                    {"email_address": "new@example.com", "status": "subscribed"},
                ]
            },
        )
    ).json()
    assert body["total_created"] == 1
    assert body["error_count"] == 1
    error = body["errors"][0]
    assert error["email_address"] == "old@example.com"
    assert error["error_code"] == "ERROR_CONTACT_EXISTS"
    assert error["error"] == (
        "old@example.com is already a list member, do you want to update? "
        "please provide update_existing:true in the request body"
    )


async def test_update_existing(mc: httpx.AsyncClient, members: Members) -> None:
    await members.make("u@example.com", "subscribed", tags=["Keep"])
    await members.make("unsub@example.com", "unsubscribed")
    await members.make("arch@example.com", "archived")
    body = (
        await mc.post(
            LIST,
            json={
                "update_existing": True,
                "members": [
                    {
                        "email_address": "u@example.com",
                        "status_if_new": "subscribed",
                        "merge_fields": {"FNAME": "Updated"},
                        "tags": ["Ignored"],
                    },
                    {"email_address": "unsub@example.com", "status": "subscribed"},
                    {"email_address": "arch@example.com", "status": "subscribed"},
                ],
            },
        )
    ).json()
    assert body["total_updated"] == 2
    updated = {m["email_address"]: m for m in body["updated_members"]}
    assert updated["u@example.com"]["merge_fields"]["FNAME"] == "Updated"
    assert [t["name"] for t in updated["u@example.com"]["tags"]] == ["Keep"]
    assert updated["arch@example.com"]["status"] == "subscribed"
    assert body["errors"][0]["email_address"] == "unsub@example.com"
    assert body["errors"][0]["error_code"] == "ERROR_GENERIC"
    assert "compliance state" in body["errors"][0]["error"]


async def test_sync_tags_replaces(mc: httpx.AsyncClient, members: Members) -> None:
    await members.make("t@example.com", "subscribed", tags=["A", "B"])
    body = (
        await mc.post(
            LIST,
            json={
                "update_existing": True,
                "sync_tags": True,
                "members": [
                    {
                        "email_address": "t@example.com",
                        "status_if_new": "subscribed",
                        "tags": ["B", "C"],
                    }
                ],
            },
        )
    ).json()
    assert sorted(t["name"] for t in body["updated_members"][0]["tags"]) == ["B", "C"]


async def test_generic_errors(mc: httpx.AsyncClient) -> None:
    body = (
        await mc.post(
            LIST,
            json={
                "members": [
                    {"email_address": "x@mailinator.com", "status": "subscribed"},
                    {"email_address": "nope", "status": "subscribed"},
                    {"email_address": "nostatus@example.com"},
                    {
                        "email_address": "null@example.com",
                        "status": "subscribed",
                        "merge_fields": {"FNAME": None},
                    },
                ]
            },
        )
    ).json()
    assert body["error_count"] == 4
    assert {e["error_code"] for e in body["errors"]} == {"ERROR_GENERIC"}
    assert body["errors"][0]["error"] == (
        "x@mailinator.com looks fake or invalid, please enter a real email address."
    )
    assert body["errors"][3]["field"] == "merge_fields.FNAME"


async def test_duplicates(mc: httpx.AsyncClient, members: Members) -> None:
    payload = {
        "members": [
            {"email_address": "d@example.com", "status": "subscribed"},
            {"email_address": "D@example.com", "status": "unsubscribed"},
        ]
    }
    strict = (await mc.post(LIST, json=payload)).json()
    assert strict["total_created"] == 1
    assert strict["error_count"] == 1
    await mc.post("/_control/reset")
    lenient = (await mc.post(LIST, params={"skip_duplicate_check": "true"}, json=payload)).json()
    assert lenient["total_created"] == 1
    assert lenient["error_count"] == 0
    assert (await members.get("d@example.com"))["status"] == "subscribed"


async def test_limits_and_schema(mc: httpx.AsyncClient) -> None:
    too_many = await mc.post(
        LIST,
        json={
            "members": [
                {"email_address": f"m{i}@example.com", "status": "subscribed"} for i in range(501)
            ]
        },
    )
    assert_problem(too_many, 400, "Invalid Resource")
    assert_problem(await mc.post(LIST, json={}), 400, "Invalid Resource")
    full = await mc.post(
        LIST,
        json={
            "members": [
                {"email_address": f"m{i}@example.com", "status": "subscribed"} for i in range(500)
            ]
        },
    )
    assert full.json()["total_created"] == 500
