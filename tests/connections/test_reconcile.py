"""Sync Now / the initial sync: reconcile runs against an audience that already has members."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import time
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.main import Runtime
from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID
from app.sync.engine import SyncEngine
from app.sync.reconcile import Reconciler
from tests.conftest import fetch
from tests.connections.conftest import OTHER, Service, drain, run_reconcile
from tests.support.sync import Sandbox, assert_mirrors_database, wait_for

LIST = DEFAULT_LIST_ID
WRITES = ("PUT", "PATCH", "POST", "DELETE")


def h(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode()).hexdigest()


async def member(sandbox: Sandbox, email: str, status: str = "subscribed", **body: Any) -> None:
    """A member someone added in Mailchimp before the service was connected."""
    payload = {"email_address": email, "status_if_new": status, **body}
    r = await sandbox.api("PUT", f"/lists/{LIST}/members/{h(email)}", json=payload)
    assert r.status_code == 200, r.text


async def contact(service: Service, email: str, **body: Any) -> dict[str, Any]:
    body.setdefault("newsletter_opt_in", True)
    r = await service.http.post(
        "/api/contacts", json={"email": email, **body}, headers=service.auth()
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def connect_api_key(service: Service) -> None:
    r = await service.http.post(
        "/api/integrations/mailchimp/api-key",
        json={"api_key": DEFAULT_API_KEY, "audience_id": LIST},
        headers=service.auth(),
    )
    assert r.status_code == 200, r.text


async def run_row(runtime: Runtime, run_id: uuid.UUID | str) -> dict[str, Any]:
    (row,) = await fetch(runtime, "SELECT * FROM sync_runs WHERE id = :id", id=run_id)
    return row


async def writes_for(sandbox: Sandbox, *emails: str) -> list[tuple[str, str]]:
    hashes = {h(e) for e in emails}
    return [
        (r["method"], r["path"])
        for r in await sandbox.requests()
        if r["method"] in WRITES and any(x in r["path"] for x in hashes)
    ]


async def lose_webhooks(sandbox: Sandbox) -> None:
    """Remove the audience's webhooks: what people do next reaches us only by reconcile."""
    hooks = (await sandbox.api("GET", f"/lists/{LIST}/webhooks")).json()["webhooks"]
    for hook in hooks:
        r = await sandbox.api("DELETE", f"/lists/{LIST}/webhooks/{hook['id']}")
        assert r.status_code == 204


async def snapshot(runtime: Runtime) -> dict[str, Any]:
    return {
        "contacts": await fetch(runtime, "SELECT * FROM contacts ORDER BY email_key"),
        "changes": await fetch(runtime, "SELECT * FROM contact_changes ORDER BY id"),
        "mirror": await fetch(runtime, "SELECT * FROM sync_state ORDER BY email_key"),
        "queue": await fetch(runtime, "SELECT * FROM sync_queue ORDER BY email_key"),
    }


@pytest.fixture
async def audience(service: Service, sandbox: Sandbox) -> None:
    """Mailchimp already holds members; the CRM holds contacts; then Mailchimp is connected."""
    await member(
        sandbox,
        "same@example.com",
        merge_fields={"FNAME": "Sam", "LNAME": "Same"},
        tags=["vip", "mailchimp-only-tag"],
    )
    await member(sandbox, "differ@example.com", merge_fields={"FNAME": "Old", "LNAME": "Name"})
    await member(sandbox, "mconly@example.com", merge_fields={"FNAME": "Zed"}, tags=["theirs"])
    await member(sandbox, "gone@example.com", status="unsubscribed", merge_fields={"FNAME": "Gon"})
    await member(sandbox, "bounce@example.com", merge_fields={"FNAME": "Bo"})
    assert (await sandbox.act("clean", "bounce@example.com")).status_code == 200

    await contact(service, "same@example.com", first_name="Sam", last_name="Same", tags=["vip"])
    await contact(service, "differ@example.com", first_name="New", last_name="Name")
    await contact(service, "gone@example.com", first_name="Gon")
    await contact(service, "bounce@example.com", first_name="Bo")
    await contact(service, "new@example.com", first_name="Fresh")
    await contact(service, "quiet@example.com", first_name="Q", newsletter_opt_in=False)
    await connect_api_key(service)


