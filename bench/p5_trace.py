"""P5 traced: where the slots' time goes in a Mautic bulk drain (diagnosis only).

Runs bench.p5_mautic_drain's drain with timestamps wrapped around the engine's steps in this
process (a diagnosis, not a figure: the wrappers cost a little): each request's entry to the
account gate, its slot, its answer; claims, loads, plans, intents and completions; and the
event loop's lag (a 1 ms ticker). Against the sandbox's request log it splits the slot-time
left idle over the drain's middle 80 % into: slots free at the engine with no request
waiting (no work ready: claim, load, plan, completion or the add on the critical path);
slots free with requests waiting (the gate); and slots the engine counts busy that the
server does not (the two processes' loops, the wire).

    flock /work/wt/bench.lock .venv/bin/python -m bench.p5_trace --contacts 50000 --out /tmp/p5_trace.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from pathlib import Path
from typing import Any

import httpx

from app.providers.mautic import client as mautic_client
from app.sync import engine as eng_mod
from app.sync import queue as q_mod
from app.sync import slots as slots_mod
from bench import harness
from bench import p5_mautic_drain as p5

EV: list[tuple[float, str, float]] = []  # (time, event, value)
STEPS: list[tuple[str, float, float, int]] = []  # (step, start, end, rows)
LAG: list[tuple[float, float]] = []  # (time, lag seconds) above 2 ms
GC: list[tuple[float, float, int]] = []  # (time, seconds, generation) of each collection
_gc_start = [0.0]


def _gc_watch(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_start[0] = time.perf_counter()
    else:
        GC.append((time.time(), time.perf_counter() - _gc_start[0], int(info["generation"])))


gc.callbacks.append(_gc_watch)

_send = mautic_client.send


async def send(transport, request, *, op, limiter, timeout_seconds, authorize=None, **kw):  # type: ignore[no-untyped-def]
    """Record a request's gate entry, its slot (when the token is set) and its answer."""
    kind = "batch" if op == "batch" else "add" if op == "segment_add" else op
    EV.append((time.time(), f"enter:{kind}", 0))

    async def granted(req: httpx.Request) -> None:
        EV.append((time.time(), f"grant:{kind}", 0))
        if authorize is not None:
            await authorize(req)

    try:
        return await _send(
            transport,
            request,
            op=op,
            limiter=limiter,
            timeout_seconds=timeout_seconds,
            authorize=granted,
            **kw,
        )
    finally:
        EV.append((time.time(), f"done:{kind}", 0))


mautic_client.send = send  # type: ignore[assignment]


def _timed(owner: Any, name: str, rows_of: Any) -> None:
    original = getattr(owner, name)

    async def wrapper(*args: Any, **kw: Any) -> Any:
        t0 = time.time()
        out = await original(*args, **kw)
        STEPS.append((name, t0, time.time(), rows_of(args, kw, out)))
        return out

    setattr(owner, name, wrapper)


_timed(q_mod.QueueRepository, "claim", lambda a, k, out: len(out))
_timed(q_mod.QueueRepository, "load", lambda a, k, out: len(k.get("keys") or []))
_timed(q_mod.QueueRepository, "complete", lambda a, k, out: len(k.get("claimed") or []))
_timed(eng_mod.SyncEngine, "_record_intent", lambda a, k, out: len(a[2]))
_timed(eng_mod.SyncEngine, "_contexts", lambda a, k, out: len(out))

_plan = eng_mod.SyncEngine._plan


def plan(self, rows, data, cfg):  # type: ignore[no-untyped-def]
    t0 = time.time()
    out = _plan(self, rows, data, cfg)
    STEPS.append(("plan", t0, time.time(), len(rows)))
    return out


eng_mod.SyncEngine._plan = plan  # type: ignore[method-assign]

_acquire = slots_mod.AccountGate._acquire


async def acquire(self, **kw):  # type: ignore[no-untyped-def]
    EV.append((time.time(), "wait+", 0))
    try:
        return await _acquire(self, **kw)
    finally:
        EV.append((time.time(), "wait-", 0))


slots_mod.AccountGate._acquire = acquire  # type: ignore[method-assign]


async def ticker(stop: asyncio.Event) -> None:
    """The event loop's lag: a 1 ms sleep that wakes late means the loop was busy."""
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        lag = time.perf_counter() - t0 - 0.001
        if lag > 0.002:
            LAG.append((time.time(), lag))


def _timeline(events: list[tuple[float, int]], grid: list[float]) -> list[int]:
    """The running sum of +1/-1 events sampled at each grid time."""
    events = sorted(events)
    out, level, i = [], 0, 0
    for t in grid:
        while i < len(events) and events[i][0] <= t:
            level += events[i][1]
            i += 1
        out.append(level)
    return out


