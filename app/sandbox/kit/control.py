"""The shape every sandbox's `/_control` shares: reset, config, the request log, the clock.

The routes find the sandbox's state at `request.app.state.sandbox`; it must satisfy
`Controlled`. Control requests never pass the gate (no latency, cap, limits or faults).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.sandbox.kit.clock import Clock
from app.sandbox.kit.log import RequestLog


class Controlled(Protocol):
    """What a sandbox's state offers the shared control routes."""

    requests: RequestLog

    @property
    def clock(self) -> Clock: ...

    def reset(self) -> None: ...

    def patch_config(self, changes: dict[str, Any]) -> None: ...

    def config_view(self) -> dict[str, Any]: ...


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def error(status: int, detail: str) -> Response:
    """A control API error: `{"detail": ...}`."""
    return json_response({"detail": detail}, status)


async def read_object(request: Request) -> dict[str, Any]:
    """The JSON object body (empty body: {}); ValueError on anything else."""
    raw = await request.body()
    if not raw.strip():
        return {}
    data = orjson.loads(raw)  # orjson.JSONDecodeError is a ValueError
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


class DeliveryLog(Protocol):
    """A sandbox's outgoing webhook deliveries, as `/_control/webhook-deliveries` shows them."""

    @property
    def log(self) -> Iterable[dict[str, Any]]: ...

    @property
    def pending(self) -> int: ...

    def clear(self) -> None: ...


def deliveries_response(request: Request, hub: DeliveryLog) -> Response:
    """`GET`: every delivery so far and how many are still to send; `DELETE`: forget them."""
    if request.method == "DELETE":
        hub.clear()
        return Response(status_code=204)
    entries = list(hub.log)
    body = {"deliveries": entries, "total_items": len(entries), "pending": hub.pending}
    return json_response(body)


@dataclass(frozen=True, slots=True)
class PersonAction:
    """A person's action asked of the control API: `POST …/actions/{action}` `{"email": …}`."""

    name: str
    email: str
    data: dict[str, Any]


async def person_action(request: Request, actions: tuple[str, ...]) -> PersonAction | Response:
    """The action the request asks for, or the error answer: an action not in `actions` is
    404, a body that is not an object or carries no `email` is 400."""
    name = request.path_params["action"]
    if name not in actions:
        return error(404, f"unknown action; one of {', '.join(actions)}")
    try:
        data = await read_object(request)
    except ValueError as exc:
        return error(400, str(exc))
    email = data.get("email")
    if not isinstance(email, str) or not email.strip():
        return error(400, "email is required")
    return PersonAction(name, email, data)


def controlled(request: Request) -> Controlled:
    state: Controlled = request.app.state.sandbox
    return state


async def reset(request: Request) -> Response:
    controlled(request).reset()
    return json_response({"status": "reset"})


async def config(request: Request) -> Response:
    state = controlled(request)
    if request.method == "PATCH":
        try:
            state.patch_config(await read_object(request))
        except ValueError as exc:
            return error(400, str(exc))
    return json_response(state.config_view())


async def requests_log(request: Request) -> Response:
    state = controlled(request)
    if request.method == "DELETE":
        state.requests.clear()
        return Response(status_code=204)
    entries = state.requests.view()
    return json_response(
        {
            "requests": entries,
            "total_items": len(entries),
            "max_in_flight_seen": max((e["in_flight"] for e in entries), default=0),
        }
    )


async def clock(request: Request) -> Response:
    """GET: the sandbox's now; POST `{"advance_seconds": n}`: move it forward."""
    state = controlled(request)
    if request.method == "POST":
        try:
            data = await read_object(request)
            seconds = data.get("advance_seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
                raise ValueError("advance_seconds must be a number >= 0")
            state.clock.advance(float(seconds))
        except ValueError as exc:
            return error(400, str(exc))
    return json_response({"now": state.clock.now(), "offset_seconds": state.clock.offset})


def control_routes(*, with_clock: bool = True) -> list[Route]:
    """`POST /_control/reset`, `GET, PATCH /_control/config`, `GET, DELETE /_control/requests`
    and (with_clock) `GET, POST /_control/clock`."""
    routes = [
        Route("/_control/reset", reset, methods=["POST"]),
        Route("/_control/config", config, methods=["GET", "PATCH"]),
        Route("/_control/requests", requests_log, methods=["GET", "DELETE"]),
    ]
    if with_clock:
        routes.append(Route("/_control/clock", clock, methods=["GET", "POST"]))
    return routes
