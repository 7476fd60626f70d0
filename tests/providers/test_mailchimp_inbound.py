"""Form bodies with PHP-style bracket keys, as Mailchimp posts them (reference §7.2)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.providers.base import MalformedPayload
from app.providers.mailchimp.inbound import parse_form, parse_mailchimp

# The real capture of reference §7.2 (dancedeets), `+` for spaces and escaped brackets.
UPEMAIL = (
    "type=upemail&fired_at=2017-04-23+08%3A08%3A31&data%5Bnew_id%5D=50696b797a"
    "&data%5Bnew_email%5D=new%40example.com&data%5Bold_email%5D=old%40example.com"
    "&data%5Blist_id%5D=93ab23d636"
)


def test_nested_brackets_become_nested_groups() -> None:
    body = b"type=subscribe&data[email]=a%40b.c&data[merges][FNAME]=Ada&data[merges][LNAME]="
    assert parse_form(body) == {
        "type": "subscribe",
        "data": {"email": "a@b.c", "merges": {"FNAME": "Ada", "LNAME": ""}},
    }


def test_real_capture_parses() -> None:
    event = parse_mailchimp(UPEMAIL.encode())
    assert event.type == "upemail"
    assert event.fired_at == datetime(2017, 4, 23, 8, 8, 31, tzinfo=UTC)
    assert event.text("new_email") == "new@example.com"
    assert event.text("old_email") == "old@example.com"
    assert event.text("merges", "FNAME") is None


def test_empty_brackets_append() -> None:
    assert parse_form(b"a[]=x&a[]=y") == {"a": {"0": "x", "1": "y"}}


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\x00",  # not UTF-8
        b"type=subscribe&data[email=x",  # unbalanced
        b"type=subscribe&data]=x",
        b"type=subscribe&data=x&data[email]=y",  # a value and a group at once
        b"type=subscribe&data[email]=y&data=x",
        b"type=subscribe&&novalue",  # strict parsing: a field without '='
        b"type=x&fired_at=2020-01-01 00:00:00&data%5Bemail%5D=%ff",  # bad percent-escape
        b"a[b][c][d][e][f][g]=deep",
    ],
)
def test_malformed_forms_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_mailchimp(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"fired_at=2020-01-01+00:00:00&data[email]=a%40b.c",  # no type
        b"type=&fired_at=2020-01-01+00:00:00",  # empty type
        b"type=unsubscribe&data[email]=a%40b.c",  # no fired_at
        b"type=unsubscribe&fired_at=yesterday",  # not a time
        b"type=unsubscribe&fired_at=2020-01-01+00:00:00&data=flat",  # data not a group
        b"type[x]=unsubscribe&fired_at=2020-01-01+00:00:00",  # type not a value
    ],
)
def test_deliveries_need_type_and_time(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_mailchimp(body)


def test_iso_fired_at_is_accepted() -> None:
    event = parse_mailchimp(b"type=campaign&fired_at=2020-01-02T03:04:05Z")
    assert event.fired_at == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
