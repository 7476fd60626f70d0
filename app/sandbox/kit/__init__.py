"""The sandboxes' shared kit: knobs, gate (cap, rate windows, outage, faults), request log,
clock, control routes and serving helpers. Provider-neutral: nothing here renders a
provider's error; see README.md beside this file.
"""

from app.sandbox.kit.asgi import base_url, header, local_path, read_body, respond
from app.sandbox.kit.clock import Clock
from app.sandbox.kit.control import Controlled, control_routes, error, json_response, read_object
from app.sandbox.kit.gate import DailyQuota, Gate, InFlight, Refusal, WindowLimiter, hold
from app.sandbox.kit.knobs import FAULT_KINDS, Knobs, boolean, choice, integer, number
from app.sandbox.kit.log import LogEntry, RequestLog
from app.sandbox.kit.serve import SANDBOXES, build, on_unmount, quiet_gc, run, unmount

__all__ = [
    "FAULT_KINDS",
    "SANDBOXES",
    "Clock",
    "Controlled",
    "DailyQuota",
    "Gate",
    "InFlight",
    "Knobs",
    "LogEntry",
    "Refusal",
    "RequestLog",
    "WindowLimiter",
    "base_url",
    "boolean",
    "build",
    "choice",
    "control_routes",
    "error",
    "header",
    "hold",
    "integer",
    "json_response",
    "local_path",
    "number",
    "on_unmount",
    "quiet_gc",
    "read_body",
    "read_object",
    "respond",
    "run",
    "unmount",
]
