"""The realism knobs: latency, the in-flight cap, fault injection, email rules."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from app.sandbox.mailchimp.constants import DEFAULT_FAKE_EMAIL_DOMAINS

FAULT_KINDS = ("429", "403", "503", "timeout")
FAIL_KINDS = frozenset({"fake", "compliance", "merge_fields", "throttled"})


@dataclass
class SandboxConfig:
    """Everything `/_control/config` shows and changes (and the CLI flags set).

    - ``latency_ms`` (L0) and ``latency_per_member_ms`` (c): each API request is held
      ``L0 + c * members`` ms, members = the batch size of a batch call, else 1.
    - ``max_in_flight``: requests of one account being served at once; one more gets 429.
    - ``fault_rates``: probabilities per API request of ``429``, ``403`` (no body), ``503`` and
      ``timeout`` (held ``timeout_seconds``, then 504; the change is not applied).
    - ``outage_seconds``: from the moment it is set, every API request answers 503 for N s.
    - ``fail_emails``: ``{email: "fake" | "compliance" | "merge_fields" | "throttled"}``:
      every write of that address fails so (throttled = "signed up to a lot of lists").
    - ``fake_email_domains``: domains answered "looks fake or invalid" (plus any ``.invalid``).
    - ``seed``: faults are a pure function of the seed and the order of API requests.
    - ``record_bodies``: keep each write request's JSON body in the request log (benchmarks
      check what was sent, in which order).
    """

    latency_ms: float = 0.0
    latency_per_member_ms: float = 0.0
    max_in_flight: int = 10
    fault_rates: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0.0))
    timeout_seconds: float = 120.0
    outage_seconds: float = 0.0
    fail_emails: dict[str, str] = field(default_factory=dict)
    fake_email_domains: list[str] = field(default_factory=lambda: list(DEFAULT_FAKE_EMAIL_DOMAINS))
    seed: int = 0
    webhook_retry_delays: list[float] = field(default_factory=lambda: [0.2, 1.0, 3.0])
    webhook_timeout_seconds: float = 10.0
    oauth_code_ttl_seconds: float = 600.0
    request_log_size: int = 50_000
    record_bodies: bool = False
    _fake_cache: tuple[list[str], frozenset[str]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def fake_domain_set(self) -> frozenset[str]:
        """`fake_email_domains` as a set (cached until the list is replaced)."""
        cached = self._fake_cache
        if cached is None or cached[0] is not self.fake_email_domains:
            cached = (self.fake_email_domains, frozenset(self.fake_email_domains))
            self._fake_cache = cached
        return cached[1]

    def copy(self) -> SandboxConfig:
        """A deep copy (the state keeps the configuration it started with for resets)."""
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        out = asdict(self)
        out.pop("_fake_cache", None)
        return out

    def patch(self, changes: dict[str, Any]) -> None:
        """Apply a partial update, validating every value; raise ValueError on a bad one."""
        known = {f.name for f in fields(self) if not f.name.startswith("_")}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        staged = self.copy()
        for key, value in changes.items():
            setattr(staged, key, _validate(key, value, staged))
        for f in fields(self):
            setattr(self, f.name, getattr(staged, f.name))


def _number(key: str, value: Any, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{key} must be a number")
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum:g}")
    return float(value)


def _integer(key: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer")
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum}")
    return value


def _validate(key: str, value: Any, current: SandboxConfig) -> Any:
    if key in (
        "latency_ms",
        "latency_per_member_ms",
        "timeout_seconds",
        "outage_seconds",
        "webhook_timeout_seconds",
        "oauth_code_ttl_seconds",
    ):
        return _number(key, value)
    if key == "max_in_flight":
        return _integer(key, value, minimum=1)
    if key == "request_log_size":
        return _integer(key, value, minimum=1)
    if key == "record_bodies":
        if not isinstance(value, bool):
            raise ValueError("record_bodies must be a boolean")
        return value
    if key == "seed":
        return _integer(key, value, minimum=-(2**63))
    if key == "fault_rates":
        if not isinstance(value, dict):
            raise ValueError("fault_rates must be an object")
        rates = dict(current.fault_rates)
        for kind, rate in value.items():
            if kind not in FAULT_KINDS:
                raise ValueError(f"fault_rates keys are {', '.join(FAULT_KINDS)}")
            rates[kind] = _number(f"fault_rates.{kind}", rate)
            if rates[kind] > 1:
                raise ValueError(f"fault_rates.{kind} must be <= 1")
        if sum(rates.values()) > 1:
            raise ValueError("fault_rates must add up to at most 1")
        return rates
    if key == "fail_emails":
        if not isinstance(value, dict):
            raise ValueError("fail_emails must be an object {email: kind}")
        out: dict[str, str] = {}
        for email, kind in value.items():
            if kind not in FAIL_KINDS:
                raise ValueError(f"fail_emails kinds are {', '.join(sorted(FAIL_KINDS))}")
            out[str(email).strip().lower()] = kind
        return out
    if key == "fake_email_domains":
        if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
            raise ValueError("fake_email_domains must be a list of domains")
        return [d.strip().lower().lstrip("@") for d in value if d.strip()]
    if key == "webhook_retry_delays":
        if not isinstance(value, list) or len(value) > 10:
            raise ValueError("webhook_retry_delays must be a list of at most 10 delays")
        return [_number("webhook_retry_delays[]", v) for v in value]
    raise ValueError(f"unknown config key {key}")  # pragma: no cover - guarded above
