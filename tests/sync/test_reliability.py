"""Issue 11's reliability defects on the sync path, each reproduced deterministically."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from app.config import Settings
from app.connections.notices import PARKED_NOTICE
from app.db import create_engine
from app.main import Runtime
from app.sync.engine import COMPLETE_STEP, SyncEngine
from app.sync.queue import QueueRepository
from tests.conftest import fetch
from tests.support.dbproxy import DatabaseProxy, database_proxy
from tests.support.sync import Sandbox, assert_mirrors_database, queue_empty, running, wait_for
from tests.sync.conftest import OWNER
from tests.sync.test_resilience import seed_contacts

pytestmark = pytest.mark.usefixtures("connection")


async def _n(runtime: Runtime, sql: str) -> int:
    return int((await fetch(runtime, sql))[0]["n"])


async def test_rows_of_a_failed_completion_are_given_back_when_the_database_returns(
    runtime: Runtime,
    settings: Settings,
    sync_settings: Settings,
    sandbox: Sandbox,
    connection: dict[str, Any],
) -> None:
    """The database stops while sends are in flight: their completion fails. Once it is back
    the rows are released and sent at once, not renewed until the worker idles (lease 600 s:
    the old keeper would have held them ten minutes)."""
    await seed_contacts(runtime, connection["id"], 40)
    await sandbox.configure(latency_ms=1500)
    assert settings.DATABASE_URL
    async with database_proxy(settings.DATABASE_URL) as proxy:
        db = create_engine(proxy.url_for(settings.DATABASE_URL), pool_size=4, pool_timeout=2)
        engine = SyncEngine(
            db,
            sync_settings.model_copy(
                update={
                    "SYNC_LEASE_SECONDS": 600,
                    "SYNC_BATCH_THRESHOLD": 100000,
                    "SYNC_CLAIM_SIZE": 20,
                    "MAILCHIMP_TIMEOUT_SECONDS": 10,
                }
            ),
        )
        try:
            async with running(engine):
                leased = "SELECT count(*) AS n FROM sync_queue WHERE leased_by IS NOT NULL"
                await wait_for(lambda: _at_least(runtime, leased, 20), within=30)
                await wait_for(lambda: _has_groups(engine), within=30)  # sends in flight
                await proxy.stop()
                # Every group ends: its completion (and the release after it) failed.
                await wait_for(lambda: _no_groups(engine), within=30)
                assert await _n(runtime, leased) > 0, "the failed completion left leases"
                await sandbox.configure(latency_ms=0)
                await proxy.start()
                await wait_for(lambda: queue_empty(runtime), within=60)
        finally:
            await db.dispose()
    await assert_mirrors_database(runtime, sandbox, OWNER)


async def test_rows_of_a_claim_whose_commit_went_unheard_are_given_back(
    runtime: Runtime,
    sync_settings: Settings,
    sandbox: Sandbox,
    connection: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database goes away as a claim commits: the commit is applied, its answer lost, so
    the worker leases rows it does not know of. They are given back once the database
    answers, not kept until their lease ends (600 s here). The outage test above stops the
    database right after a claim, while the next one may be committing (a flake under load)."""
    await seed_contacts(runtime, connection["id"], 10)
    real = QueueRepository.claim
    unheard: list[Any] = []

    async def claim(self: QueueRepository, **kw: Any) -> list[Any]:
        if unheard:
            return await real(self, **kw)
        async with runtime.engine.begin() as conn:  # committed, as the lost claim's was
            unheard.extend(await real(QueueRepository(conn), **kw))
        raise ConnectionResetError("the connection was lost while committing")

    monkeypatch.setattr(QueueRepository, "claim", claim)
    engine = SyncEngine(
        runtime.engine, sync_settings.model_copy(update={"SYNC_LEASE_SECONDS": 600})
    )
    async with running(engine):
        await wait_for(lambda: queue_empty(runtime), within=30)
    assert len(unheard) == 10
    await assert_mirrors_database(runtime, sandbox, OWNER)


async def _at_least(runtime: Runtime, sql: str, n: int) -> bool:
    return await _n(runtime, sql) >= n


async def _no_groups(engine: SyncEngine) -> bool:
    return not engine._groups


async def _has_groups(engine: SyncEngine) -> bool:
    return bool(engine._groups)


