"""`make run` on another port, on the same `.data/`: the demo connections to the built-in
sandboxes follow the address the service is served at, and so do their webhooks; a connection
to anything else never moves."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from app.auth.tokens import issue_token
from app.config import Environment, Settings
from app.connections.crypto import decrypt_credentials
from app.connections.service import ensure_configured_connection
from app.db import session_scope
from app.main import Runtime, create_app, start_runtime
from app.sandbox.activecampaign import DEFAULT_API_KEY as AC_KEY
from app.sandbox.activecampaign import DEFAULT_LIST_ID as AC_LIST
from tests.conftest import fetch, make_settings
from tests.support.servers import free_port, run_server
from tests.support.sync import wait_for

PROVIDERS = ("activecampaign", "constantcontact", "mailchimp", "mautic")


def dev(database_url: str, data: Path, port: int, **overrides: Any) -> Settings:
    """`make run`'s settings: development, every provider on its built-in sandbox."""
    return make_settings(
        database_url,
        ENVIRONMENT=Environment.development,
        PORT=port,
        DATA_DIR=data,
        **overrides,
    )


async def demo_rows(runtime: Runtime) -> dict[str, dict[str, Any]]:
    rows = await fetch(runtime, "SELECT * FROM connections WHERE owner_id = 'demo'")
    return {r["provider"]: r for r in rows}


async def test_a_restart_on_another_port_re_aims_only_the_built_in_sandbox_connections(
    database_url: str, tmp_path: Path, runtime: Runtime
) -> None:
    first = dev(database_url, tmp_path, 8770)
    async with session_scope(runtime.sessionmaker) as session:
        assert await ensure_configured_connection(first, session) == []
    before = await demo_rows(runtime)
    assert sorted(before) == list(PROVIDERS)
    assert all(":8770/_sandbox/" in r["api_endpoint"] for r in before.values())
    # Two of them are not our sandbox any more: a real Mailchimp data center, and a Mautic
    # instance that happens to run on this machine.
    await fetch(
        runtime,
        "UPDATE connections SET api_endpoint = CASE provider"
        " WHEN 'mailchimp' THEN 'https://us1.api.mailchimp.com/3.0'"
        " ELSE 'http://127.0.0.1:8770/mautic' END"
        " WHERE provider IN ('mailchimp', 'mautic')",
    )
    await fetch(
        runtime,
        "UPDATE connections SET cooldown_until = now() + interval '1 hour',"
        " consecutive_failures = 7 WHERE provider = 'activecampaign'",
    )

    second = first.model_copy(update={"PORT": 8771})
    async with session_scope(runtime.sessionmaker) as session:
        moved = await ensure_configured_connection(second, session)
    after = await demo_rows(runtime)
    assert sorted(moved) == sorted(after[p]["id"] for p in ("activecampaign", "constantcontact"))
    ac, cc = after["activecampaign"], after["constantcontact"]
    assert ac["api_endpoint"] == "http://127.0.0.1:8771/_sandbox/activecampaign"
    assert cc["api_endpoint"] == "http://127.0.0.1:8771/_sandbox/constantcontact/v3"
    # The account is the same one, at its new address (ActiveCampaign's limits are keyed by
    # the host): what the old address taught (its failures, its cooling) is forgotten.
    assert ac["account_key"] != before["activecampaign"]["account_key"]
    assert ac["cooldown_until"] is None and ac["consecutive_failures"] == 0
    assert ac["webhook_token"] == before["activecampaign"]["webhook_token"]
    assert decrypt_credentials(second, ac["credentials"]) == decrypt_credentials(
        first, before["activecampaign"]["credentials"]
    )
    assert after["mailchimp"]["api_endpoint"] == "https://us1.api.mailchimp.com/3.0"
    assert after["mautic"]["api_endpoint"] == "http://127.0.0.1:8770/mautic"

    # Run again on the same port: nothing to move.
    async with session_scope(runtime.sessionmaker) as session:
        assert await ensure_configured_connection(second, session) == []


