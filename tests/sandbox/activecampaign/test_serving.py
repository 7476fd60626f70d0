"""`serve` mounts the sandbox at /_sandbox/activecampaign; the CLI serves it alone; its
snapshot survives a restart."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
from fastapi import FastAPI

from app.sandbox.activecampaign import DEFAULT_API_KEY, DEFAULT_LIST_ID, create_app
from app.sandbox.kit import unmount
from app.wiring import mount
from tests.conftest import make_settings
from tests.support.servers import free_port


async def test_serve_mounts_every_sandbox_with_activecampaign() -> None:
    settings = make_settings("postgresql://unused@127.0.0.1:1/unused")
    assert settings.is_sandbox
    service = FastAPI()
    mount(service, settings)
    assert {"mailchimp", "activecampaign"} <= set(service.state.sandbox_apps)
    root = "http://svc.test/_sandbox/activecampaign"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service)) as client:
        me = await client.get(f"{root}/api/3/users/me", headers={"Api-Token": DEFAULT_API_KEY})
        assert me.status_code == 200
        made = await client.post(
            f"{root}/api/3/contact/sync",
            json={"contact": {"email": "m@example.com"}},
            headers={"Api-Token": DEFAULT_API_KEY},
        )
        assert made.json()["contact"]["links"]["notes"].startswith(f"{root}/api/3/contacts/")
        accounts = (await client.get(f"{root}/_control/accounts")).json()["accounts"]
        assert accounts[0]["api_url"] == root


async def test_cli_serves_it_alone() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "sandbox",
        "activecampaign",
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(300):
                try:
                    me = await client.get("/api/3/users/me", headers={"Api-Token": DEFAULT_API_KEY})
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            else:  # pragma: no cover - the failure message
                raise AssertionError("the sandbox did not start")
        assert me.status_code == 200
    finally:
        proc.terminate()
        await proc.wait()


async def test_state_file_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "sandbox-activecampaign.json"
    first = create_app(state_file=path)
    transport = httpx.ASGITransport(app=first)
    headers = {"Api-Token": DEFAULT_API_KEY}
    async with httpx.AsyncClient(transport=transport, base_url="http://sb", headers=headers) as ac:
        field = (await ac.post("/api/3/fields", json={"field": {"title": "Team"}})).json()
        made = await ac.post(
            "/api/3/contact/sync",
            json={
                "contact": {
                    "email": "kept@example.com",
                    "fieldValues": [{"field": field["field"]["id"], "value": "red"}],
                }
            },
        )
        cid = made.json()["contact"]["id"]
        await ac.post(
            "/api/3/contactLists",
            json={"contactList": {"contact": cid, "list": DEFAULT_LIST_ID, "status": 2}},
        )
    await unmount(first)
    second = create_app(state_file=path)
    transport = httpx.ASGITransport(app=second)
    async with httpx.AsyncClient(transport=transport, base_url="http://sb", headers=headers) as ac:
        got = (await ac.get(f"/api/3/contacts/{cid}")).json()
        assert got["contact"]["email"] == "kept@example.com"
        assert got["contactLists"][0]["status"] == "2"
        assert [v["value"] for v in got["fieldValues"]] == ["red"]
        again = await ac.post("/api/3/contact/sync", json={"contact": {"email": "new@example.com"}})
        assert int(again.json()["contact"]["id"]) > int(cid)  # ids keep counting
