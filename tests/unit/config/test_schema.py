"""The published JSON Schema is current and accepts the shipped images.yml."""

from __future__ import annotations

import json

import jsonschema
import yaml

from imageforge.config import schema

from ..conftest import ROOT


def test_committed_schema_is_current() -> None:
    assert (ROOT / "schema" / "images.schema.json").read_text() == schema.text()


def test_shipped_file_validates_against_schema() -> None:
    document = json.loads((ROOT / "schema" / "images.schema.json").read_text())
    jsonschema.validate(yaml.safe_load((ROOT / "images.yml").read_text()), document)


def test_schema_rejects_unknown_keys() -> None:
    document = schema.document()
    bad = {"flavors": {"a": {"provisoners": []}}}
    errors = list(jsonschema.Draft202012Validator(document).iter_errors(bad))
    assert any("provisoners" in e.message for e in errors)