@pytest.mark.usefixtures("audience")
class TestSyncNow:
    async def test_first_sync_adopts_matches_queues_differences_imports_opt_outs(
        self, service: Service, sandbox: Sandbox, runtime: Runtime
    ) -> None:
        (initial,) = await fetch(runtime, "SELECT id, kind, state FROM sync_runs")
        assert (initial["kind"], initial["state"]) == ("initial", "queued")
        await sandbox.clear_requests()

        assert await run_reconcile(runtime, service.settings) == initial["id"]

        run = await run_row(runtime, initial["id"])
        assert run["state"] == "done"
        counts = run["counts"]
        assert counts["remote_total"] == 5
        assert counts["matched"] == 1  # same@
        assert counts["to_push"] == 2  # differ@ (fields), new@ (absent)
        assert counts["local_only"] == 1
        assert counts["remote_only"] == 1  # mconly@
        assert counts["unsubscribed_imported"] == 1
        assert counts["cleaned_imported"] == 1
        listed = [r for r in await sandbox.requests() if "/members" in r["path"]]
        assert [r["method"] for r in listed] == ["GET"]
        # Bulk priority: live changes keep going first.
        queue = await fetch(runtime, "SELECT email_key, priority, seq FROM sync_queue")
        assert {q["email_key"] for q in queue} == {"differ@example.com", "new@example.com"}
        assert {(q["priority"], q["seq"]) for q in queue} == {(1, 1)}
        mirror = {
            m["email_key"]: m
            for m in await fetch(runtime, "SELECT * FROM sync_state ORDER BY email_key")
        }
        assert mirror["same@example.com"]["pushed_digest"] is not None
        assert mirror["same@example.com"]["pushed_tags"] == ["vip"]
        assert mirror["same@example.com"]["remote_status"] == "subscribed"
        assert mirror["gone@example.com"]["remote_status"] == "unsubscribed"
        assert mirror["bounce@example.com"]["remote_status"] == "cleaned"
        assert "mconly@example.com" not in mirror
        # The person's decisions at Mailchimp are now the CRM's consent, audited.
        people = {
            c["email_key"]: c
            for c in await fetch(
                runtime,
                "SELECT email_key, newsletter_opt_in, newsletter_unsubscribed_at, email_status"
                " FROM contacts",
            )
        }
        assert people["gone@example.com"]["newsletter_opt_in"] is False
        assert people["gone@example.com"]["newsletter_unsubscribed_at"] is not None
        assert people["bounce@example.com"]["newsletter_opt_in"] is False
        assert people["bounce@example.com"]["email_status"] == "bounced"
        assert people["same@example.com"]["newsletter_opt_in"] is True
        audit = await fetch(
            runtime, "SELECT source, fields FROM contact_changes WHERE source = 'reconcile'"
        )
        assert len(audit) == 2
        assert all(a["fields"]["after"]["newsletter_opt_in"] is False for a in audit)
        (conn,) = await fetch(runtime, "SELECT last_full_sync_at, webhook_id FROM connections")
        assert conn["last_full_sync_at"] is not None
        assert conn["webhook_id"] is not None  # every reconcile ensures the webhook

        await sandbox.clear_requests()
        await drain(runtime, service.settings)

        members = await sandbox.members()
        assert members["differ@example.com"]["merge_fields"]["FNAME"] == "New"  # the CRM wins
        assert members["new@example.com"]["status"] == "subscribed"
        assert members["gone@example.com"]["status"] == "unsubscribed"  # stays unsubscribed
        assert members["bounce@example.com"]["status"] == "cleaned"
        assert members["mconly@example.com"]["merge_fields"]["FNAME"] == "Zed"
        assert {t["name"] for t in members["same@example.com"]["tags"]} == {
            "vip",
            "mailchimp-only-tag",
        }
        # Matching, Mailchimp-only and opted-out members cost no write call.
        untouched = ("same@example.com", "mconly@example.com", "gone@example.com")
        assert await writes_for(sandbox, *untouched, "bounce@example.com") == []
        assert await writes_for(sandbox, "differ@example.com")

    async def test_sync_now_once_an_hour_and_in_sync_costs_no_write(
        self, service: Service, sandbox: Sandbox, runtime: Runtime
    ) -> None:
        await run_reconcile(runtime, service.settings)
        await drain(runtime, service.settings)

        first = await service.http.post("/api/integrations/mailchimp/sync", headers=service.auth())
        assert first.status_code == 202, first.text
        run_id = first.json()["run_id"]
        # Asked again while it waits: the same run, not a second one.
        same = await service.http.post("/api/integrations/mailchimp/sync", headers=service.auth())
        assert same.status_code == 202
        assert same.json()["run_id"] == run_id

        await sandbox.clear_requests()
        assert str(await run_reconcile(runtime, service.settings)) == run_id
        seen = await service.http.get(
            f"/api/integrations/mailchimp/sync/{run_id}", headers=service.auth()
        )
        assert seen.status_code == 200
        body = seen.json()
        assert body["state"] == "done"
        assert body["counts"]["matched"] == 3
        assert body["counts"]["to_push"] == 0
        assert body["counts"]["remote_only"] == 1
        assert body["progress"]["pages_done"] == 1
        assert [r for r in await sandbox.requests() if r["method"] in WRITES] == []

        again = await service.http.post("/api/integrations/mailchimp/sync", headers=service.auth())
        assert again.status_code == 429
        assert again.headers["content-type"].startswith("application/problem+json")
        assert 3500 < int(again.headers["retry-after"]) <= 3600

        other = await service.http.get(
            f"/api/integrations/mailchimp/sync/{run_id}", headers=service.auth(OTHER)
        )
        assert other.status_code == 404

    async def test_dry_run_counts_and_changes_nothing(
        self, service: Service, sandbox: Sandbox, runtime: Runtime
    ) -> None:
        await run_reconcile(runtime, service.settings)
        await drain(runtime, service.settings)
        await lose_webhooks(sandbox)
        # People and colleagues act in Mailchimp meanwhile.
        assert (await sandbox.act("unsubscribe", "same@example.com")).status_code == 200
        edited = await sandbox.api(
            "PATCH",
            f"/lists/{LIST}/members/{h('differ@example.com')}",
            json={"merge_fields": {"FNAME": "Edited"}},
        )
        assert edited.status_code == 200
        before = await snapshot(runtime)
        await sandbox.clear_requests()

        r = await service.http.post(
            "/api/integrations/mailchimp/sync?dry_run=true", headers=service.auth()
        )
        assert r.status_code == 202
        assert r.json()["dry_run"] is True
        await run_reconcile(runtime, service.settings)

        run = (
            await service.http.get(
                f"/api/integrations/mailchimp/sync/{r.json()['run_id']}", headers=service.auth()
            )
        ).json()
        assert run["state"] == "done"
        assert run["dry_run"] is True
        assert run["counts"]["unsubscribed_imported"] == 1
        assert run["counts"]["to_push"] == 1
        assert await snapshot(runtime) == before
        assert [r for r in await sandbox.requests() if r["method"] != "GET"] == []
        # A dry run is a preview: the real run is still allowed right after it.
        real = await service.http.post("/api/integrations/mailchimp/sync", headers=service.auth())
        assert real.status_code == 202


