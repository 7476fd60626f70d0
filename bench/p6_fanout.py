"""P6 — fan-out: one owner connected to all four providers, `POST /api/contacts` at 32 clients.

The service (`audience-sync serve --no-worker`) and one worker (`audience-sync worker`) run
as their own processes on a scratch database, beside the four sandboxes (Mailchimp, Constant
Contact, ActiveCampaign, Mautic), each in its own process at its default (real) limits. One
owner is connected to each sandbox's default audience; another owner has no connection.

Arms, in this order every round (the fan-out leaves a backlog that must not overlap the
other arm):

- ``post/no-connection``: POST /api/contacts for the owner without a connection;
- ``post/fan-out``: the same for the owner connected to all four — each request commits the
  contact, its change row and four queue rows (one per provider), while the worker drains;
- then, once everything converged, ``post/fan-out, worker paused`` (diagnosis, no bar): the
  same with the worker stopped, to tell the write path's own cost from what the drain
  beside it takes of the machine (``--no-paused-arm`` skips it).

Figures: req/s of the fan-out ÷ req/s with no connection (bar ≥ 0.70); after the load stops,
once the queue is empty, every provider's dump compared with the database: each contact of
the owner present in the provider's audience, consenting, with its first name (bar 100 %).

    .venv/bin/python -m bench.p6_fanout                       # 32 clients, 30 s, 1 round
    .venv/bin/python -m bench.p6_fanout --duration 5 --converge-timeout 120   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench import harness
from bench.common import LoadSpec, machine_facts, run_load, scratch_database, service, write_results
from bench.common import median as _median

FANOUT_OWNER = "p6-fanout"
PLAIN_OWNER = "p6-no-connection"
PROVIDERS = ("mailchimp", "constantcontact", "activecampaign", "mautic")
BARS = {"throughput_ratio": 0.70, "converged": 1.0}


# --- sandboxes -------------------------------------------------------------------------------


@contextlib.contextmanager
def sandboxes() -> Any:
    """The four sandboxes, each in its own process; their base URLs by provider."""
    from bench.p1_activecampaign import ac_sandbox
    from bench.p5_mautic_drain import mautic_process
    from bench.p_constantcontact import cc_sandbox

    with (
        harness.sandbox_process() as mc,
        cc_sandbox() as cc,
        ac_sandbox() as ac,
        mautic_process() as mt,
    ):
        for url in (mc.url, cc, ac, mt):
            # Keep every request of the run in the log (the defaults keep fewer).
            with contextlib.suppress(httpx.HTTPError):
                httpx.patch(f"{url}/_control/config", json={"request_log_size": 1_000_000})
        yield {"mailchimp": mc.url, "constantcontact": cc, "activecampaign": ac, "mautic": mt}


def env_for(db: str, urls: dict[str, str], secret: str, key: str) -> dict[str, str]:
    """The environment of the service and the worker."""
    from app.sandbox.constantcontact import ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET

    return {
        "DATABASE_URL": db,
        "ENVIRONMENT": "production",
        "AUTH_JWT_SECRET": secret,
        "ENCRYPTION_KEYS": key,
        "AUTO_MIGRATE": "false",
        "WORKER_IN_PROCESS": "false",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        "DATA_DIR": tempfile.mkdtemp(prefix="p6-"),
        "SYNC_PULL_INTERVAL_SECONDS": "0",
        "MAILCHIMP_MODE": "sandbox",
        "MAILCHIMP_SANDBOX_URL": urls["mailchimp"],
        "CONSTANTCONTACT_MODE": "sandbox",
        "CONSTANTCONTACT_SANDBOX_URL": urls["constantcontact"],
        "CONSTANTCONTACT_CLIENT_ID": ROTATING_CLIENT_ID,
        "CONSTANTCONTACT_CLIENT_SECRET": ROTATING_CLIENT_SECRET,
        "ACTIVECAMPAIGN_MODE": "sandbox",
        "ACTIVECAMPAIGN_SANDBOX_URL": urls["activecampaign"],
        "MAUTIC_MODE": "sandbox",
        "MAUTIC_SANDBOX_URL": urls["mautic"],
    }


def settings_from(env: dict[str, str]) -> Any:
    """The same configuration as Settings, for the set-up done in this process."""
    from app.config import Settings
    from app.db import to_async_url

    values: dict[str, Any] = {k: v for k, v in env.items() if k not in ("DATABASE_URL",)}
    values["DATABASE_URL"] = to_async_url(env["DATABASE_URL"])
    values["ENVIRONMENT"] = "test"
    values["ENCRYPTION_KEYS"] = [env["ENCRYPTION_KEYS"]]
    return Settings(_env_file=None, **values)


async def connect_all(settings: Any, urls: dict[str, str]) -> dict[str, uuid.UUID]:
    """FANOUT_OWNER connected to every sandbox's default audience; connection ids."""
    from sqlalchemy import text

    from app.connections.service import connection_service
    from app.db import create_engine, make_sessionmaker, session_scope
    from app.providers import registry
    from app.providers.activecampaign.client import ActiveCampaignClient
    from app.providers.activecampaign.connect import ensure_fields

    engine = create_engine(str(settings.DATABASE_URL), pool_size=4)
    ids: dict[str, uuid.UUID] = {}
    try:
        for name in PROVIDERS:
            provider = registry.get(name)
            configured = provider.connect.configured(settings, provider.sandbox_seed())
            assert configured is not None, name
            _, account, audience = configured
            if name == "mautic":
                # The sandbox process starts without the seed's segment (no demo data): a
                # fresh one, as an admin would create it.
                from app.providers.base import Audience
                from bench.p5_mautic_drain import new_segment

                audience = Audience(id=new_segment(urls[name]), name="p6", member_count=0)
            if name == "activecampaign":
                # The default field map's custom fields, as a connect through the API makes them.
                async with httpx.AsyncHTTPTransport() as transport:
                    client = ActiveCampaignClient(
                        transport,
                        api_url=account.api_base,
                        api_key=str(account.credentials["api_key"]),
                    )
                    await ensure_fields(client, provider.mapping(settings).fields)
            async with session_scope(make_sessionmaker(engine)) as session:
                row = await connection_service.save(
                    session,
                    provider=provider,
                    settings=settings,
                    owner_id=FANOUT_OWNER,
                    account=account,
                    audience=audience,
                )
            ids[name] = uuid.UUID(str(row["id"]))
        async with engine.begin() as conn:
            # The write path and the drain are measured, not the connects' reconcile runs.
            await conn.execute(text("DELETE FROM sync_runs"))
            await conn.execute(text("DELETE FROM sync_queue"))
    finally:
        await engine.dispose()
    return ids


