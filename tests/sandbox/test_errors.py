"""Every error body of reference §2.3 (and the auth, 404, 405, parse errors), through HTTP."""

from __future__ import annotations

import base64

import httpx
import pytest

from app.sandbox.mailchimp import DEFAULT_API_KEY, SandboxApp
from tests.sandbox.conftest import LIST, MEMBERS, Members, assert_problem, member_url

INVALID = (
    "The resource submitted could not be validated. "
    "For field-specific details, see the 'errors' array."
)
ANYOF = "Data did not match any of the schemas described in anyOf."


@pytest.mark.parametrize(
    "email",
    [
        "someone@mailinator.com",
        "x@yopmail.com",
        "y@trash-mail.com",
        "z@guerrillamail.com",
        "who@anything.invalid",
    ],
)
async def test_looks_fake(members: Members, email: str) -> None:
    response = await members.put(email, status_if_new="subscribed")
    assert_problem(
        response,
        400,
        "Invalid Resource",
        f"{email} looks fake or invalid, please enter a real email address.",
    )


async def test_example_com_is_valid(members: Members) -> None:
    response = await members.put("fooboo@example.com", status_if_new="subscribed")
    assert response.status_code == 200


async def test_fake_domains_are_configurable(members: Members, mc: httpx.AsyncClient) -> None:
    patched = await mc.patch("/_control/config", json={"fake_email_domains": ["example.org"]})
    assert patched.status_code == 200
    assert (await members.put("a@mailinator.com", status_if_new="subscribed")).status_code == 200
    response = await members.put("a@example.org", status_if_new="subscribed")
    assert_problem(response, 400, "Invalid Resource")


async def test_syntax_invalid_email(members: Members, mc: httpx.AsyncClient) -> None:
    response = await mc.post(
        MEMBERS, json={"email_address": "not-an-email", "status": "subscribed"}
    )
    assert_problem(response, 400, "Invalid Resource", "Please provide a valid email address.")


async def test_required_merge_field(members: Members, mc: httpx.AsyncClient) -> None:
    patched = await mc.patch(f"{LIST}/merge-fields/2", json={"required": True})
    assert patched.json()["tag"] == "LNAME"
    response = await members.put(
        "r@example.com", status_if_new="subscribed", merge_fields={"FNAME": "Ada"}
    )
    body = assert_problem(response, 400, "Invalid Resource", "Your merge fields were invalid.")
    assert body["errors"] == [{"field": "LNAME", "message": "Please enter a value"}]
    skipped = await mc.put(
        member_url("r@example.com"),
        params={"skip_merge_validation": "true"},
        json={"email_address": "r@example.com", "status_if_new": "subscribed"},
    )
    assert skipped.status_code == 200


async def test_incomplete_address(members: Members) -> None:
    response = await members.put(
        "addr@example.com",
        status_if_new="subscribed",
        merge_fields={"ADDRESS": {"addr1": "1 Main St", "city": "Springfield"}},
    )
    body = assert_problem(response, 400, "Invalid Resource", "Your merge fields were invalid.")
    assert body["errors"] == [{"field": "ADDRESS", "message": "Please enter a complete address"}]


async def test_complete_address_is_stored(members: Members) -> None:
    address = {"addr1": "1 Main St", "city": "Springfield", "state": "IL", "zip": "62701"}
    response = await members.put(
        "addr@example.com", status_if_new="subscribed", merge_fields={"ADDRESS": address}
    )
    assert response.status_code == 200
    stored = response.json()["merge_fields"]["ADDRESS"]
    assert stored == {**address, "addr2": "", "country": "US"}


async def test_null_merge_value_is_a_schema_error(members: Members) -> None:
    response = await members.put(
        "n@example.com", status_if_new="subscribed", merge_fields={"FNAME": None}
    )
    body = assert_problem(response, 400, "Invalid Resource", INVALID)
    assert body["errors"] == [{"field": "merge_fields.FNAME", "message": ANYOF}]


