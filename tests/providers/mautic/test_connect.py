"""The Mautic host rule, credentials body and client factory."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from app.config import Environment, MauticMode, Settings
from app.providers import registry
from app.providers.base import ClientConfig, ConnectRefused
from app.providers.mautic import mapping
from app.providers.mautic.connect import MauticCredentials, client_factory, instance_url
from app.sandbox.mautic import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from app.sandbox.mautic.constants import DEMO_CAMPAIGN_ID, DEMO_SEGMENT_ID
from tests.providers.mautic.conftest import Mautic


def public(_host: str) -> list[str]:
    return ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("https://Mautic.Example.com", "https://mautic.example.com"),
        ("https://mautic.example.com/api/", "https://mautic.example.com"),
        ("https://example.com:8443/mautic/", "https://example.com:8443/mautic"),
    ],
)
def test_accepted_urls(url: str, root: str) -> None:
    assert instance_url(url, resolve=public) == root


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://mautic.example.com", "https"),
        ("https://10.0.0.5", "IP address"),
        ("https://[::1]/", "IP address"),
        ("https://user:pw@mautic.example.com", "nothing else"),
        ("https://mautic.example.com/?x=1", "nothing else"),
        ("ftp://mautic.example.com", "https"),
    ],
)
def test_refused_urls(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        instance_url(url, resolve=public)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.9", "::1", "fd00::1"])
def test_private_resolution_is_refused_unless_allowed(address: str) -> None:
    with pytest.raises(ValueError, match="private or loopback"):
        instance_url("https://mautic.internal.example", resolve=lambda _h: ["8.8.8.8", address])
    allowed = instance_url(
        "https://mautic.internal.example", allow_private=True, resolve=lambda _h: [address]
    )
    assert allowed == "https://mautic.internal.example"


def test_credentials_body_keeps_the_secret_out_of_reprs() -> None:
    body = MauticCredentials(
        base_url="https://m.example.com", client_id="1_a", client_secret="s3cr"
    )
    assert "s3cr" not in repr(body) and body.client_secret.get_secret_value() == "s3cr"
    with pytest.raises(ValidationError):
        MauticCredentials.model_validate({"base_url": "https://m.example.com", "client_id": "1_a"})
    with pytest.raises(ValidationError):
        MauticCredentials.model_validate(
            {"base_url": "https://m.example.com", "client_id": "1_a", "client_secret": "s", "x": 1}
        )


async def test_the_factory_builds_a_client_that_reaches_the_sandbox(mautic: Mautic) -> None:
    async with httpx.AsyncHTTPTransport() as transport:
        config = ClientConfig(
            transport=transport,
            api_endpoint=mautic.url,
            credentials={"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET},
            timeout=10,
            sandbox=True,
        )
        client = client_factory(config)
        await client.ping()
        assert [a.id for a in await client.list_audiences()] == [mautic.segment]
        live = ClientConfig(
            transport=transport,
            api_endpoint=mautic.url,  # http://127.0.0.1:…: the host rule refuses it live
            credentials={},
            timeout=10,
            sandbox=False,
        )
        with pytest.raises(ValueError):
            client_factory(live)


def test_the_demo_owner_and_a_single_tenant_are_configured_from_settings(
    settings: Settings,
) -> None:
    provider = registry.get("mautic")
    seed = provider.sandbox_seed()
    assert seed is not None and seed.audience_id == str(DEMO_SEGMENT_ID)
    dev = settings.model_copy(
        update={
            "ENVIRONMENT": Environment.development,
            "MAUTIC_MODE": MauticMode.sandbox,
            "MAUTIC_SANDBOX_URL": "http://127.0.0.1:9/_sandbox/mautic",
        }
    )
    owner, account, audience = provider.connect.configured(dev, seed) or (None, None, None)
    assert owner == "demo" and audience is not None and audience.id == str(DEMO_SEGMENT_ID)
    assert account is not None and account.api_base == "http://127.0.0.1:9/_sandbox/mautic"
    # The demo enrollment rule targets the sandbox's demo campaign.
    assert mapping.enrollment_rules(dev)[0].campaign_id == DEMO_CAMPAIGN_ID
    assert mapping.enrollment_rules(settings) == ()
    # Live, single tenant: MAUTIC_* for MAUTIC_OWNER, the URL by the host rule.
    live = settings.model_copy(
        update={
            "MAUTIC_MODE": MauticMode.live,
            "MAUTIC_BASE_URL": "https://127.0.0.1",
            "MAUTIC_CLIENT_ID": "1_abc",
            "MAUTIC_CLIENT_SECRET": SecretStr("s3cret"),
            "MAUTIC_OWNER": "crm",
            "MAUTIC_AUDIENCE_ID": "7",
        }
    )
    with pytest.raises(ConnectRefused) as refused:
        provider.connect.configured(live, None)
    assert refused.value.field == "MAUTIC_BASE_URL"
    allowed = live.model_copy(
        update={"MAUTIC_BASE_URL": "https://localhost/api", "MAUTIC_ALLOW_PRIVATE_HOSTS": True}
    )
    owner, account, audience = provider.connect.configured(allowed, None) or (None, None, None)
    assert owner == "crm" and audience is not None and audience.id == "7"
    assert account is not None and account.api_base == "https://localhost"
    assert account.credentials["client_secret"] == "s3cret"
    assert account.credentials["webhook_secret"]


def test_mautic_max_concurrency_is_the_per_instance_cap(settings: Settings) -> None:
    provider = registry.get("mautic")
    assert provider.limits(settings).concurrency_per_account == 4
    two = settings.model_copy(update={"MAUTIC_MAX_CONCURRENCY": 2})
    assert provider.limits(two).concurrency_per_account == 2
