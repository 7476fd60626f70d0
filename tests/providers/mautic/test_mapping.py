"""Mautic's mapping: FIELD_MAP aliases, payload values, the digest and read-back comparison."""

from __future__ import annotations

from app.config import Settings
from app.fieldmap import FieldType, load_field_map
from app.providers.base import ContactPayload
from app.providers.mautic.client import contact_body, status_of
from app.providers.mautic.mapping import alias_problems, from_settings, rules_from, same_fields
from app.providers.mautic.spec import OUR_DNC_COMMENT


def test_defaults_and_field_map_aliases_lower_cased() -> None:
    fm = load_field_map(
        {
            "mautic": {
                "custom_fields.utm_source": "UTM_Source",
                "phone": None,
                "custom_fields.score": {"field": "score", "type": "number"},
            }
        }
    )
    rules = rules_from(fm)
    assert [(r.source, r.field) for r in rules] == [
        ("first_name", "firstname"),
        ("last_name", "lastname"),
        ("company", "company"),
        ("custom_fields.utm_source", "utm_source"),
        ("custom_fields.score", "score"),
    ]
    assert rules[-1].type is FieldType.number
    assert alias_problems(rules) == []
    bad = rules_from(
        load_field_map({"mautic": {"custom_fields.a": "email", "custom_fields.b": "has space"}})
    )
    problems = alias_problems(bad)
    assert len(problems) == 2 and "mautic.custom_fields.a" in problems[0]


def test_payload_leaves_empty_values_out_and_digest_is_stable() -> None:
    cfg = from_settings(Settings(FIELD_MAP={"mautic": {"custom_fields.utm_source": "utm_source"}}))
    contact = {"email": "a@x.com", "first_name": "Ann", "last_name": "  ", "custom_fields": {}}
    fields = cfg.payload_fields(contact)
    assert fields == {"firstname": "Ann"}
    body = contact_body(
        ContactPayload(
            "a@x.com", fields={**fields, "x": "", "l": ["a", "b"]}, consent_if_new="subscribed"
        )
    )
    assert body == {"email": "a@x.com", "firstname": "Ann", "l": "a|b"}
    assert cfg.digest("a@x.com", fields) == cfg.digest("a@x.com", dict(fields))
    assert cfg.digest("a@x.com", fields) != cfg.digest("a@x.com", {"firstname": "Anne"})


def test_read_back_comparison_only_looks_at_our_values() -> None:
    cfg = from_settings(Settings())
    assert same_fields(
        cfg, {"firstname": "Ann", "score": 5}, {"firstname": "Ann", "score": 5.0, "city": "X"}
    )
    assert not same_fields(cfg, {"firstname": "Ann"}, {"firstname": "ann"})
    assert not same_fields(cfg, {"firstname": "Ann"}, {"firstname": None})
    assert cfg.matches({}, {"firstname": "whatever"})


def test_status_is_the_email_dnc_reason() -> None:
    def dnc(reason: int, comments: str = "") -> dict[str, object]:
        return {"doNotContact": [{"channel": "email", "reason": reason, "comments": comments}]}

    assert status_of({"doNotContact": []}) == "subscribed"
    assert status_of(dnc(1)) == "unsubscribed"
    assert status_of(dnc(2)) == "cleaned"
    assert status_of(dnc(3, OUR_DNC_COMMENT)) == "unsubscribed"
    assert status_of({"doNotContact": [{"channel": "sms", "reason": 1}]}) == "subscribed"
