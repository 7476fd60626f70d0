"""Process-wide configuration from the environment (DESIGN §11)."""

from __future__ import annotations

import json
import os
import secrets
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from cryptography.fernet import Fernet
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.fieldmap import FieldMap, load_field_map

# Values that ship in examples and must never guard a real deployment.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "changethis", "change-me", "secret", "dev", "test"}
)


class Environment(StrEnum):
    """Where the process runs; only `development` may invent its own secrets."""

    development = "development"
    test = "test"
    production = "production"


class MailchimpMode(StrEnum):
    """`sandbox` talks to the built-in emulator, `live` to Mailchimp itself."""

    live = "live"
    sandbox = "sandbox"


class MauticMode(StrEnum):
    """`sandbox` talks to the built-in Mautic emulator, `live` to the operator's instances."""

    live = "live"
    sandbox = "sandbox"


class MauticEnrollmentRule(BaseModel):
    """One MAUTIC_ENROLLMENT rule (DESIGN §14.6): a contact whose lead status is one of
    `lead_status_in` and whose numeric custom field `score_field` is at least `min_score` is
    added to campaign `campaign_id` once, at send time."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    campaign_id: int = Field(gt=0)
    lead_status_in: tuple[str, ...] | None = Field(default=None, min_length=1)
    min_score: float | None = None
    score_field: str | None = Field(default=None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _complete(self) -> MauticEnrollmentRule:
        if self.lead_status_in is None and self.min_score is None:
            raise ValueError("names no condition (lead_status_in or min_score)")
        if self.min_score is not None and not self.score_field:
            raise ValueError("min_score needs score_field (the numeric custom field)")
        if self.score_field and self.min_score is None:
            raise ValueError("score_field needs min_score")
        return self


def parse_enrollment(value: Any) -> tuple[MauticEnrollmentRule, ...]:
    """MAUTIC_ENROLLMENT (a JSON array of rules); ValueError naming the rule that is wrong."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return ()
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"MAUTIC_ENROLLMENT is not JSON: {exc.msg}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError("MAUTIC_ENROLLMENT must be a JSON array of rules")
    rules = []
    for i, item in enumerate(value, start=1):
        if isinstance(item, MauticEnrollmentRule):
            rules.append(item)
            continue
        try:
            rules.append(MauticEnrollmentRule.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(
                (".".join(str(p) for p in e["loc"]) + ": " if e["loc"] else "") + e["msg"]
                for e in exc.errors()
            )
            raise ValueError(f"MAUTIC_ENROLLMENT rule {i} ({item!r}): {problems}") from None
    return tuple(rules)


class ContactKind(StrEnum):
    """The kinds of contact the CRM holds (SYNC_KINDS chooses which are pushed)."""

    client = "client"
    lead = "lead"
    contact = "contact"


class ActiveCampaignMode(StrEnum):
    """`sandbox` talks to the built-in ActiveCampaign emulator, `live` to ActiveCampaign."""

    live = "live"
    sandbox = "sandbox"


class Settings(BaseSettings):
    """Every knob of the service; names are the flat ones of DESIGN §11."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    # --- runtime -------------------------------------------------------------------------
    ENVIRONMENT: Environment = Environment.development
    DATABASE_URL: str | None = None
    DATA_DIR: Path = Path(".data")
    AUTO_MIGRATE: bool | None = None  # default: on in development, off elsewhere
    # Where providers reach this service (webhooks, OAuth redirect); unset: the served host
    # and port (development), see `public_base_url`.
    PUBLIC_BASE_URL: str = ""
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    CORS_ORIGINS: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://localhost:5173", "http://127.0.0.1:5173"]
    )
    DB_POOL_SIZE: int = 10

    # --- auth ----------------------------------------------------------------------------
    AUTH_JWT_SECRET: SecretStr = SecretStr("")
    AUTH_JWKS_URL: str | None = None
    AUTH_ISSUER: str | None = None
    AUTH_AUDIENCE: str | None = None
    ENCRYPTION_KEYS: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    # --- Settings page -------------------------------------------------------------------
    APP_SETTINGS_URL: str | None = None

    # --- Mailchimp -----------------------------------------------------------------------
    MAILCHIMP_MODE: MailchimpMode | None = None  # default: sandbox unless credentials are set
    MAILCHIMP_OAUTH_BASE: str | None = None
    MAILCHIMP_SANDBOX_URL: str | None = None  # where the worker reaches the sandbox
    MAILCHIMP_CLIENT_ID: str | None = None
    MAILCHIMP_CLIENT_SECRET: SecretStr = SecretStr("")
    MAILCHIMP_REDIRECT_URI: str | None = None
    MAILCHIMP_API_KEY: SecretStr = SecretStr("")
    MAILCHIMP_AUDIENCE_ID: str | None = None
    MAILCHIMP_OWNER: str | None = None
    MAILCHIMP_MAX_CONCURRENCY: int = Field(default=8, ge=1, le=10)
    MAILCHIMP_DOUBLE_OPT_IN: bool = False
    MAILCHIMP_SYNC_ADDRESS: bool = False
    MAILCHIMP_MERGE_FIELD_MAP: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    MAILCHIMP_TIMEOUT_SECONDS: float = 30.0

    # --- Constant Contact ----------------------------------------------------------------
    CONSTANTCONTACT_MODE: MailchimpMode | None = None  # sandbox | live; default like Mailchimp's
    CONSTANTCONTACT_CLIENT_ID: str | None = None  # the API key of the developer-portal app
    CONSTANTCONTACT_CLIENT_SECRET: SecretStr = SecretStr("")  # empty for a public PKCE app
    CONSTANTCONTACT_REDIRECT_URI: str | None = None
    CONSTANTCONTACT_SANDBOX_URL: str | None = None  # where the worker reaches the sandbox
    CONSTANTCONTACT_OWNER: str | None = None  # the development demo owner (default `demo`)
    CONSTANTCONTACT_PKCE: bool = True  # PKCE on a confidential app too (off if it refuses)
    CONSTANTCONTACT_BULK_QUOTA_SHARE: float = Field(default=0.8, gt=0, le=1)
    CONSTANTCONTACT_TIMEOUT_SECONDS: float = 30.0

    # --- Mautic --------------------------------------------------------------------------
    MAUTIC_MODE: MauticMode | None = None  # default: sandbox unless an instance is configured
    MAUTIC_SANDBOX_URL: str | None = None  # where the worker reaches the Mautic sandbox
    # Single tenant: one instance and an admin-created OAuth2 client for MAUTIC_OWNER.
    MAUTIC_BASE_URL: str | None = None
    MAUTIC_CLIENT_ID: str | None = None
    MAUTIC_CLIENT_SECRET: SecretStr = SecretStr("")
    MAUTIC_OWNER: str | None = None
    MAUTIC_AUDIENCE_ID: str | None = None  # the segment id
    # Self-hosted instances often live on private addresses; the operator may allow them.
    MAUTIC_ALLOW_PRIVATE_HOSTS: bool = False
    MAUTIC_MAX_CONCURRENCY: int = Field(default=4, ge=1, le=10)
    MAUTIC_TIMEOUT_SECONDS: float = 30.0
    # Campaign enrollment rules (JSON array, DESIGN §14.6): a bad rule refuses to start.
    # Unset in development against the sandbox: the sandbox's demo campaign's rule.
    MAUTIC_ENROLLMENT: Annotated[tuple[MauticEnrollmentRule, ...] | None, NoDecode] = None

    # --- what syncs ----------------------------------------------------------------------
    FIELD_MAP: Annotated[FieldMap, NoDecode] = Field(default_factory=FieldMap)
    SYNC_KINDS: Annotated[frozenset[ContactKind], NoDecode] = Field(
        default_factory=lambda: frozenset(ContactKind)
    )

    # --- sync engine ---------------------------------------------------------------------
    SYNC_MAX_ATTEMPTS: int = Field(default=5, ge=1)
    SYNC_PARKED_RETRY_SECONDS: float = Field(default=900.0, gt=0)
    SYNC_PARKED_RETRY_MAX_SECONDS: float = Field(default=3600.0, gt=0)
    SYNC_BACKOFF_BASE_SECONDS: float = Field(default=1.0, gt=0)
    SYNC_BACKOFF_MAX_SECONDS: float = Field(default=300.0, gt=0)
    SYNC_BATCH_SIZE: int = Field(default=500, ge=1, le=500)
    SYNC_BATCH_THRESHOLD: int = Field(default=50, ge=1)
    SYNC_CLAIM_SIZE: int = Field(default=500, ge=1)
    SYNC_LEASE_SECONDS: float = Field(default=60.0, gt=0)
    SYNC_POLL_INTERVAL_SECONDS: float = Field(default=1.0, gt=0)
    SYNC_NOW_MIN_INTERVAL_SECONDS: int = Field(default=3600, ge=0)
    SYNC_PULL_INTERVAL_SECONDS: int = Field(default=900, ge=0)
    SYNC_PAUSE_AFTER_FAILURES: int = Field(default=10, ge=1)
    SYNC_PROBE_MAX_INTERVAL_SECONDS: float = Field(default=2.0, gt=0)
    SYNC_THROTTLE_COOLDOWN_SECONDS: float = Field(default=0.5, gt=0)
    SYNC_COALESCE_SECONDS: float = Field(default=5.0, ge=0)
    INBOUND_SIGNUPS: bool = True
    INBOUND_PROFILE_UPDATES: bool = False

    # --- ActiveCampaign ------------------------------------------------------------------
    ACTIVECAMPAIGN_MODE: ActiveCampaignMode | None = None  # default: sandbox unless configured
    ACTIVECAMPAIGN_SANDBOX_URL: str | None = None  # where the worker reaches its sandbox
    # Single tenant: one account (its API URL and key) and its list for ACTIVECAMPAIGN_OWNER.
    ACTIVECAMPAIGN_API_URL: str | None = None
    ACTIVECAMPAIGN_API_KEY: SecretStr = SecretStr("")
    ACTIVECAMPAIGN_OWNER: str | None = None
    ACTIVECAMPAIGN_AUDIENCE_ID: str | None = None  # the list id
    ACTIVECAMPAIGN_TIMEOUT_SECONDS: float = 30.0

    # --- processes and observability -----------------------------------------------------
    WORKER_IN_PROCESS: bool = True
    METRICS_PORT: int | None = None
    LOG_FORMAT: str = "console"
    LOG_LEVEL: str = "INFO"

    @field_validator("CORS_ORIGINS", "ENCRYPTION_KEYS", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # "a, b" (the documented form) or a JSON array, which a comma split would mangle.
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("MAILCHIMP_MERGE_FIELD_MAP", mode="before")
    @classmethod
    def _parse_map(cls, value: Any) -> Any:
        # "company=COMPANY,plan=PLAN" or a JSON object: custom field name -> merge tag
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("{"):
                return json.loads(value)
            pairs = (p.split("=", 1) for p in value.split(",") if "=" in p)
            return {k.strip(): v.strip().upper() for k, v in pairs}
        return value

    @field_validator("FIELD_MAP", mode="before")
    @classmethod
    def _parse_field_map(cls, value: Any) -> Any:
        # JSON inline or a file path; the error names the entry (FieldMapError is a ValueError).
        return load_field_map(value)

    @field_validator("MAUTIC_ENROLLMENT", mode="before")
    @classmethod
    def _parse_enrollment(cls, value: Any) -> Any:
        return None if value is None else parse_enrollment(value)

    @field_validator("SYNC_KINDS", mode="before")
    @classmethod
    def _parse_kinds(cls, value: Any) -> Any:
        # "client,lead" or a JSON array; an empty selection would silently sync nothing.
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        kinds = [str(v).strip().lower() for v in value if str(v).strip()]
        if not kinds:
            raise ValueError("SYNC_KINDS needs at least one of client, lead, contact")
        unknown = sorted(set(kinds) - {k.value for k in ContactKind})
        if unknown:
            raise ValueError(
                f"SYNC_KINDS: unknown kind {', '.join(unknown)}; use client, lead, contact"
            )
        return frozenset(kinds)

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        if self.MAILCHIMP_MODE is None:
            has_creds = bool(self.MAILCHIMP_CLIENT_ID) or bool(
                self.MAILCHIMP_API_KEY.get_secret_value()
            )
            self.MAILCHIMP_MODE = MailchimpMode.live if has_creds else MailchimpMode.sandbox
        if self.CONSTANTCONTACT_MODE is None:
            self.CONSTANTCONTACT_MODE = (
                MailchimpMode.live if self.CONSTANTCONTACT_CLIENT_ID else MailchimpMode.sandbox
            )

        if self.MAUTIC_MODE is None:
            configured = bool(self.MAUTIC_BASE_URL) or bool(self.MAUTIC_CLIENT_ID)
            self.MAUTIC_MODE = MauticMode.live if configured else MauticMode.sandbox
        if self.AUTO_MIGRATE is None:
            self.AUTO_MIGRATE = self.ENVIRONMENT is not Environment.production
        if self.ACTIVECAMPAIGN_MODE is None:
            configured = bool(self.ACTIVECAMPAIGN_API_URL) or bool(
                self.ACTIVECAMPAIGN_API_KEY.get_secret_value()
            )
            self.ACTIVECAMPAIGN_MODE = (
                ActiveCampaignMode.live if configured else ActiveCampaignMode.sandbox
            )
        if self.ENVIRONMENT is Environment.development:
            self._fill_dev_secrets()
        else:
            self._refuse_placeholders()
        return self

    def _refuse_placeholders(self) -> None:
        problems = []
        jwt_secret = self.AUTH_JWT_SECRET.get_secret_value()
        if not self.AUTH_JWKS_URL and (jwt_secret in PLACEHOLDER_SECRETS or len(jwt_secret) < 32):
            problems.append("AUTH_JWT_SECRET (32+ random characters) or AUTH_JWKS_URL")
        keys = [k.get_secret_value() for k in self.ENCRYPTION_KEYS]
        if not keys or any(k in PLACEHOLDER_SECRETS for k in keys):
            problems.append("ENCRYPTION_KEYS (Fernet keys, newest first)")
        for key in keys:
            try:
                Fernet(key)
            except ValueError:
                problems.append("ENCRYPTION_KEYS must be url-safe base64 32-byte Fernet keys")
                break
        if problems:
            raise ValueError(
                f"{self.ENVIRONMENT.value} refuses placeholder secrets; set " + ", ".join(problems)
            )

    def _fill_dev_secrets(self) -> None:
        # In development the service invents its secrets once and keeps them in DATA_DIR,
        # so tokens printed yesterday still verify today.
        needs_jwt = not self.AUTH_JWT_SECRET.get_secret_value() and not self.AUTH_JWKS_URL
        if not needs_jwt and self.ENCRYPTION_KEYS:
            return
        stored = load_dev_secrets(self.DATA_DIR)
        if needs_jwt:
            self.AUTH_JWT_SECRET = SecretStr(stored["jwt_secret"])
        if not self.ENCRYPTION_KEYS:
            self.ENCRYPTION_KEYS = [SecretStr(stored["encryption_key"])]

    @property
    def public_base_url(self) -> str:
        """PUBLIC_BASE_URL, or the address this process serves on (HOST, PORT) when unset."""
        if self.PUBLIC_BASE_URL:
            return self.PUBLIC_BASE_URL.rstrip("/")
        return f"http://{_loopback(self.HOST)}:{self.PORT}"

    @property
    def sandbox_url(self) -> str:
        """Base URL of the Mailchimp sandbox as the worker reaches it."""
        if self.MAILCHIMP_SANDBOX_URL:
            return self.MAILCHIMP_SANDBOX_URL.rstrip("/")
        return f"http://{_loopback(self.HOST)}:{self.PORT}/_sandbox/mailchimp"

    @property
    def mautic_sandbox_url(self) -> str:
        """Base URL of the Mautic sandbox (the instance root) as the worker reaches it."""
        if self.MAUTIC_SANDBOX_URL:
            return self.MAUTIC_SANDBOX_URL.rstrip("/")
        return f"http://{_loopback(self.HOST)}:{self.PORT}/_sandbox/mautic"

    @property
    def oauth_base(self) -> str:
        """Where the OAuth authorize/token/metadata endpoints live."""
        if self.MAILCHIMP_OAUTH_BASE:
            return self.MAILCHIMP_OAUTH_BASE.rstrip("/")
        if self.MAILCHIMP_MODE is MailchimpMode.sandbox:
            return self.sandbox_url
        return "https://login.mailchimp.com"

    @property
    def constantcontact_sandbox_url(self) -> str:
        """Root of the Constant Contact sandbox as the worker reaches it (API at /v3)."""
        if self.CONSTANTCONTACT_SANDBOX_URL:
            return self.CONSTANTCONTACT_SANDBOX_URL.rstrip("/")
        return f"http://{_loopback(self.HOST)}:{self.PORT}/_sandbox/constantcontact"

    @property
    def constantcontact_sandbox(self) -> bool:
        """True when Constant Contact traffic goes to the built-in emulator."""
        return self.CONSTANTCONTACT_MODE is MailchimpMode.sandbox

    @property
    def is_sandbox(self) -> bool:
        """True when Mailchimp traffic goes to the built-in emulator."""
        return self.MAILCHIMP_MODE is MailchimpMode.sandbox

    @property
    def activecampaign_sandbox_url(self) -> str:
        """The ActiveCampaign sandbox's account URL (clients append /api/3) as the worker
        reaches it."""
        if self.ACTIVECAMPAIGN_SANDBOX_URL:
            return self.ACTIVECAMPAIGN_SANDBOX_URL.rstrip("/")
        return f"http://{_loopback(self.HOST)}:{self.PORT}/_sandbox/activecampaign"


MAILCHIMP_SANDBOX_PREFIX = "/_sandbox/mailchimp"  # where `serve` mounts the Mailchimp sandbox
MAUTIC_SANDBOX_PREFIX = "/_sandbox/mautic"  # where `serve` mounts the Mautic sandbox


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def load_dev_secrets(data_dir: Path) -> dict[str, str]:
    """Read, or create once, the development secrets file in DATA_DIR."""
    path = data_dir / "dev-secrets.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    data_dir.mkdir(parents=True, exist_ok=True)
    stored = {
        "jwt_secret": secrets.token_urlsafe(48),
        "encryption_key": Fernet.generate_key().decode(),
    }
    # Written owner-only from the first byte, then linked into place: link() fails when
    # another process (`serve` and `worker` starting together) won the race, and then
    # both use the winner's secrets instead of each keeping its own.
    tmp = data_dir / f".dev-secrets.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(stored, out)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return dict(json.loads(path.read_text()))
    finally:
        tmp.unlink()
    return stored


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