async def test_mautics_credentials_follow_its_address_and_keep_the_webhook_secret(
    database_url: str, tmp_path: Path, runtime: Runtime
) -> None:
    first = dev(database_url, tmp_path, 8770)
    async with session_scope(runtime.sessionmaker) as session:
        await ensure_configured_connection(first, session)
    old = (await demo_rows(runtime))["mautic"]
    second = first.model_copy(update={"HOST": "0.0.0.0", "PORT": 8771})
    async with session_scope(runtime.sessionmaker) as session:
        await ensure_configured_connection(second, session)
    new = (await demo_rows(runtime))["mautic"]
    assert new["api_endpoint"] == "http://127.0.0.1:8771/_sandbox/mautic"
    before = decrypt_credentials(first, old["credentials"])
    creds = decrypt_credentials(second, new["credentials"])
    assert creds["base_url"] == "http://127.0.0.1:8771/_sandbox/mautic"
    assert {k: v for k, v in creds.items() if k != "base_url"} == {
        k: v for k, v in before.items() if k != "base_url"
    }


@contextlib.asynccontextmanager
async def make_run(settings: Settings) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    """`make run` on `settings.PORT`: its own runtime, the worker in process, over TCP."""
    rt = await start_runtime(settings, migrate=False)
    try:
        app = create_app(settings, runtime=rt)
        async with (
            run_server(app, port=settings.PORT) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            yield rt, http
    finally:
        await rt.engine.dispose()


async def webhook_ids(runtime: Runtime) -> dict[str, str | None]:
    rows = await fetch(
        runtime, "SELECT provider, webhook_id FROM connections WHERE owner_id = 'demo'"
    )
    return {r["provider"]: r["webhook_id"] for r in rows if r["provider"] != "constantcontact"}


async def test_after_a_restart_on_another_port_contacts_go_out_and_webhooks_come_back(
    database_url: str, tmp_path: Path, runtime: Runtime
) -> None:
    fast = {"WORKER_IN_PROCESS": True, "SYNC_POLL_INTERVAL_SECONDS": 0.2}
    first = dev(database_url, tmp_path, free_port(), **fast)
    async with make_run(first):

        async def registered() -> bool:
            ids = await webhook_ids(runtime)
            return len(ids) == 3 and all(ids.values())

        await wait_for(registered, within=60, every=0.2)
    old = await webhook_ids(runtime)

    second = first.model_copy(update={"PORT": free_port()})
    async with make_run(second) as (_, http):

        async def re_registered() -> bool:
            ids = await webhook_ids(runtime)
            return all(ids[p] and ids[p] != old[p] for p in ids)

        await wait_for(re_registered, within=60, every=0.2)
        ac = {"Api-Token": AC_KEY}
        hooks = (await http.get("/_sandbox/activecampaign/api/3/webhooks", headers=ac)).json()
        urls = [h["url"] for h in hooks["webhooks"]]
        assert urls and all(u.startswith(f"{second.public_base_url}/api/") for u in urls), urls

        auth = {"Authorization": f"Bearer {issue_token(second, 'demo')}"}
        r = await http.post(
            "/api/contacts",
            json={"email": "ada@example.com", "newsletter_opt_in": True},
            headers=auth,
        )
        assert r.status_code == 201, r.text
        contact = r.json()["id"]

        async def at_activecampaign() -> bool:
            people = await http.get(f"/_sandbox/activecampaign/_control/lists/{AC_LIST}/contacts")
            return any(p["email"] == "ada@example.com" for p in people.json()["contacts"])

        await wait_for(at_activecampaign, within=30, every=0.1)
        # The person unsubscribes at the sandbox: its webhook reaches this run.
        r = await http.post(
            f"/_sandbox/activecampaign/_control/lists/{AC_LIST}/actions/unsubscribe",
            json={"email": "ada@example.com"},
        )
        assert r.status_code == 200, r.text

        async def opted_out() -> bool:
            got = await http.get(f"/api/contacts/{contact}", headers=auth)
            return got.json()["newsletter_opt_in"] is False

        await wait_for(opted_out, within=30, every=0.1)
