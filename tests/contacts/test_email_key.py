"""One email normalisation: the unique index, the sync keys and Mailchimp's hash agree."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import httpx

from app.emailkey import email_key
from app.main import Runtime
from app.providers.mailchimp.client import subscriber_hash
from tests.conftest import fetch

# Two spellings of one address for Mailchimp: its lower-casing (full Unicode case mapping,
# like PHP's mb_strtolower) turns the dotted capital İ into i + combining dot above.
DOTTED_CAPITAL = "İSTANBUL@example.com"
DOTTED_SMALL = "i\u0307stanbul@example.com"


def test_the_key_is_what_mailchimp_lower_cases() -> None:
    assert email_key(DOTTED_CAPITAL) == email_key(DOTTED_SMALL) == DOTTED_SMALL
    assert email_key("  Ann@Example.COM ") == "ann@example.com"
    assert email_key("") is None and email_key(None) is None
    expected = hashlib.md5(DOTTED_SMALL.encode()).hexdigest()
    assert subscriber_hash(DOTTED_CAPITAL) == subscriber_hash(DOTTED_SMALL) == expected


async def test_two_spellings_of_one_mailchimp_member_are_one_contact(
    client: httpx.AsyncClient, auth: Callable[..., dict[str, str]], runtime: Runtime
) -> None:
    """Before: PostgreSQL's lower() kept them apart (two contacts) while the worker's keys
    and the hash made them one member, so one's unsubscribe turned the other's consent off."""
    first = await client.post(
        "/api/contacts", json={"email": DOTTED_CAPITAL, "newsletter_opt_in": True}, headers=auth()
    )
    assert first.status_code == 201, first.text
    second = await client.post(
        "/api/contacts", json={"email": DOTTED_SMALL, "newsletter_opt_in": True}, headers=auth()
    )
    assert second.status_code == 409, second.text
    rows = await fetch(runtime, "SELECT email, email_key FROM contacts")
    assert rows == [{"email": DOTTED_CAPITAL, "email_key": DOTTED_SMALL}]
    # Changing the other contact's address to the second spelling is refused too.
    other = await client.post("/api/contacts", json={"email": "x@example.com"}, headers=auth())
    moved = await client.patch(
        f"/api/contacts/{other.json()['id']}", json={"email": DOTTED_SMALL}, headers=auth()
    )
    assert moved.status_code == 409, moved.text


async def test_import_matches_the_same_key(
    client: httpx.AsyncClient, auth: Callable[..., dict[str, str]], runtime: Runtime
) -> None:
    created = await client.post("/api/contacts", json={"email": DOTTED_CAPITAL}, headers=auth())
    assert created.status_code == 201
    csv = f"email,first_name\n{DOTTED_SMALL},Deniz\n".encode()
    response = await client.post(
        "/api/contacts/import", files={"file": ("c.csv", csv, "text/csv")}, headers=auth()
    )
    assert response.status_code == 200, response.text
    rows = await fetch(runtime, "SELECT email, email_key, first_name FROM contacts")
    assert rows == [{"email": DOTTED_CAPITAL, "email_key": DOTTED_SMALL, "first_name": "Deniz"}]
