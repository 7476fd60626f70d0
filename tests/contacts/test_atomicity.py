"""The write path is one transaction: a failure after the contact row leaves nothing behind.

Failures are injected for real: a trigger that raises inside PostgreSQL on the queue insert,
a deferred trigger that fails the COMMIT itself, or a repository/outbox call that raises in
Python after the contact row was written. Each test compares the three tables before and
after the failed request and expects a problem+json 500, never a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.contacts.repository import ContactRepository
from app.db import to_libpq_url
from app.main import Runtime
from tests.conftest import fetch

Auth = Callable[..., dict[str, str]]
INJECTED = "injected failure (test)"


@pytest.fixture
async def client500(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that receives the 500 a real client would, instead of the raised exception."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def add_connection(
    runtime: Runtime, owner: str = "owner-a", provider: str = "mailchimp"
) -> uuid.UUID:
    """A connection with an audience, so every write of the owner queues sync work."""
    (row,) = await fetch(
        runtime,
        """
        INSERT INTO connections (owner_id, provider, auth_kind, credentials, account_key,
                                 api_endpoint, audience_id, webhook_token, status)
        VALUES (:owner, :provider, 'api_key', 'x', :provider, 'http://sandbox', 'aud1', :tok,
                'active')
        RETURNING id
        """,
        owner=owner,
        provider=provider,
        tok=uuid.uuid4().hex,
    )
    return uuid.UUID(str(row["id"]))


async def snapshot(runtime: Runtime) -> dict[str, list[dict[str, Any]]]:
    """Everything the write path touches."""
    return {
        "contacts": await fetch(runtime, "SELECT * FROM contacts ORDER BY id"),
        "contact_changes": await fetch(runtime, "SELECT * FROM contact_changes ORDER BY id"),
        "sync_queue": await fetch(
            runtime, "SELECT * FROM sync_queue ORDER BY connection_id, email_key"
        ),
    }


@contextlib.asynccontextmanager
async def failing_trigger(
    runtime: Runtime, table: str, *, deferred: bool = False
) -> AsyncIterator[None]:
    """While active, every insert into `table` raises inside PostgreSQL.

    `deferred`: the trigger fires at COMMIT (a constraint trigger), so the statements all
    succeed and the commit itself fails.
    """
    kind = (
        "CONSTRAINT TRIGGER inject_failure AFTER INSERT ON {t} DEFERRABLE INITIALLY DEFERRED"
        if deferred
        else "TRIGGER inject_failure BEFORE INSERT ON {t}"
    ).format(t=table)
    await fetch(
        runtime,
        f"""
        CREATE FUNCTION inject_failure() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '{INJECTED}'; END $$
        """,
    )
    await fetch(runtime, f"CREATE {kind} FOR EACH ROW EXECUTE FUNCTION inject_failure()")
    try:
        yield
    finally:
        await fetch(runtime, f"DROP TRIGGER inject_failure ON {table}")
        await fetch(runtime, "DROP FUNCTION inject_failure()")


def assert_server_error(response: httpx.Response) -> None:
    """A problem+json 500 that says nothing about the cause."""
    assert response.status_code == 500, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert INJECTED not in response.text
    assert response.json()["request_id"] == response.headers["x-request-id"]


async def create(client: httpx.AsyncClient, auth: Auth, email: str) -> dict[str, Any]:
    response = await client.post("/api/contacts", json={"email": email}, headers=auth())
    assert response.status_code == 201, response.text
    return dict(response.json())


class TestQueueInsertFailsInsidePostgres:
    async def test_create(self, client500: httpx.AsyncClient, auth: Auth, runtime: Runtime) -> None:
        await add_connection(runtime)
        before = await snapshot(runtime)
        async with failing_trigger(runtime, "sync_queue"):
            response = await client500.post(
                "/api/contacts", json={"email": "ada@example.com"}, headers=auth()
            )
        assert_server_error(response)
        assert await snapshot(runtime) == before
        assert before["contacts"] == []

    async def test_update_with_email_change(
        self, client500: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await add_connection(runtime)
        contact = await create(client500, auth, "old@example.com")
        before = await snapshot(runtime)
        async with failing_trigger(runtime, "sync_queue"):
            response = await client500.patch(
                f"/api/contacts/{contact['id']}",
                json={"email": "new@example.com", "first_name": "Ada"},
                headers=auth(),
            )
        assert_server_error(response)
        after = await snapshot(runtime)
        assert after == before
        assert [c["email"] for c in after["contacts"]] == ["old@example.com"]
        assert [c["version"] for c in after["contacts"]] == [1]
        assert [q["email_key"] for q in after["sync_queue"]] == ["old@example.com"]

    async def test_delete(self, client500: httpx.AsyncClient, auth: Auth, runtime: Runtime) -> None:
        await add_connection(runtime)
        contact = await create(client500, auth, "stays@example.com")
        before = await snapshot(runtime)
        async with failing_trigger(runtime, "sync_queue"):
            response = await client500.delete(f"/api/contacts/{contact['id']}", headers=auth())
        assert_server_error(response)
        assert await snapshot(runtime) == before
        # The contact is still there and still answers.
        got = await client500.get(f"/api/contacts/{contact['id']}", headers=auth())
        assert got.status_code == 200

    async def test_forget(self, client500: httpx.AsyncClient, auth: Auth, runtime: Runtime) -> None:
        await add_connection(runtime)
        contact = await create(client500, auth, "erase-me@example.com")
        before = await snapshot(runtime)
        async with failing_trigger(runtime, "sync_queue"):
            response = await client500.post(f"/api/contacts/{contact['id']}/forget", headers=auth())
        assert_server_error(response)
        after = await snapshot(runtime)
        assert after == before
        # The audit still holds the data: the erasure did not half-happen.
        assert after["contact_changes"][0]["fields"]["after"]["email"] == "erase-me@example.com"


class TestCommitFails:
    """A deferred trigger fails the COMMIT: the client must not have been told 201 already."""

    async def test_create_is_500_not_201(
        self, client500: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await add_connection(runtime)
        async with failing_trigger(runtime, "contact_changes", deferred=True):
            response = await client500.post(
                "/api/contacts", json={"email": "late@example.com"}, headers=auth()
            )
        assert_server_error(response)
        assert await snapshot(runtime) == {"contacts": [], "contact_changes": [], "sync_queue": []}

    async def test_update_is_500_not_200(
        self, client500: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await add_connection(runtime)
        contact = await create(client500, auth, "before@example.com")
        before = await snapshot(runtime)
        async with failing_trigger(runtime, "contact_changes", deferred=True):
            response = await client500.patch(
                f"/api/contacts/{contact['id']}",
                json={"email": "after@example.com"},
                headers=auth(),
            )
        assert_server_error(response)
        assert await snapshot(runtime) == before


class TestFailureInPythonAfterTheInsert:
    @pytest.mark.parametrize("with_connection", [True, False])
    async def test_audit_and_outbox_write_raises(
        self,
        client500: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        monkeypatch: pytest.MonkeyPatch,
        with_connection: bool,
    ) -> None:
        async def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(INJECTED)

        if with_connection:
            await add_connection(runtime)
        monkeypatch.setattr(ContactRepository, "record_change", broken)
        response = await client500.post(
            "/api/contacts", json={"email": "ada@example.com"}, headers=auth()
        )
        assert_server_error(response)
        assert await snapshot(runtime) == {"contacts": [], "contact_changes": [], "sync_queue": []}

    async def test_audit_insert_fails_without_any_connection(
        self, client500: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        async with failing_trigger(runtime, "contact_changes"):
            response = await client500.post(
                "/api/contacts", json={"email": "ada@example.com"}, headers=auth()
            )
        assert_server_error(response)
        assert await snapshot(runtime) == {"contacts": [], "contact_changes": [], "sync_queue": []}


async def settled(runtime: Runtime) -> None:
    """Every NOTIFY the service's writes asked for so far has been sent."""
    await runtime.extras["notifier"].flush()


