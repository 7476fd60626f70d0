"""ActiveCampaign deliveries into neutral events, and our list webhook kept registered."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from app.providers.activecampaign.client import ActiveCampaignClient
from app.providers.activecampaign.inbound import SOURCES, ActiveCampaignInbound
from app.providers.base import InboundKind, MalformedPayload
from tests.providers.activecampaign.conftest import LIST, Ac, payload

inbound = ActiveCampaignInbound()


def body(**pairs: str) -> bytes:
    base = {"date_time": "2024-02-28T07:16:48-06:00", "initiated_from": "public", "list": LIST}
    return urlencode({**base, **pairs}).encode()


async def direct(fn):  # type: ignore[no-untyped-def]
    return await fn()


class TestParse:
    def test_unsubscribe(self) -> None:
        (event,) = inbound.parse(
            body(
                type="unsubscribe",
                **{"contact[email]": "a@b.co", "contact[id]": "3", "unsubscribe[reason]": "no"},
            ),
            headers={},
            secret=None,
        )
        assert event.kind is InboundKind.unsubscribe and event.email == "a@b.co"
        assert event.reason == "no" and event.audience_id == LIST
        assert event.fired_at.utcoffset() is not None
        assert event.person_id == "3"  # contact[id]: matched by the person's id too

    def test_a_delivery_without_the_persons_id_carries_none(self) -> None:
        (event,) = inbound.parse(
            body(type="unsubscribe", **{"contact[email]": "a@b.co"}), headers={}, secret=None
        )
        assert event.person_id is None

    def test_bounce_is_cleaned(self) -> None:
        (event,) = inbound.parse(
            body(type="bounce", **{"contact[email]": "a@b.co"}), headers={}, secret=None
        )
        assert event.kind is InboundKind.cleaned

    def test_update_carries_attributes_and_fields_by_id_and_perstag(self) -> None:
        (event,) = inbound.parse(
            body(
                type="update",
                list="0",
                **{
                    "contact[email]": "a@b.co",
                    "contact[first_name]": "Ada",
                    "contact[fields][dietary]": "||vegan||",
                    "contact[fields][7]": "||vegan||",
                },
            ),
            headers={},
            secret=None,
        )
        assert event.kind is InboundKind.profile and event.audience_id is None
        assert event.fields == {"firstName": "Ada", "DIETARY": "||vegan||", "7": "||vegan||"}

    def test_api_source_and_tag_events_are_ignored(self) -> None:
        (own,) = inbound.parse(
            body(type="unsubscribe", initiated_from="api", **{"contact[email]": "a@b.co"}),
            headers={},
            secret=None,
        )
        (tag,) = inbound.parse(
            body(type="contact_tag_added", tag="vip", **{"contact[email]": "a@b.co"}),
            headers={},
            secret=None,
        )
        assert own.kind is InboundKind.ignored and tag.kind is InboundKind.ignored

    def test_the_old_date_format(self) -> None:
        (event,) = inbound.parse(
            body(type="subscribe", date_time="2013-07-18 08:46:33", **{"contact[email]": "x@y.z"}),
            headers={},
            secret=None,
        )
        assert event.kind is InboundKind.subscribe and event.fired_at.year == 2013

    @pytest.mark.parametrize(
        "raw",
        [b"\xff\xfe", b"type=update", b"date_time=2024-01-01", b"a]=1", b"type=x&date_time=nope"],
    )
    def test_malformed(self, raw: bytes) -> None:
        with pytest.raises(MalformedPayload):
            inbound.parse(raw, headers={}, secret=None)

    def test_a_duplicate_delivery_has_the_same_key(self) -> None:
        raw = body(type="unsubscribe", **{"contact[email]": "a@b.co"})
        (a,) = inbound.parse(raw, headers={}, secret=None)
        (b,) = inbound.parse(raw, headers={}, secret=None)
        assert inbound.dedupe_key("c", a, raw) == inbound.dedupe_key("c", b, raw)
        other = body(type="unsubscribe", **{"contact[email]": "z@b.co"})
        (c,) = inbound.parse(other, headers={}, secret=None)
        assert inbound.dedupe_key("c", c, other) != inbound.dedupe_key("c", a, raw)


class TestWebhook:
    async def test_one_hook_of_ours_without_the_api_source(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        url = "http://127.0.0.1:9/api/webhooks/activecampaign/tok"
        first = await inbound.ensure_webhook(
            client, LIST, url=url, webhook_token="tok", call=direct
        )
        second = await inbound.ensure_webhook(
            client, LIST, url=url, webhook_token="tok", call=direct
        )
        hooks = await client.list_webhooks()
        assert [h["id"] for h in hooks] == [second] and first != second
        assert set(hooks[0]["sources"]) == set(SOURCES) and "api" not in hooks[0]["sources"]
        assert hooks[0]["listid"] == LIST
        removed = await inbound.remove_webhooks(
            client, LIST, webhook_token="tok", known_id=second, call=direct
        )
        assert removed == 1 and await client.list_webhooks() == []

    async def test_a_hook_deactivated_by_a_410_is_replaced(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        url = "http://127.0.0.1:9/api/webhooks/activecampaign/tok"
        await inbound.ensure_webhook(client, LIST, url=url, webhook_token="tok", call=direct)
        for hook in ac.state.accounts["sandbox"].webhooks.values():
            hook.active = False
        await inbound.ensure_webhook(client, LIST, url=url, webhook_token="tok", call=direct)
        assert [h.active for h in ac.state.accounts["sandbox"].webhooks.values()] == [True]
        await client.upsert_member(LIST, payload("w@example.com"))  # api source: no delivery


async def test_each_mapped_list_keeps_its_own_hook(ac: Ac, client: ActiveCampaignClient) -> None:
    other = await ac.new_list("Second")
    url = "http://127.0.0.1:9/api/webhooks/activecampaign/tok"
    a = await inbound.ensure_webhook(client, LIST, url=url, webhook_token="tok", call=direct)
    b = await inbound.ensure_webhook(client, other, url=url, webhook_token="tok", call=direct)
    a2 = await inbound.ensure_webhook(client, LIST, url=url, webhook_token="tok", call=direct)
    hooks = {h["id"]: h["listid"] for h in await client.list_webhooks()}
    assert hooks == {b: other, a2: LIST} and a not in hooks
    assert (
        await inbound.remove_webhooks(
            client, other, webhook_token="tok", known_id=None, call=direct
        )
        == 1
    )
    assert [h["listid"] for h in await client.list_webhooks()] == [LIST]
