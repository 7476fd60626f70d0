"""The ActiveCampaign sandbox's knobs: the kit's, the account's limits, and one knob for every
point the reference marks [unverified] (README.md beside this file lists them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from app.sandbox.activecampaign import constants as c
from app.sandbox.kit import Knobs, boolean, choice, integer, number

FAULT_KINDS = ("429", "403", "500", "502", "503", "520", "empty_200", "truncated", "timeout")


@dataclass
class AcConfig(Knobs):
    """Everything `/_control/config` shows and changes (and the CLI flags set).

    Faults (`fault_rates`): ``429`` (as the rate limit answers it), ``403``
    (``{"message":"Forbidden"}``, the intermittent one of §9.3), ``500``/``502``/``503``/``520``
    (an HTML or empty body, `error_body_5xx`), ``empty_200`` (200 with no body; the change is
    not applied), ``truncated`` (the change is applied, the answer is cut off mid-body: the
    client sees a broken connection) and ``timeout``.
    """

    fault_kinds: ClassVar[tuple[str, ...]] = FAULT_KINDS
    number_keys: ClassVar[frozenset[str]] = frozenset(
        {"webhook_timeout_seconds", "import_stage_seconds", "import_info_false_seconds"}
    )

    fault_rates: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0.0))
    max_in_flight: int = 100
    # -- rate limits (§7, §5) ---------------------------------------------------------------
    rate_limit_per_second: int = 5
    rate_limit_status: int = 429  # 503: the mode of mediatoolkit#18
    rate_limit_headers_always: bool = False  # [unverified] RateLimit-* on every response
    rate_limit_body: Any = field(default_factory=lambda: {"message": "Too Many Requests"})
    bulk_import_rate_status: int = 429  # [unverified] 400 in the docs' example
    bulk_import_enabled: bool = True  # False: HTML 404, as on accounts without it
    # -- transport and auth (§0, §6) ---------------------------------------------------------
    auth_failure_status: int = 403  # [unverified] 401 {"message":"Unauthorized"}
    error_body_5xx: str = "html"  # html | empty
    escape_slashes: bool = False
    timezone: str = c.DEFAULT_TIMEZONE
    # -- contacts (§1) -----------------------------------------------------------------------
    email_case_insensitive: bool = True  # [unverified]
    sync_create_status: int = 201  # [unverified] 201 docs, 200 recorded on update
    sync_blank_clears: bool = True  # [unverified] "" clears, absent keeps
    limit_over_max: str = "cap"  # [unverified] cap | 422
    updated_after_inclusive: bool = True  # [unverified] udate >= value
    missing_email_status: int = 422  # [unverified]
    # -- fields (§2) -------------------------------------------------------------------------
    validate_option_values: bool = False  # [unverified] dropdown values must be options
    field_value_create_status: int = 201  # recorded 201, docs 200
    plural_option_bulk_path: bool = True  # [unverified] /fieldOptions/bulk alias
    # -- lists (§3) --------------------------------------------------------------------------
    contact_list_update_status: int = 200  # [unverified] 201 new, 200 on a change
    delete_list_deletes_contacts: bool = True  # [unverified] list-only contacts go too
    # -- tags (§4) ---------------------------------------------------------------------------
    duplicate_tag_status: int = 422  # [unverified]
    duplicate_tag_message: str = c.DUPLICATE_TAG  # [unverified]
    duplicate_contact_tag: str = "existing"  # [unverified] existing | 422
    # -- bulk import (§5) --------------------------------------------------------------------
    import_stage_seconds: float = 0.5  # waiting -> active -> completed, a stage each
    import_info_false_seconds: float = 0.0  # [unverified] answer `false` this soon after
    import_info_false_form: str = "false"  # [unverified] false | status_false
    import_callback_format: str = "json"  # [unverified] json | form
    # -- webhooks (§8) -----------------------------------------------------------------------
    webhook_field_keys: list[str] = field(default_factory=lambda: ["perstag", "id"])
    webhook_duplicate_rate: float = 0.0  # at-least-once: a delivery sent twice
    webhook_timeout_seconds: float = 10.0
    webhook_initiated_by: dict[str, str] = field(  # [unverified] initiated_by per source
        default_factory=lambda: {
            "public": "public",
            "admin": "admin",
            "api": "api",
            "system": "system",
        }
    )

    def validate(self, key: str, value: Any) -> Any:
        if key == "rate_limit_per_second":
            return integer(key, value, minimum=1)
        if key == "rate_limit_status":
            return _status(key, value, (429, 503))
        if key == "bulk_import_rate_status":
            return _status(key, value, (400, 429))
        if key == "auth_failure_status":
            return _status(key, value, (401, 403))
        if key in ("sync_create_status", "field_value_create_status"):
            return _status(key, value, (200, 201))
        if key == "contact_list_update_status":
            return _status(key, value, (200, 201))
        if key in ("missing_email_status", "duplicate_tag_status"):
            return _status(key, value, (400, 422))
        if key in (
            "rate_limit_headers_always",
            "bulk_import_enabled",
            "escape_slashes",
            "email_case_insensitive",
            "sync_blank_clears",
            "updated_after_inclusive",
            "validate_option_values",
            "plural_option_bulk_path",
            "delete_list_deletes_contacts",
        ):
            return boolean(key, value)
        if key == "rate_limit_body":
            return value
        if key == "error_body_5xx":
            return choice(key, value, ("html", "empty"))
        if key == "limit_over_max":
            return choice(key, value, ("cap", "422"))
        if key == "duplicate_contact_tag":
            return choice(key, value, ("existing", "422"))
        if key == "import_info_false_form":
            return choice(key, value, ("false", "status_false"))
        if key == "import_callback_format":
            return choice(key, value, ("json", "form"))
        if key in ("timezone", "duplicate_tag_message"):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key} must be a non-empty string")
            if key == "timezone":
                from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

                try:
                    ZoneInfo(value)
                except (ZoneInfoNotFoundError, ValueError):
                    raise ValueError(f"unknown timezone {value}") from None
            return value
        if key == "webhook_field_keys":
            if not isinstance(value, list) or not set(value) <= {"perstag", "id"}:
                raise ValueError("webhook_field_keys is a list of perstag, id")
            return list(value)
        if key == "webhook_duplicate_rate":
            rate = number(key, value)
            if rate > 1:
                raise ValueError(f"{key} must be <= 1")
            return rate
        if key == "webhook_initiated_by":
            if not isinstance(value, dict) or not set(value) <= set(c.WEBHOOK_SOURCES):
                raise ValueError("webhook_initiated_by maps sources to strings")
            return {**self.webhook_initiated_by, **{k: str(v) for k, v in value.items()}}
        return super().validate(key, value)


def _status(key: str, value: Any, allowed: tuple[int, ...]) -> int:
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{key} is one of {', '.join(map(str, allowed))}")
    return int(value)
