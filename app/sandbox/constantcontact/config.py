"""The realism knobs: limits, faults, lifetimes and every unverified behaviour (README)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from app.sandbox.constantcontact.constants import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from app.sandbox.kit import Knobs, boolean, choice, integer, number

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
class SandboxConfig(Knobs):
    """Everything `GET`/`PATCH /_control/config` shows and changes (README lists each).

    The kit's knobs (`latency_ms`, `max_in_flight`, `fault_rates`, `timeout_seconds`,
    `outage_seconds`, `seed`, `request_log_size`, `record_bodies`) plus Constant Contact's.
    """

    fault_kinds: ClassVar[tuple[str, ...]] = FAULT_KINDS

    # kit knobs with this provider's defaults: no documented concurrency cap, its own faults
    max_in_flight: int = 1000
    fault_rates: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0.0))
    timeout_seconds: float = 60.0
    # limits (reference §5): per application (`cid`) by default
    rate_per_second: int = 4
    daily_quota: int = 10_000
    quota_key: str = "client_id"
    retry_after_header: bool = False
    latency_per_item_ms: float = 0.0
    # {"POST /v3/contacts/sign_up_form": 2}: unverified per-endpoint limits, a second per key
    endpoint_rates: dict[str, int] = field(default_factory=dict)
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

    def validate(self, key: str, value: Any) -> Any:
        """This provider's keys here; the kit's in `Knobs.validate`."""
        if key in CHOICES:
            return choice(key, value, CHOICES[key])
        if key in STATUS_CHOICES:
            if value not in STATUS_CHOICES[key]:
                raise ValueError(f"{key} is one of {STATUS_CHOICES[key]}")
            return value
        if key == "endpoint_rates":
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError('endpoint_rates is {"METHOD /v3/route": requests a second}')
            return {k: integer(f"endpoint_rates[{k}]", v, minimum=1) for k, v in value.items()}
        if key == "signup_form_actions":
            if (
                not isinstance(value, list)
                or len(value) != 2
                or not all(isinstance(v, str) and v for v in value)
            ):
                raise ValueError("signup_form_actions is [created word, updated word]")
            return value
        if key in ("issuer", "audience"):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key} must be a non-empty string")
            return value
        if key in ("rate_per_second", "import_max_contacts", "import_max_bytes"):
            return integer(key, value, minimum=1)
        if key in ("daily_quota", "max_lists", "max_custom_fields", "activity_queue_limit"):
            return integer(key, value)
        if key in BOOLEANS:
            return boolean(key, value)
        if key in NUMBERS:
            return number(key, value)
        return super().validate(key, value)


STATUS_CHOICES: dict[str, tuple[int, ...]] = {
    "missing_auth_status": (401, 403),
    "delete_deleted_status": (204, 404),
    "malformed_id_status": (400, 404),
}
BOOLEANS = frozenset(
    {
        "retry_after_header",
        "revoke_access_on_refresh",
        "email_case_sensitive",
        "signup_form_clears_opt_out",
        "opt_out_source_follows_update_source",
        "unsubscribe_moves_updated_at",
        "deleted_shows_opt_out_fields",
        "echo_subresources_on_create",
        "after_filters_inclusive",
    }
)
NUMBERS = frozenset(
    {
        "latency_per_item_ms",
        "access_token_ttl_seconds",
        "auth_code_ttl_seconds",
        "refresh_token_ttl_days",
        "refresh_reuse_grace_seconds",
        "conflict_window_ms",
        "cursor_ttl_seconds",
        "activity_duration_ms",
        "activity_per_item_ms",
    }
)
