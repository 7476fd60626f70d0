"""An imported file reaches the sandbox: import, drain, compare; metrics and admin follow."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.main import Runtime
from app.sync.engine import SyncEngine
from tests.conftest import fetch
from tests.support.sync import Sandbox, assert_mirrors_database, queue_empty
from tests.sync.conftest import OWNER

pytestmark = pytest.mark.usefixtures("connection")


async def sends_done(api: httpx.AsyncClient) -> float:
    text = (await api.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "audience_sync_provider_sends":
            return sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total") and s.labels.get("outcome") == "done"
            )
    raise AssertionError("audience_sync_provider_sends is not exposed")


async def test_imported_contacts_are_drained_to_the_sandbox(
    api: httpx.AsyncClient,
    token_for: Callable[..., str],
    sandbox: Sandbox,
    make_engine: Callable[..., SyncEngine],
    runtime: Runtime,
) -> None:
    rows = [
        f"person{i}@example.com,Person,{i},{'vip;import' if i % 3 == 0 else ''},"
        f"{'yes' if i % 4 else 'no'}"
        for i in range(60)
    ]
    body = "email,first_name,last_name,tags,newsletter_opt_in\n" + "\n".join(rows) + "\n"
    owner = {"Authorization": f"Bearer {token_for(OWNER)}"}
    admin = {"Authorization": f"Bearer {token_for('ops', admin=True)}"}
    response = await api.post(
        "/api/contacts/import", content=body, headers={**owner, "Content-Type": "text/csv"}
    )
    assert response.status_code == 200, response.text
    assert (response.json()["created"], response.json()["queued"]) == (60, 60)
    priorities = await fetch(runtime, "SELECT DISTINCT priority FROM sync_queue")
    assert priorities == [{"priority": 1}]
    before = await sends_done(api)

    engine = make_engine()
    try:
        await engine.run_until_idle(limit_seconds=30)
    finally:
        await engine.aclose()

    assert await queue_empty(runtime)
    await assert_mirrors_database(runtime, sandbox, OWNER)
    subscribed = [m for m in (await sandbox.members()).values() if m["status"] == "subscribed"]
    assert len(subscribed) == 45  # the 15 rows with "no" are never created at Mailchimp
    assert await sends_done(api) - before == 60
    status = (await api.get("/api/admin/sync-status", headers=admin)).json()
    (line,) = status["connections"]
    assert line["queue"]["total"] == 0
    assert line["oldest_ready_age_seconds"] is None
    assert line["last_synced_at"] is not None

    # The same file again: nothing changes, nothing is queued, nothing is sent.
    again = await api.post(
        "/api/contacts/import", content=body, headers={**owner, "Content-Type": "text/csv"}
    )
    assert (again.json()["unchanged"], again.json()["queued"]) == (60, 0)
    assert await queue_empty(runtime)
