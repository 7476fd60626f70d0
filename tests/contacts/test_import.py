"""CSV import over HTTP and the CLI, with its effects read back from PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.config import Settings
from app.contacts import importer
from app.db import to_libpq_url
from app.main import Runtime
from app.sync import outbox
from tests.conftest import TEST_JWT_SECRET, fetch
from tests.contacts.test_routes import add_connection

Auth = Callable[..., dict[str, str]]
ROOT = Path(__file__).resolve().parents[2]

# Row numbers as a spreadsheet shows them: the header is row 1.
MIXED_CSV = """\
Email,First Name,last_name,Tags,kind,newsletter_opt_in,favourite colour,City
ada@example.com,Ada,Lovelace,vip;donor,client,yes,blue,London
GRACE@Example.com,Grace,Hopper,,lead,no,,
not-an-email,X,,,,,,
,NoEmail,,,,,,
bob@example.com,Bob,,,,maybe,,
ADA@EXAMPLE.COM,Ada again,,,,,,
,,,,,,,
carol@example.com,Carol,,,alien,,,
dave@example.com,,,,,,,
erin@example.com,Erin,,,,,,
"""

MIXED_ERRORS = [
    {"row": 4, "reason": "email 'not-an-email': An email address must have an @-sign."},
    {"row": 5, "reason": "email is missing"},
    {"row": 6, "reason": "newsletter_opt_in 'maybe': use true/false, yes/no, 1/0 or y/n"},
    {"row": 7, "reason": "duplicate email; first seen on row 2"},
    {"row": 9, "reason": "kind 'alien': Input should be 'client', 'lead' or 'contact'"},
]


async def post_csv(
    client: httpx.AsyncClient, auth: Auth, body: str | bytes, owner: str = "owner-a"
) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    return await client.post(
        "/api/contacts/import",
        content=content,
        headers={**auth(owner), "Content-Type": "text/csv"},
    )


async def create_contact(
    client: httpx.AsyncClient, auth: Auth, owner: str = "owner-a", **body: Any
) -> dict[str, Any]:
    response = await client.post("/api/contacts", json=body, headers=auth(owner))
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def contact(runtime: Runtime, owner: str, key: str) -> dict[str, Any]:
    (row,) = await fetch(
        runtime,
        "SELECT * FROM contacts WHERE owner_id = :owner AND email_key = :key",
        owner=owner,
        key=key,
    )
    return row


async def existing_pair(client: httpx.AsyncClient, auth: Auth) -> None:
    """grace (will change) and erin (already as the file says), created before any connection."""
    await create_contact(client, auth, email="grace@example.com", first_name="G", kind="client")
    await create_contact(client, auth, email="erin@example.com", first_name="Erin")


class TestMixedFile:
    async def test_exact_counts_and_row_errors(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await existing_pair(client, auth)
        response = await post_csv(client, auth, MIXED_CSV)
        assert response.status_code == 200, response.text
        body = response.json()
        assert {k: body[k] for k in ("rows", "created", "updated", "unchanged", "rejected")} == {
            "rows": 9,
            "created": 2,
            "updated": 1,
            "unchanged": 1,
            "rejected": 5,
        }
        assert body["errors"] == MIXED_ERRORS
        assert body["errors_truncated"] is False
        assert body["ignored_columns"] == ["favourite colour"]
        assert body["columns"] == {
            "Email": "email",
            "First Name": "first_name",
            "last_name": "last_name",
            "Tags": "tags",
            "kind": "kind",
            "newsletter_opt_in": "newsletter_opt_in",
            "City": "city",
        }
        assert body["encoding"] == "utf-8"
        assert body["queued"] == 0  # no connection yet

        rows = await fetch(
            runtime, "SELECT email_key FROM contacts WHERE owner_id = 'owner-a' ORDER BY 1"
        )
        assert [r["email_key"] for r in rows] == [
            "ada@example.com",
            "dave@example.com",
            "erin@example.com",
            "grace@example.com",
        ]
        ada = await contact(runtime, "owner-a", "ada@example.com")
        assert (ada["first_name"], ada["last_name"], ada["kind"], ada["city"]) == (
            "Ada",
            "Lovelace",
            "client",
            "London",
        )
        assert ada["tags"] == ["vip", "donor"]
        assert ada["newsletter_opt_in"] is True
        assert ada["newsletter_changed_at"] is not None
        dave = await contact(runtime, "owner-a", "dave@example.com")
        assert (dave["kind"], dave["newsletter_opt_in"], dave["tags"]) == ("contact", False, [])

        grace = await contact(runtime, "owner-a", "grace@example.com")
        assert grace["email"] == "grace@example.com"  # the stored spelling is kept
        assert (grace["first_name"], grace["last_name"], grace["kind"]) == (
            "Grace",
            "Hopper",
            "lead",
        )
        assert grace["version"] == 2
        erin = await contact(runtime, "owner-a", "erin@example.com")
        assert erin["version"] == 1

        changes = await fetch(
            runtime,
            "SELECT c.op, c.source, c.actor, c.fields, k.email_key FROM contact_changes c"
            " JOIN contacts k ON k.id = c.contact_id WHERE c.source = 'import'"
            " ORDER BY k.email_key",
        )
        assert [(c["email_key"], c["op"], c["actor"]) for c in changes] == [
            ("ada@example.com", "create", "owner-a"),
            ("dave@example.com", "create", "owner-a"),
            ("grace@example.com", "update", "owner-a"),
        ]
        assert changes[0]["fields"]["after"]["email"] == "ada@example.com"
        assert changes[0]["fields"]["after"]["tags"] == ["vip", "donor"]
        assert changes[2]["fields"] == {
            "before": {"first_name": "G", "last_name": None, "kind": "client"},
            "after": {"first_name": "Grace", "last_name": "Hopper", "kind": "lead"},
        }

    async def test_reimport_changes_and_queues_nothing(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await existing_pair(client, auth)
        await add_connection(runtime, "owner-a")
        first = (await post_csv(client, auth, MIXED_CSV)).json()
        assert first["queued"] == 3  # ada, dave created; grace changed; erin unchanged
        before = {
            "contacts": await fetch(
                runtime, "SELECT id, version, updated_at FROM contacts ORDER BY id"
            ),
            "changes": await fetch(runtime, "SELECT count(*) AS n FROM contact_changes"),
        }
        await fetch(runtime, "DELETE FROM sync_queue")

        again = await post_csv(client, auth, MIXED_CSV)
        assert again.status_code == 200
        body = again.json()
        assert {k: body[k] for k in ("created", "updated", "unchanged", "rejected")} == {
            "created": 0,
            "updated": 0,
            "unchanged": 4,
            "rejected": 5,
        }
        assert body["queued"] == 0
        assert body["errors"] == MIXED_ERRORS
        assert await fetch(runtime, "SELECT * FROM sync_queue") == []
        assert (
            await fetch(runtime, "SELECT count(*) AS n FROM contact_changes") == (before["changes"])
        )
        assert (
            await fetch(runtime, "SELECT id, version, updated_at FROM contacts ORDER BY id")
            == before["contacts"]
        )

    async def test_multipart_upload_gives_the_same_result(
        self, client: httpx.AsyncClient, auth: Auth
    ) -> None:
        await existing_pair(client, auth)
        response = await client.post(
            "/api/contacts/import",
            files={"file": ("contacts.csv", MIXED_CSV.encode(), "text/csv")},
            headers=auth(),
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["created"], body["updated"], body["unchanged"], body["rejected"]) == (
            2,
            1,
            1,
            5,
        )
        assert body["errors"] == MIXED_ERRORS

    async def test_multipart_without_file_field_is_422(
        self, client: httpx.AsyncClient, auth: Auth
    ) -> None:
        response = await client.post(
            "/api/contacts/import",
            files={"upload": ("contacts.csv", b"email\na@example.com\n", "text/csv")},
            headers=auth(),
        )
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert "'file'" in response.json()["detail"]


class TestQueue:
    async def test_creates_and_changes_queue_at_bulk_priority(
        self,
        client: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(importer, "IMPORT_CONNECTIONS", 1)  # one transaction, one NOTIFY
        await existing_pair(client, auth)
        conn_id = await add_connection(runtime, "owner-a")
        await add_connection(runtime, "owner-b")  # another owner's connection gets nothing
        # A live change of grace is already waiting: it keeps its priority, seq moves on.
        await fetch(
            runtime,
            "INSERT INTO sync_queue (connection_id, mapping_id, email_key, priority, state,"
            " attempts) VALUES (:c, :c, 'grace@example.com', 0, 'parked', 5)",
            c=conn_id,
        )
        heard: list[str] = []
        listener = await asyncpg.connect(to_libpq_url(str(runtime.settings.DATABASE_URL)))
        try:
            await listener.add_listener("sync_queue", lambda *args: heard.append(args[2]))
            response = await post_csv(client, auth, MIXED_CSV)
            await asyncio.sleep(0.2)
        finally:
            await listener.close()
        assert response.json()["queued"] == 3
        rows = await fetch(
            runtime,
            "SELECT connection_id, email_key, priority, seq, state, attempts, contact_id"
            " FROM sync_queue ORDER BY email_key",
        )
        assert [
            (str(r["connection_id"]), r["email_key"], r["priority"], r["seq"], r["state"])
            for r in rows
        ] == [
            (conn_id, "ada@example.com", 1, 1, "ready"),
            (conn_id, "dave@example.com", 1, 1, "ready"),
            (conn_id, "grace@example.com", 0, 2, "ready"),
        ]
        assert rows[2]["attempts"] == 0
        grace = await contact(runtime, "owner-a", "grace@example.com")
        assert rows[2]["contact_id"] == grace["id"]
        assert heard == ["sync_queue"]  # one NOTIFY for the one chunk

    async def test_one_transaction_and_notify_per_chunk(
        self,
        client: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(importer, "CHUNK_ROWS", 2)
        monkeypatch.setattr(importer, "IMPORT_CONNECTIONS", 1)
        await add_connection(runtime, "owner-a")
        csv_text = "email\n" + "".join(f"p{i}@example.com\n" for i in range(5)) + "P1@example.com\n"
        heard: list[str] = []
        listener = await asyncpg.connect(to_libpq_url(str(runtime.settings.DATABASE_URL)))
        try:
            await listener.add_listener("sync_queue", lambda *args: heard.append(args[2]))
            body = (await post_csv(client, auth, csv_text)).json()
            await asyncio.sleep(0.2)
        finally:
            await listener.close()
        # Rows 2-3, 4-5, 6-7: the duplicate on row 7 is found across chunks.
        assert (body["rows"], body["created"], body["rejected"]) == (6, 5, 1)
        assert body["errors"] == [{"row": 7, "reason": "duplicate email; first seen on row 3"}]
        assert len(heard) == 3
        # Each chunk committed on its own: three distinct transaction timestamps.
        stamps = await fetch(runtime, "SELECT DISTINCT created_at FROM contacts")
        assert len(stamps) == 3

    async def test_a_large_import_refreshes_the_queue_statistics(
        self,
        client: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Thresholds scaled down from 10k: refreshes after the chunks that reach 2 and 4
        # queued rows, then the tables of the import once at the end.
        monkeypatch.setattr(outbox, "STATS_REFRESH_ROWS", 2)
        monkeypatch.setattr(importer, "STATS_REFRESH_ROWS", 2)
        monkeypatch.setattr(importer, "CHUNK_ROWS", 2)
        monkeypatch.setattr(importer, "IMPORT_CONNECTIONS", 1)
        await add_connection(runtime, "owner-a")
        sql = (
            "SELECT relname, analyze_count FROM pg_stat_user_tables"
            " WHERE relname IN ('sync_queue', 'contacts')"
        )
        before = {r["relname"]: r["analyze_count"] for r in await fetch(runtime, sql)}
        csv_text = "email\n" + "".join(f"p{i}@example.com\n" for i in range(5))
        assert (await post_csv(client, auth, csv_text)).json()["queued"] == 5
        after: dict[str, int] = {}
        for _ in range(40):  # statistics reach the view within a moment
            after = {r["relname"]: r["analyze_count"] for r in await fetch(runtime, sql)}
            if after["sync_queue"] - before["sync_queue"] >= 3:
                break
            await asyncio.sleep(0.05)
        assert after["sync_queue"] - before["sync_queue"] == 3  # at 2, at 4, at the end
        assert after["contacts"] - before["contacts"] == 1

    async def test_a_small_import_leaves_statistics_to_autovacuum(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await add_connection(runtime, "owner-a")
        sql = "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'sync_queue'"
        before = (await fetch(runtime, sql))[0]["analyze_count"]
        assert (await post_csv(client, auth, MIXED_CSV)).json()["queued"] == 4
        await asyncio.sleep(0.2)
        assert (await fetch(runtime, sql))[0]["analyze_count"] == before


class TestParallelConnections:
    async def test_duplicates_across_chunks_and_connections(
        self,
        client: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(importer, "CHUNK_ROWS", 7)
        monkeypatch.setattr(importer, "IMPORT_CONNECTIONS", 3)
        await add_connection(runtime, "owner-a")
        emails = [f"user{i}@example.com" for i in range(40)]
        # Every address twice, the copy in another case and 40 rows later (another chunk).
        csv_text = "email\n" + "".join(f"{e}\n" for e in emails)
        csv_text += "".join(f"{e.upper()}\n" for e in emails)
        body = (await post_csv(client, auth, csv_text)).json()
        assert (body["rows"], body["created"], body["rejected"], body["queued"]) == (80, 40, 40, 40)
        assert body["errors"] == [
            {"row": i + 42, "reason": f"duplicate email; first seen on row {i + 2}"}
            for i in range(40)
        ]
        rows = await fetch(runtime, "SELECT count(*) AS n FROM contacts")
        assert rows == [{"n": 40}]


class TestChunkRetry:
    async def test_deadlocked_chunk_is_rolled_back_and_replayed(
        self,
        client: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        from sqlalchemy import text

        real = importer.import_service.apply_chunk
        calls = 0

        async def deadlock_once(session: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            outcome = await real(session, **kwargs)  # writes everything, then the DB fails
            if calls == 1:
                await session.execute(
                    text("DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = '40P01'; END $$")
                )
            return outcome

        monkeypatch.setattr(importer.import_service, "apply_chunk", deadlock_once)
        monkeypatch.setattr(importer, "IMPORT_CONNECTIONS", 1)
        await add_connection(runtime, "owner-a")
        body = (await post_csv(client, auth, "email\na@example.com\nb@example.com\n")).json()
        assert calls == 2
        assert (body["created"], body["queued"], body["rejected"]) == (2, 2, 0)
        assert await fetch(runtime, "SELECT count(*) AS n FROM contact_changes") == [{"n": 2}]
        assert await fetch(runtime, "SELECT count(*) AS n FROM sync_queue") == [{"n": 2}]


class TestUpdateRules:
    async def test_empty_cells_keep_values_and_tags_are_added(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await create_contact(
            client,
            auth,
            email="ann@example.com",
            first_name="Ann",
            last_name="Lee",
            phone="123",
            tags=["Donor"],
            newsletter_opt_in=True,
            kind="client",
        )
        csv_text = "email,first_name,last_name,phone,tags,kind,newsletter_opt_in\n"
        csv_text += "ann@example.com,,Smith,,donor;vip,,\n"
        body = (await post_csv(client, auth, csv_text)).json()
        assert (body["updated"], body["unchanged"]) == (1, 0)
        ann = await contact(runtime, "owner-a", "ann@example.com")
        assert (ann["first_name"], ann["last_name"], ann["phone"], ann["kind"]) == (
            "Ann",
            "Smith",
            "123",
            "client",
        )
        assert ann["tags"] == ["Donor", "vip"]
        assert ann["newsletter_opt_in"] is True
        (change,) = await fetch(
            runtime, "SELECT fields FROM contact_changes WHERE source = 'import'"
        )
        assert change["fields"] == {
            "before": {"last_name": "Lee", "tags": ["Donor"]},
            "after": {"last_name": "Smith", "tags": ["Donor", "vip"]},
        }

    async def test_opt_out_records_when(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await create_contact(client, auth, email="olly@example.com", newsletter_opt_in=True)
        before = await contact(runtime, "owner-a", "olly@example.com")
        body = (await post_csv(client, auth, "email,opt in\nolly@example.com,N\n")).json()
        assert body["updated"] == 1
        olly = await contact(runtime, "owner-a", "olly@example.com")
        assert olly["newsletter_opt_in"] is False
        assert olly["newsletter_unsubscribed_at"] is not None
        assert olly["newsletter_changed_at"] > before["newsletter_changed_at"]

    async def test_company_is_imported_audited_and_queued(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await add_connection(runtime, "owner-a")
        await create_contact(client, auth, email="ann@example.com", company="Old Co")
        csv_text = "Email,Company Name\nann@example.com,New Co\nbo@example.com,Bo Ltd\n"
        csv_text += "cy@example.com,\n" + "dee@example.com," + "x" * 201 + "\n"
        body = (await post_csv(client, auth, csv_text)).json()
        assert body["columns"] == {"Email": "email", "Company Name": "company"}
        assert (body["created"], body["updated"], body["rejected"]) == (2, 1, 1)
        assert body["errors"][0]["row"] == 5 and "company" in body["errors"][0]["reason"]
        assert (await contact(runtime, "owner-a", "ann@example.com"))["company"] == "New Co"
        assert (await contact(runtime, "owner-a", "bo@example.com"))["company"] == "Bo Ltd"
        assert (await contact(runtime, "owner-a", "cy@example.com"))["company"] is None
        changes = await fetch(
            runtime,
            "SELECT op, fields FROM contact_changes WHERE source = 'import' ORDER BY id",
        )
        by_op = {c["op"]: c["fields"] for c in changes if c["op"] == "update"}
        assert by_op["update"] == {"before": {"company": "Old Co"}, "after": {"company": "New Co"}}
        created = [c["fields"]["after"]["company"] for c in changes if c["op"] == "create"]
        assert sorted(created, key=str) == ["Bo Ltd", None]
        queued = await fetch(runtime, "SELECT email_key FROM sync_queue ORDER BY email_key")
        assert [q["email_key"] for q in queued] == [
            "ann@example.com",
            "bo@example.com",
            "cy@example.com",
        ]
        # The same file again changes nothing.
        again = (await post_csv(client, auth, csv_text)).json()
        assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 3)


class TestTenantIsolation:
    async def test_import_for_a_never_touches_b(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        b_ada = await create_contact(
            client, auth, "owner-b", email="ada@example.com", first_name="B's Ada"
        )
        await add_connection(runtime, "owner-b")
        await fetch(runtime, "DELETE FROM sync_queue")
        body = (await post_csv(client, auth, MIXED_CSV, owner="owner-a")).json()
        assert body["created"] == 4  # ada, grace, dave, erin are all new for owner-a
        still = await contact(runtime, "owner-b", "ada@example.com")
        assert (str(still["id"]), still["first_name"], still["version"]) == (
            b_ada["id"],
            "B's Ada",
            1,
        )
        assert await fetch(runtime, "SELECT * FROM sync_queue") == []
        b_changes = await fetch(
            runtime, "SELECT op, source FROM contact_changes WHERE owner_id = 'owner-b'"
        )
        assert b_changes == [{"op": "create", "source": "api"}]


class TestFileProblems:
    @pytest.mark.parametrize(
        ("body", "detail"),
        [
            (b"", "empty"),
            (b"\n\n  \n", "empty"),
            (b"name,phone\nAda,123\n", "no email column"),
            (b"email,E-mail\na@example.com,b@example.com\n", "both hold email"),
            (b"PK\x03\x04 rest of a zip", "Excel workbook"),
        ],
    )
    async def test_file_level_problems_are_422_and_write_nothing(
        self,
        client: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        body: bytes,
        detail: str,
    ) -> None:
        response = await post_csv(client, auth, body)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert detail in response.json()["detail"]
        assert await fetch(runtime, "SELECT * FROM contacts") == []

    async def test_header_only_is_zero_rows(self, client: httpx.AsyncClient, auth: Auth) -> None:
        response = await post_csv(client, auth, "email,first_name\n")
        assert response.status_code == 200
        assert response.json()["rows"] == 0
        assert response.json()["created"] == 0

    async def test_over_the_size_limit_is_413(
        self,
        client: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(importer, "MAX_UPLOAD_BYTES", 100)
        big = "email\n" + "".join(f"user{i}@example.com\n" for i in range(20))
        response = await post_csv(client, auth, big)
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"

        async def chunked() -> Any:  # no Content-Length: the limit holds while streaming
            for line in big.splitlines(keepends=True):
                yield line.encode()

        response = await client.post(
            "/api/contacts/import",
            content=chunked(),
            headers={**auth(), "Content-Type": "text/csv"},
        )
        assert response.status_code == 413
        response = await client.post(
            "/api/contacts/import",
            files={"file": ("c.csv", big.encode(), "text/csv")},
            headers=auth(),
        )
        assert response.status_code == 413
        assert await fetch(runtime, "SELECT * FROM contacts") == []

    async def test_other_media_types_are_415(self, client: httpx.AsyncClient, auth: Auth) -> None:
        response = await client.post(
            "/api/contacts/import", json={"email": "a@example.com"}, headers=auth()
        )
        assert response.status_code == 415

    async def test_no_token_is_401(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/api/contacts/import", content=b"email\n", headers={"Content-Type": "text/csv"}
        )
        assert response.status_code == 401


class TestEncodingsAndDialects:
    async def test_windows_1252_semicolons_and_bom(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        legacy = "E-Mail;Vorname;Ort\nzoe@example.com;Zoë;Köln\n".encode("cp1252")
        body = (await post_csv(client, auth, legacy)).json()
        assert (body["created"], body["encoding"]) == (1, "windows-1252")
        assert body["ignored_columns"] == ["Vorname", "Ort"]
        bom = '\ufeffemail,first_name,tags\nyu@example.com,Yū,"a;b"\n'.encode()
        body = (await post_csv(client, auth, bom)).json()
        assert (body["created"], body["encoding"]) == (1, "utf-8")
        yu = await contact(runtime, "owner-a", "yu@example.com")
        assert (yu["first_name"], yu["tags"]) == ("Yū", ["a", "b"])

    async def test_quoted_multiline_cells_keep_spreadsheet_row_numbers(
        self, client: httpx.AsyncClient, auth: Auth
    ) -> None:
        csv_text = 'email,addr1\na@example.com,"1 Main St\nFlat 2"\nbad,x\n'
        body = (await post_csv(client, auth, csv_text)).json()
        assert body["created"] == 1
        assert [e["row"] for e in body["errors"]] == [3]


class TestCli:
    async def test_import_command_prints_counts(
        self,
        client: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        settings: Settings,
        tmp_path: Path,
    ) -> None:
        await existing_pair(client, auth)
        path = tmp_path / "contacts.csv"
        path.write_text(MIXED_CSV)
        env = {
            **os.environ,
            "DATABASE_URL": str(settings.DATABASE_URL),
            "ENVIRONMENT": "test",
            "AUTH_JWT_SECRET": TEST_JWT_SECRET,
            "ENCRYPTION_KEYS": settings.ENCRYPTION_KEYS[0].get_secret_value(),
            "AUTO_MIGRATE": "false",
            "DATA_DIR": str(tmp_path / "data"),
            "LOG_LEVEL": "WARNING",
            "COLUMNS": "120",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "import",
            str(path),
            "--owner",
            "owner-a",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
        text = out.decode()
        assert proc.returncode == 0, text
        counts = {
            line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in text.splitlines()
            if line.count("│") >= 3
        }
        assert {k: counts.get(k) for k in ("created", "updated", "unchanged", "rejected")} == {
            "created": "2",
            "updated": "1",
            "unchanged": "1",
            "rejected": "5",
        }
        assert "rows/s" in text
        assert "duplicate email; first seen on row 2" in text
        changes = await fetch(
            runtime, "SELECT count(*) AS n FROM contact_changes WHERE source = 'import'"
        )
        assert changes == [{"n": 3}]

        bad = tmp_path / "bad.csv"
        bad.write_text("name\nAda\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "import",
            str(bad),
            "--owner",
            "owner-a",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode == 1
        assert "no email column" in out.decode()


def test_header_aliases_map_common_exports() -> None:
    assert importer.header_field("  Email Address ") == "email"
    assert importer.header_field("ZIP/Postal code") == "zip"
    assert importer.header_field("Address Line 1") == "addr1"
    assert importer.header_field("Company Name") == "company"
    assert importer.header_field("Organization") == "company"
    assert importer.header_field("favourite colour") is None


@pytest.mark.parametrize(
    "email",
    [
        "Ada.Lovelace@Example.COM",
        "  grace+tag@EXAMPLE.org ",
        "o'brien@example.co.uk",
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        '"quoted local"@example.com',
        "zoë@example.com",
        "user@bücher.example",
        "user@BÜCHER.example",
        "user@localhost",
        "user@example",
        "user@[192.0.2.1]",
        "user@-bad-.example.com",
        "user@exa_mple.com",
        "x" * 250 + "@example.com",
        "x" * 70 + "@example.com",
        "no-at-sign",
        "two@@example.com",
        "Ada <ada@example.com>",
        "user@example.com.",
    ],
)
def test_cached_email_normaliser_agrees_with_the_api(email: str) -> None:
    from app.contacts.schemas import normalise_email

    normaliser = importer.EmailNormaliser()
    normaliser("warm@example.com")  # the cache holds example.com before the case under test

    def outcome(fn: Callable[[str], str | None]) -> tuple[str, str | None]:
        try:
            return "ok", fn(email)
        except ValueError as exc:
            return "error", str(exc)

    assert outcome(normaliser) == outcome(normalise_email)
    assert outcome(normaliser) == outcome(normaliser)  # cached the second time