def dead_worker() -> str:
    """The identity of a worker process on this host that has exited (as after kill -9)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:{int(time.time())}"


class Crash(BaseException):
    """Stands for the process dying: nothing below catches it, nothing is cleaned up."""


class TestCrash:
    async def test_a_crashed_run_resumes_where_it_stopped_without_duplicate_work(
        self, service: Service, sandbox: Sandbox, runtime: Runtime
    ) -> None:
        for i in range(5):
            await member(sandbox, f"p{i}@example.com", merge_fields={"FNAME": f"P{i}"})
            name = f"P{i}" if i < 3 else f"Changed{i}"
            await contact(service, f"p{i}@example.com", first_name=name)
        await connect_api_key(service)
        await sandbox.clear_requests()

        async def crash_after_first_page(run_id: uuid.UUID, pages_done: int) -> None:
            if pages_done == 1:
                raise Crash

        with pytest.raises(Crash):
            await run_reconcile(
                runtime,
                service.settings,
                worker_id=dead_worker(),
                page_size=2,
                on_page=crash_after_first_page,
            )
        (stuck,) = await fetch(runtime, "SELECT * FROM sync_runs")
        assert stuck["state"] == "running"
        assert stuck["progress"]["pages_done"] == 1
        assert await fetch(runtime, "SELECT * FROM sync_queue") == []

        # Another worker takes the run over at once (its holder is gone) and resumes it.
        staged_pages: list[int] = []

        async def record(run_id: uuid.UUID, pages_done: int) -> None:
            staged_pages.append(pages_done)

        await run_reconcile(runtime, service.settings, page_size=2, on_page=record)
        assert staged_pages == [2, 3]  # page 1 (pages_done 0 → 1) was not staged again

        run = await run_row(runtime, stuck["id"])
        assert run["state"] == "done"
        assert run["attempts"] == 2
        assert run["counts"]["remote_total"] == 5
        assert run["counts"]["matched"] == 3
        assert run["counts"]["to_push"] == 2
        queue = await fetch(runtime, "SELECT email_key, seq FROM sync_queue ORDER BY email_key")
        assert queue == [
            {"email_key": "p3@example.com", "seq": 1},
            {"email_key": "p4@example.com", "seq": 1},
        ]
        assert await fetch(runtime, "SELECT * FROM reconcile_members") == []


class TestWorkerWiring:
    async def test_a_running_worker_executes_the_initial_run_and_converges(
        self, service: Service, sandbox: Sandbox, runtime: Runtime
    ) -> None:
        await member(sandbox, "kept@example.com", merge_fields={"FNAME": "Kept"})
        await contact(service, "kept@example.com", first_name="Kept")
        await contact(service, "added@example.com", first_name="Added", tags=["a"])
        await sandbox.clear_requests()
        await connect_api_key(service)
        (initial,) = await fetch(runtime, "SELECT id FROM sync_runs")

        engine = SyncEngine(runtime.engine, service.settings)
        engine.add_periodic(0.05, Reconciler(service.settings))
        task = asyncio.create_task(engine.run(grace_seconds=5))

        async def converged() -> bool:
            run = await run_row(runtime, initial["id"])
            queued = await fetch(runtime, "SELECT count(*) AS n FROM sync_queue")
            return bool(run["state"] == "done" and queued[0]["n"] == 0)

        try:
            await wait_for(converged, within=30)
        finally:
            engine.stop()
            await task
            await engine.aclose()
        await assert_mirrors_database(runtime, sandbox, "owner-a")
        assert await writes_for(sandbox, "kept@example.com") == []


class TestWebhookRepair:
    async def test_a_webhook_removed_at_mailchimp_comes_back_with_the_next_reconcile(
        self, service: Service, sandbox: Sandbox, runtime: Runtime
    ) -> None:
        await connect_api_key(service)
        await run_reconcile(runtime, service.settings)
        first = (await sandbox.api("GET", f"/lists/{LIST}/webhooks")).json()["webhooks"]
        assert len(first) == 1
        await lose_webhooks(sandbox)
        done = {"kind": "sync_now", "outcome": "done"}
        before = REGISTRY.get_sample_value("audience_sync_reconcile_runs_total", done) or 0
        r = await service.http.post("/api/integrations/mailchimp/sync", headers=service.auth())
        assert r.status_code == 202
        await run_reconcile(runtime, service.settings)
        assert REGISTRY.get_sample_value("audience_sync_reconcile_runs_total", done) == before + 1
        hooks = (await sandbox.api("GET", f"/lists/{LIST}/webhooks")).json()["webhooks"]
        assert len(hooks) == 1
        assert hooks[0]["url"] == first[0]["url"]
        assert hooks[0]["sources"] == {"user": True, "admin": True, "api": False}
        # ...and it works: a person's unsubscribe reaches the CRM again.
        await contact(service, "back@example.com", first_name="B")
        await drain(runtime, service.settings)
        assert (await sandbox.act("unsubscribe", "back@example.com")).status_code == 200

        async def off() -> bool:
            rows = await fetch(
                runtime,
                "SELECT newsletter_opt_in FROM contacts WHERE email_key = 'back@example.com'",
            )
            return rows[0]["newsletter_opt_in"] is False

        await wait_for(off, within=10)