async def test_missing_and_null_fields_are_schema_errors(mc: httpx.AsyncClient) -> None:
    missing = await mc.post(MEMBERS, json={"status": "subscribed"})
    body = assert_problem(missing, 400, "Invalid Resource", INVALID)
    assert body["errors"] == [
        {"field": "", "message": "Required fields were not provided: email_address"}
    ]
    null = await mc.post(MEMBERS, json={"email_address": None, "status": "subscribed"})
    body = assert_problem(null, 400, "Invalid Resource", INVALID)
    assert body["errors"] == [
        {"field": "email_address", "message": "Schema describes string, NULL found instead"}
    ]


async def test_wrong_number_type(members: Members, mc: httpx.AsyncClient) -> None:
    created = await mc.post(f"{LIST}/merge-fields", json={"name": "Score", "type": "number"})
    tag = created.json()["tag"]
    response = await members.put(
        "num@example.com", status_if_new="subscribed", merge_fields={tag: "lots"}
    )
    body = assert_problem(response, 400, "Invalid Resource", "Your merge fields were invalid.")
    assert body["errors"] == [{"field": tag, "message": "Please enter a number"}]
    ok = await members.put("num@example.com", status_if_new="subscribed", merge_fields={tag: 42})
    assert ok.json()["merge_fields"][tag] == 42


async def test_unknown_merge_tags_are_ignored(members: Members) -> None:
    response = await members.put(
        "u@example.com", status_if_new="subscribed", merge_fields={"NOPE": "x", "FNAME": "A"}
    )
    assert response.status_code == 200
    assert "NOPE" not in response.json()["merge_fields"]


async def test_invalid_interest(members: Members) -> None:
    response = await members.put(
        "i@example.com", status_if_new="subscribed", interests={"57d5ad703b": True}
    )
    assert_problem(response, 400, "Invalid Resource", "Invalid interest ID: '57d5ad703b'.")


async def test_not_found(mc: httpx.AsyncClient) -> None:
    for path in ("/3.0/lists/0000000000", "/3.0/nothing-here", member_url("x@example.com")):
        assert_problem(
            await mc.get(path),
            404,
            "Resource Not Found",
            "The requested resource could not be found.",
        )


async def test_method_not_allowed(mc: httpx.AsyncClient) -> None:
    response = await mc.put(MEMBERS, json={})
    assert_problem(
        response,
        405,
        "Method Not Allowed",
        "The requested method and resource are not compatible. "
        "See the Allow header for this resource's available methods.",
    )
    assert response.headers["allow"] == "GET, POST"
    tags_put = await mc.put(f"{member_url('a@example.com')}/tags", json={})
    assert tags_put.status_code == 405


async def test_json_parse_error(mc: httpx.AsyncClient) -> None:
    response = await mc.put(
        member_url("a@example.com"),
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert_problem(
        response, 400, "JSON Parse Error", "We encountered an unspecified JSON parsing error."
    )


async def test_api_key_missing_and_invalid(sandbox: SandboxApp) -> None:
    transport = httpx.ASGITransport(app=sandbox)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox.test") as anon:
        assert_problem(
            await anon.get("/3.0/ping"),
            401,
            "API Key Missing",
            "Your request did not include an API key.",
        )
        bad = "0" * 32 + "-us1"
        invalid = "Your API key may be invalid, or you've attempted to access the wrong datacenter."
        for header in (
            "Basic " + base64.b64encode(f"user:{bad}".encode()).decode(),
            f"Bearer {bad}",
            "Basic !!!",
        ):
            response = await anon.get("/3.0/ping", headers={"Authorization": header})
            assert_problem(response, 401, "API Key Invalid", invalid)
        for header in (
            "Basic " + base64.b64encode(f"whoever:{DEFAULT_API_KEY}".encode()).decode(),
            f"Bearer {DEFAULT_API_KEY}",
        ):
            ok = await anon.get("/3.0/ping", headers={"Authorization": header})
            assert ok.json() == {"health_status": "Everything's Chimpy!"}
            assert ok.headers["content-type"] == "application/json; charset=utf-8"
            assert ok.headers["x-request-id"]


async def test_too_many_requests_body(mc: httpx.AsyncClient) -> None:
    await mc.patch("/_control/config", json={"fault_rates": {"429": 1.0}})
    response = await mc.get("/3.0/ping")
    assert_problem(
        response,
        429,
        "Too Many Requests",
        "You have exceeded the limit of 10 simultaneous connections.",
    )
