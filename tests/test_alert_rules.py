"""deploy/prometheus/alerts.yml and the Grafana dashboard use metrics /metrics really exposes,
and the gauges behind the alerts follow the database."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.main import Runtime
from app.sync.limits import DailyQuota, LimitSpec, bind
from tests.admin.test_routes import add_connection, add_mirror_row
from tests.conftest import fetch
from tests.test_metrics import scrape, value

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "audience-sync.json"
METRIC = re.compile(r"\baudience_sync_[a-z_]+\b")


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]


async def exposed_samples(client: httpx.AsyncClient) -> set[str]:
    return {s.name for family in (await scrape(client)).values() for s in family.samples}


async def test_every_rule_names_metrics_that_are_exposed(client: httpx.AsyncClient) -> None:
    exposed = await exposed_samples(client)
    found = rules()
    assert {r["alert"] for r in found} >= {
        "AudienceSyncConnectionPaused",
        "AudienceSyncConnectionInError",
        "AudienceSyncOldestPendingChangeOverAnHour",
        "AudienceSyncRejectedRising",
        "AudienceSyncWebhookDeliveriesStopped",
        "AudienceSyncQuotaNearlySpent",
    }
    for rule in found:
        names = set(METRIC.findall(rule["expr"]))
        assert names, rule["alert"]
        assert names <= exposed, (rule["alert"], names - exposed)
        # Metrics named in the text for the reader must exist too.
        for text in rule.get("annotations", {}).values():
            assert set(METRIC.findall(text)) <= exposed, (rule["alert"], text)


async def test_every_dashboard_query_names_metrics_that_are_exposed(
    client: httpx.AsyncClient,
) -> None:
    exposed = await exposed_samples(client)
    exprs = dashboard_exprs()
    assert len(exprs) >= 8
    for expr in exprs:
        names = set(METRIC.findall(expr))
        assert names and names <= exposed, (expr, names - exposed)


async def test_status_age_follows_the_longest_paused_connection(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await add_connection(runtime, "a", status="paused", status_reason="503s", webhook_id="wh-a")
    await add_connection(runtime, "b", status="paused", status_reason="503s")
    await fetch(
        runtime,
        "UPDATE connections SET status_since = now() - interval '20 minutes' WHERE owner_id = 'a'",
    )
    families = await scrape(client)
    age = families["audience_sync_connection_status_age_seconds"]
    assert 1200 <= value(age, provider="mailchimp", status="paused") < 1300
    assert value(age, provider="mailchimp", status="error") == 0
    # Resumed: the age goes back to zero.
    await fetch(runtime, "UPDATE connections SET status = 'active', status_since = now()")
    families = await scrape(client)
    age = families["audience_sync_connection_status_age_seconds"]
    assert value(age, provider="mailchimp", status="paused") == 0


async def test_rejected_subscribers_are_counted_per_provider(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    a = await add_connection(runtime, "a")
    b = await add_connection(runtime, "b")
    await add_mirror_row(runtime, a, "ok@example.com")
    await add_mirror_row(runtime, a, "bad1@example.com", rejected=True)
    await add_mirror_row(runtime, b, "bad2@example.com", rejected=True)
    families = await scrape(client)
    assert value(families["audience_sync_rejected_subscribers"], provider="mailchimp") == 2


async def test_webhook_silence_is_since_the_newest_event_of_active_connections(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    families = await scrape(client)
    assert value(families["audience_sync_webhook_silence_seconds"], provider="mailchimp") == 0
    a = await add_connection(runtime, "a", webhook_id="wh-a")
    b = await add_connection(runtime, "b", webhook_id="wh-b")
    await fetch(runtime, "UPDATE connections SET created_at = now() - interval '3 hours'")
    # No event yet: silent since they were connected.
    silence = value(
        (await scrape(client))["audience_sync_webhook_silence_seconds"], provider="mailchimp"
    )
    assert 3 * 3600 <= silence < 3 * 3600 + 60
    for conn, ago in ((a, timedelta(hours=2)), (b, timedelta(minutes=10))):
        await fetch(
            runtime,
            "INSERT INTO webhook_events (provider, connection_id, event_type, payload,"
            " dedupe_key, received_at)"
            " VALUES ('mailchimp', :c, 'unsubscribe', '{}', :k, now() - CAST(:ago AS interval))",
            c=conn,
            k=f"k-{conn}",
            ago=ago,
        )
    silence = value(
        (await scrape(client))["audience_sync_webhook_silence_seconds"], provider="mailchimp"
    )
    assert 600 <= silence < 660
    # A paused connection's silence is expected: only active ones count.
    await fetch(runtime, "UPDATE connections SET status = 'paused' WHERE id = :b", b=b)
    silence = value(
        (await scrape(client))["audience_sync_webhook_silence_seconds"], provider="mailchimp"
    )
    assert 7200 <= silence < 7260


@pytest.fixture
def quota_limit_reset() -> Any:
    from app import metrics

    yield
    metrics.QUOTA_LIMIT.labels(provider="mailchimp").set(0)


async def test_quota_used_and_its_limit(
    client: httpx.AsyncClient, runtime: Runtime, quota_limit_reset: None
) -> None:
    await fetch(
        runtime,
        "INSERT INTO limit_buckets (key, quota_day, quota_used) VALUES"
        " ('mailchimp:application:app1', CAST(timezone('UTC', now()) AS date), 9500),"
        " ('mailchimp:application:old', CAST(timezone('UTC', now()) AS date) - 1, 99999),"
        " ('mailchimp:account:acct1', NULL, 0)",
    )
    bind(
        LimitSpec(daily_quota=DailyQuota(10_000)),
        provider="mailchimp",
        account="acct1",
        application="app1",
        tenant="t",
    )
    families = await scrape(client)
    assert value(families["audience_sync_quota_used"], provider="mailchimp") == 9500
    assert value(families["audience_sync_quota_limit"], provider="mailchimp") == 10_000
