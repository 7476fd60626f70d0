"""Prometheus metrics: families, the HTTP middleware, and gauges read from the database."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.connections.models import CONNECTION_STATUSES

if TYPE_CHECKING:
    from app.runtime import Runtime

HTTP_REQUESTS = Counter(
    "audience_sync_http_requests_total",
    "HTTP requests served, by method, route and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "audience_sync_http_request_seconds",
    "HTTP request latency by route.",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
QUEUE_DEPTH = Gauge("audience_sync_queue_depth", "Rows in the sync queue by state.", ["state"])
QUEUE_OLDEST_READY_AGE = Gauge(
    "audience_sync_queue_oldest_ready_age_seconds",
    "Age of the oldest ready row in the sync queue.",
)
PARKED_REARMED = Counter(
    "audience_sync_parked_rearmed",
    "Parked queue rows re-armed by the slow retry schedule (SYNC_PARKED_RETRY_SECONDS).",
)
SENDS = Counter(
    "audience_sync_provider_sends_total",
    "Members sent to a provider, by operation and outcome.",
    ["provider", "operation", "outcome"],
)
PROVIDER_REQUESTS = Counter(
    "audience_sync_provider_requests_total",
    "HTTP requests made to a provider, by operation and outcome.",
    ["provider", "operation", "outcome"],
)
PROVIDER_LATENCY = Histogram(
    "audience_sync_provider_request_seconds",
    "Latency of provider requests, by operation.",
    ["provider", "operation"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
THROTTLE_EVENTS = Counter(
    "audience_sync_throttle_events_total",
    "Times a provider throttled us (429, or 403 without a body).",
    ["provider"],
)
WEBHOOK_EVENTS = Counter(
    "audience_sync_webhook_events_total",
    "Inbound webhook events by provider, type and outcome.",
    ["provider", "type", "outcome"],
)
CONNECTIONS = Gauge(
    "audience_sync_connections", "Connections by provider and status.", ["provider", "status"]
)
CONNECTION_STATUS_AGE = Gauge(
    "audience_sync_connection_status_age_seconds",
    "Longest time any connection has been in this status (0 when none is in it).",
    ["provider", "status"],
)
REJECTED = Gauge(
    "audience_sync_rejected_subscribers",
    "Subscribers a provider refused (fixed by editing the contact), by provider.",
    ["provider"],
)
WEBHOOK_SILENCE = Gauge(
    "audience_sync_webhook_silence_seconds",
    "Seconds since the newest inbound webhook event of any active connection with a"
    " registered webhook (since it was connected when none came yet; 0 without any).",
    ["provider"],
)
QUOTA_USED = Gauge(
    "audience_sync_quota_used",
    "Requests spent today (UTC) from the provider's daily quota (its busiest quota scope).",
    ["provider"],
)
QUOTA_LIMIT = Gauge(
    "audience_sync_quota_limit",
    "The provider's daily quota as the process that binds it knows it (0: no quota).",
    ["provider"],
)
RECONCILE_RUNS = Counter(
    "audience_sync_reconcile_runs_total",
    "Reconcile runs (Sync Now, initial, dry runs) by kind and outcome.",
    ["kind", "outcome"],
)


# Label values known up front. prometheus-client prints a labelled family only once it has a
# child, so these are created at zero: a dashboard or alert sees `0`, not "no data", before
# the first send, throttle, webhook or reconcile. They are the values the code records:
# sends by outcome (app/sync/engine.py), requests by operation and outcome
# (app/providers/mailchimp/client.py: "ok", "timeout", "connection_error", or the error class
# name), webhook events by type and outcome (app/webhooks: handlers.EVENT_TYPES plus "other",
# inbound.Outcome; refused deliveries count as type "unknown"). tests/test_metrics.py checks
# these lists against the code. Reconcile values are those the reconcile runs are to use.
# The registry adds every provider it registers (`track_provider`); the registry imports this
# module, never the other way round, so the provider packages can record metrics.
PROVIDERS: list[str] = []
SEND_OPERATIONS = ("sync",)
SEND_OUTCOMES = ("done", "retry", "defer", "release")
PROVIDER_OPERATIONS = (
    "ping",
    "audience",
    "upsert",
    "update",
    "batch",
    "tags",
    "move",
    "archive",
    "forget",
    "get",
    "list",
    "webhook",
    "merge_fields",
    # ActiveCampaign's own (app/providers/activecampaign/client.py)
    "lookup",
    "membership",
    "fields",
    "webhooks",
    "bulk_import",
    "bulk_import_single",
    "import_info",
)
PROVIDER_OUTCOMES = (
    "ok",
    "timeout",
    "connection_error",
    "throttled",
    "transient",
    "auth",
    "audiencemissing",
    "permanent",
)
WEBHOOK_TYPES = ("subscribe", "unsubscribe", "profile", "cleaned", "upemail", "campaign", "other")
WEBHOOK_OUTCOMES = (
    "applied",
    "created",
    "unchanged",
    "stale",
    "ignored",
    "unknown_contact",
    "conflict",
    "invalid",
    "duplicate",
)
WEBHOOK_REFUSALS = ("not_found", "bad_request")
RECONCILE_KINDS = ("sync_now", "initial", "audience_change", "pull")
RECONCILE_OUTCOMES = ("done", "failed", "cancelled")


def track_provider(provider: str) -> None:
    """Create a registered provider's label sets at zero (called by the registry)."""
    if provider in PROVIDERS:
        return
    PROVIDERS.append(provider)
    _initialise_provider(provider)


