"""/metrics: every family is exposed, and the gauges read from the database match it."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from prometheus_client import Metric
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from app.main import Runtime
from tests.admin.test_routes import add_connection, add_queue_row
from tests.conftest import fetch

Auth = Callable[..., dict[str, str]]


async def scrape(client: httpx.AsyncClient) -> dict[str, Metric]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {m.name: m for m in text_string_to_metric_families(response.text)}


def value(family: Metric, **labels: str) -> float:
    (sample,) = [
        s for s in family.samples if s.labels == labels and not s.name.endswith("_created")
    ]
    return float(sample.value)


class TestMetrics:
    async def test_every_family_is_exposed_with_samples(self, client: httpx.AsyncClient) -> None:
        families = await scrape(client)
        declared = [
            obj
            for obj in vars(metrics).values()
            if hasattr(obj, "_name") and hasattr(obj, "_type") and hasattr(obj, "collect")
        ]
        assert len(declared) >= 11
        for family in declared:
            (collected,) = family.collect()
            assert collected.name in families, collected.name
            assert families[collected.name].samples, f"{collected.name} has no samples"

    async def test_known_label_sets_are_present_before_any_event(
        self, client: httpx.AsyncClient
    ) -> None:
        families = await scrape(client)
        throttles = families["audience_sync_throttle_events"]
        # Every registered provider's label set exists before any event; the registry is
        # process-wide, so clients tested earlier in the session may have added their own.
        assert {"provider": "mailchimp"} in [
            s.labels for s in throttles.samples if s.name.endswith("_total")
        ]
        runs = families["audience_sync_reconcile_runs"]
        assert {s.labels["kind"] for s in runs.samples} >= {"sync_now", "initial"}
        sends = families["audience_sync_provider_sends"]
        assert {s.labels["outcome"] for s in sends.samples} >= {"done", "retry"}
        requests = families["audience_sync_provider_requests"]
        assert {"upsert", "batch", "ping"} <= {s.labels["operation"] for s in requests.samples}

    async def test_gauges_match_the_database(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        from datetime import timedelta

        a = await add_connection(runtime, "owner-a")
        b = await add_connection(runtime, "owner-b", status="paused")
        await add_connection(runtime, "owner-c", status="paused")
        await add_connection(runtime, "owner-d", status="error")
        for i in range(3):
            await add_queue_row(runtime, a, f"r{i}@example.com", age=timedelta(minutes=10))
        await add_queue_row(runtime, b, "l@example.com", lease=timedelta(minutes=1))
        await add_queue_row(runtime, b, "p1@example.com", state="parked")
        await add_queue_row(runtime, b, "p2@example.com", state="parked")

        families = await scrape(client)
        depth = families["audience_sync_queue_depth"]
        db = {
            r["state"]: r["n"]
            for r in await fetch(
                runtime, "SELECT state, count(*) AS n FROM sync_queue GROUP BY state"
            )
        }
        assert db == {"ready": 4, "parked": 2}
        assert value(depth, state="ready") == 4
        assert value(depth, state="parked") == 2

        connections = families["audience_sync_connections"]
        assert value(connections, provider="mailchimp", status="active") == 1
        assert value(connections, provider="mailchimp", status="paused") == 2
        assert value(connections, provider="mailchimp", status="error") == 1
        assert value(connections, provider="mailchimp", status="needs_audience") == 0

        age = value(families["audience_sync_queue_oldest_ready_age_seconds"])
        assert 590 <= age <= 600 + 300

    async def test_gauges_follow_the_database_down(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        a = await add_connection(runtime, "owner-a")
        await add_queue_row(runtime, a, "x@example.com", state="parked")
        assert value((await scrape(client))["audience_sync_queue_depth"], state="parked") == 1
        await fetch(runtime, "DELETE FROM sync_queue")
        await fetch(runtime, "UPDATE connections SET status = 'paused'")
        families = await scrape(client)
        assert value(families["audience_sync_queue_depth"], state="parked") == 0
        assert value(families["audience_sync_queue_oldest_ready_age_seconds"]) == 0
        connections = families["audience_sync_connections"]
        assert value(connections, provider="mailchimp", status="active") == 0
        assert value(connections, provider="mailchimp", status="paused") == 1


def test_zero_initialised_labels_are_the_ones_the_code_records() -> None:
    import re
    from pathlib import Path

    from app.providers.mailchimp import client
    from app.providers.mailchimp.inbound import EVENT_TYPES
    from app.sync import engine
    from app.webhooks import service
    from app.webhooks.inbound import Outcome

    client_source = Path(client.__file__).read_text()
    assert set(re.findall(r'op="(\w+)"', client_source)) <= set(metrics.PROVIDER_OPERATIONS)
    assert set(metrics.WEBHOOK_TYPES) == set(EVENT_TYPES) | {"other"}
    assert set(metrics.WEBHOOK_OUTCOMES) == {o.value for o in Outcome}
    assert set(re.findall(r'refused\("(\w+)"', Path(service.__file__).read_text())) == set(
        metrics.WEBHOOK_REFUSALS
    )
    from app.providers.base import ProviderError

    errors = {c.__name__.removesuffix("Error").lower() for c in ProviderError.__subclasses__()}
    assert errors | {"ok", "timeout", "connection_error"} == set(metrics.PROVIDER_OUTCOMES)
    kinds = set(re.findall(r'Outcome\([\w.]+, "(\w+)"', Path(engine.__file__).read_text()))
    assert kinds == set(metrics.SEND_OUTCOMES)
