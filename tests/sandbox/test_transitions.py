"""Every row of reference §2.2, through HTTP."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.sandbox.conftest import LIST, MEMBERS, Members, assert_problem, md5, member_url

WRITE_STATUSES = ["subscribed", "unsubscribed", "cleaned", "pending", "transactional"]
EXISTING = [*WRITE_STATUSES, "archived"]


def compliance(email: str) -> str:
    return (
        f"{email} is in a compliance state due to unsubscribe, bounce, or compliance review "
        "and cannot be subscribed."
    )


@pytest.mark.parametrize("status", WRITE_STATUSES)
async def test_put_status_if_new_creates_with_status_and_tags(
    mc: httpx.AsyncClient, members: Members, status: str
) -> None:
    response = await members.put("new@example.com", status_if_new=status, tags=["VIP", "Imported"])
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == status
    assert body["id"] == md5("new@example.com")
    assert [t["name"] for t in body["tags"]] == ["VIP", "Imported"]
    assert body["tags_count"] == 2


@pytest.mark.parametrize("status", WRITE_STATUSES)
async def test_post_creates(mc: httpx.AsyncClient, status: str) -> None:
    response = await mc.post(
        MEMBERS, json={"email_address": "Post@Example.com", "status": status, "tags": ["A"]}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == status
    assert body["email_address"] == "Post@Example.com"
    assert body["id"] == md5("post@example.com")
    assert body["tags"][0]["name"] == "A"


@pytest.mark.parametrize("status", EXISTING)
async def test_post_on_any_existing_member_is_member_exists(
    mc: httpx.AsyncClient, members: Members, status: str
) -> None:
    await members.make("dup@example.com", status)
    response = await mc.post(
        MEMBERS, json={"email_address": "dup@example.com", "status": "subscribed"}
    )
    assert_problem(
        response,
        400,
        "Member Exists",
        "dup@example.com is already a list member. Use PUT to insert or update list members.",
    )


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_subscribed_may_unsubscribe(
    mc: httpx.AsyncClient, members: Members, method: str
) -> None:
    await members.make("s@example.com", "subscribed")
    response = await mc.request(
        method,
        member_url("s@example.com"),
        json={"email_address": "s@example.com", "status": "unsubscribed"},
    )
    assert response.status_code == 200
    assert response.json()["status"] == "unsubscribed"


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_unsubscribed_cannot_be_resubscribed(
    mc: httpx.AsyncClient, members: Members, method: str
) -> None:
    await members.make("u@example.com", "unsubscribed")
    response = await mc.request(method, member_url("u@example.com"), json={"status": "subscribed"})
    assert_problem(response, 400, "Member In Compliance State", compliance("u@example.com"))
    assert (await members.get("u@example.com"))["status"] == "unsubscribed"


async def test_unsubscribed_may_go_pending(mc: httpx.AsyncClient, members: Members) -> None:
    await members.make("u@example.com", "unsubscribed")
    response = await members.put("u@example.com", status="pending")
    assert response.status_code == 200
    assert response.json()["status"] == "pending"


@pytest.mark.parametrize("target", ["subscribed", "pending"])
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_cleaned_cannot_be_subscribed_or_pending(
    mc: httpx.AsyncClient, members: Members, target: str, method: str
) -> None:
    await members.make("c@example.com", "cleaned")
    response = await mc.request(method, member_url("c@example.com"), json={"status": target})
    assert_problem(response, 400, "Member In Compliance State", compliance("c@example.com"))
    assert (await members.get("c@example.com"))["status"] == "cleaned"


@pytest.mark.parametrize("status", EXISTING)
async def test_status_if_new_never_changes_an_existing_member(
    members: Members, status: str
) -> None:
    await members.make("e@example.com", status)
    other = "unsubscribed" if status == "subscribed" else "subscribed"
    response = await members.put(
        "e@example.com", status_if_new=other, merge_fields={"FNAME": "Changed"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == status
    assert body["merge_fields"]["FNAME"] == "Changed"


async def test_archived_is_revived_by_explicit_status(members: Members) -> None:
    await members.make("a@example.com", "archived")
    response = await members.put("a@example.com", status="subscribed")
    assert response.status_code == 200
    assert response.json()["status"] == "subscribed"


async def test_archived_unsubscribed_keeps_compliance(
    members: Members, mc: httpx.AsyncClient
) -> None:
    await members.make("au@example.com", "unsubscribed")
    assert (await mc.delete(member_url("au@example.com"))).status_code == 204
    response = await members.put("au@example.com", status="subscribed")
    assert_problem(response, 400, "Member In Compliance State")
    revived = await members.put("au@example.com", status="unsubscribed")
    assert revived.json()["status"] == "unsubscribed"


@pytest.mark.parametrize("status", ["archived", "pending", "cleaned"])
async def test_archive_refused_for_cleaned_pending_archived(
    mc: httpx.AsyncClient, members: Members, status: str
) -> None:
    await members.make("x@example.com", status)
    response = await mc.delete(member_url("x@example.com"))
    assert_problem(
        response,
        405,
        "Method Not Allowed",
        "This list member cannot be removed. "
        "Can not archive a contact that is bounced, pending or archived",
    )
    assert response.headers["allow"] == "GET, PUT"


@pytest.mark.parametrize("status", ["subscribed", "unsubscribed", "transactional"])
async def test_archive_then_read_back_archived(
    mc: httpx.AsyncClient, members: Members, status: str
) -> None:
    await members.make("x@example.com", status)
    response = await mc.delete(member_url("x@example.com"))
    assert response.status_code == 204
    assert response.content == b""
    assert (await members.get("x@example.com"))["status"] == "archived"


async def test_delete_permanent_forgets(mc: httpx.AsyncClient, members: Members) -> None:
    await members.make("gone@example.com", "subscribed")
    response = await mc.post(f"{member_url('gone@example.com')}/actions/delete-permanent")
    assert response.status_code == 204
    assert_problem(await mc.get(member_url("gone@example.com")), 404, "Resource Not Found")
    detail = (
        "gone@example.com was permanently deleted and cannot be re-imported. "
        "The contact must re-subscribe to get back on the list."
    )
    put = await members.put("gone@example.com", status_if_new="subscribed")
    assert_problem(put, 400, "Forgotten Email Not Subscribed", detail)
    post = await mc.post(
        MEMBERS, json={"email_address": "gone@example.com", "status": "subscribed"}
    )
    assert_problem(post, 400, "Forgotten Email Not Subscribed", detail)
    batch = await mc.post(
        LIST, json={"members": [{"email_address": "gone@example.com", "status": "subscribed"}]}
    )
    assert batch.json()["errors"][0]["error"] == detail
    assert batch.json()["errors"][0]["error_code"] == "ERROR_GENERIC"


async def test_delete_permanent_of_unknown_member_is_404(mc: httpx.AsyncClient) -> None:
    response = await mc.post(f"{member_url('nobody@example.com')}/actions/delete-permanent")
    assert_problem(response, 404, "Resource Not Found")


async def test_tags_in_put_apply_only_on_create(members: Members) -> None:
    await members.put("t@example.com", status_if_new="subscribed", tags=["First"])
    response = await members.put("t@example.com", status_if_new="subscribed", tags=["Second"])
    assert [t["name"] for t in response.json()["tags"]] == ["First"]


async def test_email_change_by_put_on_old_hash(mc: httpx.AsyncClient, members: Members) -> None:
    before = await members.make("old@example.com", "subscribed", merge_fields={"FNAME": "Ada"})
    response = await mc.put(
        member_url("old@example.com"), json={"email_address": "new@example.com"}
    )
    assert response.status_code == 200
    after = response.json()
    assert after["email_address"] == "new@example.com"
    assert after["id"] == md5("new@example.com")
    assert after["unique_email_id"] == before["unique_email_id"]
    assert after["contact_id"] == before["contact_id"]
    assert after["web_id"] == before["web_id"]
    assert after["merge_fields"]["FNAME"] == "Ada"
    assert (await mc.get(member_url("old@example.com"))).status_code == 404
    assert (await members.get("new@example.com"))["status"] == "subscribed"


async def test_email_change_to_taken_address_is_member_exists(
    mc: httpx.AsyncClient, members: Members
) -> None:
    await members.make("one@example.com", "subscribed")
    await members.make("two@example.com", "subscribed")
    response = await mc.put(
        member_url("one@example.com"), json={"email_address": "two@example.com"}
    )
    assert_problem(response, 400, "Member Exists")


async def test_put_with_mismatched_hash_on_existing_email_is_member_exists(
    mc: httpx.AsyncClient, members: Members
) -> None:
    """APIv3-examples#49: a hash of the non-lowercased email misses, the email exists."""
    await members.make("case@example.com", "subscribed")
    import hashlib

    wrong = hashlib.md5(b"Case@example.com").hexdigest()
    response = await mc.put(
        f"{MEMBERS}/{wrong}",
        json={"email_address": "case@example.com", "status_if_new": "subscribed"},
    )
    assert_problem(response, 400, "Member Exists")


