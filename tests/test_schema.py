"""`graphflow schema` is a real JSON Schema: every shipped workflow conforms to it, and the
mistakes an editor should flag as you type (unknown node type, value outside an enum or range,
unknown input) do not."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from graphflow import registry
from graphflow.schema import workflow_schema

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def validator():
    schema = workflow_schema(registry())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_shipped_workflows_conform(validator, path):
    assert list(validator.iter_errors(json.loads(path.read_text()))) == []


@pytest.mark.parametrize("edit", [
    lambda d: d["nodes"]["schedule"].update(type="Nope"),
    lambda d: d["nodes"]["schedule"]["inputs"].update(name="not-a-scheduler"),
    lambda d: d["nodes"]["schedule"]["inputs"].update(steps=0),
    lambda d: d["nodes"]["schedule"]["inputs"].update(colour="red"),
    lambda d: d["nodes"]["denoise"]["body"]["cfg"].update(when={"every": 0}),
    lambda d: d.update(format=2),
])
def test_editor_mistakes_are_flagged(validator, edit):
    doc = json.loads(WORKFLOWS[[p.stem for p in WORKFLOWS].index("txt2img")].read_text())
    edit(doc)
    assert list(validator.iter_errors(doc))