# --- convergence -----------------------------------------------------------------------------


async def _sql(db: str, query: str, *args: Any) -> list[Any]:
    import asyncpg

    from bench.common import libpq

    conn = await asyncpg.connect(libpq(db))
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def queue_depth(db: str) -> int:
    return int(asyncio.run(_sql(db, "SELECT count(*) AS n FROM sync_queue"))[0]["n"])


def expected(db: str) -> dict[str, str]:
    """The fan-out owner's contacts: email key → first name."""
    rows = asyncio.run(
        _sql(db, "SELECT email_key, first_name FROM contacts WHERE owner_id = $1", FANOUT_OWNER)
    )
    return {r["email_key"]: r["first_name"] or "" for r in rows}


def provider_view(name: str, url: str, audience: str) -> dict[str, tuple[bool, str]]:
    """What the sandbox holds: email key → (on our audience and consenting, first name)."""
    out: dict[str, tuple[bool, str]] = {}
    if name == "mailchimp":
        body = httpx.get(f"{url}/_control/lists/{audience}/members", timeout=300).json()
        for m in body["members"]:
            merge = m.get("merge_fields") or {}
            ok = m.get("status") == "subscribed"
            out[str(m["email_address"]).lower()] = (ok, str(merge.get("FNAME") or ""))
    elif name == "constantcontact":
        body = httpx.get(f"{url}/_control/contacts", timeout=300).json()
        for c in body["contacts"]:
            block = c.get("email_address") or {}
            ok = audience in (c.get("list_memberships") or []) and block.get(
                "permission_to_send"
            ) in ("implicit", "explicit")
            out[str(block.get("address", "")).lower()] = (ok, str(c.get("first_name") or ""))
    elif name == "activecampaign":
        body = httpx.get(f"{url}/_control/lists/{audience}/contacts", timeout=300).json()
        for c in body["contacts"]:
            ok = (c.get("lists") or {}).get(audience, {}).get("status") == 1
            out[str(c["email"]).lower()] = (ok, str(c.get("first_name") or ""))
    else:
        body = httpx.get(f"{url}/_control/contacts", timeout=300).json()
        for c in body["contacts"]:
            flat = (c.get("fields") or {}).get("all") or {}
            ok = int(audience) in (c.get("segments") or []) and not c.get("doNotContact")
            out[str(flat.get("email") or "").lower()] = (ok, str(flat.get("firstname") or ""))
    return out


