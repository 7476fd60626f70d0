"""ActiveCampaign connect: the host rule (DESIGN §8, §14.5), the credentials flow in live and
sandbox mode, the single-tenant configuration and the field map's checks."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import ActiveCampaignMode, Environment, Settings
from app.fieldmap import load_field_map
from app.providers.activecampaign.connect import (
    ActiveCampaignConnect,
    ActiveCampaignCredentials,
    account_url,
    client_factory,
)
from app.providers.base import ClientConfig, ConnectRefused, SandboxSeed

flow = ActiveCampaignConnect()


def public(_host: str) -> list[str]:
    return ["104.18.1.1"]


def settings(**values: Any) -> Settings:
    base: dict[str, Any] = {
        "ENVIRONMENT": Environment.test,
        "AUTH_JWT_SECRET": "x" * 40,
        "ENCRYPTION_KEYS": ["A" * 43 + "="],
    }
    return Settings(_env_file=None, **{**base, **values})  # type: ignore[call-arg]


class TestHostRule:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("https://acme.api-us1.com", "https://acme.api-us1.com"),
            ("https://ACME.api-us1.com/api/3/", "https://acme.api-us1.com"),
            ("https://acme.activehosted.com", "https://acme.activehosted.com"),
            ("https://acme.api-eu1.com", "https://acme.api-eu1.com"),
        ],
    )
    def test_accepted(self, url: str, expected: str) -> None:
        assert account_url(url, resolve=public) == expected

    @pytest.mark.parametrize(
        "url",
        [
            "http://acme.api-us1.com",
            "https://evil.example.com",
            "https://acme.api-us1.com.evil.example",
            "https://1.2.3.4",
            "https://[::1]",
            "https://user:pw@acme.api-us1.com",
            "https://acme.api-us1.com:8443",
            "https://acme.api-us1.com/other/path",
            "https://acme.api-us1.com?x=1",
            "https://a.b.api-us1.com",
        ],
    )
    def test_refused(self, url: str) -> None:
        with pytest.raises(ValueError):
            account_url(url, resolve=public)

    @pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "169.254.169.254", "::1"])
    def test_a_private_resolution_is_refused(self, address: str) -> None:
        with pytest.raises(ValueError, match="private or loopback"):
            account_url("https://acme.api-us1.com", resolve=lambda _h: [address])

    def test_the_client_factory_rechecks_a_stored_url_in_live_mode(self) -> None:
        import httpx

        config = ClientConfig(
            transport=httpx.AsyncHTTPTransport(),
            api_endpoint="http://169.254.169.254",
            credentials={"api_key": "k"},
            timeout=5,
            sandbox=False,
        )
        with pytest.raises(ValueError):
            client_factory(config)


class TestCredentials:
    def test_live_mode_applies_the_rule_and_keys_by_host(self) -> None:
        s = settings(ACTIVECAMPAIGN_MODE=ActiveCampaignMode.live)
        with pytest.raises(ConnectRefused) as err:
            flow.account_from_credentials(
                s, ActiveCampaignCredentials(api_url="http://127.0.0.1:8028", api_key="k" * 10)
            )
        assert err.value.field == "api_url"
        body = ActiveCampaignCredentials(api_url="https://localhost.api-us1.com", api_key="k" * 10)
        with pytest.raises(ConnectRefused):  # resolves nowhere public (or nowhere at all)
            flow.account_from_credentials(s, body)

    def test_sandbox_mode_takes_the_sandbox_url(self) -> None:
        s = settings(ACTIVECAMPAIGN_MODE=ActiveCampaignMode.sandbox)
        a = flow.account_from_credentials(
            s, ActiveCampaignCredentials(api_url="http://127.0.0.1:8028/api/3", api_key="k" * 10)
        )
        b = flow.account_from_credentials(
            s, ActiveCampaignCredentials(api_url="http://127.0.0.1:8028", api_key="z" * 10)
        )
        assert a.api_base == "http://127.0.0.1:8028"
        assert a.account_key == b.account_key  # one account: its 5/s shared by every key
        assert a.credentials == {"api_key": "k" * 10}
        assert "k" * 10 not in repr(ActiveCampaignCredentials(api_url="x" * 8, api_key="k" * 10))

    def test_the_mode_follows_the_configuration(self) -> None:
        assert flow.sandbox(settings())
        assert not flow.sandbox(settings(ACTIVECAMPAIGN_API_KEY="k" * 10))


class TestConfigured:
    def test_single_tenant(self) -> None:
        s = settings(
            ACTIVECAMPAIGN_API_URL="https://acme.api-us1.com",
            ACTIVECAMPAIGN_API_KEY="k" * 10,
            ACTIVECAMPAIGN_OWNER="crm",
            ACTIVECAMPAIGN_AUDIENCE_ID="7",
        )
        configured = flow.configured(s, None)
        assert configured is not None
        owner, account, audience = configured
        assert (owner, account.api_base, audience.id) == ("crm", "https://acme.api-us1.com", "7")

    def test_a_configured_url_breaking_the_rule_is_refused(self) -> None:
        s = settings(
            ACTIVECAMPAIGN_API_URL="https://10.0.0.1",
            ACTIVECAMPAIGN_API_KEY="k" * 10,
            ACTIVECAMPAIGN_OWNER="crm",
            ACTIVECAMPAIGN_AUDIENCE_ID="7",
        )
        with pytest.raises(ConnectRefused):
            flow.configured(s, None)

    def test_the_demo_owner_gets_the_sandbox(self) -> None:
        s = settings(HOST="127.0.0.1", PORT=8123)
        seed = SandboxSeed(
            credentials={"api_key": "seed"},
            audience_id="1",
            audience_name="Sandbox List",
            account_name="Sandbox Account",
        )
        configured = flow.configured(s, seed)
        assert configured is not None
        owner, account, audience = configured
        assert owner == "demo" and audience.id == "1"
        assert account.api_base == "http://127.0.0.1:8123/_sandbox/activecampaign"
        assert flow.configured(s, None) is None


class TestFieldMap:
    def test_problems_name_the_entry(self) -> None:
        s = settings(
            FIELD_MAP=load_field_map(
                {
                    "activecampaign": {
                        "custom_fields.a": "dietary",
                        "custom_fields.b": "12",
                        "custom_fields.c": "not a tag!",
                        "first_name": {"field": "firstName", "type": "number"},
                    }
                }
            )
        )
        problems = flow.check_mapping(s)
        assert len(problems) == 2
        assert any("custom_fields.c" in p for p in problems)
        assert any("first_name" in p for p in problems)


class TestPrepare:
    async def test_missing_fields_are_created_unknown_ids_and_single_value_lists_refused(
        self, client: Any
    ) -> None:
        from app.fieldmap import FieldRule, FieldsRefused, FieldType
        from app.providers.activecampaign.connect import ensure_fields

        rules = (
            FieldRule(source="custom_fields.diet", field="DIET", type=FieldType.list),
            FieldRule(source="custom_fields.badge", field="BADGE"),
        )
        assert sorted(await ensure_fields(client, rules)) == ["BADGE", "DIET"]
        assert await ensure_fields(client, rules) == []  # found by perstag next time
        with pytest.raises(FieldsRefused) as err:
            await ensure_fields(
                client,
                (
                    FieldRule(source="custom_fields.x", field="999"),
                    FieldRule(source="custom_fields.badge", field="BADGE", type=FieldType.list),
                ),
            )
        assert len(err.value.problems) == 2