class TestNotify:
    async def test_a_rolled_back_write_wakes_no_worker(
        self,
        client500: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        database_url: str,
    ) -> None:
        await add_connection(runtime)
        heard: list[str] = []
        woke = asyncio.Event()

        def on_notify(connection: Any, pid: int, channel: str, payload: str) -> None:
            heard.append(channel)
            woke.set()

        listener = await asyncpg.connect(to_libpq_url(database_url))
        try:
            await listener.add_listener("sync_queue", on_notify)
            async with failing_trigger(runtime, "contact_changes", deferred=True):
                failed = await client500.post(
                    "/api/contacts", json={"email": "a@example.com"}, headers=auth()
                )
            assert failed.status_code == 500
            await settled(runtime)  # a NOTIFY it asked for is sent, not merged with the next
            await create(client500, auth, "b@example.com")
            # Notifications arrive in commit order: once the successful write's is here,
            # one from the failed write would have arrived before it.
            await asyncio.wait_for(woke.wait(), timeout=30)
            assert heard == ["sync_queue"]
        finally:
            await listener.close()

    async def test_notify_only_when_a_worker_has_something_new(
        self,
        client500: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        database_url: str,
    ) -> None:
        await add_connection(runtime)
        heard: list[str] = []
        marker = asyncio.Event()

        def on_notify(connection: Any, pid: int, channel: str, payload: str) -> None:
            heard.append(payload)
            if payload == "marker":
                marker.set()

        listener = await asyncpg.connect(to_libpq_url(database_url))
        try:
            await listener.add_listener("sync_queue", on_notify)
            contact = await create(client500, auth, "hot@example.com")  # new row: wake
            await settled(runtime)
            url = f"/api/contacts/{contact['id']}"

            async def touch(n: int) -> None:
                response = await client500.patch(url, json={"city": f"c{n}"}, headers=auth())
                assert response.status_code == 200
                # The NOTIFY goes after the commit, from the service's notifier: each write's
                # is sent before the next, so none stands for two.
                await settled(runtime)

            await touch(1)  # the row is already waiting: no NOTIFY
            await fetch(runtime, "UPDATE sync_queue SET state = 'parked' RETURNING 1")
            await touch(2)  # re-armed from parked: wake
            await touch(3)  # waiting again: no NOTIFY
            await fetch(
                runtime,
                "UPDATE sync_queue SET available_at = now() + interval '1 hour' RETURNING 1",
            )
            await touch(4)  # a backed-off row made due now: wake
            # Notifications arrive in commit order: once the marker is here, all are.
            await fetch(runtime, "SELECT pg_notify('sync_queue', 'marker')")
            await asyncio.wait_for(marker.wait(), timeout=30)
            assert heard == ["", "", "", "marker"]
            rows = await fetch(runtime, "SELECT seq, state FROM sync_queue")
            assert rows == [{"seq": 5, "state": "ready"}]
        finally:
            await listener.close()
