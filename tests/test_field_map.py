"""FIELD_MAP and SYNC_KINDS: parsed and checked at start; a bad entry stops the service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app import wiring
from app.config import ContactKind, Settings, get_settings
from app.fieldmap import FieldMapError, FieldRule, FieldType
from app.providers.mailchimp.fields import rules_from
from tests.support.env import isolate_settings_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    isolate_settings_env(monkeypatch, tmp_path)
    yield
    get_settings.cache_clear()


def load(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


GOOD = {
    "mailchimp": {
        "company": {"field": "ORG", "label": "Organisation"},
        "custom_fields.plan": "plan",
        "custom_fields.score": {"field": "SCORE", "type": "number"},
        "phone": None,
    },
    "activecampaign": {"custom_fields.score": {"field": "12", "type": "number"}},
}


class TestParsing:
    def test_inline_json_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("FIELD_MAP", json.dumps(GOOD))
        fm = load(DATA_DIR=tmp_path).FIELD_MAP
        assert [r.source for r in fm.providers["mailchimp"]] == [
            "company",
            "custom_fields.plan",
            "custom_fields.score",
        ]
        assert fm.providers["mailchimp"][2].type is FieldType.number
        assert fm.providers["activecampaign"][0].field == "12"
        assert fm.removed["mailchimp"] == {"phone"}

    def test_a_file_path(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        path = tmp_path / "fields.json"
        path.write_text(json.dumps(GOOD))
        monkeypatch.setenv("FIELD_MAP", str(path))
        assert len(load(DATA_DIR=tmp_path).FIELD_MAP.providers["mailchimp"]) == 3

    def test_unset_means_the_providers_defaults(self, tmp_path: Path) -> None:
        rules = rules_from(load(DATA_DIR=tmp_path).FIELD_MAP)
        assert [(r.source, r.field) for r in rules] == [
            ("first_name", "FNAME"),
            ("last_name", "LNAME"),
            ("phone", "PHONE"),
            ("company", "COMPANY"),
        ]

    def test_mailchimp_rules_override_remove_and_extend_the_defaults(self, tmp_path: Path) -> None:
        rules = rules_from(load(DATA_DIR=tmp_path, FIELD_MAP=json.dumps(GOOD)).FIELD_MAP)
        assert [(r.source, r.field, r.type.value) for r in rules] == [
            ("first_name", "FNAME", "text"),
            ("last_name", "LNAME", "text"),
            ("company", "ORG", "text"),
            ("custom_fields.plan", "PLAN", "text"),  # merge tags are upper case
            ("custom_fields.score", "SCORE", "number"),
        ]
        assert rules[2].display_name == "Organisation"
        assert rules[3].display_name == "Plan"


BAD_ENTRIES = [
    ({"mailchimp": {"notes": "NOTES"}}, "FIELD_MAP entry mailchimp.notes: notes never sync"),
    (
        {"mailchimp": {"lead_status": "STAGE"}},
        "FIELD_MAP entry mailchimp.lead_status: the pipeline stage never syncs",
    ),
    ({"mailchimp": {"email": "EMAIL"}}, "FIELD_MAP entry mailchimp.email: email is synced by"),
    ({"mailchimp": {"compnay": "COMPANY"}}, "FIELD_MAP entry mailchimp.compnay: unknown contact"),
    (
        {"mailchimp": {"custom_fields.score": {"field": "SCORE", "type": "numbr"}}},
        "FIELD_MAP entry mailchimp.custom_fields.score: type 'numbr' is not one of text, number",
    ),
    (
        {"mailchimp": {"custom_fields.x": {"field": "X", "kind": "text"}}},
        "FIELD_MAP entry mailchimp.custom_fields.x: unknown key 'kind'",
    ),
    ({"mailchimp": {"custom_fields.x": {"type": "text"}}}, "mailchimp.custom_fields.x: field"),
    ({"mailchimp": {"custom_fields.x": 5}}, "FIELD_MAP entry mailchimp.custom_fields.x: must be"),
    ({"mailchimp": {"custom_fields.": "X"}}, "FIELD_MAP entry mailchimp.custom_fields.: a custom"),
    (
        {"mailchimp": {"company": "ORG", "custom_fields.org": "org"}},
        "FIELD_MAP entry mailchimp.custom_fields.org: mailchimp field 'org' is already filled by "
        "company",
    ),
    ({"Mail Chimp": {}}, "FIELD_MAP: 'Mail Chimp' is not a provider id"),
    ({"mailchimp": ["FNAME"]}, "FIELD_MAP mailchimp: must be an object"),
]


class TestRefusedBySettings:
    @pytest.mark.parametrize(("raw", "message"), BAD_ENTRIES)
    def test_the_message_names_the_entry(
        self, raw: Any, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("FIELD_MAP", json.dumps(raw))
        with pytest.raises(ValidationError) as caught:
            load(DATA_DIR=tmp_path)
        assert message in str(caught.value)

    def test_not_json(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("FIELD_MAP", '{"mailchimp": {"company": }')
        with pytest.raises(ValidationError, match="FIELD_MAP is not valid JSON.*line 1"):
            load(DATA_DIR=tmp_path)

    def test_a_missing_file(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("FIELD_MAP", str(tmp_path / "nope.json"))
        with pytest.raises(ValidationError, match="FIELD_MAP file .*nope.json: cannot be read"):
            load(DATA_DIR=tmp_path)


class TestRefusedByTheProvider:
    """What only Mailchimp knows is checked when the service starts (create_app, worker)."""

    @pytest.mark.parametrize(
        ("entry", "message"),
        [
            ({"custom_fields.plan": "PLAN_NAME_TOO_LONG"}, "mailchimp.custom_fields.plan: "),
            ({"custom_fields.plan": "9LIVES"}, "is not a Mailchimp merge tag"),
            ({"city": "ADDRESS"}, "mailchimp.city: ADDRESS is sent whole"),
            ({"company": "FNAME"}, "mailchimp.company: merge tag FNAME is already filled by first"),
        ],
    )
    def test_bad_merge_tags(self, entry: dict[str, Any], message: str, tmp_path: Path) -> None:
        settings = load(DATA_DIR=tmp_path, FIELD_MAP=json.dumps({"mailchimp": entry}))
        with pytest.raises(FieldMapError, match=message.replace(".", r"\.")):
            wiring.check_config(settings)

    def test_an_unknown_provider(self, tmp_path: Path) -> None:
        settings = load(DATA_DIR=tmp_path, FIELD_MAP='{"mailchump": {"company": "X"}}')
        with pytest.raises(FieldMapError, match="'mailchump' is not a provider"):
            wiring.check_config(settings)

    def test_the_defaults_pass(self, tmp_path: Path) -> None:
        wiring.check_config(load(DATA_DIR=tmp_path))
        wiring.check_config(load(DATA_DIR=tmp_path, FIELD_MAP=json.dumps(GOOD)))


def _serve(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    clean.update(
        DATA_DIR=str(tmp_path / "data"),
        DATABASE_URL="postgresql://unused@127.0.0.1:1/unused",  # never reached
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "1", "--no-worker"],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


class TestTheCommandRefusesToStart:
    def test_a_bad_entry_for_settings(self, tmp_path: Path) -> None:
        bad = json.dumps({"mailchimp": {"custom_fields.score": {"field": "S", "type": "int"}}})
        result = _serve({"FIELD_MAP": bad}, tmp_path)
        assert result.returncode == 2, result.stderr
        assert "refusing to start" in result.stderr
        assert "FIELD_MAP entry mailchimp.custom_fields.score: type 'int'" in result.stderr
        assert "Traceback" not in result.stderr

    def test_a_bad_entry_for_mailchimp(self, tmp_path: Path) -> None:
        result = _serve({"FIELD_MAP": '{"mailchimp": {"company": "COMPANY-NAME"}}'}, tmp_path)
        assert result.returncode == 2, result.stderr
        assert "FIELD_MAP entry mailchimp.company: 'COMPANY-NAME' is not a Mailchimp merge tag" in (
            result.stderr
        )

    def test_a_bad_sync_kinds(self, tmp_path: Path) -> None:
        result = _serve({"SYNC_KINDS": "client,customer"}, tmp_path)
        assert result.returncode == 2, result.stderr
        assert "SYNC_KINDS: unknown kind customer" in result.stderr


class TestSyncKinds:
    def test_default_is_every_kind(self, tmp_path: Path) -> None:
        assert set(ContactKind) == load(DATA_DIR=tmp_path).SYNC_KINDS

    @pytest.mark.parametrize("raw", ["client, LEAD", '["client", "lead"]'])
    def test_a_selection(self, raw: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("SYNC_KINDS", raw)
        assert {ContactKind.client, ContactKind.lead} == load(DATA_DIR=tmp_path).SYNC_KINDS

    @pytest.mark.parametrize(("raw", "message"), [(",", "at least one"), ("leads", "leads")])
    def test_refused(
        self, raw: str, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("SYNC_KINDS", raw)
        with pytest.raises(ValidationError, match=message):
            load(DATA_DIR=tmp_path)


def test_field_rule_values_by_type() -> None:
    contact = {"company": "  ", "custom_fields": {"n": "3.50", "d": "2026-02-30", "l": ["a", ""]}}
    assert FieldRule(source="company", field="C").value(contact) is None
    assert FieldRule(source="custom_fields.n", field="N", type="number").value(contact) == 3.5
    assert FieldRule(source="custom_fields.d", field="D", type="date").value(contact) is None
    assert FieldRule(source="custom_fields.l", field="L", type="list").value(contact) == ["a"]
