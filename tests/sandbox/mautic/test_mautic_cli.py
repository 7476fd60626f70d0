"""PyPI `mautic-cli`, unchanged (base URL aside), against the sandbox over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from app.sandbox.mautic import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
)
from tests.sandbox.mautic.conftest import Sandbox

# mautic-cli is a dev dependency (pyproject.toml): the test runs in CI, it is never skipped.
CLI = shutil.which("mautic", path=str(Path(sys.executable).parent))


class Mautic:
    """Runs the `mautic` command with the environment a user would set."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    async def __call__(self, *args: str, ok: bool = True) -> Any:
        assert CLI is not None, "mautic-cli is missing: pip install -e '.[dev]'"
        proc = await asyncio.create_subprocess_exec(
            CLI,
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        if ok:
            assert proc.returncode == 0, (args, out.decode(), err.decode())
            text = out.decode().strip()
            lines = text.splitlines()
            if len(lines) > 1 and all(line.startswith("{") for line in lines):
                return [json.loads(line) for line in lines]  # --page-all: NDJSON
            return json.loads(text)
        assert proc.returncode != 0, (args, out.decode())
        return err.decode() + out.decode()


def _env(tmp_path: Path, base: str, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),  # no ~/.mautic-cli config from the machine
        "MAUTIC_BASE_URL": base,
        **extra,
    }


@pytest.fixture
def oauth_cli(sandbox: Sandbox, tmp_path: Path) -> Mautic:
    return Mautic(
        _env(
            tmp_path,
            sandbox.url,
            MAUTIC_CLIENT_ID=DEFAULT_CLIENT_ID,
            MAUTIC_CLIENT_SECRET=DEFAULT_CLIENT_SECRET,
            MAUTIC_TOKEN_ENDPOINT=f"{sandbox.url}/oauth/v2/token",
        )
    )


async def test_mautic_cli_contacts_segments_campaigns_fields_tags_hooks(
    oauth_cli: Mautic, sandbox: Sandbox
) -> None:
    mautic = oauth_cli
    created = await mautic(
        "contacts",
        "create",
        "--json",
        json.dumps({"email": "cli@example.com", "firstname": "Cli", "tags": ["cli"]}),
    )
    contact_id = created["contact"]["id"]
    assert created["contact"]["fields"]["all"]["email"] == "cli@example.com"
    edited = await mautic("contacts", "edit", str(contact_id), "--json", '{"lastname": "Tool"}')
    assert edited["contact"]["fields"]["all"]["lastname"] == "Tool"
    got = await mautic("contacts", "get", str(contact_id))
    assert got["contact"]["fields"]["all"]["firstname"] == "Cli"
    for i in range(3):
        await mautic("contacts", "create", "--json", json.dumps({"email": f"page{i}@example.com"}))
    paged = await mautic("--page-all", "contacts", "list", "--limit", "2", "--order-by", "id")
    assert [c["id"] for c in paged] == sorted(c["id"] for c in paged)
    assert len(paged) == 4
    listed = await mautic("contacts", "list", "--search", "email:cli@")
    assert list(listed["contacts"]) == [str(contact_id)]

    segment = (await mautic("segments", "create", "--json", '{"name": "CLI segment"}'))["list"]
    assert (await mautic("segments", "add-contact", str(segment["id"]), str(contact_id))) == {
        "success": 1
    }
    members = await mautic("segments", "contacts", str(segment["id"]))
    assert list(members["contacts"]) == [str(contact_id)]
    assert (await mautic("segments", "list"))["total"] == 1

    campaign = (await mautic("campaigns", "create", "--json", '{"name": "CLI campaign"}'))[
        "campaign"
    ]
    added = await mautic("contacts", "add-to-campaign", str(contact_id), str(campaign["id"]))
    assert added == {"success": 1}
    enrolled = await mautic("campaigns", "contacts", str(campaign["id"]))
    assert int(enrolled["total"]) == 1

    points = await mautic("contacts", "add-points", str(contact_id), "7")
    assert points == {"success": 1}
    assert (await mautic("contacts", "get", str(contact_id)))["contact"]["points"] == 7

    fields = await mautic("fields", "list", "--limit", "100")
    assert "email" in {f["alias"] for f in fields["fields"]}
    field = await mautic("fields", "create", "--json", '{"label": "Lead score", "type": "number"}')
    assert field["field"]["alias"] == "lead_score"
    tags = await mautic("tags", "list")
    assert [t["tag"] for t in tags["tags"]] == ["cli"]

    hook = await mautic(
        "webhooks",
        "create",
        "--json",
        json.dumps(
            {
                "name": "cli",
                "webhookUrl": "https://example.com/h",
                "triggers": ["mautic.lead_post_save_new"],
            }
        ),
    )
    hook_id = hook["hook"]["id"]
    assert str(hook_id) in (await mautic("webhooks", "list"))["hooks"]
    await mautic("webhooks", "delete", str(hook_id))

    deleted = await mautic("contacts", "delete", str(contact_id))
    assert deleted["contact"]["id"] is None
    missing = await mautic("contacts", "get", str(contact_id), ok=False)
    assert "Item was not found." in missing


async def test_mautic_cli_refetches_a_token_after_expiry(
    oauth_cli: Mautic, sandbox: Sandbox
) -> None:
    await sandbox.configure(access_token_lifetime_seconds=0)
    # Every token is born expired: the client's one retry after a 401 also fails, as it would.
    out = await oauth_cli("contacts", "list", ok=False)
    assert "expired" in out
    await sandbox.configure(access_token_lifetime_seconds=3600)
    assert (await oauth_cli("contacts", "list"))["total"] == "0"


async def test_mautic_cli_basic_auth_needs_the_switch(sandbox: Sandbox, tmp_path: Path) -> None:
    mautic = Mautic(
        _env(tmp_path, sandbox.url, MAUTIC_USERNAME=ADMIN_USERNAME, MAUTIC_PASSWORD=ADMIN_PASSWORD)
    )
    refused = await mautic("contacts", "list", ok=False)
    assert "Basic Auth disabled" in refused
    await sandbox.configure(api_enable_basic_auth=True)
    assert (await mautic("contacts", "list"))["contacts"] == {}
