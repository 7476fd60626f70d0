"""The sandbox as one ASGI app: `/api` and `/oauth` through Mautic's pipeline, `/_control` aside.

The pipeline, in Mautic's order: the API switch and the Basic-auth switch (`ApiSubscriber`,
before routing), the router (404/405), the firewall (401), the rate limiter (429), the
controller, the webhooks fired in immediate mode, the response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from app.sandbox.kit import (
    LogEntry,
    Refusal,
    base_url,
    control_routes,
    header,
    local_path,
    on_unmount,
    read_body,
    respond,
)
from app.sandbox.mautic import api, control, errors, oauth, snapshot
from app.sandbox.mautic.config import MauticConfig
from app.sandbox.mautic.constants import VERSION_HEADER
from app.sandbox.mautic.encoding import listify, php_form, php_json, symfony_json
from app.sandbox.mautic.state import MauticState

log = logging.getLogger(__name__)


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
            path = local_path(scope)
            if not path.startswith("/_control"):
                await self.mautic(scope, receive, send, path)
                return
        await super().__call__(scope, receive, send)

    async def mautic(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """One request: the kit's gate (in front of PHP: cap, outage, faults, latency), then
        Mautic's own pipeline; always logged."""
        state = self.sandbox
        state.hub.start_cron()
        start = time.time()
        method: str = scope["method"]
        raw = await read_body(receive)
        base = base_url(scope)
        state.hub.site_url = state.config.site_url or base
        query_text = scope["query_string"].decode("latin-1")
        items = _items(raw, query_text)
        gate = state.gate
        fault: str | None = None
        in_flight = 0
        meta: dict[str, Any] = {}
        entered = False
        try:
            try:
                in_flight = gate.in_flight.enter("instance", state.config.max_in_flight)
                entered = True
                await gate.inject(
                    state.config.fault_rates,
                    state.config.fault_kinds,
                    state.config.timeout_seconds,
                    receive,
                )
                due = await self._latency(state, items)
                began = time.perf_counter()
                status, content, headers = await self._handle(
                    state, method, path, query_text, raw, scope, base, meta
                )
                await self._hold(state, items, began, due)
            except Refusal as refusal:
                fault = refusal.kind
                in_flight = max(in_flight, refusal.in_flight)
                status, content, headers = self._refused(refusal, state)
            finally:
                if entered:
                    gate.in_flight.leave("instance")
        except Exception:  # a bug in the sandbox: answer like Mautic's production 500
            log.exception("mautic sandbox: unhandled error on %s %s", method, path)
            status, content, headers = self._error(
                errors.listener(500, errors.GENERIC_500, None), state
            )
        await respond(
            send, status, [(k.lower().encode(), v.encode()) for k, v in headers.items()], content
        )
        record = state.config.record_bodies and method != "GET"
        state.requests.append(
            LogEntry(
                method,
                path,
                status,
                start,
                time.time(),
                in_flight,
                scope=meta.get("client_id"),
                fault=fault,
                extra={"items": items},
                body=raw if record else None,
            )
        )

    async def _latency(self, state: MauticState, items: int) -> float | None:
        """Hold the request for its latency (`latency_ms`, plus `latency_per_item_ms` per
        item) but the time the sandbox's own work on a request of its size took lately: the
        answer is due at the latency (returned, on the perf_counter clock; None: none), the
        work done inside it, near its end, as PHP's would be, not added on top of it."""
        config = state.config
        ms = config.latency_ms + config.latency_per_item_ms * items
        if ms <= 0:
            return None
        due = time.perf_counter() + ms / 1000
        # At most half the latency: the work still lands in the request's second half.
        reserve = min(ms / 2000, state.handling.get(items > 1, 0.0))
        await asyncio.sleep(ms / 1000 - reserve)
        return due

    async def _hold(self, state: MauticState, items: int, began: float, due: float | None) -> None:
        """Learn the work's time (a moving average by kind: batch or single), then hold the
        answer until it is due."""
        now = time.perf_counter()
        kind = items > 1
        took = now - began
        state.handling[kind] = 0.8 * state.handling.get(kind, took) + 0.2 * took
        if due is not None and due > now:
            await asyncio.sleep(due - now)

    def _refused(self, refusal: Refusal, state: MauticState) -> tuple[int, bytes, dict[str, str]]:
        """The kit's refusals as a Mautic behind a web server answers them."""
        if refusal.kind == "429":
            limit = state.config.api_rate_limiter_limit or 1000
            return self._error(
                errors.rate_limited(limit, state.config.rate_limit_html_content_type), state
            )
        if refusal.kind == "500":
            return self._error(errors.listener(500, errors.GENERIC_500, None), state)
        if refusal.kind == "timeout":
            return 504, _html(504, "Gateway Time-out"), {"Content-Type": "text/html"}
        # cap, outage, 503: the web server in front of PHP answers, not Mautic.
        return 503, _html(503, "Service Temporarily Unavailable"), {"Content-Type": "text/html"}

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
        meta: dict[str, Any],
    ) -> tuple[int, bytes, dict[str, str]]:
        config = state.config
        authorization = header(scope, b"authorization")
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
            content_type = header(scope, b"content-type")
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
            meta["client_id"] = principal.client_id
            rate_headers = state.rate_check(principal)
            if config.api_role == "read_only" and method != "GET":
                raise errors.forbidden()
            call = api.Call(state, method, path, args, query, body, principal.user, base)
            state.hub.begin()
            try:
                status, payload, headers = await handler(call)
            finally:
                await state.hub.flush_immediate()
            if config.empty_contact_rate > 0 and path.startswith("/api/contacts"):
                payload = _empty_contacts(payload, state, config.empty_contact_rate)
            headers = {**rate_headers, **headers, "Content-Type": "application/json"}
            headers[VERSION_HEADER] = config.mautic_version
            return status, php_json(payload), headers
        except errors.ApiError as exc:
            return self._error(exc, state)


