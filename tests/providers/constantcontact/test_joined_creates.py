"""Live creates of one connection waiting at once go as one import, against the sandbox over
real HTTP: the request is built when its turn comes, its status read is shared, and consent
holds (an import never re-adds anyone unsubscribed; nothing re-subscribes them)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from app.providers.base import ErrorKind, PermanentError, RemoteStatus
from app.providers.constantcontact.client import ConstantContactClient, joinable
from app.providers.constantcontact.spec import SPEC
from app.sync.limits import BACKGROUND_TENANT, Binding, ConnectionLimits
from tests.providers.constantcontact.conftest import LIST, other_list, paths, payload
from tests.sandbox.constantcontact.conftest import Sandbox


class TurnLimiter:
    """Admits one request per `turn()`: the shared application rate's turns, by hand."""

    def __init__(self) -> None:
        self.turns: asyncio.Queue[None] = asyncio.Queue()
        self.waiting = 0

    def turn(self, n: int = 1) -> None:
        for _ in range(n):
            self.turns.put_nowait(None)

    @contextlib.asynccontextmanager
    async def slot(self, op: str | None = None) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            await self.turns.get()
        finally:
            self.waiting -= 1
        yield


@pytest.fixture
async def turns(cc: Sandbox) -> AsyncIterator[tuple[ConstantContactClient, TurnLimiter]]:
    token = (await cc.mint())["access_token"]
    limiter = TurnLimiter()
    async with httpx.AsyncHTTPTransport() as transport:
        client = ConstantContactClient(
            transport, api_base=f"{cc.base}/v3", access_token=token, timeout=10, limiter=limiter
        )
        yield client, limiter


