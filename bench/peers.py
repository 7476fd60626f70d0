"""Peers on the same job (BENCHMARKS.md): pgqueuer, procrastinate, a plain asyncio loop."""

from __future__ import annotations


def run_peer(name: str, db_url: str, sandbox_url: str, n: int, *, cap: int) -> float:
    """Seconds for `name` to push n contacts, one PUT each, `cap` in flight."""
    raise SystemExit(f"peer {name} not available yet")
