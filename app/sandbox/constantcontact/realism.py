"""The kit's gate in front of the API (ref §5, §9.5): the outage, then the application's
daily quota and 4/s window, then the fault dice; refusals rendered as Constant Contact's."""

from __future__ import annotations

from typing import Any

from starlette.types import Receive

from app.sandbox.constantcontact import errors
from app.sandbox.constantcontact.config import FAULT_KINDS
from app.sandbox.constantcontact.errors import ApiError
from app.sandbox.constantcontact.state import AccessToken, SandboxState
from app.sandbox.kit import Refusal, WindowLimiter, hold

# conflict_409 is the sign_up_form race: the dice only offer it there
_KINDS_ELSEWHERE = tuple(k for k in FAULT_KINDS if k != "conflict_409")
_DECISIONS = {"outage": "outage", "quota": "quota_exceeded", "rate": "throttled"}


def quota_key(state: SandboxState, token: AccessToken) -> str:
    return token.client_id if state.config.quota_key == "client_id" else token.account_id


async def admit(
    state: SandboxState, token: AccessToken, entry: dict[str, Any], path: str, receive: Receive
) -> None:
    """Raise the Refusal that turns this request away, if any (nothing is spent then)."""
    key = quota_key(state, token)
    entry["quota_key"] = key
    gate, now = state.gate, state.now()
    if now < gate.outage_until:
        raise Refusal("outage")
    state.quota.check(key, now)
    state.rate.hit(key, now)
    state.quota.spend(key, now)
    entry["decision"] = "admitted"
    entry["admitted_at"] = now  # the instant the 4/s window counted (tests check any second)
    kinds = FAULT_KINDS if path.endswith("/sign_up_form") else _KINDS_ELSEWHERE
    await gate.inject(state.config.fault_rates, kinds, state.config.timeout_seconds, receive)


def endpoint_rate(state: SandboxState, route: str, entry: dict[str, Any]) -> None:
    """`endpoint_rates` (unverified per-endpoint limits): N a second per quota key and route."""
    limit = state.config.endpoint_rates.get(route)
    if limit is None:
        return
    limiter = state.endpoint_limiters.get(route)
    if limiter is None or limiter.limit != limit:
        limiter = state.endpoint_limiters[route] = WindowLimiter(limit, 1.0, name=route)
    limiter.hit(entry["quota_key"], state.now())


async def latency(state: SandboxState, items: int, receive: Receive) -> None:
    """`latency_ms + latency_per_item_ms × items` (a client that gives up ends the wait)."""
    config = state.config
    delay = (config.latency_ms + config.latency_per_item_ms * items) / 1000
    if delay > 0:
        await hold(delay, receive)


def answer(state: SandboxState, refusal: Refusal, entry: dict[str, Any]) -> ApiError:
    """Constant Contact's answer to a refusal (429 objects, 503/500/504 arrays, …)."""
    kind = refusal.kind
    entry["decision"] = _DECISIONS.get(kind, entry.get("decision") or "admitted")
    if kind in ("quota", "429_quota"):
        exc = errors.quota_exceeded()
        retry = refusal.retry_after
        if retry is None:
            now = state.now()
            retry = (int(now // 86_400) + 1) * 86_400 - now
    elif kind in ("rate", "cap", "429_throttled"):
        exc, retry = errors.throttled(), refusal.retry_after or 1.0
    elif kind == "401":
        return errors.unauthorized()
    elif kind == "403":
        return errors.forbidden()
    elif kind == "500":
        return errors.internal()
    elif kind in ("503", "outage"):
        return errors.unavailable()
    elif kind == "conflict_409":
        return errors.conflict(
            "You sent simultaneous requests that are attempting to modify the same contact"
        )
    else:  # timeout: held `timeout_seconds`, nothing applied
        return ApiError(504, "gateway_timeout", "Gateway Timeout", kind="other")
    if state.config.retry_after_header:
        exc.headers.append(("retry-after", str(max(1, int(retry + 0.999)))))
    return exc
