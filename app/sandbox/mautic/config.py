"""The sandbox's knobs: the kit's realism knobs, Mautic's own parameters, the unverified
points of the reference, webhook behaviour."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from app.sandbox.kit.knobs import Knobs

CHOICES: dict[str, tuple[Any, ...]] = {
    "locale": ("en", "es"),
    "unique_identifiers_operator": ("OR", "AND"),
    "queue_mode": ("immediate_process", "command_process"),
    "events_orderby_dir": ("ASC", "DESC"),
    "webhook_policy": ("5.x", "7.x"),
    "ip_address_key": ("ipAddress", "ip"),
    "token_scope": (None, ""),
    "api_role": ("admin", "read_only"),
}
WEBHOOK_FAULTS = ("drop", "duplicate", "empty_fields")
# What goes wrong in front of or inside a Mautic: the rate limiter's 429, PHP's generic 500,
# the web server's 503, a request that hangs until the proxy gives up (504).
MAUTIC_FAULTS = ("429", "500", "503", "timeout")


@dataclass
class MauticConfig(Knobs):
    """Everything `/_control/config` shows and changes; README.md explains each knob.

    The kit's knobs (latency, in-flight cap, fault rates, outage, seed, request log) apply to
    every `/api` and `/oauth` request; ``latency_per_item_ms`` adds per item of a batch.
    """

    fault_kinds: ClassVar[tuple[str, ...]] = MAUTIC_FAULTS

    fault_rates: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MAUTIC_FAULTS, 0.0))
    max_in_flight: int = 20
    latency_per_item_ms: float = 0.0
    # Mautic's configuration parameters (ApiBundle, LeadBundle, WebhookBundle).
    api_enabled: bool = True
    api_enable_basic_auth: bool = False
    access_token_lifetime_seconds: float = 3600.0
    refresh_token_lifetime_seconds: float = 1_209_600.0
    auth_code_lifetime_seconds: float = 30.0
    api_batch_max_limit: int = 200
    api_rate_limiter_limit: int = 0
    default_page_limit: int = 30
    contact_api_count_cache_ttl: float = 5.0
    unique_identifiers_operator: str = "OR"
    create_custom_field_in_background: bool = False
    mautic_version: str = "5.1.0"
    site_url: str = ""  # empty: the URL the sandbox is reached at
    locale: str = "en"
    # The API user's role: `read_only` answers the permission 403 to every write.
    api_role: str = "admin"
    # A fresh instance holds the demo segment and campaign (constants.DEMO_*): on when the
    # service mounts the sandbox, so its demo owner's connection has a segment to sync to.
    demo_data: bool = False
    # Points the reference marks [unverified]: each is a knob with the emulator's choice.
    token_scope: str | None = None
    token_accepts_json_body: bool = True
    no_credentials_message: str = "API authorization denied."
    ip_address_key: str = "ipAddress"
    email_match_case_insensitive: bool = True
    contact_not_found_message: str = "Contact not found."
    campaign_contacts_string_ids: bool = True
    rate_limit_html_content_type: bool = True
    webhook_user_agent: str = "GuzzleHttp/7"
    webhook_policy: str = "5.x"
    block_private_webhook_urls: bool = False
    dnc_comments: dict[str, str] = field(
        default_factory=lambda: {
            "unsubscribe": "User unsubscribed.",
            "bounce": "550 5.1.1 The email account that you tried to reach does not exist.",
            "complaint": "abuse",
        }
    )
    # Webhook processing.
    queue_mode: str = "immediate_process"
    webhook_limit: int = 10
    events_orderby_dir: str = "ASC"
    webhook_disable_limit: int = 100
    webhook_timeout_seconds: float = 15.0
    webhook_cron_seconds: float = 5.0
    webhook_retry_delay: float = 3600.0
    webhook_health_check_time: float = 300.0
    disable_auto_unpublish: bool = False
    webhook_fault_rates: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(WEBHOOK_FAULTS, 0.0)
    )
    webhook_delay_ms: float = 0.0
    # Mautic 5.0's bug (#13298): contact bodies serialized as `[]`; the write still happened.
    empty_contact_rate: float = 0.0

    def validate(self, key: str, value: Any) -> Any:
        """Mautic's keys here; the kit's keys (latency, faults, …) in `Knobs.validate`."""
        if key in _KIT_KEYS:
            return super().validate(key, value)
        return _validate(key, value, getattr(self, key))


_KIT_KEYS = frozenset(
    {
        "latency_ms",
        "max_in_flight",
        "fault_rates",
        "timeout_seconds",
        "outage_seconds",
        "seed",
        "request_log_size",
        "record_bodies",
    }
)


def _validate(key: str, value: Any, current: Any) -> Any:
    if key in CHOICES:
        if value not in CHOICES[key]:
            raise ValueError(f"{key} is one of {list(CHOICES[key])}")
        return value
    if key == "webhook_fault_rates":
        if not isinstance(value, dict) or set(value) - set(WEBHOOK_FAULTS):
            raise ValueError(f"webhook_fault_rates keys are {', '.join(WEBHOOK_FAULTS)}")
        rates = dict(current)
        for kind, rate in value.items():
            rates[kind] = _validate(f"webhook_fault_rates.{kind}", rate, 0.0)
            if rates[kind] > 1:
                raise ValueError(f"webhook_fault_rates.{kind} must be <= 1")
        return rates
    if key == "dnc_comments":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError("dnc_comments must be an object of strings")
        return {**current, **value}
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be a boolean")
        return value
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be a non-negative integer")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ValueError(f"{key} must be a number")
        if value < 0:
            raise ValueError(f"{key} must be >= 0")
        return float(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
        return value
    raise ValueError(f"{key} cannot be set")  # pragma: no cover - every field has a type
