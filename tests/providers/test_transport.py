"""The lean exchange of the process's transport: the Mailchimp client over real TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.providers.base import (
    AudienceMissing,
    AuthError,
    ContactPayload,
    ErrorKind,
    PermanentError,
    TransientError,
)
from app.providers.mailchimp.client import MailchimpClient
from app.providers.transport import LeanTransport, build_transport
from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID, SandboxConfig
from app.sandbox.mailchimp import create_app as create_sandbox
from tests.support.servers import free_port, run_server


@pytest.fixture
async def transport() -> AsyncIterator[LeanTransport]:
    made = build_transport()
    assert isinstance(made, LeanTransport)
    yield made
    await made.aclose()


@pytest.fixture
async def sandbox_url() -> AsyncIterator[str]:
    async with run_server(create_sandbox(SandboxConfig())) as url:
        yield url


def member(email: str) -> ContactPayload:
    return ContactPayload(
        email_address=email,
        fields={"FNAME": "Ada", "LNAME": "Lovelace"},
        tags=["vip"],
        consent_if_new="subscribed",
    )


async def test_upsert_and_read_back_over_the_lean_path(
    transport: LeanTransport, sandbox_url: str
) -> None:
    client = MailchimpClient(transport, api_base=sandbox_url, api_key=DEFAULT_API_KEY)
    state = await client.upsert_member(DEFAULT_LIST_ID, member("ada@example.com"))
    assert state.email_address == "ada@example.com"
    assert state.status == "subscribed"
    assert state.tags == ["vip"]
    again = await client.get_member(DEFAULT_LIST_ID, "ada@example.com")
    assert again is not None and again.remote_id == state.remote_id
    assert await client.get_member(DEFAULT_LIST_ID, "nobody@example.com") is None


async def test_refusals_map_onto_the_error_tree(transport: LeanTransport, sandbox_url: str) -> None:
    client = MailchimpClient(transport, api_base=sandbox_url, api_key=DEFAULT_API_KEY)
    with pytest.raises(AudienceMissing):
        await client.upsert_member("nosuchlist", member("ada@example.com"))
    with pytest.raises(PermanentError) as refused:
        await client.upsert_member(DEFAULT_LIST_ID, member("not-an-address"))
    assert refused.value.kind is ErrorKind.invalid_email
    wrong = MailchimpClient(
        transport, api_base=sandbox_url, api_key="0123456789abcdef0123456789abcdef-us1"
    )
    with pytest.raises(AuthError):
        await wrong.upsert_member(DEFAULT_LIST_ID, member("ada@example.com"))


async def test_a_refused_connection_is_transient(transport: LeanTransport) -> None:
    client = MailchimpClient(
        transport, api_base=f"http://127.0.0.1:{free_port()}", api_key=DEFAULT_API_KEY
    )
    with pytest.raises(TransientError, match="connection error"):
        await client.ping()


async def test_a_silent_server_times_out_as_transient(transport: LeanTransport) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = MailchimpClient(
            transport,
            api_base=f"http://127.0.0.1:{port}",
            api_key=DEFAULT_API_KEY,
            timeout=0.3,
        )
        with pytest.raises(TransientError, match="timeout"):
            await client.ping()
        assert accepted  # it did connect: the read timed out
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