class CrashAfterAnswer(httpx.AsyncBaseTransport):
    """Forwards requests; after the first answer to `method`, the database "dies" before the
    worker can record the completion (what a SIGKILL at that moment leaves behind)."""

    def __init__(self, proxy: DatabaseProxy, method: str, *, batch: bool = False) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.proxy, self.method, self.batch = proxy, method, batch
        self.crashed = asyncio.Event()

    def _mine(self, request: httpx.Request) -> bool:
        path = request.url.path.rstrip("/")
        if self.batch:  # the batch endpoint: POST /lists/{id}
            return request.method == "POST" and path.rsplit("/", 2)[-2] == "lists"
        return request.method == self.method and "/members/" in path

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        mine = self._mine(request)
        if mine and not self.crashed.is_set():
            await response.aread()
            self.crashed.set()
            await self.proxy.stop()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize(
    ("before", "first_tags", "then_tags"),
    [
        # A new member created with tag a; the crash loses the record that a is ours.
        (None, ["a"], ["b"]),
        # An existing member (pushed [old]) gets a by the tag call, then the crash.
        (["old"], ["old", "a"], ["old"]),
    ],
)
async def test_tags_pushed_before_a_crash_stay_ours(
    runtime: Runtime,
    settings: Settings,
    sync_settings: Settings,
    sandbox: Sandbox,
    connection: dict[str, Any],
    api: httpx.AsyncClient,
    token_for: Callable[..., str],
    make_engine: Callable[..., SyncEngine],
    before: list[str] | None,
    first_tags: list[str],
    then_tags: list[str],
) -> None:
    """The provider applied our tags but the completion never happened; the contact then
    loses a tag. The resend must remove it: tag ownership survives the crash."""
    headers = {"Authorization": f"Bearer {token_for(OWNER)}"}
    body = {"email": "crash@example.com", "newsletter_opt_in": True}
    created = await api.post(
        "/api/contacts", json=body | {"tags": before or first_tags}, headers=headers
    )
    assert created.status_code == 201, created.text
    contact_id = created.json()["id"]
    if before is not None:
        await make_engine().run_until_idle(limit_seconds=30)
        r = await api.patch(
            f"/api/contacts/{contact_id}", json={"tags": first_tags}, headers=headers
        )
        assert r.status_code == 200
    assert settings.DATABASE_URL
    method = "PUT" if before is None else "POST"  # the create, or the tag call
    async with database_proxy(settings.DATABASE_URL) as proxy:
        db = create_engine(proxy.url_for(settings.DATABASE_URL), pool_size=2, pool_timeout=2)
        transport = CrashAfterAnswer(proxy, method)
        engine = SyncEngine(
            db,
            sync_settings.model_copy(update={"SYNC_LEASE_SECONDS": 6}),
            transport=transport,
        )
        try:
            async with running(engine):
                await asyncio.wait_for(transport.crashed.wait(), timeout=30)
                await wait_for(lambda: _no_groups(engine), within=30)
                member = (await sandbox.members())["crash@example.com"]
                assert {t["name"] for t in member["tags"]} >= set(first_tags)
                r = await api.patch(
                    f"/api/contacts/{contact_id}", json={"tags": then_tags}, headers=headers
                )
                assert r.status_code == 200
                await proxy.start()
                await wait_for(lambda: queue_empty(runtime), within=60)
        finally:
            await db.dispose()
    member = (await sandbox.members())["crash@example.com"]
    assert sorted(t["name"] for t in member["tags"]) == sorted(then_tags)


@pytest.mark.parametrize("then", ["opt_out", "delete"])
async def test_a_member_created_before_a_crash_follows_the_contact_after_it(
    runtime: Runtime,
    settings: Settings,
    sync_settings: Settings,
    sandbox: Sandbox,
    connection: dict[str, Any],
    api: httpx.AsyncClient,
    token_for: Callable[..., str],
    then: str,
) -> None:
    """The provider created the member (subscribed) but the completion never happened, so
    the mirror does not know it exists. The person then withdraws consent (or the contact is
    deleted) before the resend: the resend must unsubscribe (archive) them, not treat them as
    never pushed and leave them subscribed until a reconcile (promise 2)."""
    headers = {"Authorization": f"Bearer {token_for(OWNER)}"}
    body = {"email": "consent@example.com", "newsletter_opt_in": True, "tags": ["a"]}
    created = await api.post("/api/contacts", json=body, headers=headers)
    assert created.status_code == 201, created.text
    contact_id = created.json()["id"]
    assert settings.DATABASE_URL
    async with database_proxy(settings.DATABASE_URL) as proxy:
        db = create_engine(proxy.url_for(settings.DATABASE_URL), pool_size=2, pool_timeout=2)
        transport = CrashAfterAnswer(proxy, "PUT")
        engine = SyncEngine(
            db,
            sync_settings.model_copy(update={"SYNC_LEASE_SECONDS": 6}),
            transport=transport,
        )
        try:
            async with running(engine):
                await asyncio.wait_for(transport.crashed.wait(), timeout=30)
                await wait_for(lambda: _no_groups(engine), within=30)
                member = (await sandbox.members())["consent@example.com"]
                assert member["status"] == "subscribed"
                assert await fetch(runtime, "SELECT * FROM sync_state") == []
                if then == "opt_out":
                    r = await api.patch(
                        f"/api/contacts/{contact_id}",
                        json={"newsletter_opt_in": False},
                        headers=headers,
                    )
                    assert r.status_code == 200, r.text
                else:
                    r = await api.delete(f"/api/contacts/{contact_id}", headers=headers)
                    assert r.status_code == 204, r.text
                await proxy.start()
                await wait_for(lambda: queue_empty(runtime), within=60)
        finally:
            await db.dispose()
    member = (await sandbox.members())["consent@example.com"]
    assert member["status"] == ("unsubscribed" if then == "opt_out" else "archived")
    puts = [
        r
        for r in (await sandbox.http.get("/_control/requests")).json()["requests"]
        if r["method"] == "PUT" and "/members/" in r["path"]
    ]
    assert len(puts) == 1  # the resend never re-created (or re-subscribed) the person


