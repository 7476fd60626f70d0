"""The in-loop server helper serves the app over real TCP."""

import httpx
from fastapi import FastAPI

from tests.support.servers import run_server


async def test_app_answers_over_tcp(app: FastAPI) -> None:
    async with run_server(app, lifespan="off") as base, httpx.AsyncClient(base_url=base) as http:
        response = await http.get("/healthz")
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]
