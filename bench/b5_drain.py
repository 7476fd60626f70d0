"""B5, second half — a CSV import, then drained: seconds until the sandbox holds every contact.

The owner is connected to the sandbox (its own process, L(b) = 200 ms + 2 ms·b, 10 in flight,
the B2 latency model). A standalone worker (`audience-sync worker`, MAILCHIMP_MAX_CONCURRENCY
10) runs from the start; `audience-sync import FILE --owner ID` runs as its own process. The
clock starts with the import; it stops when the audience's member count reaches the number of
consenting rows. Bound for the drain: rows / (10 · 500 / L(500)).

    .venv/bin/python -m bench.b5_drain --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.db import create_engine
from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID
from bench import harness
from bench.b5_import import OWNER, generate_csv

CAP = 10
L0_MS, C_MS, BATCH = 200.0, 2.0, 500


def consenting_rows(path: Path) -> int:
    """Rows of the file that will become subscribed members (valid email, opted in)."""
    with path.open(encoding="utf-8") as f:
        return sum(
            1
            for row in csv.DictReader(f)
            if row["newsletter_opt_in"].lower() in ("true", "yes", "1", "y")
        )


def member_count(sandbox_url: str) -> int:
    """Members in the audience, read through the Marketing API like any client."""
    while True:
        r = httpx.get(
            f"{sandbox_url}/3.0/lists/{DEFAULT_LIST_ID}",
            params={"fields": "stats.member_count"},
            auth=("bench", DEFAULT_API_KEY),
            timeout=30,
        )
        if r.status_code != 429:  # the worker may hold all 10 of the account's slots
            r.raise_for_status()
            return int(r.json()["stats"]["member_count"])
        time.sleep(0.1)


def run(
    db_url: str, sandbox: harness.SandboxProcess, csv_path: Path, expected: int
) -> dict[str, Any]:
    settings = harness.bench_settings(db_url, sandbox.url)
    engine = create_engine(db_url, pool_size=2)

    async def prepare() -> None:
        from sqlalchemy import text

        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "TRUNCATE contacts, contact_changes, sync_queue, sync_state, connections, sync_runs CASCADE"
                )
            )
        await harness.connect_owner(engine, settings, OWNER)
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM sync_queue"))
            await conn.execute(
                text("DELETE FROM sync_runs")
            )  # no initial reconcile: measure the drain
        await engine.dispose()

    asyncio.run(prepare())
    env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "DATABASE_URL": db_url,
        "AUTH_JWT_SECRET": settings.AUTH_JWT_SECRET.get_secret_value(),
        "ENCRYPTION_KEYS": settings.ENCRYPTION_KEYS[0].get_secret_value(),
        "MAILCHIMP_MODE": "sandbox",
        "MAILCHIMP_SANDBOX_URL": sandbox.url,
        "MAILCHIMP_MAX_CONCURRENCY": str(CAP),
        "AUTO_MIGRATE": "false",
        "LOG_LEVEL": "WARNING",
        "DATA_DIR": tempfile.mkdtemp(prefix="b5-drain-"),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        cwd=harness.ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2.0)  # the worker is up and listening
        start = time.perf_counter()
        imp = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "import", str(csv_path), "--owner", OWNER],
            cwd=harness.ROOT,
            env={**env, "COLUMNS": "120"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(imp.pid, 0)
        imported = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit("import failed")
        while (held := member_count(sandbox.url)) < expected:
            if time.perf_counter() - start > 3600:
                raise SystemExit(f"not drained after an hour: {held}/{expected}")
            time.sleep(0.5)
        drained = time.perf_counter() - start
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    bound = CAP * BATCH / ((L0_MS + C_MS * BATCH) / 1000.0)
    return {
        "rows_consenting": expected,
        "import_seconds": imported,
        "import_peak_rss_mb": usage.ru_maxrss / 1024,
        "seconds_until_sandbox_holds_all": drained,
        "drain_bound_seconds": expected / bound,
        "ratio_to_bound": (expected / bound) / drained,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "b5")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"latency_model_ms": {"L0": L0_MS, "c": C_MS}, "sizes": {}}
    with (
        harness.scratch_database() as db_url,
        harness.sandbox_process(max_in_flight=CAP) as sandbox,
    ):
        sandbox.configure(latency_ms=L0_MS, latency_per_member_ms=C_MS, request_log_size=1000)
        for size in args.sizes:
            path = args.data_dir / f"contacts-{size}.csv"
            if not path.exists():
                generate_csv(path, size)
            sandbox.reset()
            result = run(db_url, sandbox, path, consenting_rows(path))
            out["sizes"][str(size)] = result
            print(
                f"B5 drain {size} rows: imported in {result['import_seconds']:.1f} s, sandbox holds all"
                f" {result['rows_consenting']} consenting after {result['seconds_until_sandbox_holds_all']:.1f} s"
                f" (drain bound {result['drain_bound_seconds']:.1f} s)",
                flush=True,
            )
    print(f"results: {harness.write_result('b5_drain', out)}")


if __name__ == "__main__":
    main()
