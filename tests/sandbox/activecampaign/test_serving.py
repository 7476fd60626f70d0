"""`serve` mounts the sandbox at /_sandbox/activecampaign; the CLI serves it alone."""

from __future__ import annotations

import asyncio
import os
import sys

import httpx
from fastapi import FastAPI

from app.sandbox.activecampaign import DEFAULT_API_KEY
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
