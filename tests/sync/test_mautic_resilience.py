"""Nothing is lost at Mautic either: SIGKILLed workers and 30 % injected faults converge exactly
(short versions; the long ones belong in bench/)."""

from __future__ import annotations

import asyncio
import random
import signal
from typing import Any

import httpx
import pytest

from app.config import MauticMode, Settings
from app.connections.service import connection_service
from app.db import session_scope
from app.main import Runtime
from app.providers import registry
from app.providers.base import Audience
from app.providers.mautic.connect import MauticCredentials
from app.sandbox.mautic import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from app.sync.engine import SyncEngine
from tests.conftest import fetch
from tests.providers.mautic import conftest as mautic_fixtures
from tests.providers.mautic.conftest import Mautic
from tests.support.sync import queue_empty, wait_for
from tests.support.workers import worker, worker_env
from tests.sync.conftest import OWNER
from tests.sync.test_resilience import running, seed_contacts

mautic = mautic_fixtures.mautic


@pytest.fixture
def mautic_settings(sync_settings: Settings, mautic: Mautic) -> Settings:
    return sync_settings.model_copy(
        update={
            "MAUTIC_MODE": MauticMode.sandbox,
            "MAUTIC_SANDBOX_URL": mautic.url,
            "MAUTIC_TIMEOUT_SECONDS": 2.0,
        }
    )


@pytest.fixture
async def mautic_connection(
    runtime: Runtime, mautic_settings: Settings, mautic: Mautic
) -> dict[str, Any]:
    body = MauticCredentials.model_validate(
        {
            "base_url": mautic.url,
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
        }
    )
    provider = registry.get("mautic")
    account = provider.connect.account_from_credentials(mautic_settings, body)
    async with session_scope(runtime.sessionmaker) as session:
        row = await connection_service.save(
            session,
            provider=provider,
            settings=mautic_settings,
            owner_id=OWNER,
            account=account,
            audience=Audience(id=mautic.segment, name="CRM", member_count=0),
        )
    return dict(row)


async def assert_mautic_mirrors_database(runtime: Runtime, mautic: Mautic) -> None:
    """Every consenting contact is in our segment with its first name and tags."""
    body = (await mautic.http.get("/_control/contacts")).json()
    remote = {str(c["fields"]["all"].get("email")).lower(): c for c in body["contacts"]}
    contacts = await fetch(
        runtime,
        "SELECT email_key, first_name, tags FROM contacts WHERE owner_id = :o",
        o=OWNER,
    )
    problems = []
    for c in contacts:
        m = remote.get(c["email_key"])
        if m is None or int(mautic.segment) not in m["segments"]:
            problems.append(f"{c['email_key']}: not in the segment")
            continue
        if m["fields"]["all"].get("firstname") != c["first_name"]:
            problems.append(f"{c['email_key']}: {m['fields']['all'].get('firstname')}")
        if not set(c["tags"]) <= {t["tag"] for t in m["tags"]}:
            problems.append(f"{c['email_key']}: tags {m['tags']} lack {c['tags']}")
    duplicates = len(body["contacts"]) - len(remote)
    assert not problems and duplicates == 0, (duplicates, problems[:5])


