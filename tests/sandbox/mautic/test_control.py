"""The control API, the test-payload button, and the sandbox mounted under a prefix."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount

from app.sandbox.mautic import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, create_app
from tests.sandbox.mautic.conftest import Receiver, Sandbox, make_hook, new_contact
from tests.support.servers import run_server


async def test_reset_restores_defaults_and_config_validates(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    await new_contact(api, email="r@x.com")
    bad = await sandbox.http.patch("/_control/config", json={"queue_mode": "sometimes"})
    assert bad.status_code == 400
    unknown = await sandbox.http.patch("/_control/config", json={"nope": 1})
    assert unknown.status_code == 400
    await sandbox.configure(api_enabled=False)
    assert (await sandbox.http.post("/_control/reset")).status_code == 200
    config = (await sandbox.http.get("/_control/config")).json()
    assert config["api_enabled"] is True
    assert (await sandbox.http.get("/_control/contacts")).json()["total"] == 0
    token = await sandbox.token()  # the default client survives a reset
    assert token


async def test_clients_expire_and_request_log(sandbox: Sandbox) -> None:
    created = await sandbox.http.post(
        "/_control/clients", json={"name": "x", "redirect_uris": ["https://app/cb"], "admin": False}
    )
    assert created.status_code == 201
    client = created.json()
    assert client["client_id"].startswith("3_")
    assert "client_credentials" not in client["grant_types"]
    token = await sandbox.token()
    headers = {"Authorization": f"Bearer {token}"}
    assert (await sandbox.http.get("/api/contacts", headers=headers)).status_code == 200
    await sandbox.http.post("/_control/tokens/expire")
    assert (await sandbox.http.get("/api/contacts", headers=headers)).status_code == 401
    log = (await sandbox.http.get("/_control/requests")).json()["requests"]
    assert [(e["method"], e["path"], e["status"]) for e in log][-2:] == [
        ("GET", "/api/contacts", 200),
        ("GET", "/api/contacts", 401),
    ]


async def test_actions_need_a_known_contact_and_signup_creates_one(sandbox: Sandbox) -> None:
    assert (await sandbox.act("unsubscribe", "nobody@x.com")).status_code == 404
    assert (await sandbox.act("dance", "nobody@x.com")).status_code == 404
    signup = await sandbox.act("signup", "lead@x.com", fields={"firstname": "Lead"})
    assert signup.status_code == 200
    assert signup.json()["fields"]["all"]["firstname"] == "Lead"
    changed = await sandbox.act("change-email", "lead@x.com", new_email="lead2@x.com")
    assert changed.json()["fields"]["all"]["email"] == "lead2@x.com"
    unsub = await sandbox.act("complaint", "lead2@x.com")
    assert unsub.json()["doNotContact"][0]["reason"] == 1
    back = await sandbox.act("resubscribe", "lead2@x.com")
    assert back.json()["doNotContact"] == []


async def test_send_test_payload_has_a_top_level_timestamp(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    hook = await make_hook(api, receiver.url, ["mautic.lead_post_delete"])
    response = await sandbox.http.post(f"/_control/webhooks/{hook['id']}/test")
    assert response.json() == {"status": 200}
    body = json.loads(receiver.deliveries[0]["body"])
    assert set(body) == {"mautic.lead_post_delete", "timestamp"}


async def test_mounted_under_a_prefix_urls_and_the_api_switch_still_work() -> None:
    sandbox = create_app()
    outer = Starlette(routes=[Mount("/_sandbox/mautic", app=sandbox)])
    async with (
        run_server(outer) as url,
        httpx.AsyncClient(base_url=f"{url}/_sandbox/mautic") as http,
    ):
        token = await http.post(
            "/oauth/v2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": DEFAULT_CLIENT_ID,
                "client_secret": DEFAULT_CLIENT_SECRET,
            },
        )
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        created = await http.post("/api/contacts/new", json={"email": "m@x.com"}, headers=headers)
        assert created.status_code == 201
        assert created.headers["location"] == f"{url}/_sandbox/mautic/api/contacts/1"
        await http.patch("/_control/config", json={"api_enabled": False})
        assert (await http.get("/api/contacts", headers=headers)).status_code == 403


async def test_the_cli_serves_the_sandbox_alone() -> None:
    """`audience-sync sandbox mautic --port P`, as a developer runs it."""
    import asyncio
    import sys
    from pathlib import Path

    from tests.support.servers import free_port

    port = free_port()
    exe = str(Path(sys.executable).parent / "audience-sync")
    proc = await asyncio.create_subprocess_exec(
        exe,
        "sandbox",
        "mautic",
        "--port",
        str(port),
        "--basic-auth",
        "--latency-ms",
        "1",
        "--fault-500",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(200):
                try:
                    response = await http.get("/api/contacts", auth=("admin", "mautic"))
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the sandbox did not start")
            assert response.status_code == 200
            assert response.json() == {"total": "0", "contacts": {}}
    finally:
        proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert b"Mautic sandbox on" in out
    assert b"latency 1 ms" in out


async def test_state_file_keeps_the_instance_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "sandbox-mautic.json"
    first = create_app(state_file=path)
    async with run_server(first) as url, httpx.AsyncClient(base_url=url) as http:
        token = (
            await http.post(
                "/oauth/v2/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": DEFAULT_CLIENT_ID,
                    "client_secret": DEFAULT_CLIENT_SECRET,
                },
            )
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        contact = (
            await http.post(
                "/api/contacts/new", json={"email": "keep@x.com", "tags": ["t"]}, headers=headers
            )
        ).json()["contact"]
        segment = (await http.post("/api/segments/new", json={"name": "S"}, headers=headers)).json()
        await http.post(
            f"/api/segments/{segment['list']['id']}/contact/{contact['id']}/add", headers=headers
        )
        await http.post(f"/api/contacts/{contact['id']}/dnc/email/add", headers=headers)
    assert path.exists()
    second = create_app(state_file=path)
    async with run_server(second) as url, httpx.AsyncClient(base_url=url) as http:
        headers = {"Authorization": f"Bearer {token}"}  # the cached token still works
        got = (await http.get(f"/api/contacts/{contact['id']}", headers=headers)).json()["contact"]
        assert got["doNotContact"][0]["reason"] == 3
        assert [t["tag"] for t in got["tags"]] == ["t"]
        found = (
            await http.get("/api/contacts", params={"search": "segment:s"}, headers=headers)
        ).json()
        assert list(found["contacts"]) == [str(contact["id"])]
        again = await http.post("/api/contacts/new", json={"email": "KEEP@x.com"}, headers=headers)
        assert again.status_code == 200  # the email index was rebuilt
        new = await http.post("/api/contacts/new", json={"email": "n@x.com"}, headers=headers)
        assert new.json()["contact"]["id"] == contact["id"] + 1


async def test_an_unreadable_state_file_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"version": 99}')
    app = create_app(state_file=path)
    assert app.sandbox.instance.contacts == {}
