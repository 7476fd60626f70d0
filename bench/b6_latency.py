"""B6 — change-to-provider latency at idle (sandbox L0 = 0).

The service (API + in-process worker) and the sandbox run as their own processes. Contacts are
created one at a time through the API; latency = the time the sandbox finished the member's PUT
minus the time the client had the API's 201 (one clock: same machine). p50 / p99.

    .venv/bin/python -m bench.b6_latency --contacts 300 --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx

from app.sandbox.mailchimp import DEFAULT_API_KEY
from bench import harness


@contextlib.contextmanager
def service(db_url: str, sandbox_url: str, **env: str) -> Iterator[tuple[str, str]]:
    """`audience-sync serve` with its worker; yields (base URL, bearer token)."""
    port = harness.free_port()
    secret = "bench-secret-" + "x" * 40
    from cryptography.fernet import Fernet

    environ = {
        **os.environ,
        "ENVIRONMENT": "test",
        "DATABASE_URL": db_url,
        "AUTH_JWT_SECRET": secret,
        "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "MAILCHIMP_MODE": "sandbox",
        "MAILCHIMP_SANDBOX_URL": sandbox_url,
        "AUTO_MIGRATE": "false",
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        "DATA_DIR": tempfile.mkdtemp(prefix="bench-data-"),
        **env,
    }
    # BENCH_SERVICE_LOG=path keeps the service's log (LOG_LEVEL applies) for a post-mortem.
    log_path = os.environ.get("BENCH_SERVICE_LOG")
    sink = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=harness.ROOT,
        env=environ,
        stdout=sink,
        stderr=sink,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the service did not start")
            time.sleep(0.2)
        from app.auth.tokens import issue_token
        from app.config import Settings

        settings = Settings(
            _env_file=None,
            ENVIRONMENT="test",
            AUTH_JWT_SECRET=secret,  # type: ignore[call-arg]
            ENCRYPTION_KEYS=[environ["ENCRYPTION_KEYS"]],
        )
        yield base, issue_token(settings, "bench")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def one_run(db_url: str, sandbox: harness.SandboxProcess, n: int) -> dict[str, Any]:
    sandbox.reset()
    with (
        service(db_url, sandbox.url) as (base, token),
        httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as api,
    ):
        api.post(
            "/api/integrations/mailchimp/api-key", json={"api_key": DEFAULT_API_KEY}
        ).raise_for_status()
        stamp = int(time.time() * 1000)
        answered: dict[str, float] = {}
        for i in range(n):
            email = f"lat{stamp}-{i}@example.com"
            r = api.post(
                "/api/contacts", json={"email": email, "first_name": "L", "newsletter_opt_in": True}
            )
            r.raise_for_status()
            answered[hashlib.md5(email.encode()).hexdigest()] = time.time()
            time.sleep(0.02)  # idle between changes: this measures latency, not throughput
        time.sleep(1.0)
        log = sandbox.requests()["requests"]
    done = {}
    for entry in log:
        if entry["method"] == "PUT" and entry["status"] == 200:
            done.setdefault(entry["path"].rsplit("/", 1)[-1], entry["end"])
    latencies = [max(0.0, done[h] - t) * 1000 for h, t in answered.items() if h in done]
    missing = sum(1 for h in answered if h not in done)
    return {
        "n": n,
        "missing": missing,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    with harness.scratch_database() as db_url, harness.sandbox_process() as sandbox:
        for _ in range(args.runs):
            result = one_run(db_url, sandbox, args.contacts)
            runs.append(result)
            print(
                f"B6 run: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, missing {result['missing']}",
                flush=True,
            )
    p50 = harness.median([r["p50_ms"] for r in runs])
    p99 = harness.median([r["p99_ms"] for r in runs])
    print(f"B6 change-to-provider latency: p50 {p50:.1f} ms (bar 25), p99 {p99:.1f} ms (bar 100)")
    print(
        f"results: {harness.write_result('b6_latency', {'runs': runs, 'p50_ms': p50, 'p99_ms': p99})}"
    )


if __name__ == "__main__":
    main()
