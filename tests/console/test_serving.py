"""The console's page, files and configuration endpoint (no browser needed)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import httpx
from asgi_lifespan import LifespanManager

from app.auth.tokens import TokenVerifier
from app.config import Environment, Settings
from app.console.routes import STATIC_DIR
from app.main import Runtime, create_app


@contextlib.asynccontextmanager
async def client_of(
    settings: Settings, runtime: Runtime, *, client_host: str = "127.0.0.1"
) -> AsyncIterator[httpx.AsyncClient]:
    """The service with `settings`, reached from `client_host`."""
    app = create_app(settings, runtime=runtime)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=(client_host, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


class TestPage:
    async def test_root_serves_the_console_with_a_strict_policy(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/console/js/app.js"></script>' in response.text
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "connect-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert response.headers["referrer-policy"] == "no-referrer"

    async def test_every_module_the_page_imports_is_served(self, client: httpx.AsyncClient) -> None:
        # Follow the imports from app.js: a renamed file would break the page, not the build.
        seen: set[str] = set()
        todo = ["/console/js/app.js", "/console/style.css"]
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            response = await client.get(path)
            assert response.status_code == 200, path
            if path.endswith(".js"):
                assert "javascript" in response.headers["content-type"]
                for name in re.findall(r'from "\./([\w-]+\.js)"', response.text):
                    todo.append(f"/console/js/{name}")
        assert {"/console/js/settings.js", "/console/js/contacts.js"} <= seen
        assert "/console/js/operators.js" in seen

    def test_nothing_comes_from_another_origin(self) -> None:
        for path in STATIC_DIR.rglob("*"):
            if path.is_file():
                text = path.read_text()
                assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), path
                assert "@import url(http" not in text, path

    async def test_a_file_outside_the_console_is_not_served(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/console/../routes.py")
        assert response.status_code == 404
        assert "STATIC_DIR" not in response.text


class TestConfig:
    async def test_outside_development_no_token_is_offered(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/console/config")
        assert response.status_code == 200
        assert response.json() == {
            "environment": "test",
            "demo": None,
            "sandbox": {"base_url": "/_sandbox/mailchimp"},
        }

    async def test_development_offers_working_demo_tokens_to_this_machine(
        self, settings: Settings, runtime: Runtime
    ) -> None:
        dev = settings.model_copy(update={"ENVIRONMENT": Environment.development})
        async with client_of(dev, runtime) as c:
            body = (await c.get("/api/console/config")).json()
            demo = body["demo"]
            assert demo["owner"] == "demo"
            verifier = TokenVerifier(dev)
            user = await verifier.verify(demo["token"])
            admin = await verifier.verify(demo["admin_token"])
            assert (user.owner_id, user.is_admin) == ("demo", False)
            assert (admin.owner_id, admin.is_admin) == ("demo", True)
            listed = await c.get(
                "/api/integrations", headers={"Authorization": f"Bearer {demo['token']}"}
            )
            assert listed.status_code == 200

    async def test_development_offers_no_token_to_another_machine(
        self, settings: Settings, runtime: Runtime
    ) -> None:
        dev = settings.model_copy(update={"ENVIRONMENT": Environment.development})
        async with client_of(dev, runtime, client_host="203.0.113.9") as c:
            assert (await c.get("/api/console/config")).json()["demo"] is None

    async def test_no_token_when_tokens_come_from_an_identity_provider(
        self, settings: Settings, runtime: Runtime
    ) -> None:
        dev = settings.model_copy(
            update={
                "ENVIRONMENT": Environment.development,
                "AUTH_JWKS_URL": "https://id.example.com/jwks.json",
            }
        )
        async with client_of(dev, runtime) as c:
            assert (await c.get("/api/console/config")).json()["demo"] is None
