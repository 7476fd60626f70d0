"""Members collection (paging, filters, sorting), projection, tags, merge fields, lists,
account isolation."""

from __future__ import annotations

import asyncio

import httpx

from app.sandbox.mailchimp import DEFAULT_LIST_ID, SandboxApp
from tests.sandbox.conftest import LIST, MEMBERS, Members, assert_problem, md5, member_url


async def _fill(members: Members, n: int) -> None:
    for i in range(n):
        await members.make(f"m{i:02d}@example.com", "subscribed")


async def test_paging(mc: httpx.AsyncClient, members: Members) -> None:
    await _fill(members, 25)
    seen: list[str] = []
    offset = 0
    while True:
        page = (await mc.get(MEMBERS, params={"count": 10, "offset": offset})).json()
        assert page["total_items"] == 25
        assert page["list_id"] == DEFAULT_LIST_ID
        if not page["members"]:
            break
        seen += [m["email_address"] for m in page["members"]]
        offset += 10
    assert seen == [f"m{i:02d}@example.com" for i in range(25)]
    default = (await mc.get(MEMBERS)).json()
    assert len(default["members"]) == 10


async def test_count_above_1000_is_refused(mc: httpx.AsyncClient) -> None:
    assert (await mc.get(MEMBERS, params={"count": 1000})).status_code == 200
    response = await mc.get(MEMBERS, params={"count": 1001})
    body = assert_problem(response, 400, "Invalid Resource")
    assert body["errors"][0]["field"] == "count"


async def test_status_filter_and_archived_excluded(mc: httpx.AsyncClient, members: Members) -> None:
    for status in ("subscribed", "unsubscribed", "pending", "archived"):
        await members.make(f"{status}@example.com", status)
    everyone = (await mc.get(MEMBERS)).json()
    assert {m["status"] for m in everyone["members"]} == {"subscribed", "unsubscribed", "pending"}
    assert everyone["total_items"] == 3
    archived = (await mc.get(MEMBERS, params={"status": "archived"})).json()
    assert [m["email_address"] for m in archived["members"]] == ["archived@example.com"]
    bad = await mc.get(MEMBERS, params={"status": "nope"})
    assert bad.status_code == 400


async def test_since_last_changed_and_sort(
    mc: httpx.AsyncClient, members: Members, state: object
) -> None:
    await _fill(members, 3)
    audience = state.lists[DEFAULT_LIST_ID]  # type: ignore[attr-defined]
    # age the first three members by an hour so the filter has something to cut
    for m in audience.members.values():
        m.last_changed -= 3600
    audience.version += 1
    await asyncio.sleep(0)
    cut = (await members.get("m00@example.com"))["last_changed"]
    await members.put("m01@example.com", merge_fields={"FNAME": "Later"})
    await members.make("fresh@example.com", "subscribed")
    newer = (
        await mc.get(
            MEMBERS,
            params={
                "since_last_changed": "2000-01-01T00:00:00+00:00",
                "sort_field": "last_changed",
                "sort_dir": "DESC",
            },
        )
    ).json()
    assert newer["members"][-1]["last_changed"] <= newer["members"][0]["last_changed"]
    recent = (await mc.get(MEMBERS, params={"since_last_changed": _plus_minute(cut)})).json()
    assert {m["email_address"] for m in recent["members"]} == {
        "m01@example.com",
        "fresh@example.com",
    }
    older = (await mc.get(MEMBERS, params={"before_last_changed": _plus_minute(cut)})).json()
    assert {m["email_address"] for m in older["members"]} == {
        "m00@example.com",
        "m02@example.com",
    }
    ascending = (
        await mc.get(MEMBERS, params={"sort_field": "last_changed", "sort_dir": "ASC"})
    ).json()
    stamps = [m["last_changed"] for m in ascending["members"]]
    assert stamps == sorted(stamps)


def _plus_minute(stamp: str) -> str:
    from datetime import datetime, timedelta

    return (datetime.fromisoformat(stamp) + timedelta(minutes=1)).isoformat()


async def test_fields_and_exclude_fields(mc: httpx.AsyncClient, members: Members) -> None:
    await members.make("p@example.com", "subscribed", merge_fields={"FNAME": "Ada"})
    only = await mc.get(
        MEMBERS,
        params={"fields": "members.email_address,members.merge_fields.FNAME,total_items"},
    )
    assert only.json() == {
        "members": [{"email_address": "p@example.com", "merge_fields": {"FNAME": "Ada"}}],
        "total_items": 1,
    }
    one = await mc.get(member_url("p@example.com"), params={"fields": "id,status"})
    assert one.json() == {"id": md5("p@example.com"), "status": "subscribed"}
    excluded = await mc.get(
        member_url("p@example.com"), params={"exclude_fields": "_links,merge_fields.FNAME"}
    )
    body = excluded.json()
    assert "_links" not in body
    assert "FNAME" not in body["merge_fields"]
    assert "LNAME" in body["merge_fields"]
    written = await mc.put(
        member_url("p@example.com"),
        params={"fields": "status"},
        json={"email_address": "p@example.com"},
    )
    assert written.json() == {"status": "subscribed"}


async def test_member_by_email_and_contact_id(mc: httpx.AsyncClient, members: Members) -> None:
    created = await members.make("Who@Example.com", "subscribed")
    by_email = await mc.get(f"{MEMBERS}/who@example.com")
    assert by_email.json()["id"] == created["id"]
    by_contact = await mc.get(f"{MEMBERS}/{created['contact_id']}")
    assert by_contact.json()["id"] == created["id"]