async def _until(predicate: object, *, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_creates_waiting_for_a_turn_go_as_one_import(
    cc: Sandbox, turns: tuple[ConstantContactClient, TurnLimiter]
) -> None:
    client, limiter = turns
    client.contended_seconds = 0.0  # the turn came late: contended
    first = asyncio.create_task(client.upsert_member(LIST, payload("a0@example.com")))
    await _until(lambda: limiter.waiting == 1)
    # While the first create waits for its turn, three more arrive: the request is built when
    # the turn comes, so it carries all four.
    rest = [
        asyncio.create_task(
            client.upsert_member(LIST, payload(f"a{i}@example.com", fields={"first_name": f"A{i}"}))
        )
        for i in (1, 2, 3)
    ]
    # All four in line before the turn (a fixed sleep raced a loaded machine).
    await _until(lambda: len(client._waiting.get(LIST, [])) == 4)
    await cc.http.delete("/_control/requests")
    limiter.turn(3)  # the import, then its status read(s)
    states = await asyncio.wait_for(asyncio.gather(first, *rest), 10)
    assert all(s.status == RemoteStatus.subscribed for s in states)
    log = await paths(cc)
    assert log.count("POST /v3/activities/contacts_json_import") == 1
    assert "POST /v3/contacts" not in log
    stored = await cc.dump()
    for i in range(4):
        person = stored[f"a{i}@example.com"]
        assert LIST in person["list_memberships"]
        # An import cannot say explicit: the person is implicit (documented).
        assert person["email_address"]["permission_to_send"] == "implicit"
    assert stored["a2@example.com"]["first_name"] == "A2"
    assert client.joined_imports == 1


async def test_a_create_alone_at_its_turn_is_one_post(
    cc: Sandbox, turns: tuple[ConstantContactClient, TurnLimiter]
) -> None:
    client, limiter = turns
    task = asyncio.create_task(client.upsert_member(LIST, payload("solo@example.com")))
    await _until(lambda: limiter.waiting == 1)
    limiter.turn()
    member = await asyncio.wait_for(task, 5)
    assert member.created and member.remote_id
    stored = (await cc.dump())["solo@example.com"]
    assert stored["email_address"]["permission_to_send"] == "explicit"
    log = await paths(cc)
    assert log.count("POST /v3/contacts") == 1
    assert not any("contacts_json_import" in p for p in log)
    assert client.joined_imports == 0


async def test_a_turn_that_comes_soon_sends_the_oldest_create_alone(
    cc: Sandbox, turns: tuple[ConstantContactClient, TurnLimiter]
) -> None:
    client, limiter = turns
    client.contended_seconds = 3600.0  # every turn comes "soon": nothing is contended
    tasks = [
        asyncio.create_task(client.upsert_member(LIST, payload(f"s{i}@example.com")))
        for i in range(3)
    ]
    await _until(lambda: limiter.waiting == 1)
    limiter.turn(3)
    members = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert all(m.created for m in members)
    stored = await cc.dump()
    permissions = {
        stored[f"s{i}@example.com"]["email_address"]["permission_to_send"] for i in range(3)
    }
    assert permissions == {"explicit"}
    log = await paths(cc)
    assert log.count("POST /v3/contacts") == 3
    assert client.joined_imports == 0


async def test_an_unsubscribed_person_in_a_joined_import_is_refused_not_readded(
    cc: Sandbox, turns: tuple[ConstantContactClient, TurnLimiter]
) -> None:
    client, limiter = turns
    theirs = await other_list(cc)
    api = await cc.api()
    async with api:
        made = await api.post(
            "/contacts",
            json={
                "email_address": {"address": "out@example.com"},
                "create_source": "Account",
                "list_memberships": [theirs],
            },
        )
        assert made.status_code == 201, made.text
    await cc.act("out@example.com", "unsubscribe")
    client.contended_seconds = 0.0
    blocker = asyncio.create_task(client.upsert_member(LIST, payload("b0@example.com")))
    await _until(lambda: limiter.waiting == 1)
    others = [
        asyncio.create_task(client.upsert_member(LIST, payload(e)))
        for e in ("b1@example.com", "out@example.com")
    ]
    await _until(lambda: len(client._waiting.get(LIST, [])) == 3)
    await cc.http.delete("/_control/requests")
    limiter.turn(20)  # the import, its read, the page back and the look at the refused one
    results = await asyncio.wait_for(asyncio.gather(blocker, *others, return_exceptions=True), 10)
    assert results[0].status == RemoteStatus.subscribed  # type: ignore[union-attr]
    assert results[1].status == RemoteStatus.subscribed  # type: ignore[union-attr]
    refused = results[2]
    assert isinstance(refused, PermanentError) and refused.kind is ErrorKind.compliance
    stored = await cc.dump()
    assert stored["out@example.com"]["email_address"]["permission_to_send"] == "unsubscribed"
    assert LIST not in stored["out@example.com"]["list_memberships"]
    log = await paths(cc)
    assert log.count("POST /v3/activities/contacts_json_import") == 1
    assert not any("sign_up_form" in p or "resubscribe" in p for p in log)
    assert not any(p.startswith("PUT ") for p in log)


async def test_status_reads_of_several_imports_are_one_page(
    cc: Sandbox, client: ConstantContactClient
) -> None:
    api = await cc.api()
    async with api:
        started = [
            (
                await api.post(
                    "/activities/contacts_json_import",
                    json={"import_data": [{"email": f"r{i}@example.com"}], "list_ids": [LIST]},
                )
            ).json()
            for i in range(3)
        ]
    await cc.http.delete("/_control/requests")
    ends = await asyncio.gather(*(client.wait_activity(a) for a in started))
    assert all(e["state"] == "completed" for e in ends)
    log = await paths(cc)
    assert log and all(p == "GET /v3/activities" for p in log)


def test_what_an_import_carries_as_a_post_would() -> None:
    assert joinable(payload("x@example.com"))
    assert not joinable(payload("x@example.com", tags=["vip"]))
    assert not joinable(payload("x@example.com", consent="subscribed"))
    assert not joinable(payload("x@example.com", consent_if_new="pending"))
    assert not joinable(payload("x@example.com", interests={"l": True}))
    assert not joinable(payload(("x" * 45) + "@example.com"))


async def test_status_reads_take_a_shared_turn_not_the_tenants() -> None:
    seen: list[tuple[str | None, str]] = []

    class Recorder:
        @contextlib.asynccontextmanager
        async def request(
            self, binding: Binding, *, endpoint: str | None = None
        ) -> AsyncIterator[None]:
            seen.append((endpoint, binding.tenant))
            yield

    binding = Binding(tenant="t1", general=())
    limits = ConnectionLimits(
        Recorder(),  # type: ignore[arg-type]
        binding,
        background=SPEC.limits.background_ops,
    )
    for op in ("create", "activity"):
        async with limits.slot(op):
            pass
    assert seen == [("create", "t1"), ("activity", BACKGROUND_TENANT)]