async def test_thirty_percent_faults_converge_exactly(
    runtime: Runtime,
    mautic: Mautic,
    mautic_settings: Settings,
    mautic_connection: dict[str, Any],
) -> None:
    await mautic.configure(
        seed=7,
        timeout_seconds=3,
        # Short tokens too: renewals meet the faults (the token endpoint is faulted as well).
        access_token_lifetime_seconds=5,
        fault_rates={"503": 0.1, "429": 0.1, "500": 0.05, "timeout": 0.05},
    )
    await seed_contacts(runtime, mautic_connection["id"], 120)
    settings = mautic_settings.model_copy(
        update={
            "MAUTIC_TIMEOUT_SECONDS": 1.0,
            "SYNC_BATCH_THRESHOLD": 100000,
            "SYNC_MAX_ATTEMPTS": 50,
            "SYNC_THROTTLE_COOLDOWN_SECONDS": 0.05,
            "SYNC_PAUSE_AFTER_FAILURES": 50,
        }
    )
    async with running(SyncEngine(runtime.engine, settings)):
        await wait_for(lambda: queue_empty(runtime), within=120)
    await mautic.configure(fault_rates={"503": 0, "429": 0, "500": 0, "timeout": 0})
    await assert_mautic_mirrors_database(runtime, mautic)
    statuses = {r["status"] for r in await mautic.requests()}
    assert statuses >= {200, 503, 429}  # the faults really happened
    (conn,) = await fetch(runtime, "SELECT status FROM connections")
    assert conn["status"] == "active"


async def test_sigkill_mid_drain_loses_nothing(
    runtime: Runtime,
    mautic: Mautic,
    mautic_settings: Settings,
    mautic_connection: dict[str, Any],
    api: httpx.AsyncClient,
    token_for: Any,
) -> None:
    await mautic.configure(latency_ms=5)
    await seed_contacts(runtime, mautic_connection["id"], 400)
    env = worker_env(
        mautic_settings,
        SYNC_BATCH_THRESHOLD=100000,
        SYNC_CLAIM_SIZE=50,
        MAUTIC_MODE="sandbox",
        MAUTIC_SANDBOX_URL=mautic.url,
        MAUTIC_TIMEOUT_SECONDS=2,
    )
    headers = {"Authorization": f"Bearer {token_for(OWNER)}"}
    ids = [r["id"] for r in await fetch(runtime, "SELECT id FROM contacts ORDER BY email")]
    rng = random.Random(42)
    for kill in range(3):
        async with worker(env) as proc:
            await asyncio.sleep(rng.uniform(0.8, 1.5))
            for contact_id in rng.sample(ids, 10):
                r = await api.patch(
                    f"/api/contacts/{contact_id}",
                    json={"first_name": f"K{kill}-{rng.randrange(1000)}", "tags": [f"k{kill}"]},
                    headers=headers,
                )
                assert r.status_code == 200, r.text
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
    remaining = (await fetch(runtime, "SELECT count(*) AS n FROM sync_queue"))[0]["n"]
    assert remaining > 0, "the drain finished before the kills: make it longer"
    async with worker(env):
        await wait_for(lambda: queue_empty(runtime), within=120)
    await assert_mautic_mirrors_database(runtime, mautic)
    parked = await fetch(runtime, "SELECT count(*) AS n FROM sync_queue WHERE state = 'parked'")
    assert parked[0]["n"] == 0


async def test_a_backlog_goes_in_batches_of_200_and_converges_through_faults(
    runtime: Runtime,
    mautic: Mautic,
    mautic_settings: Settings,
    mautic_connection: dict[str, Any],
) -> None:
    await mautic.configure(seed=3, fault_rates={"503": 0.1, "500": 0.05})
    await seed_contacts(runtime, mautic_connection["id"], 450)
    # SYNC_BATCH_SIZE 500 is above Mautic's 200: the client sends at most 200 a request.
    settings = mautic_settings.model_copy(
        update={"SYNC_BATCH_SIZE": 500, "SYNC_MAX_ATTEMPTS": 50, "SYNC_PAUSE_AFTER_FAILURES": 50}
    )
    async with running(SyncEngine(runtime.engine, settings)):
        await wait_for(lambda: queue_empty(runtime), within=120)
    await mautic.configure(fault_rates={"503": 0, "500": 0})
    await assert_mautic_mirrors_database(runtime, mautic)
    log = await mautic.requests()
    batches = [r for r in log if "/contacts/batch/new" in str(r["path"])]
    assert max(r["items"] for r in batches) == 200
    assert all(r["status"] != 500 or r.get("fault") for r in batches)  # never the 200-cap 500
