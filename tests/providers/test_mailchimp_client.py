"""The Mailchimp client's request shapes and error mapping (respx: HTTP never leaves)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from app.providers.base import (
    AudienceMissing,
    AuthError,
    ContactPayload,
    ErrorKind,
    PermanentError,
    ThrottledError,
    TransientError,
)
from app.providers.mailchimp.client import (
    MailchimpClient,
    check_live_endpoint,
    dc_from_api_key,
    live_api_base,
    subscriber_hash,
)

BASE = "https://us1.api.mailchimp.com/3.0"
KEY = "0123456789abcdef0123456789abcdef-us1"
H = subscriber_hash("ada@example.com")


def problem(status: int, title: str, detail: str, **extra: object) -> httpx.Response:
    body = {
        "type": "https://mailchimp.com/developer/marketing/docs/errors/",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": "i",
        **extra,
    }
    return httpx.Response(status, json=body, headers={"Content-Type": "application/problem+json"})


@pytest.fixture
async def client() -> AsyncIterator[MailchimpClient]:
    async with httpx.AsyncHTTPTransport() as transport:
        yield MailchimpClient(transport, api_base="https://us1.api.mailchimp.com", api_key=KEY)


@pytest.fixture
def api() -> respx.MockRouter:
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        yield router


def payload(**kw: object) -> ContactPayload:
    values: dict = {
        "email_address": "Ada@example.com",
        "fields": {"FNAME": "Ada"},
        "consent_if_new": "subscribed",
        "tags": ["vip"],
    }
    values.update(kw)
    return ContactPayload(**values)


class TestKeysAndHosts:
    def test_hash_is_md5_of_lowercase_trimmed(self) -> None:
        expected = hashlib.md5(b"ada@example.com").hexdigest()
        assert subscriber_hash(" Ada@Example.com ") == expected

    def test_dc_is_the_key_suffix(self) -> None:
        assert dc_from_api_key(KEY) == "us1"
        for bad in ("abc-evil.example/x", "0123-us1", KEY + "/x", "nodc"):
            with pytest.raises(ValueError):
                dc_from_api_key(bad)

    def test_only_mailchimp_hosts_are_accepted(self) -> None:
        assert live_api_base("us19") == "https://us19.api.mailchimp.com"
        with pytest.raises(ValueError):
            live_api_base("evil.example/x")
        assert check_live_endpoint("https://us2.api.mailchimp.com", "us2")
        for bad in (
            "https://169.254.169.254",
            "http://us2.api.mailchimp.com",
            "https://us2.api.mailchimp.com.evil.example",
            "https://us3.api.mailchimp.com",
        ):
            with pytest.raises(ValueError):
                check_live_endpoint(bad, "us2")


class TestRequests:
    async def test_upsert_puts_on_the_hash_with_basic_auth(
        self, client: MailchimpClient, api: respx.MockRouter
    ) -> None:
        route = api.put(f"/lists/L1/members/{H}").respond(
            200,
            json={
                "id": H,
                "email_address": "Ada@example.com",
                "status": "subscribed",
                "tags": [{"id": 1, "name": "vip"}],
                "last_changed": "2026-01-01T00:00:00+00:00",
            },
        )
        state = await client.upsert_member("L1", payload())
        request = route.calls.last.request
        assert request.headers["Authorization"].startswith("Basic ")
        body = request.read()
        assert b'"status_if_new":"subscribed"' in body and b'"tags":["vip"]' in body
        assert b'"status"' not in body.replace(b'"status_if_new"', b"")
        assert state.status == "subscribed" and state.tags == ["vip"]

    async def test_tags_call_marks_syncing(
        self, client: MailchimpClient, api: respx.MockRouter
    ) -> None:
        route = api.post(f"/lists/L1/members/{H}/tags").respond(204)
        await client.update_tags("L1", "ada@example.com", add=["a"], remove=["b"])
        assert route.calls.last.request.read() == (
            b'{"tags":[{"name":"a","status":"active"},{"name":"b","status":"inactive"}],'
            b'"is_syncing":true}'
        )

    async def test_archive_405_means_already_gone(
        self, client: MailchimpClient, api: respx.MockRouter
    ) -> None:
        api.delete(f"/lists/L1/members/{H}").mock(
            return_value=problem(405, "Method Not Allowed", "cannot be removed")
        )
        assert await client.archive_member("L1", "ada@example.com") is False

    async def test_batch_maps_each_member(
        self, client: MailchimpClient, api: respx.MockRouter
    ) -> None:
        api.post("/lists/L1").respond(
            200,
            json={
                "new_members": [{"id": "1", "email_address": "a@x.com", "status": "subscribed"}],
                "updated_members": [
                    {"id": "2", "email_address": "b@x.com", "status": "unsubscribed"}
                ],
                "errors": [
                    {
                        "email_address": "c@x.com",
                        "error_code": "ERROR_GENERIC",
                        "error": "c@x.com looks fake or invalid, please enter a real email.",
                    }
                ],
            },
        )
        out = await client.batch_upsert(
            "L1", [payload(email_address=e) for e in ("a@x.com", "B@x.com", "c@x.com")]
        )
        assert out[0].state is not None and out[0].state.created
        assert out[1].state is not None and out[1].state.status == "unsubscribed"
        assert out[2].error is not None and out[2].error.kind is ErrorKind.invalid_email


class TestErrorMapping:
    @pytest.mark.parametrize(
        ("response", "error", "kind"),
        [
            (
                problem(400, "Member In Compliance State", "x is in a compliance state"),
                PermanentError,
                ErrorKind.compliance,
            ),
            (
                problem(400, "Forgotten Email Not Subscribed", "x was permanently deleted"),
                PermanentError,
                ErrorKind.forgotten,
            ),
            (
                problem(400, "Member Exists", "x is already a list member."),
                PermanentError,
                ErrorKind.member_exists,
            ),
            (
                problem(
                    400,
                    "Invalid Resource",
                    "x looks fake or invalid, please enter a real email address.",
                ),
                PermanentError,
                ErrorKind.invalid_email,
            ),
            (
                problem(
                    400,
                    "Invalid Resource",
                    "Your merge fields were invalid.",
                    errors=[{"field": "LNAME", "message": "Please enter a value"}],
                ),
                PermanentError,
                ErrorKind.merge_fields,
            ),
            (
                problem(400, "Invalid Resource", "x has signed up to a lot of lists very recently"),
                TransientError,
                None,
            ),
            (problem(401, "API Key Invalid", "Your API key may be invalid"), AuthError, None),
            (problem(403, "User Disabled", "disabled"), AuthError, None),
            (httpx.Response(403), ThrottledError, None),
            (
                problem(
                    429,
                    "Too Many Requests",
                    "You have exceeded the limit of 10 simultaneous connections.",
                ),
                ThrottledError,
                None,
            ),
            (httpx.Response(503, text="busy"), TransientError, None),
            (
                problem(404, "Resource Not Found", "The requested resource could not be found."),
                AudienceMissing,
                None,
            ),
        ],
    )
    async def test_upsert_errors(
        self,
        client: MailchimpClient,
        api: respx.MockRouter,
        response: httpx.Response,
        error: type[Exception],
        kind: ErrorKind | None,
    ) -> None:
        api.put(f"/lists/L1/members/{H}").mock(return_value=response)
        with pytest.raises(error) as caught:
            await client.upsert_member("L1", payload())
        if kind is not None:
            assert isinstance(caught.value, PermanentError)
            assert caught.value.kind is kind

    async def test_patch_404_is_member_not_found(
        self, client: MailchimpClient, api: respx.MockRouter
    ) -> None:
        api.patch(f"/lists/L1/members/{H}").mock(
            return_value=problem(
                404, "Resource Not Found", "The requested resource could not be found."
            )
        )
        with pytest.raises(PermanentError) as caught:
            await client.update_member("L1", payload())
        assert caught.value.kind is ErrorKind.not_found

    async def test_timeouts_and_connection_errors_are_transient(
        self, client: MailchimpClient, api: respx.MockRouter
    ) -> None:
        api.get("/ping").mock(side_effect=[httpx.ReadTimeout("slow"), httpx.ConnectError("down")])
        for _ in range(2):
            with pytest.raises(TransientError):
                await client.ping()

    async def test_retry_after_is_kept(
        self, client: MailchimpClient, api: respx.MockRouter
    ) -> None:
        api.get("/ping").respond(429, headers={"Retry-After": "7"})
        with pytest.raises(ThrottledError) as caught:
            await client.ping()
        assert caught.value.retry_after == 7.0


class TestMergeFields:
    async def test_lists_every_page_and_creates_optional_fields(
        self, client: MailchimpClient, api: respx.MockRouter
    ) -> None:
        pages = [
            {"merge_fields": [{"tag": "FNAME", "type": "text"}], "total_items": 2},
            {"merge_fields": [{"tag": "SCORE", "type": "number"}], "total_items": 2},
        ]
        listed = api.get("/lists/L1/merge-fields").mock(
            side_effect=[httpx.Response(200, json=p) for p in pages]
        )
        assert [f["tag"] for f in await client.list_merge_fields("L1")] == ["FNAME", "SCORE"]
        assert [c.request.url.params["offset"] for c in listed.calls] == ["0", "1"]
        created = api.post("/lists/L1/merge-fields").mock(
            return_value=httpx.Response(200, json={"tag": "COMPANY", "merge_id": 6})
        )
        await client.create_merge_field("L1", tag="COMPANY", name="Company", type="text")
        assert created.calls.last.request.read() == (
            b'{"tag":"COMPANY","name":"Company","type":"text","required":false}'
        )

    async def test_a_missing_audience_and_a_refusal(
        self, client: MailchimpClient, api: respx.MockRouter
    ) -> None:
        api.get("/lists/gone/merge-fields").mock(
            return_value=problem(404, "Resource Not Found", "The requested resource could not")
        )
        with pytest.raises(AudienceMissing):
            await client.list_merge_fields("gone")
        api.post("/lists/L1/merge-fields").mock(
            return_value=problem(400, "Invalid Resource", "This list has reached its limit")
        )
        with pytest.raises(PermanentError, match="limit"):
            await client.create_merge_field("L1", tag="X", name="X", type="text")

    async def test_list_values_are_sent_joined(
        self, client: MailchimpClient, api: respx.MockRouter
    ) -> None:
        put = api.put(f"/lists/L1/members/{H}").mock(
            return_value=httpx.Response(
                200, json={"id": H, "email_address": "ada@example.com", "status": "subscribed"}
            )
        )
        await client.upsert_member("L1", payload(fields={"LANGS": ["en", "fr"], "N": 4}))
        sent = put.calls.last.request.read()
        assert b'"LANGS":"en, fr"' in sent and b'"N":4' in sent
