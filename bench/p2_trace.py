"""P2 traced: where a live change's time goes while P1's backlog drains (diagnosis only).

Runs bench.p1_activecampaign with timestamps wrapped around the engine's steps in this
process (a diagnosis, not a figure: the wrappers cost a little): per live change its commit,
claim, group start (load, plan), each request's entry to the account gate, gate slot, token
and answer, and completion; segments summarised in the JSON written to `--out`.

    flock /work/wt/bench.lock .venv/bin/python -m bench.p2_trace --contacts 8000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import statistics
import time
from pathlib import Path
from typing import Any

from app.sync import engine as eng_mod
from app.sync import limits as lim_mod
from app.sync import queue as q_mod
from bench import harness
from bench import p1_activecampaign as p1

T: dict[str, dict[str, Any]] = {}
cur_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("cur_key", default=None)
ENGINE: list[Any] = []

_claim = q_mod.QueueRepository.claim


async def claim(self, **kw):  # type: ignore[no-untyped-def]
    t_start = time.time()
    rows = await _claim(self, **kw)
    t = time.time()
    for r in rows:
        if r.email_key.startswith("live"):
            d = T.setdefault(r.email_key, {})
            d.setdefault("claim_start", t_start)
            d.setdefault("claimed", t)
    return rows


q_mod.QueueRepository.claim = claim  # type: ignore[method-assign]

_single = eng_mod.SyncEngine._single


async def single(self, ctx, plans):  # type: ignore[no-untyped-def]
    key = plans[0].key
    if key.startswith("live"):
        T.setdefault(key, {})["single_start"] = time.time()
        tok = cur_key.set(key)
        try:
            return await _single(self, ctx, plans)
        finally:
            T[key]["single_end"] = time.time()
            cur_key.reset(tok)
    return await _single(self, ctx, plans)


eng_mod.SyncEngine._single = single  # type: ignore[method-assign]

_sync_group = eng_mod.SyncEngine._sync_group


async def sync_group(self, ctx, rows, step=None):  # type: ignore[no-untyped-def]
    t = time.time()
    for r in rows:
        if r.email_key.startswith("live"):
            T.setdefault(r.email_key, {})["group_start"] = t
    return await _sync_group(self, ctx, rows, step)


eng_mod.SyncEngine._sync_group = sync_group  # type: ignore[method-assign]

_complete = eng_mod.SyncEngine._complete


async def complete(self, ctx, rows, outcomes):  # type: ignore[no-untyped-def]
    await _complete(self, ctx, rows, outcomes)
    t = time.time()
    for r in rows:
        if r.email_key.startswith("live"):
            T.setdefault(r.email_key, {})["completed"] = t


eng_mod.SyncEngine._complete = complete  # type: ignore[method-assign]

BULK_REQ: list[tuple[float, float, float, str]] = []


@contextlib.asynccontextmanager
async def slot(self, op=None):  # type: ignore[no-untyped-def]
    key = cur_key.get()
    rec: dict[str, Any] = {"op": op, "enter": time.time()}
    if key is not None:
        eng = ENGINE[0] if ENGINE else None
        gate = None
        if eng is not None:
            gate = next(iter(eng.slots.gates.values()), None)
        if gate is not None:
            rec["gate_in_flight"] = gate.in_flight
            rec["gate_held"] = gate.held
            rec["gate_waiters"] = gate.waiters
        lim = self.limiter
        if lim is not None:
            ahead = 0
            for pool in lim._pools.values():
                if pool.priority != 0:
                    ahead += len(pool.tokens)
            rec["bulk_tokens_pooled"] = ahead
        T[key].setdefault("reqs", []).append(rec)
    async with self.gate(op) if self.gate is not None else contextlib.nullcontext():
        rec["gate"] = time.time()
        if self.limiter is not None and self.binding is not None:
            async with self.limiter.request(self.binding, endpoint=op):
                rec["token"] = time.time()
                yield
        else:
            rec["token"] = time.time()
            yield
    rec["answered"] = time.time()
    if key is None:
        BULK_REQ.append((rec["enter"], rec["gate"], rec["token"], str(op)))


lim_mod.ConnectionLimits.slot = slot  # type: ignore[method-assign]

_init = eng_mod.SyncEngine.__init__


def init(self, *a, **kw):  # type: ignore[no-untyped-def]
    _init(self, *a, **kw)
    ENGINE.append(self)


eng_mod.SyncEngine.__init__ = init  # type: ignore[method-assign]


async def live_changes(engine: Any, stop: asyncio.Event, out: list[float]) -> None:
    from sqlalchemy import text

    from app.contacts.schemas import ContactCreate
    from app.contacts.service import contact_service
    from app.db import make_sessionmaker, session_scope

    maker = make_sessionmaker(engine)
    pending: dict[str, float] = {}
    i = 0
    while not stop.is_set() or pending:
        if not stop.is_set():
            email = f"live{i}@example.com"
            i += 1
            t0 = time.time()
            async with session_scope(maker) as session:
                await contact_service.create(
                    session,
                    owner_id=p1.OWNER,
                    data=ContactCreate(email=email, first_name="Live", newsletter_opt_in=True),
                    actor=p1.OWNER,
                )
            pending[email] = time.time()
            T.setdefault(email, {})["create_start"] = t0
            T[email]["commit"] = pending[email]
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT email_key, extract(epoch FROM last_synced_at) AS t FROM sync_state"
                    " WHERE email_key = ANY(:keys) AND remote_status = 'subscribed'"
                ),
                {"keys": list(pending)},
            )
            for key, t in rows.all():
                out.append(float(t) - pending.pop(key))
                T[key]["synced_at"] = float(t)
        await asyncio.sleep(1.0)


p1.live_changes = live_changes


def summarize() -> dict[str, Any]:
    segs: dict[str, list[float]] = {}

    def add(name: str, v: float) -> None:
        segs.setdefault(name, []).append(v)

    for _k, d in T.items():
        if "completed" not in d or "claimed" not in d:
            continue
        add("total_commit_to_completed", d["completed"] - d["commit"])
        add("commit_to_claim_start", d["claim_start"] - d["commit"])
        add("claim_query", d["claimed"] - d["claim_start"])
        add("claim_to_group", d["group_start"] - d["claimed"])
        add("group_to_single(load+plan+intent)", d["single_start"] - d["group_start"])
        reqs = d.get("reqs", [])
        for i, r in enumerate(reqs):
            add(f"req{i}_{r['op']}_gate_wait", r["gate"] - r["enter"])
            add(f"req{i}_{r['op']}_token_wait", r["token"] - r["gate"])
            add(f"req{i}_{r['op']}_http", r["answered"] - r["token"])
            add(f"req{i}_{r['op']}_gate_in_flight", r.get("gate_in_flight", -1))
            add(f"req{i}_{r['op']}_gate_waiters", r.get("gate_waiters", -1))
        if reqs:
            add(
                "between_requests",
                sum(reqs[i + 1]["enter"] - reqs[i]["answered"] for i in range(len(reqs) - 1)),
            )
            add("single_end_to_completed", d["completed"] - d["single_end"])
        add("n_requests", len(reqs))
    out = {}
    for name, vs in segs.items():
        vs.sort()
        out[name] = {
            "n": len(vs),
            "mean": round(statistics.mean(vs), 3),
            "p50": round(vs[len(vs) // 2], 3),
            "p90": round(vs[int(len(vs) * 0.9)], 3),
            "max": round(vs[-1], 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=8000)
    parser.add_argument("--out", default=str(harness.RESULTS / "p2_trace.json"))
    args = parser.parse_args()
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    with harness.scratch_database() as db_url, p1.ac_sandbox() as url:
        result = asyncio.run(p1.run(db_url, url, args.contacts))
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    summary = summarize()
    bulk_token_wait = [t - g for (_e, g, t, _o) in BULK_REQ]
    bulk_gate_wait = [g - e for (e, g, _t, _o) in BULK_REQ]
    doc = {
        "load_before": load0,
        "load_after": load1,
        "result": result,
        "segments": summary,
        "bulk_requests": len(BULK_REQ),
        "bulk_token_wait_mean": statistics.mean(bulk_token_wait) if BULK_REQ else None,
        "bulk_gate_wait_mean": statistics.mean(bulk_gate_wait) if BULK_REQ else None,
        "raw": T,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    print(json.dumps({k: v for k, v in doc.items() if k != "raw"}, indent=1, default=str))


if __name__ == "__main__":
    main()