async def test_a_batch_that_created_members_before_a_crash_is_followed_after_it(
    runtime: Runtime,
    settings: Settings,
    sync_settings: Settings,
    sandbox: Sandbox,
    connection: dict[str, Any],
    api: httpx.AsyncClient,
    token_for: Callable[..., str],
) -> None:
    """The same on the batch path: 60 members created by one batch call, the completion lost;
    five people withdraw consent before the resend, which unsubscribes exactly them."""
    await seed_contacts(runtime, connection["id"], 60)
    assert settings.DATABASE_URL
    headers = {"Authorization": f"Bearer {token_for(OWNER)}"}
    out = [f"c{i}@example.com" for i in range(1, 6)]
    async with database_proxy(settings.DATABASE_URL) as proxy:
        db = create_engine(proxy.url_for(settings.DATABASE_URL), pool_size=2, pool_timeout=2)
        transport = CrashAfterAnswer(proxy, "POST", batch=True)
        engine = SyncEngine(
            db,
            sync_settings.model_copy(update={"SYNC_LEASE_SECONDS": 6}),
            transport=transport,
        )
        try:
            async with running(engine):
                await asyncio.wait_for(transport.crashed.wait(), timeout=30)
                await wait_for(lambda: _no_groups(engine), within=30)
                members = await sandbox.members()
                assert {m["status"] for m in members.values()} == {"subscribed"}
                assert len(members) == 60
                assert await fetch(runtime, "SELECT * FROM sync_state") == []
                for email in out:
                    (row,) = await fetch(
                        runtime, "SELECT id FROM contacts WHERE email_key = :k", k=email
                    )
                    r = await api.patch(
                        f"/api/contacts/{row['id']}",
                        json={"newsletter_opt_in": False},
                        headers=headers,
                    )
                    assert r.status_code == 200, r.text
                await proxy.start()
                await wait_for(lambda: queue_empty(runtime), within=60)
        finally:
            await db.dispose()
    members = await sandbox.members()
    assert {k for k, m in members.items() if m["status"] == "unsubscribed"} == set(out)
    assert sum(1 for m in members.values() if m["status"] == "subscribed") == 55
    await assert_mirrors_database(runtime, sandbox, OWNER)


async def test_parked_rows_are_retried_by_themselves_on_a_slow_schedule(
    runtime: Runtime,
    sandbox: Sandbox,
    connection: dict[str, Any],
    make_engine: Callable[..., SyncEngine],
    api: httpx.AsyncClient,
    token_for: Callable[..., str],
) -> None:
    """Every call fails (fixed seed) until the rows park; the faults stop; with no operator,
    no contact change and no resume, the parked rows are re-armed and sent."""
    await seed_contacts(runtime, connection["id"], 30)
    await sandbox.configure(seed=11, fault_rates={"503": 1.0})
    engine = make_engine(
        SYNC_BATCH_THRESHOLD=100000,
        SYNC_MAX_ATTEMPTS=2,
        SYNC_PAUSE_AFTER_FAILURES=100000,  # a resume from `paused` would re-arm them too
        SYNC_PARKED_RETRY_SECONDS=2,
        SYNC_PARKED_RETRY_MAX_SECONDS=4,
    )
    parked = "SELECT count(*) AS n FROM sync_queue WHERE state = 'parked'"
    async with running(engine):
        await wait_for(lambda: _at_least(runtime, parked, 30), within=60)
        admin = {"Authorization": f"Bearer {token_for('ops', admin=True)}"}
        status = (await api.get("/api/admin/sync-status", headers=admin)).json()
        item = status["connections"][0]
        assert item["parked"] == 30
        assert item["next_parked_retry_at"] is not None
        assert item["parked_since"] is not None
        await sandbox.configure(fault_rates={"503": 0})
        await wait_for(lambda: queue_empty(runtime), within=60)
    await assert_mirrors_database(runtime, sandbox, OWNER)
    metrics = (await api.get("/metrics")).text
    assert "audience_sync_parked_rearmed_total" in metrics
    rearmed = [
        line
        for line in metrics.splitlines()
        if line.startswith("audience_sync_parked_rearmed_total")
    ]
    assert float(rearmed[0].split()[-1]) >= 30


