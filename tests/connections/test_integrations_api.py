"""The generic integrations API: every route under /api/integrations/{provider}/…"""

from __future__ import annotations

from app.config import Settings
from app.main import create_app
from tests.connections.conftest import DEFAULT_API_KEY, Service


class TestGenericRoutes:
    async def test_an_unknown_provider_is_a_404_problem_on_every_route(
        self, service: Service
    ) -> None:
        for method, path in (
            ("GET", "/api/integrations/nope"),
            ("POST", "/api/integrations/nope/connect"),
            ("POST", "/api/integrations/nope/credentials"),
            ("GET", "/api/integrations/nope/audiences"),
            ("POST", "/api/integrations/nope/sync"),
            ("DELETE", "/api/integrations/nope"),
        ):
            r = await service.http.request(method, path, headers=service.auth(), json={})
            assert r.status_code == 404, (method, path, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")

    async def test_the_list_says_how_each_provider_connects(self, service: Service) -> None:
        r = await service.http.get("/api/integrations", headers=service.auth())
        assert r.status_code == 200
        (mailchimp,) = [i for i in r.json()["items"] if i["provider"] == "mailchimp"]
        assert mailchimp["available"] is True and mailchimp["connected"] is False
        kinds = {m["kind"]: m for m in mailchimp["connect"]}
        assert set(kinds) == {"oauth", "credentials"}
        assert [f["name"] for f in kinds["credentials"]["fields"]] == ["api_key"]
        assert kinds["credentials"]["fields"][0]["kind"] == "secret"

    async def test_credentials_and_the_api_key_alias_connect_alike(self, service: Service) -> None:
        bad = await service.http.post(
            "/api/integrations/mailchimp/credentials",
            json={"api_key": "not-a-key-at-all"},
            headers=service.auth(),
        )
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "api_key"
        extra = await service.http.post(
            "/api/integrations/mailchimp/credentials",
            json={"api_key": DEFAULT_API_KEY, "surprise": 1},
            headers=service.auth(),
        )
        assert extra.status_code == 422
        ok = await service.http.post(
            "/api/integrations/mailchimp/credentials",
            json={"api_key": DEFAULT_API_KEY},
            headers=service.auth(),
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["connected"] is True
        again = await service.http.post(
            "/api/integrations/mailchimp/api-key",
            json={"api_key": DEFAULT_API_KEY},
            headers=service.auth(),
        )
        assert again.status_code == 200, again.text
        assert again.json()["connection_id"] == ok.json()["connection_id"]


def test_openapi_documents_each_providers_credentials_body(settings: Settings) -> None:
    doc = create_app(settings).openapi()
    op = doc["paths"]["/api/integrations/{provider}/credentials"]["post"]
    variants = op["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    (mailchimp,) = [v for v in variants if v.get("title") == "MailchimpCredentials"]
    assert mailchimp["required"] == ["api_key"]
    assert mailchimp["additionalProperties"] is False
