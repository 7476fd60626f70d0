"""`audience-sync token` prints a token the service accepts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from typer.testing import CliRunner

from app.auth.tokens import TokenVerifier
from app.cli import cli
from app.config import Settings, get_settings
from tests.conftest import TEST_JWT_SECRET
from tests.support.env import isolate_settings_env


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """A clean environment in an empty working directory; settings re-read afterwards."""
    isolate_settings_env(monkeypatch, tmp_path)
    yield monkeypatch
    get_settings.cache_clear()


def run_token(*args: str) -> str:
    result = CliRunner().invoke(cli, ["token", *args])
    assert result.exit_code == 0, result.output
    return result.output.strip()


@pytest.mark.parametrize("admin", [False, True])
async def test_printed_token_verifies(env: pytest.MonkeyPatch, admin: bool) -> None:
    env.setenv("ENVIRONMENT", "test")
    env.setenv("AUTH_JWT_SECRET", TEST_JWT_SECRET)
    env.setenv("ENCRYPTION_KEYS", Fernet.generate_key().decode())
    token = run_token("--owner", "crm-user-42", *(["--admin"] if admin else []))
    verifier = TokenVerifier(Settings(_env_file=None))  # type: ignore[call-arg]
    principal = await verifier.verify(token)
    assert principal.owner_id == "crm-user-42"
    assert principal.is_admin is admin


async def test_development_token_still_verifies_after_a_restart(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No secret configured: development invents one in DATA_DIR and keeps it.
    env.setenv("DATA_DIR", str(tmp_path / "data"))
    token = run_token("--owner", "demo")
    restarted = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (await TokenVerifier(restarted).verify(token)).owner_id == "demo"


def test_owner_is_required(env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli, ["token"])
    assert result.exit_code != 0
    assert "--owner" in result.output


@pytest.mark.parametrize(
    ("environment", "prints_token"), [("development", True), ("production", False)]
)
def test_serve_prints_a_demo_token_only_in_development(
    env: pytest.MonkeyPatch, tmp_path: Path, environment: str, prints_token: bool
) -> None:
    import uvicorn

    served: list[Any] = []
    # Stand-in for the server loop only: the app is built for real, nothing listens.
    env.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    env.setenv("ENVIRONMENT", environment)
    env.setenv("DATA_DIR", str(tmp_path / "data"))
    env.setenv("DATABASE_URL", "postgresql://unused@127.0.0.1/unused")
    if environment == "production":
        env.setenv("AUTH_JWT_SECRET", TEST_JWT_SECRET)
        env.setenv("ENCRYPTION_KEYS", Fernet.generate_key().decode())
    result = CliRunner().invoke(cli, ["serve", "--port", "8123", "--no-worker"])
    assert result.exit_code == 0, result.output
    (app,) = served
    banner = getattr(app.state, "banner", None)
    assert (banner is not None) is prints_token
    if banner:
        # The console comes first: it is where a newcomer starts.
        first = next(line for line in banner.splitlines() if line.strip())
        assert first.strip() == "Audience Sync is up: open the console at http://127.0.0.1:8123/"
        assert "http://127.0.0.1:8123/docs" in banner
        assert "Bearer token ey" in banner
