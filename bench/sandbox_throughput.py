"""Throughput of the Mailchimp sandbox alone, with L0 = 0: is it ever the bottleneck?

The sandbox runs as its own process (`audience-sync sandbox mailchimp`, uvicorn + uvloop +
httptools), exactly as a developer starts it. The load comes from separate client processes
(aiohttp, keep-alive) so the client's CPU does not share the server's core; in total they keep
`--in-flight` requests open (10 = the per-account cap), split over `--clients` processes.

Figures (each the median of `--runs` runs, the sandbox reset before each):
  - single-member PUTs/s: upserts of distinct new members, one `PUT /members/{hash}` each;
  - batch members/s: `POST /lists/{id}` with 500 members a call;
  - server CPU per request, from the server process's own CPU time (so the rate it could
    reach with a core to itself, whatever the client costs).

    .venv/bin/python bench/sandbox_throughput.py --runs 3

Prints one line per figure and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- load generator (runs in its own process) ---------------------------------------------


async def _load(
    base: str, kind: str, start: int, count: int, in_flight: int, batch: int
) -> tuple[int, int, float, float]:
    import aiohttp
    import orjson

    headers = {"Content-Type": "application/json"}
    auth = aiohttp.BasicAuth("bench", DEFAULT_API_KEY)
    connector = aiohttp.TCPConnector(limit=in_flight)
    step = batch if kind == "batch" else 1
    # Requests are built before the clock starts and answers are not decoded: the load
    # generator must cost as little CPU as possible (the machine has 2 cores).
    requests: list[tuple[str, bytes]] = []
    for first in range(start, start + count, step):
        if kind == "put":
            email = f"bench{first}@example.com"
            digest = hashlib.md5(email.encode()).hexdigest()
            body = {
                "email_address": email,
                "status_if_new": "subscribed",
                "merge_fields": {"FNAME": "Bench", "LNAME": str(first)},
            }
            path = f"/3.0/lists/{DEFAULT_LIST_ID}/members/{digest}"
            requests.append((path, orjson.dumps(body)))
        else:
            members = [
                {
                    "email_address": f"bench{i}@example.com",
                    "status": "subscribed",
                    "merge_fields": {"FNAME": "Bench", "LNAME": str(i)},
                }
                for i in range(first, min(first + step, start + count))
            ]
            payload = orjson.dumps({"members": members, "update_existing": True})
            requests.append((f"/3.0/lists/{DEFAULT_LIST_ID}", payload))
    method = "PUT" if kind == "put" else "POST"
    async with aiohttp.ClientSession(base, auth=auth, connector=connector) as session:
        ok = 0
        failed = 0
        pending = iter(requests)

        async def worker() -> None:
            nonlocal ok, failed
            for path, payload in pending:
                async with session.request(method, path, data=payload, headers=headers) as response:
                    answer = await response.read()
                    good = response.status == 200 and (
                        kind == "put" or b'"error_count":0' in answer[-200:]
                    )
                if good:
                    ok += 1
                else:
                    failed += 1

        began = time.perf_counter()
        cpu = time.process_time()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return ok, failed, time.perf_counter() - began, time.process_time() - cpu


def _client_process(
    base: str,
    kind: str,
    start: int,
    count: int,
    in_flight: int,
    batch: int,
    barrier: Any,
    out: Any,
) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    barrier.wait()
    out.put(asyncio.run(_load(base, kind, start, count, in_flight, batch)))


# -- orchestration ---------------------------------------------------------------------


def _request(base: str, method: str, path: str) -> dict[str, Any]:
    import urllib.request

    req = urllib.request.Request(f"{base}{path}", method=method)
    token = f"bench:{DEFAULT_API_KEY}".encode()
    import base64

    req.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    with urllib.request.urlopen(req, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body else {}


def start_server(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "app.cli", "sandbox", "mailchimp", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            _request(base, "GET", "/3.0/ping")
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the sandbox did not start")


def run_once(
    base: str,
    server: psutil.Process,
    kind: str,
    total: int,
    clients: int,
    in_flight: int,
    batch: int,
) -> dict[str, Any]:
    _request(base, "POST", "/_control/reset")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(clients + 1)
    out = ctx.Queue()
    share = total // clients
    if kind == "batch":
        share -= share % batch
    procs = []
    per_client = max(1, in_flight // clients)
    for i in range(clients):
        proc = ctx.Process(
            target=_client_process,
            args=(base, kind, i * share, share, per_client, batch, barrier, out),
        )
        proc.start()
        procs.append(proc)
    cpu_before = server.cpu_times()
    barrier.wait()
    began = time.perf_counter()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - began
    cpu_after = server.cpu_times()
    for proc in procs:
        proc.join()
    ok = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    requests = ok + failed
    members = ok * (batch if kind == "batch" else 1)
    server_cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    client_cpu = sum(r[3] for r in results)
    stats = _request(base, "GET", f"/3.0/lists/{DEFAULT_LIST_ID}?fields=stats.member_count")
    return {
        "kind": kind,
        "requests": requests,
        "failed": failed,
        "members": members,
        "seconds": wall,
        "requests_per_s": requests / wall,
        "members_per_s": members / wall,
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_request": server_cpu / requests * 1e6,
        "server_cpu_us_per_member": server_cpu / members * 1e6,
        "client_cpu_s": client_cpu,
        "client_cpu_us_per_request": client_cpu / requests * 1e6,
        "machine_load_1m": os.getloadavg()[0],
        "held_after": stats["stats"]["member_count"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--puts", type=int, default=20_000, help="single-member PUTs per run")
    parser.add_argument("--batch-members", type=int, default=200_000, help="members per run")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument("--in-flight", type=int, default=10)
    args = parser.parse_args()

    port = free_port()
    proc = start_server(port)
    base = f"http://127.0.0.1:{port}"
    server = psutil.Process(proc.pid)
    runs: dict[str, list[dict[str, Any]]] = {"put": [], "batch": []}
    try:
        for _ in range(args.runs):
            runs["put"].append(
                run_once(base, server, "put", args.puts, args.clients, args.in_flight, 1)
            )
            runs["batch"].append(
                run_once(
                    base,
                    server,
                    "batch",
                    args.batch_members,
                    args.clients,
                    args.in_flight,
                    args.batch_size,
                )
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    figures = {
        "single_put_per_s": med("put", "requests_per_s"),
        "single_put_server_cpu_us": med("put", "server_cpu_us_per_request"),
        "batch_members_per_s": med("batch", "members_per_s"),
        "batch_requests_per_s": med("batch", "requests_per_s"),
        "batch_server_cpu_us_per_member": med("batch", "server_cpu_us_per_member"),
    }
    for kind in runs:
        for r in runs[kind]:
            if r["failed"] or r["held_after"] != r["members"]:
                print(f"WARNING: {kind} run failed={r['failed']} held={r['held_after']}")
    n = args.runs
    print(
        f"sandbox single-member PUT: {figures['single_put_per_s']:,.0f} req/s "
        f"(bar 2,000; median of {n}; {args.in_flight} in flight, {args.clients} client proc)"
    )
    print(
        f"sandbox single-member PUT server CPU: {figures['single_put_server_cpu_us']:,.0f} us/req "
        f"(= {1e6 / figures['single_put_server_cpu_us']:,.0f} req/s per server core)"
    )
    print(
        f"sandbox batch subscribe: {figures['batch_members_per_s']:,.0f} members/s "
        f"(bar 50,000; {args.batch_size}/call, {figures['batch_requests_per_s']:,.1f} calls/s; "
        f"median of {n})"
    )
    print(
        f"sandbox batch server CPU: {figures['batch_server_cpu_us_per_member']:,.1f} us/member "
        f"(= {1e6 / figures['batch_server_cpu_us_per_member']:,.0f} members/s per server core)"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"sandbox_throughput-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "sandbox_throughput",
                "at": stamp,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "args": vars(args),
                "figures": figures,
                "runs": runs,
            },
            indent=2,
        )
    )
    print(f"results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