async def test_tags_endpoint(mc: httpx.AsyncClient, members: Members) -> None:
    await members.make("t@example.com", "subscribed", tags=["Old"])
    url = f"{member_url('t@example.com')}/tags"
    response = await mc.post(
        url,
        json={
            "tags": [{"name": "VIP", "status": "active"}, {"name": "Old", "status": "inactive"}],
            "is_syncing": True,
        },
    )
    assert response.status_code == 204
    assert response.content == b""
    listed = (await mc.get(url)).json()
    assert [t["name"] for t in listed["tags"]] == ["VIP"]
    assert listed["total_items"] == 1
    assert {"id", "name", "date_added"} <= set(listed["tags"][0])
    member = await members.get("t@example.com")
    assert [t["name"] for t in member["tags"]] == ["VIP"]
    assert member["tags_count"] == 1
    search = (await mc.get(f"{LIST}/tag-search", params={"name": "v"})).json()
    assert [t["name"] for t in search["tags"]] == ["VIP"]


async def test_tags_errors(mc: httpx.AsyncClient, members: Members) -> None:
    unknown = await mc.post(
        f"{member_url('ghost@example.com')}/tags",
        json={"tags": [{"name": "A", "status": "active"}]},
    )
    assert_problem(unknown, 404, "Resource Not Found", "The requested resource could not be found.")
    await members.make("t@example.com", "subscribed")
    bare = await mc.post(
        f"{member_url('t@example.com')}/tags", json={"name": "A", "status": "active"}
    )
    assert_problem(bare, 400, "Invalid Resource")
    bad_status = await mc.post(
        f"{member_url('t@example.com')}/tags", json={"tags": [{"name": "A", "status": "on"}]}
    )
    assert_problem(bad_status, 400, "Invalid Resource")


async def test_merge_fields_crud(mc: httpx.AsyncClient, members: Members) -> None:
    listed = (await mc.get(f"{LIST}/merge-fields")).json()
    assert [f["tag"] for f in listed["merge_fields"]] == [
        "FNAME",
        "LNAME",
        "ADDRESS",
        "PHONE",
        "BIRTHDAY",
    ]
    assert listed["total_items"] == 5
    created = await mc.post(
        f"{LIST}/merge-fields", json={"name": "Company", "type": "text", "tag": "company"}
    )
    assert created.status_code == 200
    field = created.json()
    assert field["tag"] == "COMPANY"
    assert field["merge_id"] == 6
    dup = await mc.post(
        f"{LIST}/merge-fields", json={"name": "Again", "type": "text", "tag": "COMPANY"}
    )
    assert_problem(dup, 400, "Invalid Resource")
    missing = await mc.post(f"{LIST}/merge-fields", json={"name": "No type"})
    assert_problem(missing, 400, "Invalid Resource")
    auto = (await mc.post(f"{LIST}/merge-fields", json={"name": "Misc", "type": "text"})).json()
    assert auto["tag"] == "MMERGE7"
    url = f"{LIST}/merge-fields/{field['merge_id']}"
    assert (await mc.get(url)).json()["name"] == "Company"
    patched = await mc.patch(url, json={"name": "Employer", "required": True})
    assert patched.json()["name"] == "Employer"
    assert patched.json()["required"] is True
    member = await members.put(
        "c@example.com", status_if_new="subscribed", merge_fields={"COMPANY": "ACME"}
    )
    assert member.json()["merge_fields"]["COMPANY"] == "ACME"
    only_required = (await mc.get(f"{LIST}/merge-fields", params={"required": "true"})).json()
    assert [f["tag"] for f in only_required["merge_fields"]] == ["COMPANY"]
    assert (await mc.delete(url)).status_code == 204
    assert (await mc.get(url)).status_code == 404
    assert "COMPANY" not in (await members.get("c@example.com"))["merge_fields"]


async def test_lists(mc: httpx.AsyncClient, members: Members) -> None:
    await members.make("a@example.com", "subscribed")
    await members.make("b@example.com", "unsubscribed")
    lists = (await mc.get("/3.0/lists", params={"count": 1000})).json()
    assert lists["total_items"] == 1
    audience = lists["lists"][0]
    assert audience["id"] == DEFAULT_LIST_ID
    assert audience["stats"]["member_count"] == 1
    assert audience["stats"]["unsubscribe_count"] == 1
    one = (await mc.get(LIST)).json()
    assert one["id"] == DEFAULT_LIST_ID
    assert one["name"] == "Sandbox Audience"


async def test_accounts_are_isolated(mc: httpx.AsyncClient, sandbox: SandboxApp) -> None:
    created = (await mc.post("/_control/accounts", json={"name": "Other Co"})).json()
    other_key = created["api_key"]
    assert other_key.endswith("-us1")
    assert len(other_key.split("-")[0]) == 32
    other_list = created["lists"][0]["id"]
    transport = httpx.ASGITransport(app=sandbox)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sandbox.test", auth=("x", other_key)
    ) as other:
        lists = (await other.get("/3.0/lists")).json()
        assert [item["id"] for item in lists["lists"]] == [other_list]
        assert (await other.get(LIST)).status_code == 404
        assert (await other.get(MEMBERS)).status_code == 404
        put = await other.put(
            f"/3.0/lists/{other_list}/members/{md5('a@example.com')}",
            json={"email_address": "a@example.com", "status_if_new": "subscribed"},
        )
        assert put.status_code == 200
    assert (await mc.get(f"/3.0/lists/{other_list}")).status_code == 404
    assert (await mc.get(member_url("a@example.com"))).status_code == 404