def _initialise_provider(provider: str) -> None:
    THROTTLE_EVENTS.labels(provider=provider)
    for operation in SEND_OPERATIONS:
        for outcome in SEND_OUTCOMES:
            SENDS.labels(provider=provider, operation=operation, outcome=outcome)
    for operation in PROVIDER_OPERATIONS:
        PROVIDER_LATENCY.labels(provider=provider, operation=operation)
        for outcome in PROVIDER_OUTCOMES:
            PROVIDER_REQUESTS.labels(provider=provider, operation=operation, outcome=outcome)
    for type_ in WEBHOOK_TYPES:
        for outcome in WEBHOOK_OUTCOMES:
            WEBHOOK_EVENTS.labels(provider=provider, type=type_, outcome=outcome)
    for outcome in WEBHOOK_REFUSALS:
        WEBHOOK_EVENTS.labels(provider=provider, type="unknown", outcome=outcome)
    for status in CONNECTION_STATUSES:
        CONNECTIONS.labels(provider=provider, status=status)
        CONNECTION_STATUS_AGE.labels(provider=provider, status=status)
    for family in (REJECTED, WEBHOOK_SILENCE, QUOTA_USED, QUOTA_LIMIT):
        family.labels(provider=provider)


def _initialise_labels() -> None:
    for kind in RECONCILE_KINDS:
        for outcome in RECONCILE_OUTCOMES:
            RECONCILE_RUNS.labels(kind=kind, outcome=outcome)
    # The scrape itself is counted after its response is sent; start the HTTP families with
    # the metrics route so they are present from the first scrape on.
    HTTP_REQUESTS.labels(method="GET", route="/metrics", status="200")
    HTTP_LATENCY.labels(method="GET", route="/metrics")
    QUEUE_DEPTH.labels(state="ready")
    QUEUE_DEPTH.labels(state="parked")


_initialise_labels()


def render() -> tuple[bytes, str]:
    """The exposition text of the default registry."""
    return generate_latest(), CONTENT_TYPE_LATEST


