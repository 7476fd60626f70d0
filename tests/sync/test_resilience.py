"""Nothing is lost: crashes (SIGKILL), two workers under one cap, faults, outages, SIGTERM."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.main import Runtime
from app.sync.engine import SyncEngine
from tests.conftest import fetch
from tests.support.sync import Sandbox, assert_mirrors_database, queue_empty, running, wait_for
from tests.support.workers import worker, worker_env
from tests.sync.conftest import OWNER

pytestmark = pytest.mark.usefixtures("connection")


async def seed_contacts(runtime: Runtime, connection_id: Any, n: int, *, prefix: str = "c") -> None:
    """n consenting contacts and their queue rows, set-based (as an import would)."""
    await fetch(
        runtime,
        """
        INSERT INTO contacts (owner_id, email, email_key, first_name, last_name, tags,
                              newsletter_opt_in, newsletter_changed_at)
        SELECT :owner, :prefix || g || '@example.com', :prefix || g || '@example.com',
               'F' || g, 'L' || g, ARRAY['t' || (g % 3)], true, now()
        FROM generate_series(1, :n) AS g
        """,
        owner=OWNER,
        prefix=prefix,
        n=n,
    )
    await fetch(
        runtime,
        """
        INSERT INTO sync_queue (connection_id, mapping_id, email_key, contact_id)
        SELECT :conn, :conn, email_key, id FROM contacts WHERE owner_id = :owner
        ON CONFLICT DO NOTHING
        """,
        conn=connection_id,
        owner=OWNER,
    )


async def test_sigkill_mid_drain_loses_nothing(
    runtime: Runtime,
    sync_settings: Settings,
    sandbox: Sandbox,
    connection: dict[str, Any],
    api: httpx.AsyncClient,
    token_for: Callable[..., str],
) -> None:
    """SIGKILL the worker 10 times at random moments; the sandbox ends equal to the database,
    tags included: tags the contacts lose meanwhile are gone at the provider too."""
    await sandbox.configure(latency_ms=3)
    await seed_contacts(runtime, connection["id"], 5000)
    # Single PUTs keep the drain long enough to be killed many times.
    env = worker_env(sync_settings, SYNC_BATCH_THRESHOLD=100000, SYNC_CLAIM_SIZE=100)
    headers = {"Authorization": f"Bearer {token_for(OWNER)}"}
    ids = [r["id"] for r in await fetch(runtime, "SELECT id FROM contacts ORDER BY email")]
    rng = random.Random(42)
    kills = 0
    while kills < 10:
        async with worker(env) as proc:
            await asyncio.sleep(rng.uniform(0.4, 1.2))
            # Changes keep arriving during the drain: the final state must be the latest one.
            # Tag changes too: a tag the contact loses must be removed at the provider even
            # when the worker that pushed it died before recording it.
            for contact_id in rng.sample(ids, 5):
                r = await api.patch(
                    f"/api/contacts/{contact_id}",
                    json={"first_name": f"K{kills}-{rng.randrange(1000)}"},
                    headers=headers,
                )
                assert r.status_code == 200
            for contact_id in rng.sample(ids, 40):
                r = await api.patch(
                    f"/api/contacts/{contact_id}",
                    json={"tags": [f"k{kills}-{rng.randrange(3)}"]},
                    headers=headers,
                )
                assert r.status_code == 200
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            kills += 1
    remaining = (await fetch(runtime, "SELECT count(*) AS n FROM sync_queue"))[0]["n"]
    assert remaining > 0, "the drain finished before the kills: make it longer"
    async with worker(env):
        await wait_for(lambda: queue_empty(runtime), within=120)
    await assert_mirrors_database(runtime, sandbox, OWNER, exact_tags=True)
    parked = await fetch(runtime, "SELECT count(*) AS n FROM sync_queue WHERE state = 'parked'")
    assert parked[0]["n"] == 0


async def test_two_workers_share_one_cap(
    runtime: Runtime, sync_settings: Settings, sandbox: Sandbox, connection: dict[str, Any]
) -> None:
    """Two processes, each allowed 10, against a strict cap of 10: never a 429."""
    await sandbox.configure(latency_ms=20, max_in_flight=10)
    await seed_contacts(runtime, connection["id"], 1500)
    env = worker_env(
        sync_settings,
        MAILCHIMP_MAX_CONCURRENCY=10,
        SYNC_BATCH_THRESHOLD=100000,
        SYNC_CLAIM_SIZE=100,
    )
    await sandbox.clear_requests()
    async with worker(env), worker(env):
        await wait_for(lambda: queue_empty(runtime), within=120)
    log = (await sandbox.http.get("/_control/requests")).json()
    statuses = {r["status"] for r in log["requests"]}
    assert 429 not in statuses
    assert log["max_in_flight_seen"] <= 10
    await assert_mirrors_database(runtime, sandbox, OWNER)


async def test_sigterm_finishes_in_flight_and_releases(
    runtime: Runtime, sync_settings: Settings, sandbox: Sandbox, connection: dict[str, Any]
) -> None:
    await sandbox.configure(latency_ms=50)
    await seed_contacts(runtime, connection["id"], 400)
    env = worker_env(sync_settings, SYNC_BATCH_THRESHOLD=100000, SYNC_CLAIM_SIZE=50)
    async with worker(env, stderr=asyncio.subprocess.PIPE) as proc:
        await wait_for(lambda: _count(runtime, "SELECT count(*) AS n FROM sync_state"), within=30)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=30)
        assert code == 0, (await proc.stderr.read()).decode() if proc.stderr else ""
    leased = await fetch(
        runtime, "SELECT count(*) AS n FROM sync_queue WHERE leased_by IS NOT NULL"
    )
    assert leased[0]["n"] == 0
    slots = await fetch(
        runtime, "SELECT count(*) AS n FROM provider_slots WHERE holder IS NOT NULL"
    )
    assert slots[0]["n"] == 0
    # What was sent is recorded; nothing was half-completed.
    sent = (await fetch(runtime, "SELECT count(*) AS n FROM sync_state"))[0]["n"]
    queued = (await fetch(runtime, "SELECT count(*) AS n FROM sync_queue"))[0]["n"]
    assert sent + queued >= 400


async def _count(runtime: Runtime, sql: str) -> bool:
    return bool((await fetch(runtime, sql))[0]["n"] > 0)


async def test_thirty_percent_faults_converge_exactly(
    runtime: Runtime,
    sandbox: Sandbox,
    connection: dict[str, Any],
    make_engine: Callable[..., SyncEngine],
) -> None:
    await sandbox.configure(
        seed=7,
        timeout_seconds=3,
        fault_rates={"503": 0.1, "429": 0.1, "timeout": 0.05, "403": 0.05},
    )
    await seed_contacts(runtime, connection["id"], 300)
    engine = make_engine(
        MAILCHIMP_TIMEOUT_SECONDS=1.0,
        SYNC_BATCH_THRESHOLD=100000,
        SYNC_MAX_ATTEMPTS=50,
        SYNC_THROTTLE_COOLDOWN_SECONDS=0.05,
        SYNC_PAUSE_AFTER_FAILURES=50,
    )
    async with running(engine):
        await wait_for(lambda: queue_empty(runtime), within=120)
    await sandbox.configure(fault_rates={"503": 0, "429": 0, "timeout": 0, "403": 0})
    await assert_mirrors_database(runtime, sandbox, OWNER)
    log = (await sandbox.http.get("/_control/requests")).json()["requests"]
    assert {r["status"] for r in log} >= {200, 503, 429}  # the faults really happened


async def test_lone_throttles_cost_a_retry_not_an_account_pause(
    runtime: Runtime,
    sandbox: Sandbox,
    connection: dict[str, Any],
    make_engine: Callable[..., SyncEngine],
) -> None:
    # Scattered 429s among successes (the account is not over its limit): each costs its own
    # request a retry; the account is never cooled down and its concurrency never cut.
    await sandbox.configure(seed=11, fault_rates={"429": 0.15})
    await seed_contacts(runtime, connection["id"], 200)
    engine = make_engine(SYNC_BATCH_THRESHOLD=100000)
    async with running(engine):
        await wait_for(lambda: queue_empty(runtime), within=120)
    await sandbox.configure(fault_rates={"429": 0})
    await assert_mirrors_database(runtime, sandbox, OWNER)
    log = (await sandbox.http.get("/_control/requests")).json()["requests"]
    writes = [r for r in log if "/members/" in r["path"]]
    throttled = sum(1 for r in writes if r["status"] == 429)
    assert throttled >= 10  # the faults really happened
    # One retry per 429 and nothing more: every member written once plus the retries.
    assert len(writes) == 200 + throttled
    rows = await fetch(runtime, "SELECT cooldown_until FROM connections")
    assert rows == [{"cooldown_until": None}]
    gate = engine.slots.gate(connection["account_key"])
    # Mailchimp's cap is MAILCHIMP_MAX_CONCURRENCY (at most 10), never cut here.
    assert gate.limit == gate.cap == min(10, engine.settings.MAILCHIMP_MAX_CONCURRENCY)


async def test_outage_pauses_with_notice_and_resumes_by_itself(
    runtime: Runtime,
    sandbox: Sandbox,
    connection: dict[str, Any],
    make_engine: Callable[..., SyncEngine],
    api: httpx.AsyncClient,
    token_for: Callable[..., str],
) -> None:
    await seed_contacts(runtime, connection["id"], 60)
    await sandbox.configure(outage_seconds=3)
    engine = make_engine(SYNC_BATCH_THRESHOLD=100000, SYNC_PAUSE_AFTER_FAILURES=5)
    headers = {"Authorization": f"Bearer {token_for(OWNER)}"}

    async def paused() -> bool:
        body = (await api.get("/api/integrations/mailchimp", headers=headers)).json()
        return bool(body["status"] == "paused")

    async with running(engine):
        await wait_for(paused, within=30)
        body = (await api.get("/api/integrations/mailchimp", headers=headers)).json()
        assert body["notice"] == "Heads up—email sync is paused right now."
        await wait_for(lambda: queue_empty(runtime), within=60)
    body = (await api.get("/api/integrations/mailchimp", headers=headers)).json()
    assert body["status"] == "active"
    assert body["notice"] is None
    await assert_mirrors_database(runtime, sandbox, OWNER)


async def test_permanent_error_for_one_email_leaves_others_synced(
    runtime: Runtime,
    sandbox: Sandbox,
    connection: dict[str, Any],
    make_engine: Callable[..., SyncEngine],
) -> None:
    await seed_contacts(runtime, connection["id"], 20)
    await sandbox.configure(fail_emails={"c7@example.com": "merge_fields"})
    engine = make_engine()
    async with running(engine):
        await wait_for(lambda: queue_empty(runtime), within=30)
    rows = await fetch(
        runtime, "SELECT email_key, error_kind FROM sync_state WHERE error_kind IS NOT NULL"
    )
    assert rows == [{"email_key": "c7@example.com", "error_kind": "merge_fields"}]
    members = await sandbox.members()
    assert "c7@example.com" not in members
    assert sum(1 for k in members if k.startswith("c")) == 19


async def test_revoked_credentials_put_the_connection_in_error(
    runtime: Runtime,
    sandbox: Sandbox,
    sync_settings: Settings,
    make_engine: Callable[..., SyncEngine],
    api: httpx.AsyncClient,
    token_for: Callable[..., str],
) -> None:
    """A 401 stops the connection (notice: reconnect) and burns no row's attempts."""
    from app.connections.crypto import encrypt_credentials

    unknown_key = "f" * 32 + "-us1"
    await fetch(
        runtime,
        "UPDATE connections SET credentials = :c",
        c=encrypt_credentials(sync_settings, {"api_key": unknown_key}),
    )
    conn = (await fetch(runtime, "SELECT id FROM connections"))[0]
    await seed_contacts(runtime, conn["id"], 5)
    engine = make_engine()
    await engine.run_until_idle(limit_seconds=30)
    await engine.aclose()
    headers = {"Authorization": f"Bearer {token_for(OWNER)}"}
    body = (await api.get("/api/integrations/mailchimp", headers=headers)).json()
    assert body["status"] == "error"
    assert body["notice"] == "Reconnect Mailchimp: it no longer accepts the saved credentials."
    rows = await fetch(runtime, "SELECT state, attempts, leased_by FROM sync_queue")
    assert len(rows) == 5
    assert all(r == {"state": "ready", "attempts": 0, "leased_by": None} for r in rows)
    statuses = [r["status"] for r in await sandbox.requests()]
    assert set(statuses) == {401}  # only the requests already on their way
    again = make_engine()
    await again.run_until_idle(limit_seconds=30)
    await again.aclose()
    assert len(await sandbox.requests()) == len(statuses)  # nothing is retried until reconnect
