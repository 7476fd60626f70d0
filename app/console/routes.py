"""Serve the console's page and files, and the little it needs to know about the deployment."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.config import MAILCHIMP_SANDBOX_PREFIX as SANDBOX_PREFIX
from app.config import Environment, Settings

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/console"
DEMO_OWNER = "demo"

# Everything the page loads is its own: no inline script, no third-party origin, no framing.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none';"
        " object-src 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
async def console_page() -> FileResponse:
    """The console (a single page; its views are chosen by the URL's fragment)."""
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _demo(settings: Settings, request: Request) -> dict[str, str] | None:
    # The `make run` banner prints the same token; the page offers it only in development,
    # only with a local HS256 secret, and only to a browser on this machine.
    if settings.ENVIRONMENT is not Environment.development or settings.AUTH_JWKS_URL:
        return None
    if not settings.AUTH_JWT_SECRET.get_secret_value() or not _is_loopback(request):
        return None
    from app.auth.tokens import issue_token

    owner = settings.MAILCHIMP_OWNER or DEMO_OWNER
    return {
        "owner": owner,
        "token": issue_token(settings, owner, ttl_seconds=86400),
        "admin_token": issue_token(settings, owner, admin=True, ttl_seconds=86400),
    }


@router.get("/api/console/config")
async def console_config(request: Request) -> dict[str, Any]:
    """What the console adapts to: the demo tokens (development) and the sandbox's address."""
    settings: Settings = request.state.settings
    return {
        "environment": settings.ENVIRONMENT.value,
        "demo": _demo(settings, request),
        "sandbox": {"base_url": SANDBOX_PREFIX} if settings.is_sandbox else None,
    }


def mount(app: FastAPI) -> None:
    """The console's scripts and styles under /console."""
    app.mount(PREFIX, StaticFiles(directory=STATIC_DIR), name="console")