def convergence(
    db: str, urls: dict[str, str], audiences: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Per provider: contacts of the database found there as they are here."""
    want = expected(db)
    out: dict[str, dict[str, Any]] = {}
    for name in PROVIDERS:
        have = provider_view(name, urls[name], audiences[name])
        equal = sum(1 for k, first in want.items() if have.get(k) == (True, first))
        missing = sum(1 for k in want if k not in have)
        out[name] = {
            "expected": len(want),
            "equal": equal,
            "missing": missing,
            "different": len(want) - equal - missing,
            "converged": equal / len(want) if want else 1.0,
        }
    return out


def requests_by_provider(urls: dict[str, str]) -> dict[str, int]:
    """Requests each sandbox logged (the control API's own are not logged)."""
    out = {}
    for name, url in urls.items():
        body = httpx.get(f"{url}/_control/requests", timeout=120).json()
        out[name] = len(body["requests"])
    return out


def clear_logs(urls: dict[str, str]) -> None:
    for url in urls.values():
        httpx.delete(f"{url}/_control/requests", timeout=30)


# --- the benchmark ---------------------------------------------------------------------------


def _group_pids(db: str, urls: dict[str, str]) -> dict[str, list[int]]:
    """PostgreSQL backends of the scratch database and the sandbox processes, by group."""
    import psutil
    from sqlalchemy.engine import make_url

    name = make_url(db).database or ""
    ports = {url.rsplit(":", 1)[-1] for url in urls.values()}
    out: dict[str, list[int]] = {"postgres": [], "sandboxes": []}
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info.get("cmdline") or [])
        if line.startswith("postgres:") and f" {name} " in f"{line} ":
            out["postgres"].append(proc.pid)
        elif "app.cli sandbox" in line and any(f"--port {p}" in line for p in ports):
            out["sandboxes"].append(proc.pid)
    return out


def _cpu(pids: list[int]) -> dict[int, float]:
    import psutil

    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            out[pid] = sum(psutil.Process(pid).cpu_times()[:2])
    return out


def _measure(
    base: str,
    token: str,
    args: argparse.Namespace,
    pids: dict[str, int],
    scan: Callable[[], dict[str, list[int]]] | None = None,
) -> dict[str, Any]:
    import psutil

    procs = {k: psutil.Process(p) for k, p in pids.items()}
    cpu0 = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
    # Processes found again at the end: a backend born during the arm counts from zero, one
    # that ended during it is lost (the pools keep theirs).
    group0 = {g: _cpu(ps) for g, ps in (scan() if scan else {}).items()}
    psutil.cpu_percent(interval=None)  # the machine's busy share from here on
    spec = LoadSpec(
        url=base + "/api/contacts",
        kind="post",
        token=token,
        clients=args.clients,
        duration=args.duration,
        warmup=args.warmup,
    )
    result = run_load(spec)
    total = args.duration + args.warmup
    out = dict(vars(result))
    for k, p in procs.items():
        out[f"{k}_cpu_share"] = (sum(p.cpu_times()[:2]) - cpu0[k]) / total
    out["machine_cpu_busy"] = psutil.cpu_percent(interval=None) / 100  # all CPUs, all users
    for g, ps in (scan() if scan else {}).items():
        before, after = group0.get(g, {}), _cpu(ps)
        out[f"{g}_cpu_share"] = sum(t - before.get(p, 0.0) for p, t in after.items()) / total
    out["load_average_after"] = os.getloadavg()[0]
    return out


def drain_and_compare(
    db: str, urls: dict[str, str], audiences: dict[str, str], timeout: float
) -> dict[str, Any]:
    """Wait for an empty queue (at most `timeout` s), then compare every provider."""
    start = time.monotonic()
    left = queue_depth(db)
    while left and time.monotonic() - start < timeout:
        time.sleep(1.0)
        left = queue_depth(db)
    return {
        "drain_seconds_after_load": time.monotonic() - start,
        "queue_left": left,
        "convergence": convergence(db, urls, audiences),
        "requests_by_provider": requests_by_provider(urls),
        "contacts": len(expected(db)),
    }


def _line(n: int, arm: str, f: dict[str, Any]) -> None:
    print(
        f"  round {n + 1} {arm:28} {f['rps']:7.0f} req/s  "
        f"p50 {f['p50_ms']:6.1f} ms  p99 {f['p99_ms']:7.1f} ms  "
        f"errors {f['errors']}  server CPU {f['server_cpu_share']:.2f}  "
        f"worker CPU {f['worker_cpu_share']:.2f}  "
        f"PostgreSQL CPU {f.get('postgres_cpu_share', 0):.2f}  "
        f"sandboxes CPU {f.get('sandboxes_cpu_share', 0):.2f}  "
        f"machine busy {f['machine_cpu_busy']:.2f}  "
        f"load {f['load_average_after']:.1f}",
        flush=True,
    )


def _drained_line(n: int, d: dict[str, Any]) -> None:
    print(
        f"  round {n + 1} drained in {d['drain_seconds_after_load']:.0f} s "
        f"(left {d['queue_left']}); {d['contacts']} contacts; converged "
        + ", ".join(f"{k} {v['converged']:.4f}" for k, v in d["convergence"].items()),
        flush=True,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cryptography.fernet import Fernet

    from app.auth.tokens import issue_token

    load_before = os.getloadavg()
    rounds: list[dict[str, Any]] = []
    with scratch_database(args.server_url, "audience_sync_p6") as db, sandboxes() as urls:
        secret, key = secrets.token_urlsafe(48), Fernet.generate_key().decode()
        env = env_for(db, urls, secret, key)
        settings = settings_from(env)
        conn_ids = asyncio.run(connect_all(settings, urls))
        audiences = {
            name: str(r["audience_id"])
            for name in PROVIDERS
            for r in asyncio.run(
                _sql(db, "SELECT audience_id FROM connections WHERE id = $1", conn_ids[name])
            )
        }
        tokens = {o: issue_token(settings, o) for o in (FANOUT_OWNER, PLAIN_OWNER)}
        api_port = harness.free_port()
        bin_dir = Path(sys.executable).parent
        api_cmd = [str(bin_dir / "audience-sync"), "serve", "--no-worker"]
        api_cmd += ["--host", "127.0.0.1", "--port", str(api_port)]
        worker_cmd = [sys.executable, "-m", "app.cli", "worker"]
        with (
            service(api_cmd, port=api_port, env=env) as api,
            worker_process(worker_cmd, env) as worker,
        ):
            for n in range(args.runs):
                clear_logs(urls)
                figures: dict[str, Any] = {}
                pids = {"server": api.process.pid, "worker": worker.pid}
                scan = functools.partial(_group_pids, db, urls)
                for arm, owner in (
                    ("post/no-connection", PLAIN_OWNER),
                    ("post/fan-out", FANOUT_OWNER),
                ):
                    figures[arm] = _measure(api.base_url, tokens[owner], args, pids, scan)
                    _line(n, arm, figures[arm])
                figures["ratio"] = (
                    figures["post/fan-out"]["rps"] / figures["post/no-connection"]["rps"]
                )
                figures.update(drain_and_compare(db, urls, audiences, args.converge_timeout))
                _drained_line(n, figures)
                if args.paused_arm:
                    # Diagnosis, not the bar: the same load with the worker stopped (SIGSTOP),
                    # so what the write path costs shows apart from what the drain beside it
                    # takes of the machine; then the worker drains that too.
                    arm = "post/fan-out, worker paused"
                    worker.send_signal(signal.SIGSTOP)
                    try:
                        figures[arm] = _measure(
                            api.base_url, tokens[FANOUT_OWNER], args, pids, scan
                        )
                    finally:
                        worker.send_signal(signal.SIGCONT)
                    _line(n, arm, figures[arm])
                    figures["ratio_worker_paused"] = (
                        figures[arm]["rps"] / figures["post/no-connection"]["rps"]
                    )
                    figures["after_paused_arm"] = drain_and_compare(
                        db, urls, audiences, args.converge_timeout
                    )
                    _drained_line(n, figures["after_paused_arm"])
                rounds.append(figures)
                if n + 1 < args.runs:
                    asyncio.run(_sql(db, "DELETE FROM contacts WHERE owner_id = $1", PLAIN_OWNER))
            api_command = api.command
        facts = machine_facts(db)
    summary = {
        "ratio": _median([r["ratio"] for r in rounds]),
        "rps_fan_out": _median([r["post/fan-out"]["rps"] for r in rounds]),
        "rps_no_connection": _median([r["post/no-connection"]["rps"] for r in rounds]),
        "converged_min": min(
            v["converged"]
            for r in rounds
            for d in (r, r.get("after_paused_arm") or r)
            for v in d["convergence"].values()
        ),
        "drain_seconds_after_load_max": max(r["drain_seconds_after_load"] for r in rounds),
        "ratio_worker_paused": _median([r["ratio_worker_paused"] for r in rounds])
        if args.paused_arm
        else None,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    return {
        "machine": facts,
        "parameters": {
            "clients": args.clients,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "runs": args.runs,
            "converge_timeout_s": args.converge_timeout,
            "service_command": api_command,
        },
        "bars": BARS,
        "summary": summary,
        "rounds": rounds,
    }


@contextlib.contextmanager
def worker_process(argv: list[str], env: dict[str, str]) -> Any:
    """`audience-sync worker`, stopped (SIGTERM, then killed) afterwards."""
    import subprocess

    proc = subprocess.Popen(
        argv,
        cwd=harness.ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2.0)
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per arm")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--runs", type=int, default=1, help="rounds (both arms in each)")
    parser.add_argument(
        "--converge-timeout", type=float, default=1800.0, help="seconds to wait for the drain"
    )
    parser.add_argument(
        "--no-paused-arm",
        dest="paused_arm",
        action="store_false",
        help="skip the diagnostic arm with the worker stopped",
    )
    parser.add_argument("--server-url", default=None, help="PostgreSQL server (scratch database)")
    args = parser.parse_args()
    result = run(args)
    path = write_results("p6_fanout", result)
    s = result["summary"]
    verdict = "meets" if s["ratio"] >= BARS["throughput_ratio"] else "BELOW"
    print(
        f"P6 fan-out {s['rps_fan_out']:.0f} req/s ÷ no connection {s['rps_no_connection']:.0f}"
        f" req/s = {s['ratio']:.2f} ({verdict} bar ≥ {BARS['throughput_ratio']})"
    )
    verdict = "meets" if s["converged_min"] >= BARS["converged"] else "BELOW"
    print(f"P6 converged (worst provider) {s['converged_min']:.4f} ({verdict} bar 100 %)")
    if s["ratio_worker_paused"] is not None:
        print(f"P6 (diagnosis) the same with the worker paused: {s['ratio_worker_paused']:.2f}")
    print(f"P6 load average before {s['load_average_before']}, after {s['load_average_after']}")
    print(f"results: {path}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
