"""B5 — CSV import: `audience-sync import FILE --owner ID` on 100,000 and 1,000,000 rows.

For each size: a deterministic CSV is generated (cached), a scratch database on the local
server is migrated, the owner gets a Mailchimp connection with an audience (so every row
also writes its sync-queue row, as in production), and the import command runs as a child
process, once per run, into an empty contacts table. Measured: wall seconds of the command
(start-up included), rows/s, the child's CPU seconds and peak RSS (getrusage via
os.wait4), and the load average (the machine is shared). In the same run, the bound: the
writes no import can avoid, done raw — the same rows COPYed straight into contacts,
contact_changes and sync_queue with their indexes, no lookups or checks — as rows/s; the
ratio says how close the import gets. After the timed runs, the same file is imported once
more (every row unchanged: nothing written).

The second half of B5 — seconds until the sandbox holds all — needs the sync worker
(issue 4) and is not measured here yet.

    python bench/b5_import.py                       # 100k ×3, 1M ×1
    python bench/b5_import.py --sizes 100000 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OWNER = "bench-owner"
BARS = {100_000: 10.0, 1_000_000: 90.0}  # seconds
RSS_BAR_MB = 300.0

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]
DOMAINS = ["example.com", "example.org", "mail.example.net", "corp.example.co.uk"]
CITIES = ["London", "Berlin", "Paris", "Lisbon", "Oslo", "Austin", ""]
TAGS = ["vip", "donor", "newsletter", "webinar-2026", "partner", "press"]


def generate_csv(path: Path, rows: int, seed: int = 5) -> None:
    """A deterministic contacts file of `rows` data rows."""
    rnd = random.Random(seed)
    tmp = path.with_suffix(".part")
    with tmp.open("w", encoding="utf-8", newline="") as out:
        out.write("email,first_name,last_name,phone,tags,kind,newsletter_opt_in,city,country\n")
        for i in range(rows):
            first, last = rnd.choice(FIRST), rnd.choice(LAST)
            email = f"{first}.{last}.{i}@{rnd.choice(DOMAINS)}".lower()
            tags = ";".join(rnd.sample(TAGS, rnd.randint(0, 2)))
            kind = rnd.choice(("client", "lead", "contact", ""))
            opt_in = rnd.choice(("yes", "no", "true", "1", ""))
            phone = f"+44 20 {rnd.randint(1000, 9999)} {rnd.randint(1000, 9999)}"
            out.write(
                f"{email},{first},{last},{phone},{tags},{kind},{opt_in},{rnd.choice(CITIES)},GB\n"
            )
    tmp.replace(path)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def prepare_run(db_url: str) -> None:
    """Empty tables and one connection with an audience for the owner."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "TRUNCATE contacts, contact_changes, sync_queue, sync_state, connections CASCADE"
        )
        await conn.execute(
            """
            INSERT INTO connections (owner_id, provider, auth_kind, credentials, account_key,
                                     api_endpoint, audience_id, audience_name, webhook_token,
                                     status)
            VALUES ($1, 'mailchimp', 'api_key', 'x', 'bench', 'http://sandbox', 'aud1',
                    'Bench', $2, 'active')
            """,
            OWNER,
            uuid.uuid4().hex,
        )
        await conn.execute("VACUUM ANALYZE contacts")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def db_counts(db_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM contacts WHERE owner_id = $1) AS contacts,
                   (SELECT count(*) FROM contact_changes WHERE source = 'import') AS changes,
                   (SELECT count(*) FROM sync_queue WHERE priority = 1) AS queued
            """,
            OWNER,
        )
        assert row is not None
        return dict(row)
    finally:
        await conn.close()


async def write_bound(db_url: str, csv_path: Path) -> float:
    """rows/s of the writes an import cannot avoid, done raw: the same parsed rows COPYed
    straight into contacts, contact_changes (one create row each) and sync_queue, in chunks
    of 10,000, one transaction each — no lookups, no comparisons, no staging. Only the
    COPYs are timed (parsing is not)."""
    from app.contacts.import_repository import STAGE_COLUMNS
    from app.contacts.importer import inspect_csv, parse_chunks

    contact_columns = list(STAGE_COLUMNS[1:])  # the staged record without its row number

    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("TRUNCATE contacts, contact_changes, sync_queue")
        connection_id = await conn.fetchval("SELECT id FROM connections LIMIT 1")
        seconds = 0.0
        rows = 0
        with csv_path.open("rb") as binary:
            layout = inspect_csv(binary)
            for chunk in parse_chunks(binary, layout):
                contacts, changes, queue = [], [], []
                for rec in chunk.records:
                    ident = uuid.uuid4()
                    fields = dict(zip(contact_columns, rec[1:], strict=True))
                    fields["kind"] = fields["kind"] or "contact"
                    fields["tags"] = fields["tags"] or []
                    fields["newsletter_opt_in"] = bool(fields["newsletter_opt_in"])
                    contacts.append((ident, OWNER, *fields.values()))
                    changes.append(
                        (ident, OWNER, "create", json.dumps({"after": fields}), "import", OWNER)
                    )
                    queue.append((connection_id, rec[1].lower(), ident, 1))
                started = time.perf_counter()
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "contacts", records=contacts, columns=["id", "owner_id", *contact_columns]
                    )
                    await conn.copy_records_to_table(
                        "contact_changes",
                        records=changes,
                        columns=["contact_id", "owner_id", "op", "fields", "source", "actor"],
                    )
                    await conn.copy_records_to_table(
                        "sync_queue",
                        records=queue,
                        columns=["connection_id", "email_key", "contact_id", "priority"],
                    )
                seconds += time.perf_counter() - started
                rows += len(contacts)
        await conn.execute("TRUNCATE contacts, contact_changes, sync_queue")
        return rows / seconds
    finally:
        await conn.close()


def run_import(db_url: str, csv_path: Path, data_dir: Path, log: Path) -> dict[str, float]:
    """The import command as a child process: wall seconds, its CPU seconds, its peak RSS."""
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "DATA_DIR": str(data_dir),
        "AUTO_MIGRATE": "false",
        "LOG_LEVEL": "WARNING",
        "COLUMNS": "120",
    }
    cmd = [sys.executable, "-m", "app.cli", "import", str(csv_path), "--owner", OWNER]
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"import failed ({proc.returncode}); see {log}")
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "load_average_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3, help="runs per size below 1M")
    parser.add_argument("--runs-large", type=int, default=1, help="runs per size of 1M+")
    parser.add_argument(
        "--server",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server URL; a scratch database is created there and dropped",
    )
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "b5")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from sqlalchemy.engine import make_url

    from app.db import to_async_url
    from app.migrate import upgrade_head

    args.data_dir.mkdir(parents=True, exist_ok=True)
    name = f"b5_import_{os.getpid()}"
    server = make_url(args.server).set(drivername="postgresql")
    db_url = server.set(database=name).render_as_string(hide_password=False)
    admin_url = server.render_as_string(hide_password=False)
    asyncio.run(admin(admin_url, f'CREATE DATABASE "{name}"'))
    results: dict[str, Any] = {
        "benchmark": "B5",
        "started_at": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "sizes": [],
    }
    try:
        upgrade_head(to_async_url(db_url))
        results["machine"]["postgres"] = asyncio.run(_server_version(db_url))
        for rows in args.sizes:
            csv_path = args.data_dir / f"contacts-{rows}.csv"
            if not csv_path.exists():
                print(f"generating {csv_path} …", flush=True)
                generate_csv(csv_path, rows)
            runs = args.runs if rows < 1_000_000 else args.runs_large
            timings = []
            for i in range(runs):
                asyncio.run(prepare_run(db_url))
                timing = run_import(db_url, csv_path, args.data_dir, args.data_dir / "import.log")
                counts = asyncio.run(db_counts(db_url))
                assert counts == {"contacts": rows, "changes": rows, "queued": rows}, counts
                timing["rows_per_s"] = rows / timing["seconds"]
                timings.append(timing)
                print(
                    f"B5 run {i + 1}/{runs} {rows:,} rows: {timing['seconds']:.2f} s,"
                    f" {timing['rows_per_s']:,.0f} rows/s, importer CPU"
                    f" {timing['cpu_seconds']:.1f} s, peak RSS {timing['peak_rss_mb']:.0f} MB,"
                    f" load average {timing['load_average_1m']:.1f}",
                    flush=True,
                )
            # The same file again: every row unchanged, nothing written.
            again = run_import(db_url, csv_path, args.data_dir, args.data_dir / "reimport.log")
            after = asyncio.run(db_counts(db_url))
            assert after == {"contacts": rows, "changes": rows, "queued": rows}, after
            bound = asyncio.run(write_bound(db_url, csv_path))
            seconds = statistics.median(t["seconds"] for t in timings)
            rate = rows / seconds
            rss = max(t["peak_rss_mb"] for t in timings + [again])
            bar = BARS.get(rows)
            ok = (bar is None or seconds <= bar) and rss <= RSS_BAR_MB
            entry = {
                "rows": rows,
                "runs": timings,
                "median_seconds": seconds,
                "rows_per_s": rate,
                "peak_rss_mb": rss,
                "reimport_seconds": again["seconds"],
                "reimport_rows_per_s": rows / again["seconds"],
                "raw_write_bound_rows_per_s": bound,
                "ratio_to_bound": rate / bound,
                "bar_seconds": bar,
                "bar_rss_mb": RSS_BAR_MB,
                "pass": ok,
            }
            results["sizes"].append(entry)
            print(
                f"B5 import {rows:,} rows: {seconds:.2f} s (median of {runs}),"
                f" {rate:,.0f} rows/s, peak RSS {rss:.0f} MB;"
                f" bar {f'≤ {bar:.0f} s and ' if bar else ''}≤ {RSS_BAR_MB:.0f} MB:"
                f" {'PASS' if ok else 'FAIL'}",
                flush=True,
            )
            print(
                f"B5 bound {rows:,} rows: raw COPY of the same rows, audit and queue rows"
                f" {bound:,.0f} rows/s; import ÷ bound = {rate / bound:.2f}",
                flush=True,
            )
            print(
                f"B5 re-import {rows:,} unchanged rows: {again['seconds']:.2f} s,"
                f" {rows / again['seconds']:,.0f} rows/s",
                flush=True,
            )
    finally:
        if not args.keep:
            asyncio.run(admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"b5_import-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out.relative_to(ROOT)}")


async def _server_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
