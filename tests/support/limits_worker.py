"""A worker process for the limits test: sends N requests through the shared rate limit.

Run as `python -m tests.support.limits_worker DATABASE_URL BASE_URL N RATE NAME [PATH [TOKEN]]`;
prints the status codes it got, one JSON line. With PATH (and an ActiveCampaign `Api-Token`)
the rate is the account's, shared by both workers as one account.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx
from sqlalchemy.ext.asyncio import create_async_engine

from app.sync.limits import Limiter, LimitSpec, Rate, Scope, bind


async def main(
    database_url: str,
    base_url: str,
    n: int,
    rate: int,
    name: str,
    path: str = "/hit",
    token: str | None = None,
) -> None:
    """Send `n` requests from 4 lanes, each after taking a token of the shared scope."""
    engine = create_async_engine(database_url, pool_size=2)
    limiter = Limiter(engine, me=name)
    if token:  # one provider account, its rate per account
        spec = LimitSpec(rates=(Rate(rate),))
        binding = bind(spec, provider="ac", account="acct", application="app", tenant=name)
    else:
        spec = LimitSpec(rates=(Rate(rate, scope=Scope.application),))
        binding = bind(spec, provider="test", account=name, application="app", tenant=name)
    headers = {"Api-Token": token} if token else {}
    statuses: list[int] = []
    todo = list(range(n))
    async with httpx.AsyncClient(base_url=base_url, timeout=30, headers=headers) as http:

        async def lane() -> None:
            while todo:
                todo.pop()
                await limiter.take(binding)
                # When the limiter let the request go (no await in between): the rate is the
                # limiter's promise about this moment; the arrival at the server adds that
                # server's own scheduling delay, which on a loaded machine bunches requests.
                params = {"by": name, "sent": repr(time.time())}
                statuses.append((await http.get(path, params=params)).status_code)

        # Open the lanes' keep-alive connections first (unmetered): a connection's setup would
        # delay the first request of each lane by more than the rest and bunch it up.
        await asyncio.gather(*(http.get("/_control" if token else "/warm") for _ in range(4)))
        await asyncio.gather(*(lane() for _ in range(4)))
    await limiter.release()
    await engine.dispose()
    sys.stdout.write(json.dumps({"statuses": statuses, "grants": limiter.grants}) + "\n")


if __name__ == "__main__":
    url, base, count, r, who = sys.argv[1:6]
    asyncio.run(main(url, base, int(count), int(r), who, *sys.argv[6:8]))
