"""Cursors that are not ours are a 422, whatever date they carry."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable

import httpx
import pytest


def cursor(created: str) -> str:
    raw = f"{created}|{uuid.uuid4()}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "created",
    [
        "9999-12-31T23:59:59.999999-23:59",  # beyond datetime's range once in UTC
        "9999-12-31T23:59:59",  # no offset: not a cursor we wrote
        "0001-01-01T00:00:00+14:00",
    ],
)
async def test_a_cursor_dated_out_of_range_is_422(
    client: httpx.AsyncClient, auth: Callable[..., dict[str, str]], created: str
) -> None:
    response = await client.get("/api/contacts", params={"cursor": cursor(created)}, headers=auth())
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_cursor_we_wrote_still_works(
    client: httpx.AsyncClient, auth: Callable[..., dict[str, str]]
) -> None:
    for i in range(3):
        r = await client.post("/api/contacts", json={"email": f"c{i}@example.com"}, headers=auth())
        assert r.status_code == 201
    first = (await client.get("/api/contacts", params={"limit": 2}, headers=auth())).json()
    rest = await client.get(
        "/api/contacts", params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth()
    )
    assert rest.status_code == 200
    assert len(rest.json()["items"]) == 1
