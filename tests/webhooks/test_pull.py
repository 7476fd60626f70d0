"""The scheduled pull: statuses no webhook brought are read back from Mailchimp."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app import wiring
from app.main import Runtime
from app.sync.engine import SyncEngine
from app.sync.pull import pull_connection, pull_due
from tests.conftest import fetch
from tests.support.sync import Sandbox, queue_empty, running, wait_for
from tests.webhooks.conftest import Crm, Engine, contact_row, count, drain, mirror_row, one

pytestmark = pytest.mark.usefixtures("connection")


@contextlib.asynccontextmanager
async def slots_running(engine: SyncEngine) -> AsyncIterator[SyncEngine]:
    """Only the engine's slot loop (requests need slots), for calling a pull directly."""
    stop = asyncio.Event()
    task = asyncio.create_task(engine.slots.run(stop))
    try:
        yield engine
    finally:
        stop.set()
        engine.slots.wake.set()
        await task
        await engine.aclose()


async def last_pull(runtime: Runtime) -> Any:
    return (await one(runtime, "SELECT last_pull_at FROM connections"))["last_pull_at"]


async def test_an_unsubscribe_no_webhook_brought_is_pulled(
    ada: dict[str, Any],
    runtime: Runtime,
    sandbox: Sandbox,
    make_engine: Engine,
) -> None:
    # No webhook is registered: the person's unsubscribe reaches nobody.
    r = await sandbox.act("unsubscribe", "ada@example.com")
    assert r.status_code == 200
    assert (await contact_row(runtime, "ada@example.com"))["newsletter_opt_in"] is True

    engine = make_engine()
    for every, job in wiring.periodic_jobs(runtime):
        engine.add_periodic(every, job)
    async with running(engine):

        async def pulled() -> bool:
            return await last_pull(runtime) is not None

        await wait_for(pulled, within=20)

    contact = await contact_row(runtime, "ada@example.com")
    assert contact["newsletter_opt_in"] is False
    assert contact["newsletter_unsubscribed_at"] is not None
    mirror = await mirror_row(runtime, "ada@example.com")
    assert mirror["remote_status"] == "unsubscribed"
    change = await one(runtime, "SELECT * FROM contact_changes WHERE source = 'provider'")
    assert change["actor"] == "mailchimp:pull"
    assert change["fields"]["after"] == {"newsletter_opt_in": False}
    requests = await sandbox.requests()
    assert requests, "the pull reads members"
    # ...and writes no member back (the first reconcile run may register our webhook and
    # create the field map's merge fields).
    members = [
        r for r in requests if "/webhooks" not in r["path"] and "/merge-fields" not in r["path"]
    ]
    assert {r["method"] for r in members} == {"GET"}
    assert await queue_empty(runtime)


async def test_a_signup_no_webhook_brought_turns_consent_on_but_creates_no_lead(
    crm: Crm, runtime: Runtime, sandbox: Sandbox, make_engine: Engine
) -> None:
    await crm.create(email="quiet@example.com", newsletter_opt_in=False)
    await drain(make_engine)
    assert (await sandbox.act("signup", "quiet@example.com")).status_code == 200
    assert (await sandbox.act("signup", "stranger@example.com")).status_code == 200
    async with slots_running(make_engine()) as engine:
        (conn,) = await fetch(runtime, "SELECT id FROM connections")
        result = await pull_connection(engine, conn["id"])
    assert result is not None
    assert result.outcomes["applied"] == 1
    assert (await contact_row(runtime, "quiet@example.com"))["newsletter_opt_in"] is True
    assert await count(runtime, "contacts", "email_key = 'stranger@example.com'") == 0


async def test_a_second_pull_finds_nothing_new(
    ada: dict[str, Any], runtime: Runtime, sandbox: Sandbox, make_engine: Engine
) -> None:
    assert (await sandbox.act("clean", "ada@example.com")).status_code == 200
    async with slots_running(make_engine()) as engine:
        (conn,) = await fetch(runtime, "SELECT id FROM connections")
        first = await pull_connection(engine, conn["id"])
        watermark = await last_pull(runtime)
        second = await pull_connection(engine, conn["id"])
    assert first is not None and first.outcomes["applied"] == 1
    assert second is not None and sum(second.outcomes.values()) == 0  # overlap re-reads
    assert await last_pull(runtime) >= watermark
    assert (await contact_row(runtime, "ada@example.com"))["email_status"] == "bounced"
    assert await count(runtime, "contact_changes", "source = 'provider'") == 1


async def test_paused_and_not_due_connections_are_skipped(
    ada: dict[str, Any], runtime: Runtime, sandbox: Sandbox, make_engine: Engine
) -> None:
    assert (await sandbox.act("unsubscribe", "ada@example.com")).status_code == 200
    await sandbox.clear_requests()
    engine = make_engine()
    try:
        await fetch(runtime, "UPDATE connections SET status = 'paused'")
        await pull_due(engine)
        await fetch(runtime, "UPDATE connections SET status = 'active', last_pull_at = now()")
        await pull_due(engine)
    finally:
        await engine.aclose()
    assert await sandbox.requests() == []
    assert (await contact_row(runtime, "ada@example.com"))["newsletter_opt_in"] is True


async def test_the_pulls_requests_are_bulk_work_for_the_shared_limits(
    ada: dict[str, Any], runtime: Runtime, make_engine: Engine
) -> None:
    from app.sync.limits import LimitSpec, Rate, request_priority
    from app.sync.models import PRIORITY_BULK, PRIORITY_LIVE

    async with slots_running(make_engine()) as engine:
        # A provider with a rate: the pull's page requests take its tokens as bulk work, so
        # every tenant's live changes go before them.
        engine.options.limits = LimitSpec(concurrency=10, rates=(Rate(100),))
        engine.contexts.clear()
        (conn,) = await fetch(runtime, "SELECT id FROM connections")
        assert await pull_connection(engine, conn["id"]) is not None
        assert request_priority.get() == PRIORITY_LIVE  # given back after the pull
    claims = await fetch(runtime, "SELECT DISTINCT priority FROM limit_claims")
    assert claims == [{"priority": PRIORITY_BULK}]