async def test_parked_rows_that_persist_raise_the_calm_notice(
    runtime: Runtime,
    connection: dict[str, Any],
    api: httpx.AsyncClient,
    token_for: Callable[..., str],
) -> None:
    """Rows parked for over an hour (the bar: 99 % within an hour) show a calm notice."""
    headers = {"Authorization": f"Bearer {token_for(OWNER)}"}
    await seed_contacts(runtime, connection["id"], 3)
    body = (await api.get("/api/integrations/mailchimp", headers=headers)).json()
    assert body["notice"] is None
    await fetch(
        runtime,
        "UPDATE sync_queue SET state = 'parked', parked_at = now() - interval '2 hours',"
        " available_at = now() + interval '1 hour'",
    )
    body = (await api.get("/api/integrations/mailchimp", headers=headers)).json()
    assert body["status"] == "active"
    assert body["notice"] == PARKED_NOTICE
    admin = {"Authorization": f"Bearer {token_for('ops', admin=True)}"}
    status = (await api.get("/api/admin/sync-status", headers=admin)).json()
    assert status["connections"][0]["notice"] == PARKED_NOTICE


class CrashAfterAnswers(CrashAfterAnswer):
    """The database dies after the `n`-th answered PUT."""

    def __init__(self, proxy: DatabaseProxy, n: int) -> None:
        super().__init__(proxy, "PUT")
        self.left = n

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "PUT" and not self.crashed.is_set():
            self.left -= 1
            if self.left <= 0:
                await response.aread()
                self.crashed.set()
                await self.proxy.stop()
        return response


async def test_a_crash_mid_group_resends_only_its_unfinished_step(
    runtime: Runtime,
    settings: Settings,
    sync_settings: Settings,
    sandbox: Sandbox,
    connection: dict[str, Any],
) -> None:
    """One group of 200 single PUTs; the database dies after the 120th answer. The rows sent
    before the last step were completed already: the resend is a step, not the group."""
    await seed_contacts(runtime, connection["id"], 200)
    await sandbox.configure(latency_ms=20)
    assert settings.DATABASE_URL
    async with database_proxy(settings.DATABASE_URL) as proxy:
        db = create_engine(proxy.url_for(settings.DATABASE_URL), pool_size=4, pool_timeout=2)
        transport = CrashAfterAnswers(proxy, 120)
        engine = SyncEngine(
            db,
            sync_settings.model_copy(
                update={"SYNC_BATCH_THRESHOLD": 100000, "SYNC_CLAIM_SIZE": 200}
            ),
            transport=transport,
        )
        try:
            async with running(engine):
                await asyncio.wait_for(transport.crashed.wait(), timeout=60)
                await wait_for(lambda: _no_groups(engine), within=30)
                left = await _n(runtime, "SELECT count(*) AS n FROM sync_queue")
                assert left <= 200 - COMPLETE_STEP, f"{left} of 200 rows left to resend"
                await proxy.start()
                await wait_for(lambda: queue_empty(runtime), within=60)
        finally:
            await db.dispose()
    await assert_mirrors_database(runtime, sandbox, OWNER, exact_tags=True)


async def test_a_worker_without_pre_ping_resumes_after_the_database_cut_its_connections(
    runtime: Runtime,
    settings: Settings,
    sync_settings: Settings,
    sandbox: Sandbox,
    connection: dict[str, Any],
) -> None:
    """The worker's pool lends connections without a ping (app.sync.runner): after the
    database cut them all, a step fails on a dead one and the loop goes on, the changes of
    after the cut are sent."""
    assert settings.DATABASE_URL
    disconnects: list[bool] = []
    async with database_proxy(settings.DATABASE_URL) as proxy:
        db = create_engine(
            proxy.url_for(settings.DATABASE_URL), pool_size=2, pool_timeout=2, pre_ping=False
        )
        event.listen(
            db.sync_engine, "handle_error", lambda ctx: disconnects.append(ctx.is_disconnect)
        )
        try:
            async with running(SyncEngine(db, sync_settings)):
                await seed_contacts(runtime, connection["id"], 3, prefix="before")
                await wait_for(lambda: queue_empty(runtime), within=30)
                await proxy.stop()  # every pooled connection of the worker is cut
                await proxy.start()
                await seed_contacts(runtime, connection["id"], 3, prefix="after")
                await wait_for(lambda: queue_empty(runtime), within=60)
        finally:
            await db.dispose()
    # The cut reached the worker's pool: at least one step met a dead connection (fails if
    # the cut never touched it, and the test would prove nothing).
    assert any(disconnects), disconnects
    await assert_mirrors_database(runtime, sandbox, OWNER)
