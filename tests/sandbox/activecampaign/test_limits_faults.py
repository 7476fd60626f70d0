"""5 requests/s per account (§7), the in-flight cap, faults, outages, the request log."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.sandbox.activecampaign import DEFAULT_API_KEY, AcConfig, create_app
from tests.sandbox.activecampaign.conftest import API
from tests.support.servers import run_server


@pytest.fixture
def config() -> AcConfig:
    return AcConfig()  # the real 5/s


async def test_sixth_request_in_a_second_is_429_with_headers(ac: httpx.AsyncClient) -> None:
    statuses = [(await ac.get(f"{API}/users/me")).status_code for _ in range(5)]
    refused = await ac.get(f"{API}/users/me")
    assert statuses == [200] * 5
    assert refused.status_code == 429
    assert refused.json() == {"message": "Too Many Requests"}
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == "5"
    assert refused.headers["ratelimit-remaining"] == "0"
    await ac.post("/_control/clock", json={"advance_seconds": 1.01})  # the window slides
    assert (await ac.get(f"{API}/users/me")).status_code == 200
    log = (await ac.get("/_control/requests")).json()["requests"]
    assert [e["fault"] for e in log] == [None] * 5 + ["rate", None]


async def test_the_limit_is_per_account_across_keys(ac: httpx.AsyncClient) -> None:
    made = await ac.post("/_control/accounts", json={"extra_keys": ["second-key"]})
    first_key = made.json()["api_key"]
    ours = [await ac.get(f"{API}/users/me") for _ in range(5)]
    assert all(r.status_code == 200 for r in ours)
    theirs = [
        await ac.get(f"{API}/users/me", headers={"Api-Token": key})
        for key in (first_key, "second-key", first_key, "second-key", first_key)
    ]
    assert [r.status_code for r in theirs] == [200] * 5  # another account's own 5
    extra = await ac.get(f"{API}/users/me", headers={"Api-Token": "second-key"})
    assert extra.status_code == 429


async def test_503_mode_and_headers_on_every_response(ac: httpx.AsyncClient) -> None:
    await ac.patch(
        "/_control/config", json={"rate_limit_status": 503, "rate_limit_headers_always": True}
    )
    first = await ac.get(f"{API}/users/me")
    assert first.headers["ratelimit-remaining"] == "4"
    for _ in range(4):
        await ac.get(f"{API}/users/me")
    refused = await ac.get(f"{API}/users/me")
    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("text/html")
    assert "retry-after" in refused.headers


async def test_faults_are_seeded_and_shaped() -> None:
    async def run(seed: int) -> list[int]:
        app = create_app(
            AcConfig(
                seed=seed,
                rate_limit_per_second=10_000,
                fault_rates={"403": 0.2, "500": 0.1, "520": 0.1, "empty_200": 0.1},
            )
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://sb", headers={"Api-Token": DEFAULT_API_KEY}
        ) as client:
            return [(await client.get(f"{API}/users/me")).status_code for _ in range(60)]

    first = await run(3)
    assert first == await run(3)
    assert first != await run(4)
    assert {200, 403, 500, 520} <= set(first)


async def test_fault_bodies_outage_and_timeout(config: AcConfig) -> None:
    config.rate_limit_per_second = 10_000
    app = create_app(config)
    async with (
        run_server(app, lifespan="off") as base,
        httpx.AsyncClient(base_url=base, headers={"Api-Token": DEFAULT_API_KEY}) as ac,
    ):
        await ac.patch("/_control/config", json={"fault_rates": {"403": 1.0}})
        forbidden = await ac.get(f"{API}/users/me")
        assert (forbidden.status_code, forbidden.json()) == (403, {"message": "Forbidden"})
        await ac.patch("/_control/config", json={"fault_rates": {"403": 0, "empty_200": 1.0}})
        empty = await ac.post(f"{API}/contact/sync", json={"contact": {"email": "e@example.com"}})
        assert (empty.status_code, empty.content) == (200, b"")
        assert empty.headers["content-type"] == "application/json"
        await ac.patch(
            "/_control/config",
            json={"fault_rates": {"empty_200": 0, "502": 1.0}, "error_body_5xx": "empty"},
        )
        assert (await ac.get(f"{API}/users/me")).content == b""
        await ac.patch("/_control/config", json={"fault_rates": {"502": 0, "timeout": 1.0}})
        await ac.patch("/_control/config", json={"timeout_seconds": 0.05})
        assert (await ac.get(f"{API}/users/me")).status_code == 504
        await ac.patch(
            "/_control/config", json={"fault_rates": {"timeout": 0}, "outage_seconds": 60}
        )
        assert (await ac.get(f"{API}/users/me")).status_code == 503
        await ac.post("/_control/clock", json={"advance_seconds": 61})
        assert (await ac.get(f"{API}/users/me")).status_code == 200
        # Nothing the faults refused was applied.
        assert (await ac.get(f"{API}/contacts")).json()["meta"]["total"] == "0"
        faults = [e["fault"] for e in (await ac.get("/_control/requests")).json()["requests"]]
        assert faults == ["403", "empty_200", "502", "timeout", "outage", None, None]


async def test_in_flight_cap_in_the_log(config: AcConfig) -> None:
    config.rate_limit_per_second = 10_000
    config.latency_ms = 300
    config.max_in_flight = 3
    app = create_app(config)
    async with (
        run_server(app, lifespan="off") as base,
        httpx.AsyncClient(base_url=base, headers={"Api-Token": DEFAULT_API_KEY}) as ac,
    ):
        responses = await asyncio.gather(*(ac.get(f"{API}/users/me") for _ in range(5)))
        log = (await ac.get("/_control/requests")).json()
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 429, 429]
    served = [e for e in log["requests"] if e["status"] == 200]
    assert max(e["in_flight"] for e in served) == 3
    assert sorted(e["fault"] or "" for e in log["requests"]) == ["", "", "", "cap", "cap"]


async def test_reset_brings_back_a_fresh_account(ac: httpx.AsyncClient) -> None:
    await ac.patch("/_control/config", json={"rate_limit_per_second": 100})
    await ac.post(f"{API}/contact/sync", json={"contact": {"email": "x@example.com"}})
    assert (await ac.post("/_control/reset")).json() == {"status": "reset"}
    assert (await ac.get("/_control/config")).json()["rate_limit_per_second"] == 5
    contacts = (await ac.get(f"{API}/contacts")).json()
    assert contacts["meta"]["total"] == "0"
    assert (await ac.get("/_control/requests")).json()["total_items"] == 1
    bad = await ac.patch("/_control/config", json={"rate_limit_status": 418})
    assert bad.status_code == 400


async def test_truncated_answers_break_the_connection_after_the_change(config: AcConfig) -> None:
    config.rate_limit_per_second = 10_000
    config.fault_rates = {**config.fault_rates, "truncated": 1.0}
    app = create_app(config)
    async with (
        run_server(app, lifespan="off") as base,
        httpx.AsyncClient(base_url=base, headers={"Api-Token": DEFAULT_API_KEY}) as ac,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await ac.post(f"{API}/contact/sync", json={"contact": {"email": "t@example.com"}})
        await ac.patch("/_control/config", json={"fault_rates": {"truncated": 0.0}})
        listed = (await ac.get(f"{API}/contacts")).json()
        assert [x["email"] for x in listed["contacts"]] == ["t@example.com"]  # it was applied
        log = (await ac.get("/_control/requests")).json()["requests"]
        assert log[0]["fault"] == "truncated"


async def test_omitted_status_never_resubscribes(ac: httpx.AsyncClient) -> None:
    from app.sandbox.activecampaign import DEFAULT_LIST_ID
    from tests.sandbox.activecampaign.conftest import on_list, sync

    c = await sync(ac, "keep@example.com")
    await on_list(ac, c["id"], DEFAULT_LIST_ID, 2)
    again = await ac.post(
        f"{API}/contactLists", json={"contactList": {"contact": c["id"], "list": DEFAULT_LIST_ID}}
    )
    assert again.status_code == 200 and again.json()["contactList"]["status"] == ""
    dump = (await ac.get(f"/_control/lists/{DEFAULT_LIST_ID}/contacts")).json()["contacts"]
    assert dump[0]["lists"][DEFAULT_LIST_ID]["status"] == 2
