"""Realism knobs: the in-flight cap, latency accounting, seeded faults, outages, fail_emails."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.sandbox.mailchimp import DEFAULT_API_KEY, SandboxConfig, create_app
from tests.sandbox.conftest import LIST, Members, assert_problem, md5
from tests.support.servers import run_server


async def test_cap_serves_ten_and_refuses_ten_over_tcp() -> None:
    app = create_app(SandboxConfig(latency_ms=1500))
    async with (
        run_server(app, lifespan="off") as base,
        httpx.AsyncClient(
            base_url=base,
            auth=("x", DEFAULT_API_KEY),
            limits=httpx.Limits(max_connections=20),
            timeout=30,
        ) as client,
    ):
        responses = await asyncio.gather(*(client.get("/3.0/ping") for _ in range(20)))
        control = await client.get("/_control/requests")
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 10 + [429] * 10
    refused = next(r for r in responses if r.status_code == 429)
    assert_problem(
        refused,
        429,
        "Too Many Requests",
        "You have exceeded the limit of 10 simultaneous connections.",
    )
    log = control.json()
    served = [e for e in log["requests"] if e["status"] == 200]
    assert max(e["in_flight"] for e in served) == 10
    assert all(e["fault"] == "cap" for e in log["requests"] if e["status"] == 429)


async def test_cap_is_per_account_and_configurable(mc: httpx.AsyncClient) -> None:
    await mc.patch("/_control/config", json={"max_in_flight": 1, "latency_ms": 200})
    other_key = (await mc.post("/_control/accounts", json={})).json()["api_key"]
    ours = mc.get("/3.0/ping")
    theirs = mc.get("/3.0/ping", auth=("x", other_key))
    second = mc.get("/3.0/ping")
    results = await asyncio.gather(ours, theirs, second)
    assert sorted(r.status_code for r in results) == [200, 200, 429]
    assert results[1].status_code == 200
    config = (await mc.get("/_control/config")).json()
    assert config["max_in_flight"] == 1


async def _statuses(seed: int, n: int = 60) -> list[int]:
    app = create_app(
        SandboxConfig(seed=seed, fault_rates={"429": 0.2, "403": 0.1, "503": 0.1, "timeout": 0.0})
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sb", auth=("x", DEFAULT_API_KEY)
    ) as client:
        return [(await client.get("/3.0/ping")).status_code for _ in range(n)]


async def test_faults_are_deterministic_for_a_seed() -> None:
    first = await _statuses(7)
    assert first == await _statuses(7)
    assert first != await _statuses(8)
    assert {200, 429, 403, 503} <= set(first)


async def test_fault_shapes(mc: httpx.AsyncClient) -> None:
    await mc.patch("/_control/config", json={"fault_rates": {"403": 1.0}})
    forbidden = await mc.get("/3.0/ping")
    assert forbidden.status_code == 403
    assert forbidden.content == b""
    control = await mc.get("/_control/config")  # faults never touch /_control
    assert control.status_code == 200
    await mc.patch("/_control/config", json={"fault_rates": {"403": 0.0, "503": 1.0}})
    assert_problem(await mc.get("/3.0/ping"), 503, "Service Unavailable")
    await mc.patch(
        "/_control/config",
        json={"fault_rates": {"503": 0.0, "timeout": 1.0}, "timeout_seconds": 0.05},
    )
    assert_problem(await mc.get("/3.0/ping"), 504, "Gateway Timeout")
    log = (await mc.get("/_control/requests")).json()["requests"]
    assert [e["fault"] for e in log] == ["403", "503", "timeout"]


async def test_timed_out_request_is_not_applied(mc: httpx.AsyncClient, members: Members) -> None:
    await mc.patch(
        "/_control/config", json={"fault_rates": {"timeout": 1.0}, "timeout_seconds": 0.01}
    )
    response = await members.put("t@example.com", status_if_new="subscribed")
    assert response.status_code == 504
    await mc.patch("/_control/config", json={"fault_rates": {"timeout": 0.0}})
    assert (await mc.get(f"{LIST}/members/{md5('t@example.com')}")).status_code == 404


async def test_client_timeout_frees_the_slot() -> None:
    app = create_app(
        SandboxConfig(max_in_flight=1, fault_rates={"timeout": 1.0}, timeout_seconds=60)
    )
    state = app.state.sandbox
    async with (
        run_server(app, lifespan="off") as base,
        httpx.AsyncClient(base_url=base, auth=("x", DEFAULT_API_KEY)) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/3.0/ping", timeout=0.3)
        for _ in range(200):  # the sandbox notices the disconnect and releases the slot
            if not any(state.in_flight.values()):
                break
            await asyncio.sleep(0.02)
        assert not any(state.in_flight.values())


async def test_outage_window(mc: httpx.AsyncClient) -> None:
    patched = (await mc.patch("/_control/config", json={"outage_seconds": 30})).json()
    assert 0 < patched["outage_remaining_seconds"] <= 30
    for _ in range(3):
        assert_problem(await mc.get("/3.0/ping"), 503, "Service Unavailable")
    assert (await mc.get("/_control/accounts")).status_code == 200
    await mc.patch("/_control/config", json={"outage_seconds": 0})
    assert (await mc.get("/3.0/ping")).status_code == 200
    faults = [e["fault"] for e in (await mc.get("/_control/requests")).json()["requests"]]
    assert faults == ["outage", "outage", "outage", None]


async def test_fail_emails(mc: httpx.AsyncClient, members: Members) -> None:
    await mc.patch(
        "/_control/config",
        json={
            "fail_emails": {
                "Fake@example.com": "fake",
                "comp@example.com": "compliance",
                "merge@example.com": "merge_fields",
                "busy@example.com": "throttled",
            }
        },
    )
    assert_problem(
        await members.put("fake@example.com", status_if_new="subscribed"),
        400,
        "Invalid Resource",
        "fake@example.com looks fake or invalid, please enter a real email address.",
    )
    assert_problem(
        await members.put("comp@example.com", status_if_new="subscribed"),
        400,
        "Member In Compliance State",
    )
    body = assert_problem(
        await members.put("merge@example.com", status_if_new="subscribed"),
        400,
        "Invalid Resource",
        "Your merge fields were invalid.",
    )
    assert body["errors"]
    assert_problem(
        await members.put("busy@example.com", status_if_new="subscribed"),
        400,
        "Invalid Resource",
        "busy@example.com has signed up to a lot of lists very recently; "
        "we're not allowing more signups for now",
    )
    batch = (
        await mc.post(
            LIST,
            json={
                "members": [
                    {"email_address": "comp@example.com", "status": "subscribed"},
                    {"email_address": "fine@example.com", "status": "subscribed"},
                ]
            },
        )
    ).json()
    assert batch["total_created"] == 1
    assert batch["errors"][0]["email_address"] == "comp@example.com"


async def test_latency_counts_members(mc: httpx.AsyncClient) -> None:
    await mc.patch("/_control/config", json={"latency_ms": 1, "latency_per_member_ms": 0.01})
    await mc.post(
        LIST,
        json={
            "members": [
                {"email_address": f"l{i}@example.com", "status": "subscribed"} for i in range(3)
            ]
        },
    )
    await mc.get("/3.0/ping")
    log = (await mc.get("/_control/requests")).json()["requests"]
    assert [e["members"] for e in log] == [3, 1]
    assert (await mc.delete("/_control/requests")).status_code == 204
    assert (await mc.get("/_control/requests")).json()["total_items"] == 0


async def test_config_validation(mc: httpx.AsyncClient) -> None:
    for bad in (
        {"latency_ms": -1},
        {"max_in_flight": 0},
        {"fault_rates": {"418": 0.5}},
        {"fault_rates": {"429": 0.8, "503": 0.5}},
        {"fail_emails": {"a@example.com": "weird"}},
        {"nope": 1},
    ):
        response = await mc.patch("/_control/config", json=bad)
        assert response.status_code == 400, bad
        assert response.json()["detail"]
    assert (await mc.get("/_control/config")).json()["max_in_flight"] == 10
