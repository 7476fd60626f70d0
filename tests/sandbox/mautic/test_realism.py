"""The kit's realism knobs on the Mautic sandbox: faults, outages, the cap, the request log."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import httpx
import pytest

from tests.sandbox.mautic.conftest import Sandbox


async def test_injected_500_is_mautics_generic_error_and_nothing_is_written(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    await sandbox.configure(fault_rates={"500": 1.0})
    response = await api.post("/contacts/new", json={"email": "f@x.com"})
    assert response.status_code == 500
    assert response.json()["errors"][0]["message"].startswith("Looks like I encountered an error")
    await sandbox.configure(fault_rates={"500": 0.0})
    assert (await api.get("/contacts")).json()["total"] == "0"
    log = (await sandbox.http.get("/_control/requests")).json()["requests"]
    assert [e["fault"] for e in log if e["path"] == "/api/contacts/new"] == ["500"]


async def test_429_fault_uses_the_rate_limiter_body_and_timeout_ends_in_504(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    await sandbox.configure(fault_rates={"429": 1.0})
    limited = await api.get("/contacts")
    assert limited.status_code == 429
    assert limited.content.startswith(b'{ "errors": [ { "code": 429')
    await sandbox.configure(fault_rates={"429": 0.0, "timeout": 1.0}, timeout_seconds=0.05)
    timed_out = await api.post("/contacts/new", json={"email": "t@x.com"})
    assert timed_out.status_code == 504
    assert timed_out.headers["content-type"].startswith("text/html")
    await sandbox.configure(fault_rates={"timeout": 0.0})
    assert (await api.get("/contacts")).json()["total"] == "0"  # the change was not applied


async def test_outage_answers_503_html_even_on_the_token_endpoint(sandbox: Sandbox) -> None:
    await sandbox.configure(outage_seconds=60)
    response = await sandbox.http.post("/oauth/v2/token", data={"grant_type": "client_credentials"})
    assert response.status_code == 503
    assert b"503 Service Temporarily Unavailable" in response.content
    assert (await sandbox.http.get("/_control/config")).json()["outage_remaining_seconds"] > 0
    await sandbox.http.post("/_control/clock", json={"advance_seconds": 61})
    assert (await sandbox.http.get("/api/contacts")).status_code == 401  # back: PHP answers


async def test_in_flight_cap_refuses_the_request_beyond_it(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    await sandbox.configure(max_in_flight=1, latency_ms=300)
    first, second = await asyncio.gather(api.get("/contacts"), api.get("/contacts"))
    assert sorted([first.status_code, second.status_code]) == [200, 503]
    log = (await sandbox.http.get("/_control/requests")).json()
    assert log["max_in_flight_seen"] == 2
    assert {e["fault"] for e in log["requests"] if e["path"] == "/api/contacts"} == {None, "cap"}


async def test_request_log_names_the_client_and_can_record_bodies(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    from app.sandbox.mautic import DEFAULT_CLIENT_ID

    await sandbox.configure(record_bodies=True)
    await api.post("/contacts/new", json={"email": "b@x.com"})
    [entry] = [
        e
        for e in (await sandbox.http.get("/_control/requests")).json()["requests"]
        if e["path"] == "/api/contacts/new"
    ]
    assert entry["client_id"] == DEFAULT_CLIENT_ID
    assert entry["status"] == 201
    assert '"b@x.com"' in entry["body"]
    assert (await sandbox.http.delete("/_control/requests")).status_code == 204
    assert (await sandbox.http.get("/_control/requests")).json()["requests"] == []


async def test_faults_are_a_function_of_the_seed(sandbox: Sandbox) -> None:
    async def run() -> list[int]:
        await sandbox.http.post("/_control/reset")
        await sandbox.configure(fault_rates={"503": 0.5}, seed=7)
        return [(await sandbox.http.get("/api/contacts")).status_code for _ in range(12)]

    first = await run()
    assert set(first) == {401, 503}
    assert await run() == first


async def test_the_50_empty_object_bug_knob(api: httpx.AsyncClient, sandbox: Sandbox) -> None:
    await sandbox.configure(empty_contact_rate=1.0)
    created = await api.post("/contacts/new", json={"email": "e@x.com"})
    assert created.status_code == 201
    assert created.json()["contact"] == []
    listed = (await api.get("/contacts")).json()
    assert list(listed["contacts"].values()) == [[]]  # the write happened


async def test_request_log_counts_the_items_of_a_batch(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    await sandbox.configure(latency_per_item_ms=0.01)
    await api.post("/contacts/batch/new", json=[{"email": f"i{i}@x.com"} for i in range(7)])
    await api.get("/contacts")
    log = (await sandbox.http.get("/_control/requests")).json()["requests"]
    assert [(e["path"], e["items"]) for e in log[-2:]] == [
        ("/api/contacts/batch/new", 7),
        ("/api/contacts", 1),
    ]


async def test_the_sandboxs_own_work_is_done_inside_the_latency_not_after_it(
    api: httpx.AsyncClient, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # L(b) is the answer's time: a batch's own work (40 ms here, as learnt from earlier
    # batches) is held back from the wait and done inside it; added on top, every request
    # took L plus the sandbox's CPU and the bound of a drain could not be reached.
    from app.sandbox.mautic import app as app_module

    waits: list[float] = []
    real_sleep, slept = asyncio.sleep, [0.0]

    async def sleep(seconds: float) -> None:  # the clock moves on, nobody waits
        waits.append(seconds)
        slept[0] += seconds
        await real_sleep(0)

    monkeypatch.setattr(app_module, "asyncio", SimpleNamespace(sleep=sleep))
    clock = SimpleNamespace(time=time.time, perf_counter=lambda: time.perf_counter() + slept[0])
    monkeypatch.setattr(app_module, "time", clock)
    await sandbox.configure(latency_ms=100, latency_per_item_ms=1)
    sandbox.state.handling[True] = 0.040
    await api.post("/contacts/batch/new", json=[{"email": f"w{i}@x.com"} for i in range(200)])
    assert waits[0] == pytest.approx(0.300 - 0.040)
    # The rest of the latency after the work: never more than what was held back.
    assert sum(waits[1:]) <= 0.040 + 1e-9
    assert sandbox.state.handling[True] != 0.040  # learnt from this batch's work
    # Never more than half the latency held back, whatever the work took lately.
    waits.clear()
    sandbox.state.handling[False] = 5.0
    await api.get("/contacts")
    assert waits[0] == pytest.approx(0.101 / 2)  # L(1) = 101 ms
