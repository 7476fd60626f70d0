"""The realism knobs: latency, the in-flight cap, fault injection, email rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from app.sandbox.kit.knobs import FAULT_KINDS, Knobs, number
from app.sandbox.mailchimp.constants import DEFAULT_FAKE_EMAIL_DOMAINS

__all__ = ["FAIL_KINDS", "FAULT_KINDS", "SandboxConfig"]

FAIL_KINDS = frozenset({"fake", "compliance", "merge_fields", "throttled"})


@dataclass
class SandboxConfig(Knobs):
    """Everything `/_control/config` shows and changes (and the CLI flags set).

    The kit's knobs (`Knobs`: latency, cap, faults, outage, seed, log), and:

    - ``latency_per_member_ms`` (c): each API request is held ``latency_ms + c * members`` ms,
      members = the batch size of a batch call, else 1.
    - ``fail_emails``: ``{email: "fake" | "compliance" | "merge_fields" | "throttled"}``:
      every write of that address fails so (throttled = "signed up to a lot of lists").
    - ``fake_email_domains``: domains answered "looks fake or invalid" (plus any ``.invalid``).
    - ``record_bodies``: keep each write request's JSON body in the request log (benchmarks
      check what was sent, in which order).
    """

    number_keys: ClassVar[frozenset[str]] = frozenset(
        {"latency_per_member_ms", "webhook_timeout_seconds", "oauth_code_ttl_seconds"}
    )

    latency_per_member_ms: float = 0.0
    fail_emails: dict[str, str] = field(default_factory=dict)
    fake_email_domains: list[str] = field(default_factory=lambda: list(DEFAULT_FAKE_EMAIL_DOMAINS))
    webhook_retry_delays: list[float] = field(default_factory=lambda: [0.2, 1.0, 3.0])
    webhook_timeout_seconds: float = 10.0
    oauth_code_ttl_seconds: float = 600.0
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

    def validate(self, key: str, value: Any) -> Any:
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
            return [number("webhook_retry_delays[]", v) for v in value]
        return super().validate(key, value)
