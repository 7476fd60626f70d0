"""`audience-sync sandbox <name>`: one command for every sandbox of app.sandbox.kit.SANDBOXES,
passing each sandbox's `serve_sandbox` exactly what its flags say."""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli


def _invoke(monkeypatch: pytest.MonkeyPatch, name: str, *args: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    module = importlib.import_module(f"app.sandbox.{name}.cli")

    @functools.wraps(module.serve_sandbox)  # its signature: the command reads its default port
    def record(**kw: Any) -> None:
        seen.update(kw)

    monkeypatch.setattr(module, "serve_sandbox", record)
    result = CliRunner().invoke(cli, ["sandbox", name, *args])
    assert result.exit_code == 0, result.output
    return seen


def test_mailchimp(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _invoke(monkeypatch, "mailchimp") == {"host": "127.0.0.1", "port": 8025}
    seen = _invoke(
        monkeypatch,
        "mailchimp",
        "--port",
        "9000",
        "--latency-ms",
        "20",
        "--latency-per-member-ms",
        "0.5",
        "--max-in-flight",
        "12",
        "--seed",
        "3",
        "--fault-429",
        "0.3",
        "--fault-timeout",
        "0.1",
        "--timeout-seconds",
        "2",
        "--state-file",
        "s.json",
    )
    assert seen == {
        "host": "127.0.0.1",
        "port": 9000,
        "latency_ms": 20.0,
        "latency_per_member_ms": 0.5,
        "max_in_flight": 12,
        "seed": 3,
        "fault_rates": {"429": 0.3, "timeout": 0.1},
        "timeout_seconds": 2.0,
        "state_file": Path("s.json"),
    }


def test_mautic(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _invoke(monkeypatch, "mautic") == {"host": "127.0.0.1", "port": 8026, "knobs": {}}
    seen = _invoke(
        monkeypatch,
        "mautic",
        "--basic-auth",
        "--queue-mode",
        "--token-lifetime",
        "60",
        "--latency-ms",
        "1",
        "--latency-per-item-ms",
        "2",
        "--fault-500",
        "0.5",
        "--fault-429",
        "0",
    )
    assert seen == {
        "host": "127.0.0.1",
        "port": 8026,
        "basic_auth": True,
        "queue_mode": True,
        "token_lifetime": 60.0,
        "knobs": {"latency_ms": 1.0, "latency_per_item_ms": 2.0, "fault_rates": {"500": 0.5}},
    }


def test_constantcontact(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _invoke(monkeypatch, "constantcontact", "--rate-per-second", "2", "--daily-quota", "100")
    assert seen == {
        "host": "127.0.0.1",
        "port": 8027,
        "changes": {"rate_per_second": 2.0, "daily_quota": 100},
    }


def test_activecampaign(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _invoke(
        monkeypatch, "activecampaign", "--rate-limit-per-second", "3", "--fault-403", "1"
    )
    assert seen == {
        "host": "127.0.0.1",
        "port": 8028,
        "rate_limit_per_second": 3,
        "fault_rates": {"403": 1.0},
    }


def test_a_flag_the_sandbox_does_not_take_is_refused() -> None:
    result = CliRunner().invoke(cli, ["sandbox", "mailchimp", "--basic-auth", "--fault-500", "1"])
    assert result.exit_code == 2
    assert "does not take --basic-auth, --fault-500" in result.output


def test_an_unknown_sandbox_is_refused() -> None:
    result = CliRunner().invoke(cli, ["sandbox", "mailchump"])
    assert result.exit_code == 2
    assert "'mailchump' is not a sandbox" in result.output
