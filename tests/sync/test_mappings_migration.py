"""The migration to audience mappings: one-audience rows become the default mapping's, and
nothing that is already in sync is sent again (issue 17)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.config import Settings
from app.db import to_libpq_url
from app.main import Runtime
from app.migrate import alembic_config
from app.sync.engine import SyncEngine
from tests.conftest import fetch
from tests.support.sync import Sandbox
from tests.sync.conftest import OWNER

BEFORE = "c6d7e8f9a0b1"  # the last revision with one audience per connection

pytestmark = pytest.mark.usefixtures("connection")


@pytest.fixture
async def scratch(database_url: str) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """A database of its own on the test server, migrated up to BEFORE."""
    admin = to_libpq_url(database_url)
    name = f"audience_sync_mig_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(command.upgrade, alembic_config(url), BEFORE)
    engine = create_async_engine(url)
    try:
        yield url, engine
    finally:
        await engine.dispose()
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def copy_rows(target: AsyncEngine, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows read from the test database (columns the old schema lacks are ignored)."""
    async with target.begin() as conn:
        for row in rows:
            await conn.execute(
                text(f"INSERT INTO {table} SELECT * FROM json_populate_record(NULL::{table}, :r)"),
                {"r": orjson.dumps(row, default=str).decode()},
            )


async def test_one_audience_rows_become_the_default_mappings_and_nothing_is_resent(
    runtime: Runtime,
    sandbox: Sandbox,
    sync_settings: Settings,
    api: httpx.AsyncClient,
    token_for: Callable[..., str],
    scratch: tuple[str, AsyncEngine],
) -> None:
    headers = {"Authorization": f"Bearer {token_for(OWNER)}"}
    for email, name in (("same@example.com", "Sam"), ("edited@example.com", "Ed")):
        r = await api.post(
            "/api/contacts",
            json={"email": email, "first_name": name, "tags": ["t"], "newsletter_opt_in": True},
            headers=headers,
        )
        assert r.status_code == 201, r.text
    engine = SyncEngine(runtime.engine, sync_settings)
    try:
        await engine.run_until_idle(limit_seconds=30)
    finally:
        await engine.aclose()

    # The state of a one-audience deployment: both members in sync, then one contact edited
    # (its change queued) and the other re-queued with nothing to send (a no-op edit).
    connections = await fetch(runtime, "SELECT * FROM connections")
    contacts = await fetch(runtime, "SELECT * FROM contacts ORDER BY email_key")
    mirror = await fetch(runtime, "SELECT * FROM sync_state ORDER BY email_key")
    assert len(mirror) == 2
    url, old = scratch
    await copy_rows(old, "connections", connections)
    edited = {**contacts[0], "first_name": "Edward", "version": contacts[0]["version"] + 1}
    assert edited["email_key"] == "edited@example.com"
    await copy_rows(old, "contacts", [edited, contacts[1]])
    await copy_rows(old, "sync_state", mirror)
    async with old.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO sync_queue (connection_id, email_key, contact_id)"
                " SELECT connection_id, email_key, contact_id FROM sync_state"
            )
        )

    await asyncio.to_thread(command.upgrade, alembic_config(url), "head")

    conn_id = connections[0]["id"]
    async with old.connect() as conn:
        mappings = (await conn.execute(text("SELECT * FROM audience_mappings"))).mappings().all()
        queue = (await conn.execute(text("SELECT * FROM sync_queue"))).mappings().all()
        migrated = (
            (await conn.execute(text("SELECT * FROM sync_state ORDER BY email_key")))
            .mappings()
            .all()
        )
    assert [(m["id"], m["connection_id"], m["audience_id"]) for m in mappings] == [
        (conn_id, conn_id, connections[0]["audience_id"])
    ]
    assert all(m["kinds"] is None and m["tags_any"] is None for m in mappings)
    assert {q["mapping_id"] for q in queue} == {conn_id}
    for before, after in zip(mirror, migrated, strict=True):
        assert after["mapping_id"] == conn_id
        assert {k: after[k] for k in before} == before  # nothing else changed

    # The worker on the migrated database: only the edited contact is sent.
    await sandbox.clear_requests()
    worker = SyncEngine(old, sync_settings)
    try:
        await worker.run_until_idle(limit_seconds=30)
    finally:
        await worker.aclose()
    writes = [
        (r["method"], r["path"])
        for r in await sandbox.requests()
        if r["method"] in ("PUT", "PATCH", "POST", "DELETE")
    ]
    assert len(writes) == 1 and writes[0][0] == "PUT", writes
    async with old.connect() as conn:
        left = (await conn.execute(text("SELECT count(*) FROM sync_queue"))).scalar_one()
    assert left == 0
    members = await sandbox.members()
    assert members["edited@example.com"]["merge_fields"]["FNAME"] == "Edward"
    assert members["same@example.com"]["merge_fields"]["FNAME"] == "Sam"
