"""Helpers for end-to-end sync tests: a sandbox on a real port, a connection, convergence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from app.main import Runtime
from app.sync.engine import SyncEngine
from tests.conftest import fetch


@dataclass
class Sandbox:
    """A running sandbox: its base URL, an HTTP client for its control API, its state."""

    url: str
    http: httpx.AsyncClient
    app: Any
    list_id: str
    api_key: str

    async def members(self) -> dict[str, dict[str, Any]]:
        """Every member by lower-cased email (archived included), from the control API."""
        body = (await self.http.get(f"/_control/lists/{self.list_id}/members")).json()
        out = {}
        for m in body["members"]:
            key = m.get("email_address", m["id"]).lower()
            out[key] = m
        return out

    async def configure(self, **changes: Any) -> None:
        """PATCH /_control/config."""
        response = await self.http.patch("/_control/config", json=changes)
        response.raise_for_status()

    async def requests(self) -> list[dict[str, Any]]:
        """The request log."""
        return list((await self.http.get("/_control/requests")).json()["requests"])

    async def clear_requests(self) -> None:
        """Empty the request log."""
        await self.http.delete("/_control/requests")

    async def act(self, action: str, email: str, **body: Any) -> httpx.Response:
        """A person's action (unsubscribe, clean, abuse, signup, change-email, profile)."""
        return await self.http.post(
            f"/_control/lists/{self.list_id}/actions/{action}", json={"email": email, **body}
        )

    async def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A Marketing API call as another Mailchimp user would make it (Basic auth)."""
        return await self.http.request(method, f"/3.0{path}", auth=("someone", self.api_key), **kw)


async def wait_for(
    predicate: Callable[[], Awaitable[bool]],
    *,
    within: float = 30.0,
    every: float = 0.05,
) -> None:
    """Poll `predicate` until true; fail the test with a clear message on timeout."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {within}s")


async def queue_empty(runtime: Runtime) -> bool:
    """True when no sync work is owed (no queue rows at all)."""
    rows = await fetch(runtime, "SELECT count(*) AS n FROM sync_queue")
    return bool(rows[0]["n"] == 0)


async def assert_mirrors_database(
    runtime: Runtime, sandbox: Sandbox, owner: str, *, exact_tags: bool = False
) -> None:
    """The sandbox holds exactly what the database says, for every contact of the owner.

    `exact_tags`: the member has the contact's tags and no other (nobody else tags members).
    """
    members = await sandbox.members()
    contacts = await fetch(
        runtime,
        "SELECT email, email_key, first_name, last_name, tags, newsletter_opt_in"
        " FROM contacts WHERE owner_id = :o AND email IS NOT NULL",
        o=owner,
    )
    problems = []
    for c in contacts:
        m = members.get(c["email_key"])
        if not c["newsletter_opt_in"]:
            if m is not None and m["status"] == "subscribed":
                problems.append(f"{c['email']}: subscribed without consent")
            continue
        if m is None:
            problems.append(f"{c['email']}: missing")
            continue
        if m["status"] != "subscribed":
            problems.append(f"{c['email']}: status {m['status']}")
        fields = m.get("merge_fields", {})
        if (fields.get("FNAME") or None) != c["first_name"] or (fields.get("LNAME") or None) != c[
            "last_name"
        ]:
            problems.append(f"{c['email']}: stale fields {fields} vs {c['first_name']}")
        tags = {t["name"] for t in m.get("tags", [])}
        if not set(c["tags"]) <= tags:
            problems.append(f"{c['email']}: tags {tags} lack {c['tags']}")
        elif exact_tags and tags != set(c["tags"]):
            problems.append(f"{c['email']}: stale tags {sorted(tags - set(c['tags']))}")
    assert not problems, f"{len(problems)} differences, e.g. {problems[:5]}"


@asynccontextmanager
async def running(engine: SyncEngine) -> AsyncIterator[SyncEngine]:
    """The engine running in a task; stopped (in-flight work finished) and closed after."""
    task = asyncio.create_task(engine.run(grace_seconds=5))
    try:
        yield engine
    finally:
        engine.stop()
        await task
        await engine.aclose()
