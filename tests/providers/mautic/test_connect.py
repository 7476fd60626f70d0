"""The Mautic host rule, credentials body and client factory."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from app.providers.base import ClientConfig
from app.providers.mautic.connect import MauticCredentials, client_factory, instance_url
from app.sandbox.mautic import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
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
