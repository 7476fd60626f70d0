"""The ASGI application: lifespan (database, migrations, worker, sandbox), routers, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from sqlalchemy import text

from app import metrics, wiring
from app.config import Settings, get_settings
from app.contacts.routes import router as contacts_router
from app.db import migrations_at_head
from app.errors import install_error_handlers, problem
from app.logging import RequestIdMiddleware, configure_logging
from app.runtime import Runtime, start_runtime
from app.sync import outbox

__all__ = ["Runtime", "create_app", "start_runtime"]

log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the service. `runtime` lets tests share one database across app instances."""
    settings = settings or get_settings()
    wiring.check_config(settings)
    configure_logging(settings.LOG_FORMAT, settings.LOG_LEVEL)
    outbox.configure(settings.SYNC_COALESCE_SECONDS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        own = runtime is None
        rt = runtime or await start_runtime(settings)
        app.state.runtime = rt
        await wiring.on_startup(app, rt)
        log.info("service.started", mailchimp_mode=settings.MAILCHIMP_MODE)
        try:
            yield {
                "runtime": rt,
                "sessionmaker": rt.sessionmaker,
                "token_verifier": rt.token_verifier,
                "settings": settings,
            }
        finally:
            await wiring.on_shutdown(app, rt)
            if own:
                await rt.engine.dispose()

    app = FastAPI(
        title="Audience Sync",
        version="0.1.0",
        summary="A CRM's contacts, mirrored to email-marketing audiences.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.CORS_ORIGINS,
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "If-Match", "X-Request-ID"],
        expose_headers=["ETag", "Location", "Retry-After", "X-Request-ID"],
    )
    app.add_middleware(metrics.HttpMetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)

    app.include_router(contacts_router)
    for router in wiring.routers(settings):
        app.include_router(router)
    wiring.mount(app, settings)

    @app.get("/healthz", tags=["ops"], include_in_schema=True)
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "not ready"}})
    async def readyz(request: Request) -> Any:
        """Readiness: the database answers and its schema is at the code's migration head."""
        rt: Runtime = request.state.runtime
        try:
            async with rt.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            at_head = await migrations_at_head(rt.engine)
        except Exception as exc:
            return problem(request, 503, detail=f"database unreachable: {type(exc).__name__}")
        if not at_head:
            return problem(request, 503, detail="database schema is not at the migration head")
        return {"status": "ready", "database": "ok", "migrations": "head"}

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus exposition."""
        await metrics.refresh_gauges(request.state.runtime)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app