def _items(raw: bytes, query_text: str) -> int:
    """Contacts a request carries: a batch body's length, a batch delete's ids, else 1."""
    if raw[:1] == b"[":
        try:
            return max(1, len(orjson.loads(raw)))
        except orjson.JSONDecodeError:
            return 1
    if "ids=" in query_text:
        ids = php_form(query_text).get("ids")
        if isinstance(ids, str):
            return max(1, len(ids.split(",")))
    return 1


def _empty_contacts(payload: Any, state: MauticState, rate: float) -> Any:
    """The 5.0 empty-object bug: `{"contact": []}` / `{"contacts": {"3": []}}`."""
    if not isinstance(payload, dict) or state.bug_rng.random() >= rate:
        return payload
    out = dict(payload)
    if "contact" in out:
        out["contact"] = []
    contacts = out.get("contacts")
    if isinstance(contacts, dict):
        out["contacts"] = dict.fromkeys(contacts, [])
    elif isinstance(contacts, list):
        out["contacts"] = [[] for _ in contacts]
    return out


def _html(status: int, title: str) -> bytes:
    return (
        f"<html>\r\n<head><title>{status} {title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


def create_app(
    config: MauticConfig | None = None, *, state_file: Path | None = None
) -> MauticSandbox:
    """Build the sandbox: a fresh in-memory Mautic 5 with one admin and two API clients.

    `state_file`: a JSON snapshot of the data (contacts, segments, hooks, clients, tokens),
    loaded now and saved when the app stops, so `serve` keeps its Mautic across restarts.
    """
    if config is None:
        # Mounted by the service (a state file): the demo segment and campaign exist.
        config = MauticConfig(demo_data=state_file is not None)
    state = MauticState(config)
    if state_file is not None:
        try:
            if snapshot.load(state, state_file):
                log.info("mautic sandbox: state loaded from %s", state_file)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("mautic sandbox: ignoring unreadable state file %s: %s", state_file, exc)
            state.reset()

    async def close() -> None:
        """Stop webhook work; keep the data."""
        await state.hub.aclose()
        if state_file is not None:
            snapshot.save(state, state_file)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.hub.start_cron()
        try:
            yield
        finally:
            await close()

    app = MauticSandbox(routes=[*control_routes(), *control.routes], lifespan=lifespan)
    app.state.sandbox = state
    app.sandbox = state
    on_unmount(app, close)
    return app
