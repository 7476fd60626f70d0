"""Settings: secrets refused or invented, derived defaults, list parsing."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from app.config import Environment, MailchimpMode, Settings, get_settings
from tests.support.env import isolate_settings_env

GOOD_SECRET = "a-real-secret-" + "k" * 40
GOOD_KEY = Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Only what a test sets is in the environment; no `.env` is read."""
    isolate_settings_env(monkeypatch, tmp_path)
    yield
    get_settings.cache_clear()


def load(**values: Any) -> Settings:
    """Settings from `values` and the (clean) environment."""
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class TestPlaceholderSecretsOutsideDevelopment:
    @pytest.mark.parametrize("environment", ["production", "test"])
    @pytest.mark.parametrize(
        "secret", ["", "changeme", "changethis", "secret", "dev", "short-but-random-1234"]
    )
    def test_weak_jwt_secret_is_refused_naming_the_variable(
        self, environment: str, secret: str, tmp_path: Path
    ) -> None:
        with pytest.raises(ValidationError) as caught:
            load(
                ENVIRONMENT=environment,
                AUTH_JWT_SECRET=secret,
                ENCRYPTION_KEYS=GOOD_KEY,
                DATA_DIR=tmp_path,
            )
        message = str(caught.value)
        assert f"{environment} refuses placeholder secrets" in message
        assert "AUTH_JWT_SECRET" in message
        assert "ENCRYPTION_KEYS" not in message
        # Nothing is invented outside development.
        assert not (tmp_path / "dev-secrets.json").exists()

    @pytest.mark.parametrize(
        ("keys", "hint"),
        [
            (None, "ENCRYPTION_KEYS (Fernet keys"),
            ("changeme", "ENCRYPTION_KEYS (Fernet keys"),
            ("not-a-fernet-key", "ENCRYPTION_KEYS must be url-safe base64 32-byte Fernet keys"),
            pytest.param(
                f"{GOOD_KEY},also-not-a-key",
                "ENCRYPTION_KEYS must be url-safe base64",
                id="a-good-key-then-a-bad-one",
            ),
        ],
    )
    def test_missing_or_bad_encryption_keys_are_refused(
        self, keys: str | None, hint: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ENVIRONMENT", "production")
        monkeypatch.setenv("AUTH_JWT_SECRET", GOOD_SECRET)
        if keys is not None:
            monkeypatch.setenv("ENCRYPTION_KEYS", keys)
        with pytest.raises(ValidationError) as caught:
            load()
        assert hint in str(caught.value)
        assert "AUTH_JWT_SECRET" not in str(caught.value)

    def test_every_problem_is_named_at_once(self) -> None:
        with pytest.raises(ValidationError) as caught:
            load(ENVIRONMENT="production")
        assert "AUTH_JWT_SECRET" in str(caught.value)
        assert "ENCRYPTION_KEYS" in str(caught.value)

    def test_real_secrets_are_accepted(self, monkeypatch: pytest.MonkeyPatch) -> None:
        other_key = Fernet.generate_key().decode()
        monkeypatch.setenv("ENVIRONMENT", "production")
        monkeypatch.setenv("AUTH_JWT_SECRET", GOOD_SECRET)
        monkeypatch.setenv("ENCRYPTION_KEYS", f"{GOOD_KEY}, {other_key}")
        settings = load()
        assert settings.ENVIRONMENT is Environment.production
        assert settings.AUTH_JWT_SECRET.get_secret_value() == GOOD_SECRET
        assert [k.get_secret_value() for k in settings.ENCRYPTION_KEYS] == [GOOD_KEY, other_key]

    def test_a_jwks_url_replaces_the_jwt_secret(self) -> None:
        settings = load(
            ENVIRONMENT="production",
            AUTH_JWKS_URL="https://login.example.com/.well-known/jwks.json",
            ENCRYPTION_KEYS=GOOD_KEY,
        )
        assert settings.AUTH_JWT_SECRET.get_secret_value() == ""


class TestDevelopmentSecrets:
    def test_invented_once_and_kept_in_data_dir(self, tmp_path: Path) -> None:
        data_dir = tmp_path / "data"
        first = load(DATA_DIR=data_dir)
        assert first.ENVIRONMENT is Environment.development
        secret = first.AUTH_JWT_SECRET.get_secret_value()
        (key,) = [k.get_secret_value() for k in first.ENCRYPTION_KEYS]
        assert len(secret) >= 32
        Fernet(key)  # a usable key, not a placeholder

        stored = data_dir / "dev-secrets.json"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600  # secrets are not world-readable

        assert sorted(p.name for p in data_dir.iterdir()) == ["dev-secrets.json"]  # no temp left
        second = load(DATA_DIR=data_dir)
        assert second.AUTH_JWT_SECRET.get_secret_value() == secret
        assert [k.get_secret_value() for k in second.ENCRYPTION_KEYS] == [key]

    def test_each_data_dir_has_its_own_secrets(self, tmp_path: Path) -> None:
        a = load(DATA_DIR=tmp_path / "a")
        b = load(DATA_DIR=tmp_path / "b")
        assert a.AUTH_JWT_SECRET.get_secret_value() != b.AUTH_JWT_SECRET.get_secret_value()

    def test_configured_secrets_win_and_nothing_is_written(self, tmp_path: Path) -> None:
        settings = load(DATA_DIR=tmp_path, AUTH_JWT_SECRET=GOOD_SECRET, ENCRYPTION_KEYS=GOOD_KEY)
        assert settings.AUTH_JWT_SECRET.get_secret_value() == GOOD_SECRET
        assert [k.get_secret_value() for k in settings.ENCRYPTION_KEYS] == [GOOD_KEY]
        assert not (tmp_path / "dev-secrets.json").exists()

    def test_only_the_missing_one_is_invented(self, tmp_path: Path) -> None:
        settings = load(DATA_DIR=tmp_path, AUTH_JWT_SECRET=GOOD_SECRET)
        assert settings.AUTH_JWT_SECRET.get_secret_value() == GOOD_SECRET
        (key,) = settings.ENCRYPTION_KEYS
        Fernet(key.get_secret_value())


class TestDerivedDefaults:
    @pytest.mark.parametrize(
        ("values", "mode"),
        [
            ({}, MailchimpMode.sandbox),
            ({"MAILCHIMP_API_KEY": "0123456789abcdef0123456789abcdef-us6"}, MailchimpMode.live),
            ({"MAILCHIMP_CLIENT_ID": "123456789012"}, MailchimpMode.live),
            (
                {"MAILCHIMP_CLIENT_ID": "123456789012", "MAILCHIMP_MODE": "sandbox"},
                MailchimpMode.sandbox,
            ),
            ({"MAILCHIMP_MODE": "live"}, MailchimpMode.live),
        ],
    )
    def test_mailchimp_mode(
        self,
        values: dict[str, str],
        mode: MailchimpMode,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
    ) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        settings = load(DATA_DIR=tmp_path)
        assert settings.MAILCHIMP_MODE is mode
        assert settings.is_sandbox is (mode is MailchimpMode.sandbox)

    def test_empty_variables_count_as_unset(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        # `.env.example` copied as is leaves `MAILCHIMP_API_KEY=`: still sandbox.
        monkeypatch.setenv("MAILCHIMP_API_KEY", "")
        monkeypatch.setenv("MAILCHIMP_MODE", "")
        assert load(DATA_DIR=tmp_path).MAILCHIMP_MODE is MailchimpMode.sandbox

    @pytest.mark.parametrize(
        ("environment", "auto_migrate"),
        [("development", True), ("test", True), ("production", False)],
    )
    def test_auto_migrate(self, environment: str, auto_migrate: bool, tmp_path: Path) -> None:
        settings = load(
            ENVIRONMENT=environment,
            AUTH_JWT_SECRET=GOOD_SECRET,
            ENCRYPTION_KEYS=GOOD_KEY,
            DATA_DIR=tmp_path,
        )
        assert settings.AUTO_MIGRATE is auto_migrate


class TestLists:
    @pytest.mark.parametrize(
        ("raw", "origins"),
        [
            ("https://app.example.com", ["https://app.example.com"]),
            (
                " https://app.example.com, http://localhost:5173 ,,",
                ["https://app.example.com", "http://localhost:5173"],
            ),
            (
                '["https://app.example.com", "http://localhost:5173"]',
                ["https://app.example.com", "http://localhost:5173"],
            ),
        ],
    )
    def test_cors_origins_from_the_environment(
        self, raw: str, origins: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("CORS_ORIGINS", raw)
        settings = load(DATA_DIR=tmp_path)
        assert list(settings.CORS_ORIGINS) == origins

    def test_cors_origins_default_to_the_spa_dev_server(self, tmp_path: Path) -> None:
        assert load(DATA_DIR=tmp_path).CORS_ORIGINS == [
            "http://localhost:5173",
            "http://127.0.0.1:5173",
        ]

    @pytest.mark.parametrize(
        "raw", ["company=company, plan = Plan", '{"company": "COMPANY", "plan": "PLAN"}']
    )
    def test_merge_field_map(
        self, raw: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("MAILCHIMP_MERGE_FIELD_MAP", raw)
        assert load(DATA_DIR=tmp_path).MAILCHIMP_MERGE_FIELD_MAP == {
            "company": "COMPANY",
            "plan": "PLAN",
        }


class TestEnvExample:
    """`.env.example` documents every setting, and copied as is it is safe."""

    EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"

    def test_documents_every_setting(self) -> None:
        documented = set(
            re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", self.EXAMPLE.read_text(), flags=re.M)
        )
        missing = sorted(set(Settings.model_fields) - documented)
        assert not missing, f"add these settings to .env.example, with a comment: {missing}"

    def test_copied_as_is_development_starts(self, tmp_path: Path) -> None:
        settings = Settings(_env_file=self.EXAMPLE, DATA_DIR=tmp_path)  # type: ignore[call-arg]
        assert settings.ENVIRONMENT is Environment.development
        assert settings.MAILCHIMP_MODE is MailchimpMode.sandbox
        assert settings.DATABASE_URL is None  # the embedded PostgreSQL
        assert len(settings.AUTH_JWT_SECRET.get_secret_value()) >= 32  # invented

    def test_copied_as_is_production_refuses_to_start(self, tmp_path: Path) -> None:
        with pytest.raises(ValidationError, match="AUTH_JWT_SECRET"):
            Settings(  # type: ignore[call-arg]
                _env_file=self.EXAMPLE, ENVIRONMENT="production", DATA_DIR=tmp_path
            )
