"""SYNC_KINDS end to end: the service and the sandbox over real HTTP, Sync Now converging."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.config import ContactKind
from app.main import Runtime
from tests.conftest import fetch
from tests.connections.conftest import drain, run_reconcile
from tests.connections.test_reconcile import (
    WRITES,
    connect_api_key,
    contact,
    h,
    lose_webhooks,
    member,
    run_row,
    writes_for,
)
from tests.support.sync import Sandbox, wait_for

CLIENTS_AND_LEADS = frozenset({ContactKind.client, ContactKind.lead})


async def sync_now(svc: Any, runtime: Runtime) -> dict[str, Any]:
    """Press [Sync Now], let a worker with the service's settings run it and drain the queue."""
    r = await svc.http.post("/api/integrations/mailchimp/sync", headers=svc.auth())
    assert r.status_code == 202, r.text
    assert str(await run_reconcile(runtime, svc.settings)) == r.json()["run_id"]
    await drain(runtime, svc.settings)
    return await run_row(runtime, r.json()["run_id"])


async def statuses(sandbox: Sandbox) -> dict[str, str]:
    return {k: m["status"] for k, m in (await sandbox.members()).items()}


async def contacts(runtime: Runtime) -> dict[str, Any]:
    rows = await fetch(runtime, "SELECT email_key, newsletter_opt_in, version FROM contacts")
    return {r["email_key"]: r for r in rows}


async def test_dropping_a_kind_archives_what_we_pushed_and_adding_it_back_restores_it(
    serve: Callable[..., Any], sandbox: Sandbox, runtime: Runtime
) -> None:
    fast = {"SYNC_NOW_MIN_INTERVAL_SECONDS": 0}
    async with serve(**fast) as svc:
        await contact(svc, "client@example.com", kind="client", first_name="Cli")
        await contact(svc, "lead@example.com", kind="lead", first_name="Lee")
        await contact(svc, "plain@example.com", kind="contact", first_name="Plain")
        await contact(svc, "gone@example.com", kind="contact", first_name="Gone")
        # In the audience before we were connected: adopted by the first sync, so ours.
        await member(sandbox, "adopted@example.com", merge_fields={"FNAME": "Ad"})
        await contact(svc, "adopted@example.com", kind="contact", first_name="Ad")
        # Mailchimp's own member; the CRM gets a contact with its address later.
        await member(sandbox, "theirs@example.com", merge_fields={"FNAME": "Other"})
        await connect_api_key(svc)
        await run_reconcile(runtime, svc.settings)
        await drain(runtime, svc.settings)
    assert await statuses(sandbox) == {
        "client@example.com": "subscribed",
        "lead@example.com": "subscribed",
        "plain@example.com": "subscribed",
        "gone@example.com": "subscribed",
        "adopted@example.com": "subscribed",
        "theirs@example.com": "subscribed",
    }
    # The person unsubscribes while no webhook reaches us: only the reconcile will know.
    await lose_webhooks(sandbox)
    assert (await sandbox.act("unsubscribe", "gone@example.com")).status_code == 200
    before = await contacts(runtime)

    await sandbox.configure(record_bodies=True)
    async with serve(SYNC_KINDS=CLIENTS_AND_LEADS, **fast) as svc:
        # Created while contacts are not synced: never reaches Mailchimp.
        await contact(svc, "later@example.com", kind="contact", first_name="Later")
        # ...and one for Mailchimp's own member: never pushed by us, so never ours to remove.
        await contact(svc, "theirs@example.com", kind="contact", first_name="Other")
        await drain(runtime, svc.settings)
        await sandbox.clear_requests()
        run = await sync_now(svc, runtime)

    assert run["state"] == "done"
    assert run["counts"]["kind_removed"] == 2  # plain@, adopted@
    assert run["counts"]["kind_excluded"] == 1  # theirs@: not ours, left alone
    assert run["counts"]["unsubscribed_imported"] == 1  # gone@: the person's decision
    assert run["counts"]["local_only"] == 0  # later@ is not wanted there
    after = await statuses(sandbox)
    assert after["plain@example.com"] == "archived"
    assert after["adopted@example.com"] == "archived"
    assert after["gone@example.com"] in ("archived", "unsubscribed")  # never subscribed again
    assert after["theirs@example.com"] == "subscribed"  # Mailchimp's own member stays
    assert after["client@example.com"] == after["lead@example.com"] == "subscribed"
    assert "later@example.com" not in after
    # Removed as a local delete removes (DELETE = archive), never unsubscribed by us.
    assert await writes_for(sandbox, "plain@example.com") == [
        ("DELETE", f"/3.0/lists/{sandbox.list_id}/members/{h('plain@example.com')}")
    ]
    logged = [r for r in await sandbox.requests() if r["method"] in WRITES]
    assert logged
    for r in logged:
        assert "unsubscribed" not in (r.get("body") or ""), r
    assert await writes_for(sandbox, "client@example.com", "lead@example.com") == []
    assert await writes_for(sandbox, "theirs@example.com") == []
    # The CRM keeps the contacts and their consent; only gone@'s own unsubscribe came back.
    now = await contacts(runtime)
    assert now["plain@example.com"] == before["plain@example.com"]
    assert now["adopted@example.com"] == before["adopted@example.com"]
    assert now["gone@example.com"]["newsletter_opt_in"] is False
    mirror = {
        m["email_key"]: m["remote_status"]
        for m in await fetch(runtime, "SELECT email_key, remote_status FROM sync_state")
    }
    assert mirror["plain@example.com"] == "archived"

    # The person brings an archived member back by themselves while no webhook reaches us
    # (the last one registered points at a service that is gone): the member is theirs now,
    # and Sync Now leaves it alone.
    assert (await sandbox.act("signup", "plain@example.com")).status_code == 200
    async with serve(SYNC_KINDS=CLIENTS_AND_LEADS, **fast) as svc:
        await sandbox.clear_requests()
        again = await sync_now(svc, runtime)
        # ...and the same through the webhook, which this Sync Now registered to us.
        assert (await sandbox.act("signup", "adopted@example.com")).status_code == 200

        async def learnt() -> bool:
            rows = await fetch(
                runtime,
                "SELECT remote_status FROM sync_state WHERE email_key = 'adopted@example.com'",
            )
            return not rows or rows[0]["remote_status"] == "subscribed"

        await wait_for(learnt, within=10)
        await drain(runtime, svc.settings)
    assert again["counts"]["kind_removed"] == 0
    assert again["counts"]["kind_excluded"] == 2  # theirs@, and plain@ now
    # (Each serve() listens on a new port, so the webhook is re-registered; members are not
    # written.)
    member_writes = [
        r for r in await sandbox.requests() if r["method"] in WRITES and "/members" in r["path"]
    ]
    assert member_writes == []
    now = await statuses(sandbox)
    assert now["plain@example.com"] == now["adopted@example.com"] == "subscribed"

    # Every kind again: the archived members come back, the new contact is created; the
    # person who unsubscribed stays out.
    async with serve(**fast) as svc:
        await sync_now(svc, runtime)
    back = await statuses(sandbox)
    assert back["plain@example.com"] == "subscribed"
    assert back["adopted@example.com"] == "subscribed"
    assert back["later@example.com"] == "subscribed"
    assert back["gone@example.com"] != "subscribed"
    assert back["theirs@example.com"] == "subscribed"