async def test_patch_unknown_member_is_404(mc: httpx.AsyncClient) -> None:
    response = await mc.patch(member_url("nobody@example.com"), json={"status": "subscribed"})
    assert_problem(response, 404, "Resource Not Found")


async def test_last_changed_moves_on_every_change(mc: httpx.AsyncClient, members: Members) -> None:
    created = await members.make("lc@example.com", "subscribed")
    state = mc._transport.app.state.sandbox  # type: ignore[attr-defined]
    member = state.lists[created["list_id"]].by_hash[created["id"]]
    stamps = [member.last_changed]
    for request in (
        mc.patch(member_url("lc@example.com"), json={"merge_fields": {"FNAME": "X"}}),
        mc.post(
            f"{member_url('lc@example.com')}/tags",
            json={"tags": [{"name": "T", "status": "active"}]},
        ),
        mc.patch(member_url("lc@example.com"), json={"status": "unsubscribed"}),
        mc.delete(member_url("lc@example.com")),
    ):
        await asyncio.sleep(0.002)
        assert (await request).status_code in (200, 204)
        stamps.append(member.last_changed)
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    assert (await members.get("lc@example.com"))["last_changed"].endswith("+00:00")


async def test_member_json_shape(members: Members) -> None:
    body = await members.make(
        "Shape@Example.com", "subscribed", merge_fields={"FNAME": "Ada", "LNAME": "Lovelace"}
    )
    for key in (
        "id",
        "email_address",
        "unique_email_id",
        "contact_id",
        "full_name",
        "web_id",
        "email_type",
        "status",
        "merge_fields",
        "stats",
        "ip_signup",
        "timestamp_signup",
        "ip_opt",
        "timestamp_opt",
        "member_rating",
        "last_changed",
        "language",
        "vip",
        "tags_count",
        "tags",
        "list_id",
        "_links",
    ):
        assert key in body
    assert body["full_name"] == "Ada Lovelace"
    assert body["merge_fields"] == {
        "FNAME": "Ada",
        "LNAME": "Lovelace",
        "ADDRESS": "",
        "PHONE": "",
        "BIRTHDAY": "",
    }
    assert len(body["unique_email_id"]) == 10
    assert body["timestamp_opt"]
    self_link = next(link for link in body["_links"] if link["rel"] == "self")
    assert self_link["href"] == f"http://sandbox.test{member_url('shape@example.com')}"
