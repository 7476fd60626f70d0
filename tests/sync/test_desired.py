"""DESIGN §5's table, row by row, on the pure planner (no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.fieldmap import load_field_map
from app.providers.mailchimp.fields import DEFAULT_RULES
from app.providers.mailchimp.fields import rules_from as mailchimp_rules
from app.providers.mapping import AudienceRule
from app.sync.desired import (
    Action,
    MappingConfig,
    MirrorOp,
    creates,
    digest_of,
    merge_fields,
    plan_key,
    plan_move,
    shared_tags,
    tag_diff,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CFG = MappingConfig(fields=DEFAULT_RULES)


def contact(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": uuid.uuid4(),
        "email": "Ada@example.com",
        "email_key": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "phone": None,
        "tags": ["vip"],
        "custom_fields": {},
        "newsletter_opt_in": True,
        "newsletter_changed_at": T0,
        "email_status": "ok",
        "addr1": None,
        "addr2": None,
        "city": None,
        "state": None,
        "zip": None,
        "country": None,
    }
    base.update(kw)
    return base


def mirror_for(c: dict[str, Any], **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "remote_id": "x",
        "pushed_email": c["email"],
        "pushed_digest": digest_of(c["email"], merge_fields(c, CFG)),
        "pushed_tags": list(c["tags"]),
        "remote_status": "subscribed",
        "remote_changed_at": T0,
        "error_kind": None,
    }
    base.update(kw)
    return base


def plan(c: dict[str, Any] | None, m: dict[str, Any] | None, **kw: Any) -> Any:
    return plan_key(
        "ada@example.com",
        contact=c,
        mirror=m,
        tombstoned=kw.pop("tombstoned", False),
        forget=kw.pop("forget", False),
        cfg=kw.pop("cfg", CFG),
        may_exist=kw.pop("may_exist", False),
    )


class TestCreate:
    def test_consenting_contact_absent_remotely_is_created_subscribed(self) -> None:
        p = plan(contact(), None)
        assert p.action is Action.upsert
        assert p.payload is not None
        assert p.payload.consent_if_new == "subscribed"
        assert p.payload.consent is None  # never an explicit status for a maybe-existing member
        assert p.payload.tags == ["vip"]
        assert p.payload.fields == {"FNAME": "Ada", "LNAME": "Lovelace"}

    def test_double_opt_in_creates_pending(self) -> None:
        p = plan(contact(), None, cfg=MappingConfig(fields=DEFAULT_RULES, double_opt_in=True))
        assert p.payload is not None
        assert p.payload.consent_if_new == "pending"

    def test_no_consent_absent_remotely_creates_nothing(self) -> None:
        p = plan(contact(newsletter_opt_in=False), None)
        assert p.action is Action.noop

    def test_bounced_locally_is_not_created(self) -> None:
        p = plan(contact(email_status="bounced"), None)
        assert p.action is Action.noop

    def test_only_a_person_never_pushed_is_unseen(self) -> None:
        c = contact()
        fresh = plan(c, None)
        assert fresh.payload is not None and fresh.payload.unseen
        cut_short = plan(c, None, may_exist=True)  # a create of ours may have landed
        assert cut_short.payload is not None and not cut_short.payload.unseen
        for m in (mirror_for(c, first_name="x"), mirror_for(c, remote_status="archived")):
            again = plan(contact(first_name="Augusta"), m)
            assert again.payload is not None and not again.payload.unseen


class TestUpdate:
    def test_unchanged_means_no_call(self) -> None:
        c = contact()
        assert plan(c, mirror_for(c)).action is Action.noop

    def test_changed_fields_update_without_status(self) -> None:
        c = contact()
        p = plan(contact(first_name="Augusta"), mirror_for(c))
        assert p.action is Action.upsert
        assert p.payload is not None
        assert p.payload.consent is None

    def test_only_tags_changed_uses_tags_endpoint(self) -> None:
        c = contact()
        p = plan(contact(tags=["vip", "donor"]), mirror_for(c))
        assert p.action is Action.tags

    def test_archived_by_us_is_revived_with_explicit_status(self) -> None:
        c = contact()
        p = plan(c, mirror_for(c, remote_status="archived"))
        assert p.action is Action.upsert
        assert p.payload is not None
        assert p.payload.consent == "subscribed"

    def test_opt_out_unsubscribes_a_subscribed_member(self) -> None:
        c = contact()
        p = plan(contact(newsletter_opt_in=False), mirror_for(c))
        assert p.action is Action.update  # PATCH: never creates
        assert p.payload is not None
        assert p.payload.consent == "unsubscribed"


class TestConsentIsThePersons:
    @pytest.mark.parametrize("status", ["unsubscribed", "cleaned"])
    def test_provider_opt_out_is_never_resubscribed(self, status: str) -> None:
        c = contact(first_name="Changed")
        m = mirror_for(contact(), remote_status=status, remote_changed_at=T0 + timedelta(days=1))
        p = plan(c, m)
        assert p.action is Action.upsert  # data fields still sync
        assert p.payload is not None
        assert p.payload.consent is None

    def test_local_reopt_in_after_unsubscribe_goes_pending(self) -> None:
        c = contact(newsletter_changed_at=T0 + timedelta(days=2))
        m = mirror_for(c, remote_status="unsubscribed", remote_changed_at=T0 + timedelta(days=1))
        p = plan(c, m)
        assert p.payload is not None
        assert p.payload.consent == "pending"

    def test_cleaned_is_never_reopted_even_after_local_change(self) -> None:
        c = contact(newsletter_changed_at=T0 + timedelta(days=2))
        m = mirror_for(c, remote_status="cleaned", remote_changed_at=T0 + timedelta(days=1))
        assert plan(c, m).action is Action.noop

    def test_compliance_rejection_counts_as_unsubscribed(self) -> None:
        c = contact(newsletter_changed_at=T0 + timedelta(days=2))
        m = mirror_for(
            c,
            remote_status="rejected",
            error_kind="compliance",
            remote_changed_at=T0 + timedelta(days=1),
        )
        p = plan(c, m)
        assert p.payload is not None
        assert p.payload.consent == "pending"

    def test_unknown_remote_time_never_counts_as_newer(self) -> None:
        c = contact(newsletter_changed_at=T0 + timedelta(days=2))
        m = mirror_for(c, remote_status="unsubscribed", remote_changed_at=None)
        assert plan(c, m).action is Action.noop


class TestGone:
    def test_deleted_contact_pushed_by_us_is_archived(self) -> None:
        c = contact()
        p = plan(None, mirror_for(c))
        assert p.action is Action.archive
        assert p.target_email == "Ada@example.com"

    def test_deleted_contact_never_pushed_touches_nothing(self) -> None:
        p = plan(None, None)
        assert p.action is Action.noop
        assert p.mirror_op is MirrorOp.keep

    def test_already_archived_is_left_alone(self) -> None:
        c = contact()
        assert plan(None, mirror_for(c, remote_status="archived")).action is Action.noop

    def test_rejected_row_of_deleted_contact_is_dropped(self) -> None:
        m = {"pushed_digest": None, "remote_status": "rejected", "error_kind": "invalid_email"}
        p = plan(None, m)
        assert p.mirror_op is MirrorOp.delete

    def test_forget_erases(self) -> None:
        assert plan(None, None, forget=True).action is Action.forget

    def test_tombstoned_address_is_never_pushed(self) -> None:
        p = plan(contact(), None, tombstoned=True)
        assert p.action is Action.noop
        assert p.mirror_op is MirrorOp.forgotten


class TestACreateCutShort:
    """A send that could create the person was cut short (crash before completion): the
    provider may hold them although the mirror does not say so (`may_exist`)."""

    def test_a_create_is_an_intent_to_record_and_an_update_is_not(self) -> None:
        c = contact()
        assert creates(plan(c, None))
        assert creates(plan(c, mirror_for(c, remote_status="archived")))
        assert not creates(plan(contact(first_name="Ava"), mirror_for(c)))

    @pytest.mark.parametrize("remote", [None, "archived"])
    def test_consent_withdrawn_since_unsubscribes_without_creating(
        self, remote: str | None
    ) -> None:
        c = contact(newsletter_opt_in=False)
        m = None if remote is None else mirror_for(c, remote_status=remote)
        p = plan(c, m, may_exist=True)
        assert p.action is Action.update  # never creates: the provider's not-found ends it
        assert p.payload is not None
        assert p.payload.consent == "unsubscribed"
        assert p.payload.consent_if_new == "unsubscribed"

    def test_still_consenting_is_the_same_create_again(self) -> None:
        p = plan(contact(), None, may_exist=True)
        assert p.action is Action.upsert
        assert p.payload is not None and p.payload.consent is None

    def test_deleted_since_is_archived(self) -> None:
        p = plan(None, None, may_exist=True)
        assert p.action is Action.archive
        assert p.target_email == "ada@example.com"

    def test_a_person_the_mirror_knows_is_planned_as_usual(self) -> None:
        c = contact(newsletter_opt_in=False)
        m = mirror_for(c, remote_status="unsubscribed")
        assert plan(c, m, may_exist=True).action is Action.noop
        learned = mirror_for(c, remote_status="cleaned", pushed_digest=None)  # from a webhook
        assert plan(None, learned, may_exist=True).action is Action.noop


class TestMapping:
    def test_empty_values_are_omitted(self) -> None:
        fields = merge_fields(contact(first_name="", last_name=None, phone="123"), CFG)
        assert fields == {"PHONE": "123"}

    def test_address_only_when_enabled_and_complete(self) -> None:
        full = contact(addr1="1 Main", city="X", state="CA", zip="90000", country="US")
        assert "ADDRESS" not in merge_fields(full, CFG)
        on = MappingConfig(fields=DEFAULT_RULES, sync_address=True)
        assert merge_fields(full, on)["ADDRESS"]["addr1"] == "1 Main"
        assert "ADDRESS" not in merge_fields(contact(addr1="1 Main", city="X"), on)

    def test_custom_fields_through_the_operator_map(self) -> None:
        field_map = load_field_map(
            {
                "mailchimp": {
                    "custom_fields.vip": "vip",
                    "custom_fields.score": {"field": "SCORE", "type": "number"},
                    "custom_fields.renews": {"field": "RENEWS", "type": "date"},
                    "custom_fields.langs": {"field": "LANGS", "type": "list"},
                    "phone": None,
                }
            }
        )
        cfg = MappingConfig(fields=mailchimp_rules(field_map))
        c = contact(
            phone="123",
            company="ACME",
            custom_fields={
                "vip": True,
                "score": "42",
                "renews": "2027-01-31T10:00:00Z",
                "langs": "en; fr;",
                "secret": "no",
            },
        )
        assert merge_fields(c, cfg) == {
            "FNAME": "Ada",
            "LNAME": "Lovelace",
            "COMPANY": "ACME",
            "VIP": "yes",
            "SCORE": 42,
            "RENEWS": "2027-01-31",
            "LANGS": ["en", "fr"],  # typed; the Mailchimp client sends "en, fr"
        }
        # A value that is not of the field's type is left out, not sent to be refused.
        bad = contact(custom_fields={"score": "lots", "renews": "soon"})
        assert merge_fields(bad, cfg) == {"FNAME": "Ada", "LNAME": "Lovelace"}

    def test_company_is_mapped_by_default_and_changes_the_digest(self) -> None:
        before = contact(company="ACME")
        after = contact(company="ACME Holdings")
        assert merge_fields(before, CFG)["COMPANY"] == "ACME"
        assert digest_of(before["email"], merge_fields(before, CFG)) != digest_of(
            after["email"], merge_fields(after, CFG)
        )
        # No company, no COMPANY: contacts pushed before the field existed keep their digest.
        assert "COMPANY" not in merge_fields(contact(), CFG)

    def test_legacy_merge_field_map_still_applies(self) -> None:
        rules = mailchimp_rules(load_field_map(None), {"plan": "plan"})
        assert (
            merge_fields(contact(custom_fields={"plan": "pro"}), MappingConfig(fields=rules))[
                "PLAN"
            ]
            == "pro"
        )


class TestSyncKinds:
    """A kind SYNC_KINDS leaves out is planned as if the contact were gone."""

    LEADS_ONLY = MappingConfig(fields=DEFAULT_RULES, kinds=frozenset({"lead"}))

    def test_pushed_member_of_a_dropped_kind_is_archived(self) -> None:
        c = contact(kind="client")
        p = plan(c, mirror_for(c), cfg=self.LEADS_ONLY)
        assert p.action is Action.archive
        assert p.target_email == c["email"]

    def test_never_pushed_contact_of_a_dropped_kind_is_not_created(self) -> None:
        p = plan(contact(kind="client"), None, cfg=self.LEADS_ONLY)
        assert p.action is Action.noop

    def test_a_kind_still_synced_is_planned_as_usual(self) -> None:
        assert plan(contact(kind="lead"), None, cfg=self.LEADS_ONLY).action is Action.upsert
        assert plan(contact(kind="client"), None).action is Action.upsert  # default: all kinds

    def test_forget_still_erases_whatever_the_kind(self) -> None:
        c = contact(kind="client")
        p = plan_key(
            c["email"],
            contact=c,
            mirror=mirror_for(c),
            tombstoned=False,
            forget=True,
            cfg=self.LEADS_ONLY,
        )
        assert p.action is Action.forget


class TestTags:
    def test_only_our_tags_are_removed(self) -> None:
        add, remove = tag_diff(["b", "c"], pushed=["a", "b"], remote=["a", "b", "theirs"])
        assert add == ["c"]
        assert remove == ["a"]

    def test_their_tags_survive(self) -> None:
        _, remove = tag_diff([], pushed=[], remote=["theirs"])
        assert remove == []

    def test_a_tag_another_mapping_keeps_is_never_removed(self) -> None:
        _, remove = tag_diff([], pushed=["news", "vip"], remote=None, keep=["vip"])
        assert remove == ["news"]

    def test_shared_tags_are_the_contacts_while_another_mapping_selects_it(self) -> None:
        vip = MappingConfig(fields=DEFAULT_RULES, rule=AudienceRule(tags_any=frozenset({"vip"})))
        gold = MappingConfig(fields=DEFAULT_RULES, rule=AudienceRule(tags_any=frozenset({"gold"})))
        c = contact(tags=["vip", "news"])
        assert shared_tags(c, [gold, vip]) == ["vip", "news"]
        assert shared_tags(c, [gold]) == []
        assert shared_tags(None, [vip]) == []


def test_move_keeps_old_member() -> None:
    c = contact(email="new@example.com", email_key="new@example.com")
    old = mirror_for(contact())
    p = plan_move("ada@example.com", "new@example.com", contact=c, old_mirror=old, cfg=CFG)
    assert p.action is Action.move
    assert p.target_email == "Ada@example.com"
    assert p.payload is not None
    assert p.payload.email_address == "new@example.com"


def test_after_a_refused_collision_every_change_tries_the_move_again() -> None:
    # The record still holds the old address (the new key's row keeps it as pushed_email):
    # the plan is a move from it, addressed to the record, with no other key to finish.
    c = contact(email="taken@example.com", email_key="taken@example.com", first_name="Augusta")
    refused = mirror_for(contact(), error_kind="collision", error="Mautic contact 2 …")
    p = plan_key(
        "taken@example.com", contact=c, mirror=refused, tombstoned=False, forget=False, cfg=CFG
    )
    assert p.action is Action.move and p.move_from is None
    assert p.target_email == "Ada@example.com"
    assert p.payload is not None and p.payload.email_address == "taken@example.com"


def test_a_collision_refused_without_the_record_sends_nothing() -> None:
    # No record kept on the row (refused before this rule): sending to the new address
    # would write onto the other person.
    c = contact(email="taken@example.com", email_key="taken@example.com")
    legacy = {"remote_status": "rejected", "error_kind": "collision", "pushed_digest": None}
    p = plan_key(
        "taken@example.com", contact=c, mirror=legacy, tombstoned=False, forget=False, cfg=CFG
    )
    assert p.action is Action.noop
