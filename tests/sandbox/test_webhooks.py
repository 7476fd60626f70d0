"""Webhooks: URL validation, people's actions' payloads, `sources`/`events`, retries."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app.sandbox.mailchimp import DEFAULT_LIST_ID
from app.sandbox.mailchimp.state import SandboxState
from tests.sandbox.conftest import LIST, Members, assert_problem, member_url
from tests.support.servers import free_port, run_server

ACTIONS = f"/_control/lists/{DEFAULT_LIST_ID}/actions"
FIRED_AT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


@dataclass
class Receiver:
    """A live webhook endpoint: records GETs and form POSTs."""

    url: str
    posts: list[dict[str, str]] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    gets: int = 0
    get_status: int = 200
    fail_posts: int = 0
    gate: asyncio.Event | None = None

    def of(self, kind: str) -> list[dict[str, str]]:
        return [p for p in self.posts if p["type"] == kind]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    holder: dict[str, Receiver] = {}

    async def hook(request: Request) -> PlainTextResponse:
        rec = holder["r"]
        rec.agents.append(request.headers.get("user-agent", ""))
        if request.method == "GET":
            rec.gets += 1
            return PlainTextResponse("ok", status_code=rec.get_status)
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        if rec.gate is not None:
            await rec.gate.wait()
        if rec.fail_posts > 0:
            rec.fail_posts -= 1
            return PlainTextResponse("try later", status_code=500)
        form = await request.form()
        rec.posts.append({k: str(v) for k, v in form.items()})
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/hook/secret", hook, methods=["GET", "POST"])])
    async with run_server(app, lifespan="off") as base:
        holder["r"] = Receiver(url=f"{base}/hook/secret")
        yield holder["r"]


async def _register(mc: httpx.AsyncClient, url: str, **body: Any) -> dict[str, Any]:
    response = await mc.post(f"{LIST}/webhooks", json={"url": url, **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
async def quick_retries(mc: httpx.AsyncClient) -> None:
    await mc.patch("/_control/config", json={"webhook_retry_delays": [0.05, 0.05]})


async def test_registration_validates_with_get(mc: httpx.AsyncClient, receiver: Receiver) -> None:
    hook = await _register(mc, receiver.url)
    assert receiver.gets == 1
    assert receiver.agents == ["MailChimp.com WebHook Validator"]
    assert hook["url"] == receiver.url
    assert hook["list_id"] == DEFAULT_LIST_ID
    assert hook["events"] == {
        "subscribe": True,
        "unsubscribe": True,
        "profile": True,
        "cleaned": True,
        "upemail": True,
        "campaign": False,
    }
    assert hook["sources"] == {"user": True, "admin": True, "api": False}
    assert hook["signing_secret"]
    listed = (await mc.get(f"{LIST}/webhooks")).json()
    assert [w["id"] for w in listed["webhooks"]] == [hook["id"]]
    one = (await mc.get(f"{LIST}/webhooks/{hook['id']}")).json()
    assert "signing_secret" not in one
    patched = await mc.patch(f"{LIST}/webhooks/{hook['id']}", json={"sources": {"api": True}})
    assert patched.json()["sources"] == {"user": True, "admin": True, "api": True}
    assert (await mc.delete(f"{LIST}/webhooks/{hook['id']}")).status_code == 204
    assert (await mc.get(f"{LIST}/webhooks/{hook['id']}")).status_code == 404


async def test_registration_refused_when_get_fails(
    mc: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.get_status = 404
    response = await mc.post(f"{LIST}/webhooks", json={"url": receiver.url})
    body = assert_problem(response, 400, "Invalid Resource")
    assert body["errors"][0]["field"] == "url"
    unreachable = await mc.post(
        f"{LIST}/webhooks", json={"url": f"http://127.0.0.1:{free_port()}/hook"}
    )
    assert_problem(unreachable, 400, "Invalid Resource")
    assert (await mc.get(f"{LIST}/webhooks")).json()["total_items"] == 0


async def test_peoples_actions_fire_as_user(
    mc: httpx.AsyncClient, members: Members, receiver: Receiver, state: SandboxState
) -> None:
    await _register(mc, receiver.url, sources={"user": True, "admin": True, "api": False})
    signup = await mc.post(
        f"{ACTIONS}/signup", json={"email": "ada@example.com", "merge_fields": {"FNAME": "Ada"}}
    )
    assert signup.status_code == 200
    member = signup.json()
    await mc.post(
        f"{ACTIONS}/profile", json={"email": "ada@example.com", "merge_fields": {"LNAME": "L"}}
    )
    await mc.post(
        f"{ACTIONS}/change-email",
        json={"email": "ada@example.com", "new_email": "ada2@example.com"},
    )
    await mc.post(f"{ACTIONS}/unsubscribe", json={"email": "ada2@example.com"})
    await members.make("bounce@example.com", "subscribed")
    await members.make("abuse@example.com", "subscribed")
    await mc.post(f"{ACTIONS}/clean", json={"email": "bounce@example.com"})
    await mc.post(f"{ACTIONS}/abuse", json={"email": "abuse@example.com"})
    await state.hub.drain()

    assert [p["type"] for p in receiver.posts] == [
        "subscribe",
        "profile",
        "upemail",
        "unsubscribe",
        "cleaned",
        "cleaned",
    ]
    assert all(agent == "MailChimp.com" for agent in receiver.agents[1:])
    subscribe, profile, upemail, unsubscribe, cleaned, abuse = receiver.posts
    assert FIRED_AT.match(subscribe["fired_at"])
    assert subscribe["data[id]"] == member["unique_email_id"]
    assert subscribe["data[list_id]"] == DEFAULT_LIST_ID
    assert subscribe["data[email]"] == "ada@example.com"
    assert subscribe["data[email_type]"] == "html"
    assert subscribe["data[merges][EMAIL]"] == "ada@example.com"
    assert subscribe["data[merges][FNAME]"] == "Ada"
    assert subscribe["data[merges][LNAME]"] == ""
    assert subscribe["data[web_id]"] == str(member["web_id"])
    assert "data[ip_opt]" in subscribe
    assert profile["data[merges][LNAME]"] == "L"
    assert profile["data[merges][FNAME]"] == "Ada"
    assert upemail["data[old_email]"] == "ada@example.com"
    assert upemail["data[new_email]"] == "ada2@example.com"
    assert upemail["data[new_id]"] == member["unique_email_id"]
    assert upemail["data[list_id]"] == DEFAULT_LIST_ID
    assert unsubscribe["data[action]"] == "unsub"
    assert unsubscribe["data[reason]"] == "manual"
    assert unsubscribe["data[email]"] == "ada2@example.com"
    assert cleaned["data[reason]"] == "hard"
    assert cleaned["data[email]"] == "bounce@example.com"
    assert abuse["data[reason]"] == "abuse"
    assert (await members.get("abuse@example.com"))["status"] == "cleaned"
    assert (await members.get("ada2@example.com"))["status"] == "unsubscribed"
    log = (await mc.get("/_control/webhook-deliveries")).json()
    assert log["total_items"] == 6
    assert all(entry["delivered"] and entry["source"] == "user" for entry in log["deliveries"])


async def test_signup_resubscribes_an_unsubscribed_person(
    mc: httpx.AsyncClient, members: Members, receiver: Receiver, state: SandboxState
) -> None:
    await members.make("back@example.com", "unsubscribed")
    await _register(mc, receiver.url)
    await mc.post(f"{ACTIONS}/signup", json={"email": "back@example.com"})
    await state.hub.drain()
    assert (await members.get("back@example.com"))["status"] == "subscribed"
    assert [p["type"] for p in receiver.posts] == ["subscribe"]


async def test_api_changes_only_reach_api_sourced_hooks(
    mc: httpx.AsyncClient, members: Members, receiver: Receiver, state: SandboxState
) -> None:
    await _register(mc, receiver.url)  # sources.api = false
    await members.make("api@example.com", "subscribed")
    await mc.patch(member_url("api@example.com"), json={"merge_fields": {"FNAME": "Z"}})
    await mc.patch(member_url("api@example.com"), json={"status": "unsubscribed"})
    await state.hub.drain()
    assert receiver.posts == []

    await _register(mc, receiver.url + "?api=1", sources={"api": True})
    await members.make("api2@example.com", "subscribed")
    await mc.put(
        member_url("api2@example.com"),
        json={"email_address": "api2@example.com", "merge_fields": {"FNAME": "Q"}},
    )
    await mc.put(member_url("api2@example.com"), json={"email_address": "api3@example.com"})
    await mc.patch(member_url("api3@example.com"), json={"status": "unsubscribed"})
    await mc.delete(member_url("api3@example.com"))
    await state.hub.drain()
    assert [p["type"] for p in receiver.posts] == [
        "subscribe",
        "profile",
        "upemail",
        "unsubscribe",
        "unsubscribe",
    ]
    assert receiver.posts[3]["data[action]"] == "unsub"
    assert receiver.posts[4]["data[action]"] == "delete"


async def test_events_filter(
    mc: httpx.AsyncClient, members: Members, receiver: Receiver, state: SandboxState
) -> None:
    await _register(mc, receiver.url, events={"unsubscribe": True})
    await mc.post(f"{ACTIONS}/signup", json={"email": "e@example.com"})
    await mc.post(f"{ACTIONS}/unsubscribe", json={"email": "e@example.com"})
    await state.hub.drain()
    assert [p["type"] for p in receiver.posts] == ["unsubscribe"]


async def test_delivery_is_async_and_retried(
    mc: httpx.AsyncClient, receiver: Receiver, state: SandboxState
) -> None:
    await _register(mc, receiver.url)
    receiver.gate = asyncio.Event()
    receiver.fail_posts = 1
    response = await mc.post(f"{ACTIONS}/signup", json={"email": "slow@example.com"})
    assert response.status_code == 200  # answered while the receiver still holds the POST
    assert state.hub.pending == 1
    receiver.gate.set()
    await state.hub.drain()
    assert [p["data[email]"] for p in receiver.posts] == ["slow@example.com"]
    attempts = [(e["attempt"], e["status"], e["delivered"]) for e in state.hub.log]
    assert attempts == [(1, 500, False), (2, 200, True)]


async def test_unknown_member_action_is_404(mc: httpx.AsyncClient) -> None:
    response = await mc.post(f"{ACTIONS}/unsubscribe", json={"email": "nobody@example.com"})
    assert response.status_code == 404
    unknown = await mc.post(f"{ACTIONS}/dance", json={"email": "nobody@example.com"})
    assert unknown.status_code == 404
