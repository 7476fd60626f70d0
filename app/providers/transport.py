"""The process's HTTP transport: httpx's interface on aiohttp, plus a lean exchange for hot paths.

Every provider client speaks httpx (`handle_async_request`), so respx and httpx's own
transports serve their tests. A client on a hot path (one request per member) may call
`exchange()` instead: the same keep-alive pool, without building httpx's Request and Response
objects, which cost about as much CPU as aiohttp's whole request (bench B1).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


class Answer(Protocol):
    """What a client reads of a response: an httpx.Response, or an `Exchanged`."""

    @property
    def status_code(self) -> int:
        """The HTTP status."""

    @property
    def content(self) -> bytes:
        """The whole body, decoded from its content encoding."""

    @property
    def reason_phrase(self) -> str:
        """The status line's reason."""

    @property
    def headers(self) -> Mapping[str, str]:
        """Response headers (case-insensitive lookups)."""


@dataclass(slots=True, frozen=True)
class Exchanged:
    """A response read whole by `LeanTransport.exchange`."""

    status_code: int
    content: bytes
    reason_phrase: str
    headers: Mapping[str, str]


class ExchangeTimeout(Exception):
    """The exchange timed out (connecting, or waiting for the answer)."""


class ExchangeFailed(Exception):
    """The exchange failed on the connection (refused, reset, unreadable answer)."""


class LeanTransport(AiohttpTransport):
    """httpx-aiohttp's transport with `exchange()`: one request on its pool, no httpx objects."""

    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session behind both paths (created on first use)."""
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        return self.client

    async def exchange(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout_seconds: float,
    ) -> Exchanged:
        """Send one request and read its answer whole; ExchangeTimeout or ExchangeFailed.

        `timeout_seconds` bounds connecting (a pooled connection included) and each read, as httpx's
        per-request timeouts do."""
        try:
            async with self.session().request(
                method,
                url,
                headers=headers,
                data=content,
                allow_redirects=False,
                timeout=_timeouts(timeout_seconds),
            ) as response:
                body = await response.read()
        except TimeoutError as exc:  # aiohttp's timeouts (connect, read) are TimeoutErrors
            raise ExchangeTimeout(type(exc).__name__) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ExchangeFailed(f"{type(exc).__name__}: {exc}") from exc
        return Exchanged(response.status, body, response.reason or "", response.headers)


@functools.cache
def _timeouts(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(sock_connect=seconds, sock_read=seconds, connect=seconds)


def build_transport() -> httpx.AsyncBaseTransport:
    """One keep-alive transport per process: aiohttp's costs a quarter of httpx's own CPU."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32, keepalive_expiry=30)
    return LeanTransport(limits=limits)
