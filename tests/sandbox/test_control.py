"""The control API: reset, accounts and audiences, members dump, request log, state file;
and the sandbox mounted inside another app (URLs follow `root_path`)."""

from __future__ import annotations

from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.sandbox.mailchimp import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_LIST_ID,
    create_app,
)
from tests.sandbox.conftest import LIST, MEMBERS, Members, md5, member_url


async def test_default_account_is_constant(mc: httpx.AsyncClient) -> None:
    accounts = (await mc.get("/_control/accounts")).json()["accounts"]
    assert len(accounts) == 1
    account = accounts[0]
    assert account["id"] == DEFAULT_ACCOUNT_ID
    assert account["api_key"] == DEFAULT_API_KEY
    assert account["dc"] == "us1"
    assert account["oauth"]["client_id"] == DEFAULT_CLIENT_ID
    assert account["oauth"]["client_secret"] == DEFAULT_CLIENT_SECRET
    assert [item["id"] for item in account["lists"]] == [DEFAULT_LIST_ID]
    key, dc = DEFAULT_API_KEY.split("-")
    assert len(key) == 32
    assert int(key, 16) >= 0
    assert dc == "us1"
    assert len(DEFAULT_LIST_ID) == 10


async def test_reset_restores_default_state(mc: httpx.AsyncClient, members: Members) -> None:
    before = await members.make("r@example.com", "subscribed")
    await mc.post("/_control/accounts", json={})
    await mc.patch("/_control/config", json={"latency_ms": 5})
    assert (await mc.post("/_control/reset")).status_code == 200
    assert (await mc.get("/_control/requests")).json()["total_items"] == 0
    assert (await mc.get(member_url("r@example.com"))).status_code == 404
    assert len((await mc.get("/_control/accounts")).json()["accounts"]) == 1
    assert (await mc.get("/_control/config")).json()["latency_ms"] == 0
    again = await members.make("r@example.com", "subscribed")
    assert again["unique_email_id"] == before["unique_email_id"]  # ids are seeded too


async def test_create_list_for_account(mc: httpx.AsyncClient) -> None:
    created = await mc.post(
        f"/_control/accounts/{DEFAULT_ACCOUNT_ID}/lists", json={"name": "Second"}
    )
    assert created.status_code == 201
    list_id = created.json()["id"]
    assert len(list_id) == 10
    lists = (await mc.get("/3.0/lists")).json()
    assert [item["name"] for item in lists["lists"]] == ["Sandbox Audience", "Second"]
    assert (await mc.post("/_control/accounts/nope/lists", json={})).status_code == 404


async def test_members_dump(mc: httpx.AsyncClient, members: Members) -> None:
    await members.make("a@example.com", "subscribed", tags=["One"])
    await mc.post(
        f"{member_url('a@example.com')}/tags",
        json={"tags": [{"name": "One", "status": "inactive"}]},
    )
    await members.make("arch@example.com", "archived")
    await members.make("gone@example.com", "subscribed")
    await mc.post(f"{member_url('gone@example.com')}/actions/delete-permanent")
    dump = (await mc.get(f"/_control/lists/{DEFAULT_LIST_ID}/members")).json()
    by_id = {m["id"]: m for m in dump["members"]}
    assert by_id[md5("a@example.com")]["tags_all"][0]["status"] == "inactive"
    assert by_id[md5("arch@example.com")]["status"] == "archived"
    assert by_id[md5("gone@example.com")] == {
        "id": md5("gone@example.com"),
        "status": "forgotten",
        "forgotten": True,
        "forgotten_at": by_id[md5("gone@example.com")]["forgotten_at"],
    }
    assert (await mc.get("/_control/lists/nope/members")).status_code == 404


async def test_request_log(mc: httpx.AsyncClient) -> None:
    await mc.get("/3.0/ping")
    await mc.get(f"{MEMBERS}/nobody@example.com")
    log = (await mc.get("/_control/requests")).json()
    assert [(e["method"], e["path"], e["status"]) for e in log["requests"]] == [
        ("GET", "/3.0/ping", 200),
        ("GET", f"{MEMBERS}/nobody@example.com", 404),
    ]
    entry = log["requests"][0]
    assert entry["account_id"] == DEFAULT_ACCOUNT_ID
    assert entry["end"] >= entry["start"]
    assert entry["in_flight"] == 1


