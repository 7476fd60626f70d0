"""The realism knobs: limits, faults, lifetimes and every unverified behaviour (README)."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from app.sandbox.constantcontact.constants import DEFAULT_AUDIENCE, DEFAULT_ISSUER

FAULT_KINDS = (
    "429_throttled",
    "429_quota",
    "401",
    "403",
    "500",
    "503",
    "timeout",
    "conflict_409",
)

# Knobs whose value is one of a few words; the first is the default.
CHOICES: dict[str, tuple[str, ...]] = {
    "quota_key": ("client_id", "account"),
    "signup_form_resubscribes": ("always", "account_optouts_only", "never"),
    "put_resubscribe": ("reject_contact_optouts", "allow", "ignore"),
    "last_page_links": ("empty_object", "omit"),
    "default_permission_on_create": ("implicit", "explicit", "not_set"),
    "contacts_order": ("created_at", "updated_at"),
    "error_body_shape": ("array", "object"),
    "id_token": ("openid_only", "never", "always"),
    "pkce_on_confidential": ("allowed", "forbidden", "required"),
    "resubscribe_pending_state": ("pending_confirmation", "unsubscribed"),
}


@dataclass
class SandboxConfig:
    """Everything `GET`/`PATCH /_control/config` shows and changes (README lists each)."""

    # limits (reference §5): per application (`cid`) by default
    rate_per_second: float = 4.0
    daily_quota: int = 10_000
    quota_key: str = "client_id"
    retry_after_header: bool = False
    # latency and faults
    latency_ms: float = 0.0
    latency_per_item_ms: float = 0.0
    fault_rates: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0.0))
    timeout_seconds: float = 60.0
    outage_seconds: float = 0.0
    seed: int = 0
    request_log_size: int = 50_000
    # OAuth
    access_token_ttl_seconds: float = 86_400.0
    auth_code_ttl_seconds: float = 300.0
    refresh_token_ttl_days: float = 180.0
    refresh_reuse_grace_seconds: float = 0.0
    revoke_access_on_refresh: bool = False
    missing_auth_status: int = 401
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_AUDIENCE
    id_token: str = "openid_only"
    pkce_on_confidential: str = "allowed"
    # contacts
    email_case_sensitive: bool = False
    default_permission_on_create: str = "implicit"
    signup_form_resubscribes: str = "always"
    signup_form_clears_opt_out: bool = True
    signup_form_actions: list[str] = field(default_factory=lambda: ["created", "updated"])
    conflict_window_ms: float = 0.0
    put_resubscribe: str = "reject_contact_optouts"
    opt_out_source_follows_update_source: bool = True
    unsubscribe_moves_updated_at: bool = True
    resubscribe_pending_state: str = "pending_confirmation"
    deleted_shows_opt_out_fields: bool = False
    echo_subresources_on_create: bool = False
    delete_deleted_status: int = 204
    malformed_id_status: int = 400
    last_page_links: str = "empty_object"
    contacts_order: str = "created_at"
    after_filters_inclusive: bool = False
    cursor_ttl_seconds: float = 0.0
    # lists, fields, activities
    max_lists: int = 1000
    max_custom_fields: int = 100
    activity_queue_limit: int = 1000
    activity_duration_ms: float = 200.0
    activity_per_item_ms: float = 0.05
    import_max_contacts: int = 40_000
    import_max_bytes: int = 4 * 1024 * 1024
    error_body_shape: str = "array"

    def copy(self) -> SandboxConfig:
        """A deep copy (the state keeps its startup configuration for resets)."""
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return asdict(self)

    def patch(self, changes: dict[str, Any]) -> None:
        """Apply a partial update, validating every value; raise ValueError on a bad one."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        staged = self.copy()
        for key, value in changes.items():
            setattr(staged, key, _validate(key, value, staged))
        for f in fields(self):
            setattr(self, f.name, getattr(staged, f.name))


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{key} must be a number")
    if value < 0:
        raise ValueError(f"{key} must be >= 0")
    return float(value)


def _validate(key: str, value: Any, current: SandboxConfig) -> Any:
    default = getattr(current, key)
    if key in CHOICES:
        if value not in CHOICES[key]:
            raise ValueError(f"{key} is one of {', '.join(CHOICES[key])}")
        return value
    if key in ("missing_auth_status",):
        if value not in (401, 403):
            raise ValueError(f"{key} is 401 or 403")
        return value
    if key == "delete_deleted_status":
        if value not in (204, 404):
            raise ValueError(f"{key} is 204 or 404")
        return value
    if key == "malformed_id_status":
        if value not in (400, 404):
            raise ValueError(f"{key} is 400 or 404")
        return value
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
    if key == "signup_form_actions":
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise ValueError("signup_form_actions is [created word, updated word]")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be a boolean")
        return value
    if isinstance(default, str):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key} must be a non-empty string")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be an integer >= 0")
        if key in ("request_log_size", "import_max_contacts", "import_max_bytes") and value < 1:
            raise ValueError(f"{key} must be >= 1")
        return value
    number = _number(key, value)
    if key == "rate_per_second" and number <= 0:
        raise ValueError("rate_per_second must be > 0")
    return number
