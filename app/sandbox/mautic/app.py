"""The sandbox as one ASGI app: `/api` and `/oauth` through Mautic's pipeline, `/_control` aside.

The pipeline, in Mautic's order: the API switch and the Basic-auth switch (`ApiSubscriber`,
before routing), the router (404/405), the firewall (401), the rate limiter (429), the
controller, the webhooks fired in immediate mode, the response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from app.sandbox.mautic import api, control, errors, oauth
from app.sandbox.mautic.config import MauticConfig
from app.sandbox.mautic.constants import VERSION_HEADER
from app.sandbox.mautic.encoding import listify, php_form, php_json, symfony_json
from app.sandbox.mautic.state import MauticState

log = logging.getLogger(__name__)


def base_url(scope: Scope) -> str:
    """scheme://host[:port] + root_path: where this sandbox is reached (mounted or not)."""
    host = None
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1")
            break
    if host is None:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}"


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def parse_body(raw: bytes, content_type: str | None, *, json_ok: bool = True) -> Any:
    """JSON (FOSRest's body listener) or a PHP-parsed form body."""
    if not raw.strip():
        return {}
    if json_ok and content_type and "json" in content_type.lower():
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise errors.listener(400, "Invalid json message received", None) from None
    return listify(php_form(raw.decode("utf-8", "replace")))


class MauticSandbox(Starlette):
    """A Starlette app whose `/api` and `/oauth` requests take Mautic's own pipeline."""

    sandbox: MauticState

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            if not path.startswith("/_control"):
                await self.mautic(scope, receive, send, path)
                return
        await super().__call__(scope, receive, send)

    async def mautic(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        state = self.sandbox
        state.hub.start_cron()
        start = time.time()
        method: str = scope["method"]
        raw = await read_body(receive)
        base = base_url(scope)
        state.hub.site_url = state.config.site_url or base
        query_text = scope["query_string"].decode("latin-1")
        try:
            status, content, headers = await self._handle(
                state, method, path, query_text, raw, scope, base
            )
        except Exception:  # a bug in the sandbox: answer like Mautic's production 500
            log.exception("mautic sandbox: unhandled error on %s %s", method, path)
            status, content, headers = self._error(
                errors.listener(500, errors.GENERIC_500, None), state
            )
        headers.setdefault("Content-Length", str(len(content)))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": content})
        state.requests.append(
            {"method": method, "path": path, "status": status, "start": start, "end": time.time()}
        )

    def _error(self, exc: errors.ApiError, state: MauticState) -> tuple[int, bytes, dict[str, str]]:
        headers = dict(exc.headers)
        if exc.raw is not None:
            return exc.status, exc.raw, headers
        headers.setdefault("Content-Type", "application/json")
        if exc.style == "listener":
            return exc.status, symfony_json(exc.body), headers
        # Controller errors go through FOSRest's view(): JMS bytes and the version header.
        headers[VERSION_HEADER] = state.config.mautic_version
        return exc.status, php_json(exc.body), headers

    async def _handle(
        self,
        state: MauticState,
        method: str,
        path: str,
        query_text: str,
        raw: bytes,
        scope: Scope,
        base: str,
    ) -> tuple[int, bytes, dict[str, str]]:
        config = state.config
        authorization = _header(scope, b"authorization")
        uri = unquote(path) + ("?" + query_text if query_text else "")
        try:
            # ApiSubscriber::onKernelRequest: a substring test on the URI, before routing.
            if "/api" in uri or "/oauth" in uri:
                if not config.api_enabled:
                    raise errors.listener(403, errors.API_DISABLED, "api_disabled")
                if (
                    authorization
                    and authorization[:5].lower() == "basic"
                    and not config.api_enable_basic_auth
                ):
                    raise errors.listener(403, errors.BASIC_DISABLED, "access_denied")
            content_type = _header(scope, b"content-type")
            query = listify(php_form(query_text))
            if path.rstrip("/") in ("/oauth/v2/token", "/oauth/v2/authorize"):
                body = parse_body(raw, content_type, json_ok=config.token_accepts_json_body)
                params = {**query, **(body if isinstance(body, dict) else {})}
                if path.rstrip("/") == "/oauth/v2/token":
                    if method not in ("GET", "POST"):
                        raise errors.route_not_found(method, path)
                    return oauth.token(state, params, authorization)
                return oauth.authorize(state, method, params)
            handler, args = api.match(method, path)
            body = parse_body(raw, content_type)
            body_token = body.pop("access_token", None) if isinstance(body, dict) else None
            query_token = query.pop("access_token", None) if isinstance(query, dict) else None
            principal = state.authenticate(authorization, query_token, body_token)
            rate_headers = state.rate_check(principal)
            if config.api_role == "read_only" and method != "GET":
                raise errors.forbidden()
            call = api.Call(state, method, path, args, query, body, principal.user, base)
            try:
                status, payload, headers = await handler(call)
            finally:
                await state.hub.flush_immediate()
            headers = {**rate_headers, **headers, "Content-Type": "application/json"}
            headers[VERSION_HEADER] = config.mautic_version
            return status, php_json(payload), headers
        except errors.ApiError as exc:
            state.hub.immediate.clear()
            return self._error(exc, state)


def create_app(config: MauticConfig | None = None) -> MauticSandbox:
    """Build the sandbox (a fresh in-memory Mautic 5 with one admin and two API clients)."""
    state = MauticState(config or MauticConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.hub.start_cron()
        try:
            yield
        finally:
            await state.hub.aclose()

    app = MauticSandbox(routes=control.routes, lifespan=lifespan)
    app.state.sandbox = state
    app.sandbox = state
    return app
