"""B4, in-process: CPU time of one POST /api/contacts, without HTTP or other processes.

The B4 load test measures throughput on a shared 2-core machine, where everything else that
runs moves the figures. This measures what the write path itself costs: the app runs
in-process (httpx's ASGI transport, no sockets to the API), requests go one at a time, and
the process's own CPU time is divided by the number of requests. PostgreSQL runs elsewhere,
so database time shows only as the Python side of each round trip.

    .venv/bin/python bench/b4_cpu_per_request.py            # 3 runs of 500 requests
    .venv/bin/python bench/b4_cpu_per_request.py --profile  # and a cProfile of one run
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import execute, machine_facts, median, scratch_database, write_results

OWNER = "b4-outbox"


async def _run(url: str, requests: int, *, owner: str) -> dict[str, float]:
    import httpx
    from asgi_lifespan import LifespanManager
    from cryptography.fernet import Fernet

    from app.auth.tokens import issue_token
    from app.config import Settings
    from app.db import to_async_url
    from app.main import create_app, start_runtime

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        ENVIRONMENT="test",
        DATABASE_URL=to_async_url(url),
        AUTH_JWT_SECRET="b4-" + "x" * 40,
        ENCRYPTION_KEYS=[Fernet.generate_key().decode()],
        AUTO_MIGRATE=False,
        WORKER_IN_PROCESS=False,
        LOG_LEVEL="WARNING",
    )
    rt = await start_runtime(settings, migrate=False)
    app = create_app(settings, runtime=rt)
    headers = {"Authorization": f"Bearer {issue_token(settings, owner)}"}
    tag = uuid.uuid4().hex[:8]

    def body(i: int) -> dict[str, Any]:
        return {
            "email": f"cpu-{tag}-{i}@example.com",
            "first_name": "Bench",
            "tags": ["bench", "b4"],
            "newsletter_opt_in": True,
        }

    try:
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://b4"
            ) as client,
        ):
            for i in range(50):  # warm caches, pools and prepared statements
                await client.post("/api/contacts", json=body(-i - 1), headers=headers)
            cpu0 = time.process_time()
            for _ in range(requests):
                await client.get("/healthz")
            healthz = (time.process_time() - cpu0) / requests
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for i in range(requests):
                response = await client.post("/api/contacts", json=body(i), headers=headers)
                assert response.status_code == 201, response.text
            cpu = (time.process_time() - cpu0) / requests
            wall = (time.perf_counter() - wall0) / requests
    finally:
        await rt.engine.dispose()
    return {
        "post_cpu_ms": cpu * 1000,
        "post_wall_ms": wall * 1000,
        "healthz_cpu_ms": healthz * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--server-url", default=None)
    parser.add_argument("--profile", action="store_true", help="cProfile one more run")
    args = parser.parse_args()

    with scratch_database(args.server_url, "audience_sync_b4cpu") as db:
        asyncio.run(
            execute(
                db,
                """
                INSERT INTO connections (owner_id, provider, auth_kind, credentials, account_key,
                                         api_endpoint, audience_id, webhook_token, status)
                VALUES ($1, 'mailchimp', 'api_key', 'bench', 'bench', 'http://127.0.0.1:9',
                        'bench-audience', $2, 'active')
                """,
                OWNER,
                uuid.uuid4().hex,
            )
        )
        runs = []
        for n in range(args.runs):
            result = asyncio.run(_run(db, args.requests, owner=OWNER))
            runs.append(result)
            print(
                f"  run {n + 1}: POST {result['post_cpu_ms']:.2f} ms CPU "
                f"({result['post_wall_ms']:.2f} ms wall), /healthz {result['healthz_cpu_ms']:.2f} ms",
                flush=True,
            )
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            asyncio.run(_run(db, args.requests, owner=OWNER))
            profiler.disable()
            stats = pstats.Stats(profiler).sort_stats("cumulative")
            stats.print_stats(r"app/|sqlalchemy/ext/asyncio/session|solve_dependencies", 30)
        facts = machine_facts(db)
    summary = {key: median([r[key] for r in runs]) for key in runs[0]}
    print(
        f"B4 in-process POST /api/contacts (owner with a connection): "
        f"{summary['post_cpu_ms']:.2f} ms CPU per request, median of {args.runs} x {args.requests}"
    )
    print(f"B4 in-process GET /healthz: {summary['healthz_cpu_ms']:.2f} ms CPU per request")
    path = write_results(
        "b4_cpu_per_request",
        {"machine": facts, "parameters": vars(args), "summary": summary, "runs": runs},
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