async def refresh_gauges(rt: Runtime) -> None:
    """Read queue and connection gauges from the database (cheap aggregate queries)."""
    from sqlalchemy import text

    async with rt.engine.connect() as conn:
        depth = await conn.execute(text("SELECT state, count(*) FROM sync_queue GROUP BY state"))
        seen = {"ready": 0, "parked": 0}
        seen.update(dict(depth.all()))
        for state, n in seen.items():
            QUEUE_DEPTH.labels(state=state).set(n)
        oldest = await conn.execute(
            text(
                "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(enqueued_at)), 0)"
                " FROM sync_queue WHERE state = 'ready'"
            )
        )
        QUEUE_OLDEST_READY_AGE.set(float(oldest.scalar() or 0))
        statuses = await conn.execute(
            text(
                "SELECT provider, status, count(*),"
                " max(EXTRACT(EPOCH FROM now() - status_since))::float8"
                " FROM connections GROUP BY provider, status"
            )
        )
        CONNECTIONS.clear()
        CONNECTION_STATUS_AGE.clear()
        for provider in PROVIDERS:
            for status in CONNECTION_STATUSES:
                CONNECTIONS.labels(provider=provider, status=status).set(0)
                CONNECTION_STATUS_AGE.labels(provider=provider, status=status).set(0)
        for provider, status, n, age in statuses.all():
            CONNECTIONS.labels(provider=provider, status=status).set(n)
            CONNECTION_STATUS_AGE.labels(provider=provider, status=status).set(age or 0)
        by_provider = await conn.execute(text(_PER_PROVIDER_SQL))
        for family in (REJECTED, WEBHOOK_SILENCE, QUOTA_USED):
            family.clear()
            for provider in PROVIDERS:
                family.labels(provider=provider).set(0)
        for provider, rejected, silence, quota_used in by_provider.all():
            REJECTED.labels(provider=provider).set(rejected)
            WEBHOOK_SILENCE.labels(provider=provider).set(silence)
            QUOTA_USED.labels(provider=provider).set(quota_used)


def record_quota_limit(provider: str, requests: int) -> None:
    """Remember a provider's daily quota (called where a connection's limits are bound)."""
    QUOTA_LIMIT.labels(provider=provider).set(requests)


# Per provider: rejected subscribers; how long no webhook event has come for any of its
# active connections (deliveries stopped: our URL, ingress or the provider; the newest event
# per connection comes from the (connection_id, received_at) index); today's use of its
# daily quota (bucket keys are "<provider>:<scope>:<id>").
_PER_PROVIDER_SQL = """
WITH hooked AS (
    SELECT c.provider, COALESCE(
               (SELECT max(w.received_at) FROM webhook_events w WHERE w.connection_id = c.id),
               c.created_at) AS last_heard
    FROM connections c
    WHERE c.webhook_id IS NOT NULL AND c.status = 'active'
), rejected AS (
    SELECT c.provider, count(*) AS n
    FROM sync_state s JOIN connections c ON c.id = s.connection_id
    WHERE s.error_kind IS NOT NULL
    GROUP BY c.provider
), quota AS (
    SELECT split_part(key, ':', 1) AS provider, max(quota_used) AS used
    FROM limit_buckets
    WHERE quota_day = CAST(timezone('UTC', now()) AS date)
    GROUP BY 1
), providers AS (
    SELECT provider FROM hooked UNION SELECT provider FROM rejected
    UNION SELECT provider FROM quota
)
SELECT p.provider,
       COALESCE(r.n, 0),
       COALESCE((SELECT EXTRACT(EPOCH FROM now() - max(h.last_heard))::float8
                 FROM hooked h WHERE h.provider = p.provider), 0),
       COALESCE(q.used, 0)
FROM providers p
LEFT JOIN rejected r ON r.provider = p.provider
LEFT JOIN quota q ON q.provider = p.provider
"""


class HttpMetricsMiddleware:
    """Pure ASGI middleware counting requests by route template (not raw path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_holder: dict[str, Any] = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or (
                "/_sandbox" if scope["path"].startswith("/_sandbox") else "unmatched"
            )
            method = scope["method"]
            HTTP_REQUESTS.labels(method, path, str(status_holder["status"])).inc()
            HTTP_LATENCY.labels(method, path).observe(time.perf_counter() - start)
