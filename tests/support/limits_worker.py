"""A worker process for the limits test: sends N requests through the shared rate limit.

Run as `python -m tests.support.limits_worker DATABASE_URL BASE_URL N RATE NAME [LATE [PATH
[TOKEN]]]`; prints the status codes it got, one JSON line. With LATE (a number of seconds) the
process is made late between its token and its send: every lane waits up to LATE seconds on
every third request, and every fifth request blocks the whole process (its event loop) for
LATE seconds, as a starved process on a loaded machine does. With PATH (and an
ActiveCampaign `Api-Token`) the rate is the account's, shared by both workers as one account.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import httpx
from sqlalchemy.ext.asyncio import create_async_engine

from app.sync.limits import ConnectionLimits, Limiter, LimitSpec, Rate, Scope, bind


async def main(
    database_url: str,
    base_url: str,
    n: int,
    rate: int,
    name: str,
    late: float = 0.0,
    path: str = "/hit",
    token: str | None = None,
) -> None:
    """Send `n` requests from 4 lanes, each inside the limiter's slot of the shared scope."""
    engine = create_async_engine(database_url, pool_size=2)
    limiter = Limiter(engine, me=name)
    if token:  # one provider account, its rate per account
        spec = LimitSpec(rates=(Rate(rate),))
        binding = bind(spec, provider="ac", account="acct", application="app", tenant=name)
    else:
        spec = LimitSpec(rates=(Rate(rate, scope=Scope.application),))
        binding = bind(spec, provider="test", account=name, application="app", tenant=name)
    limits = ConnectionLimits(limiter, binding)
    headers = {"Api-Token": token} if token else {}
    statuses: list[int] = []
    todo = list(range(n))
    dice = random.Random(name)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, headers=headers) as http:

        async def lane() -> None:
            while todo:
                i = todo.pop()
                async with limits.slot():
                    if late and i % 5 == 0:
                        time.sleep(late)  # noqa: ASYNC251 - the whole process starved, on purpose
                    elif late and i % 3 == 0:
                        await asyncio.sleep(dice.uniform(0, late))  # this lane late
                    response = await http.get(path, params={"by": name})
                statuses.append(response.status_code)

        # Open the lanes' keep-alive connections first (unmetered).
        await asyncio.gather(*(http.get("/_control" if token else "/warm") for _ in range(4)))
        await asyncio.gather(*(lane() for _ in range(4)))
    await limiter.release()
    await engine.dispose()
    sys.stdout.write(json.dumps({"statuses": statuses, "grants": limiter.grants}) + "\n")


if __name__ == "__main__":
    url, base, count, r, who = sys.argv[1:6]
    extra = sys.argv[6:9]
    asyncio.run(
        main(url, base, int(count), int(r), who, float(extra[0] or 0) if extra else 0.0, *extra[1:])
    )