async def test_state_file_keeps_members(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.json"
    first = create_app(state_file=path)
    async with LifespanManager(first):
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://sb", auth=("x", DEFAULT_API_KEY)
        ) as client:
            await client.put(
                member_url("keep@example.com"),
                json={
                    "email_address": "keep@example.com",
                    "status_if_new": "subscribed",
                    "tags": ["T"],
                },
            )
            await client.post(f"{member_url('keep@example.com')}/actions/delete-permanent")
            await client.put(
                member_url("stay@example.com"),
                json={"email_address": "stay@example.com", "status_if_new": "subscribed"},
            )
    assert path.exists()
    second = create_app(state_file=path)
    transport = httpx.ASGITransport(app=second)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sb", auth=("x", DEFAULT_API_KEY)
    ) as client:
        stay = await client.get(member_url("stay@example.com"))
        assert stay.status_code == 200
        forgotten = await client.put(
            member_url("keep@example.com"),
            json={"email_address": "keep@example.com", "status_if_new": "subscribed"},
        )
        assert forgotten.json()["title"] == "Forgotten Email Not Subscribed"
        new = await client.put(
            member_url("new@example.com"),
            json={"email_address": "new@example.com", "status_if_new": "subscribed"},
        )
        assert new.json()["unique_email_id"] != stay.json()["unique_email_id"]


async def test_state_file_keeps_interest_groups(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.json"
    base = f"{LIST}/interest-categories"
    first = create_app(state_file=path)
    async with LifespanManager(first):
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://sb", auth=("x", DEFAULT_API_KEY)
        ) as client:
            cat = (await client.post(base, json={"title": "Topics"})).json()
            interest = (
                await client.post(f"{base}/{cat['id']}/interests", json={"name": "Weekly"})
            ).json()
            put = await client.put(
                member_url("pick@example.com"),
                json={
                    "email_address": "pick@example.com",
                    "status_if_new": "subscribed",
                    "interests": {interest["id"]: True},
                },
            )
            assert put.json()["interests"] == {interest["id"]: True}
    second = create_app(state_file=path)
    transport = httpx.ASGITransport(app=second)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sb", auth=("x", DEFAULT_API_KEY)
    ) as client:
        cats = (await client.get(base)).json()["categories"]
        assert [c["title"] for c in cats] == ["Topics"]
        names = (await client.get(f"{base}/{cat['id']}/interests")).json()["interests"]
        assert [i["name"] for i in names] == ["Weekly"]
        member = (await client.get(member_url("pick@example.com"))).json()
        assert member["interests"] == {interest["id"]: True}
        unknown = await client.put(
            member_url("pick@example.com"),
            json={"email_address": "pick@example.com", "interests": {"nope": True}},
        )
        assert unknown.status_code == 400
        assert unknown.json()["detail"] == "Invalid interest ID: 'nope'."


async def test_mounted_urls_follow_root_path() -> None:
    service = FastAPI()
    service.mount("/_sandbox/mailchimp", create_app())
    transport = httpx.ASGITransport(app=service)
    root = "http://svc.test/_sandbox/mailchimp"
    async with httpx.AsyncClient(
        transport=transport, base_url="http://svc.test", auth=("x", DEFAULT_API_KEY)
    ) as client:
        put = await client.put(
            f"{root}{member_url('m@example.com')}",
            json={"email_address": "m@example.com", "status_if_new": "subscribed"},
        )
        assert put.status_code == 200
        links = {link["rel"]: link["href"] for link in put.json()["_links"]}
        assert links["self"] == f"{root}{member_url('m@example.com')}"
        missing = await client.get(f"{root}{LIST}/members/nobody@example.com")
        assert missing.headers["link"].startswith(f"<{root}/schema/3.0/")
        code = (
            (
                await client.get(
                    f"{root}/oauth2/authorize",
                    params={
                        "client_id": DEFAULT_CLIENT_ID,
                        "redirect_uri": "https://app.example.com/cb",
                        "auto": "1",
                    },
                )
            )
            .headers["location"]
            .split("code=")[1]
        )
        token = await client.post(
            f"{root}/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "client_id": DEFAULT_CLIENT_ID,
                "client_secret": DEFAULT_CLIENT_SECRET,
                "redirect_uri": "https://app.example.com/cb",
                "code": code,
            },
        )
        access = token.json()["access_token"]
        meta = await client.get(
            f"{root}/oauth2/metadata", headers={"Authorization": f"OAuth {access}"}, auth=None
        )
        assert meta.json()["api_endpoint"] == root
        page = await client.get(
            f"{root}/oauth2/authorize",
            params={"client_id": DEFAULT_CLIENT_ID, "redirect_uri": "https://app.example.com/cb"},
        )
        assert f"action='{root}/oauth2/authorize'" in page.text
        assert (await client.get(f"{root}/_control/config")).status_code == 200


async def test_request_log_keeps_write_bodies_when_asked(mc: httpx.AsyncClient) -> None:
    body = {"email_address": "rec@example.com", "status_if_new": "subscribed"}
    await mc.put(member_url("rec@example.com"), json=body)
    assert "body" not in (await mc.get("/_control/requests")).json()["requests"][-1]
    await mc.patch("/_control/config", json={"record_bodies": True})
    await mc.put(member_url("rec@example.com"), json={**body, "merge_fields": {"FNAME": "R"}})
    logged = (await mc.get("/_control/requests")).json()["requests"][-1]
    assert '"FNAME": "R"' in logged["body"] or '"FNAME":"R"' in logged["body"]
    assert (await mc.patch("/_control/config", json={"record_bodies": "yes"})).status_code == 400