def analyse(log: list[dict[str, Any]], cap: int) -> dict[str, Any]:
    """Split the idle slot-time of the middle 80 % by where it went."""
    t0 = min(r["start"] for r in log)
    t1 = max(r["end"] for r in log)
    lo, hi = t0 + 0.1 * (t1 - t0), t0 + 0.9 * (t1 - t0)
    step = 0.001
    grid = [lo + i * step for i in range(int((hi - lo) / step))]
    server = _timeline([(r["start"], 1) for r in log] + [(r["end"], -1) for r in log], grid)
    engine_ev = [(t, 1) for t, e, _ in EV if e.startswith("grant:")]
    engine_ev += [(t, -1) for t, e, _ in EV if e.startswith("done:")]
    engine = _timeline(engine_ev, grid)
    waits = _timeline(
        [(t, 1 if e == "wait+" else -1) for t, e, _ in EV if e in ("wait+", "wait-")], grid
    )
    lag = sorted(LAG)
    idle = free_no_waiter = free_waiter = wire = 0.0
    for s, e, w in zip(server, engine, waits, strict=True):
        idle += (cap - s) * step
        free = max(0, cap - e)
        if free and w:
            free_waiter += min(free, cap - s) * step
        elif free:
            free_no_waiter += min(free, cap - s) * step
        wire += max(0, min(cap - s, e - s)) * step
    span = hi - lo
    in_mid = [x for x in lag if lo <= x[0] <= hi]
    gc_mid = [g for g in GC if lo <= g[0] <= hi]
    steps: dict[str, dict[str, float]] = {}
    for name, a, b, n in STEPS:
        if lo <= a <= hi:
            d = steps.setdefault(name, {"count": 0, "seconds": 0.0, "rows": 0, "max_s": 0.0})
            d["count"] += 1
            d["seconds"] += b - a
            d["rows"] += n
            d["max_s"] = max(d["max_s"], b - a)
    per_kind: dict[str, list[float]] = {}
    for r in log:
        k = "batch" if "batch" in r["path"] else "add" if "segments" in r["path"] else "other"
        per_kind.setdefault(k, []).append(1000 * (r["end"] - r["start"]))
    # The engine's side of each request: gate entry → slot, slot → answer read.
    opened: dict[str, list[float]] = {}
    gate_wait: dict[str, list[float]] = {}
    on_wire: dict[str, list[float]] = {}
    for t, e, _ in sorted(EV):
        what, _, kind = e.partition(":")
        if what == "enter":
            opened.setdefault(kind, []).append(t)
        elif what == "grant" and opened.get(kind):
            gate_wait.setdefault(kind, []).append(t - opened[kind].pop(0))
            opened.setdefault("g:" + kind, []).append(t)
        elif what == "done" and opened.get("g:" + kind):
            on_wire.setdefault(kind, []).append(t - opened["g:" + kind].pop(0))
    return {
        "middle_seconds": span,
        "server_occupancy": sum(server) * step / span,
        "engine_occupancy": sum(engine) * step / span,
        "idle_slot_seconds": idle,
        "idle_free_at_engine_no_request_waiting": free_no_waiter,
        "idle_free_at_engine_requests_waiting": free_waiter,
        "idle_busy_at_engine_not_at_server": wire,
        "loop_lag_seconds_middle": sum(x[1] for x in in_mid),
        "loop_lag_over_10ms": sum(1 for x in in_mid if x[1] > 0.010),
        "loop_lag_max_ms": 1000 * max((x[1] for x in in_mid), default=0.0),
        "engine_gc_seconds_middle": sum(g[1] for g in gc_mid),
        "engine_gc_gen2_middle": sum(1 for g in gc_mid if g[2] == 2),
        "engine_gc_max_ms": 1000 * max((g[1] for g in gc_mid), default=0.0),
        "steps_middle": steps,
        "server_ms_mean": {k: sum(v) / len(v) for k, v in per_kind.items()},
        "server_count": {k: len(v) for k, v in per_kind.items()},
        "engine_gate_wait_ms_mean": {k: 1000 * sum(v) / len(v) for k, v in gate_wait.items()},
        "engine_slot_ms_mean": {k: 1000 * sum(v) / len(v) for k, v in on_wire.items()},
    }


async def traced(db_url: str, url: str, n: int) -> dict[str, Any]:
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(stop))
    try:
        result = await p5.engine_run(db_url, url, n)
    finally:
        stop.set()
        await tick
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/p5_trace.json"))
    parser.add_argument("--as-worker", action="store_true", help="as p5_mautic_drain's")
    args = parser.parse_args()
    loop_factory = p5.worker_setup() if args.as_worker else None
    with harness.scratch_database() as db_url, p5.mautic_process() as url:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            result = runner.run(traced(db_url, url, args.contacts))
        log = httpx.get(f"{url}/_control/requests", timeout=120).json()["requests"]
    log = [r for r in log if "/api/" in r["path"]]
    summary = {"run": result, "trace": analyse(log, p5.CAP)}
    print(json.dumps(summary, indent=1))
    args.out.write_text(
        json.dumps({**summary, "events": EV, "steps": STEPS, "lag": LAG, "log": log})
    )


if __name__ == "__main__":
    main()
