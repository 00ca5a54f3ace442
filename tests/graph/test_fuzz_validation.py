"""Hostile input: randomly damaged copies of every shipped workflow must be answered with
validation problems (code, message, node/field), never with an exception from inside graphflow."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

import graphflow
from graphflow import ValidationFailed, Workflow
from graphflow.document.jsontext import parse_json

DOCS = [json.loads(p.read_text()) for p in sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))]
VALUES = [None, 0, -1, 1e300, "x", "", [], {}, {"from": "a.b"}, {"from": "model.unet"}, {"from": "nope"}, {"param": "zz"},
          {"param": "seed"}, {"literal": 3}, [{"from": "model.unet"}], True, 3.5, "a.b", {"from": 3}, {"from": "denoise.timestep"},
          {"type": "Loop"}, {"a": 1, "b": 2}, [1, [2, [3]]], "\u0000", 2**70, {"every": 0}, [{"from": "a.b"}, {"from": "c.d"}]]


def _paths(o, pre=()):
    yield pre
    if isinstance(o, dict):
        for k, v in o.items():
            yield from _paths(v, (*pre, k))
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from _paths(v, (*pre, i))


def _mutate(doc: dict, rng: random.Random) -> dict:
    d = copy.deepcopy(doc)
    places = [p for p in _paths(d) if p]
    for _ in range(rng.randint(1, 3)):
        p = rng.choice(places)
        parent = d
        try:
            for k in p[:-1]:
                parent = parent[k]
            r = rng.random()
            if r < 0.3 and isinstance(parent, dict):
                del parent[p[-1]]
            elif r < 0.9:
                parent[p[-1]] = copy.deepcopy(rng.choice(VALUES))
            elif isinstance(parent, dict):
                parent[rng.choice(["zz", "type", "from", "body", "when", "otherwise"])] = copy.deepcopy(rng.choice(VALUES))
        except (KeyError, IndexError, TypeError):
            pass
    return d


@pytest.mark.parametrize("seed", range(4))
def test_damaged_workflows_get_problems_not_crashes(seed):
    rng = random.Random(seed)
    reg = graphflow.registry()
    invalid = 0
    for _ in range(400):
        doc = _mutate(rng.choice(DOCS), rng)
        try:
            Workflow.from_dict(doc, reg).check({"seed": rng.choice(VALUES)} if rng.random() < 0.2 else None)
        except ValidationFailed as e:
            invalid += 1
            assert e.problems and all(p.code and p.message for p in e.problems)
    assert invalid > 300  # the damage is real: most copies are refused


def test_random_bytes_are_invalid_json_with_a_position():
    rng = random.Random(7)
    for _ in range(300):
        text = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
        try:
            parse_json(text)
        except ValidationFailed as e:
            assert e.problems[0].code == "invalid_json" and e.problems[0].line >= 1


def test_a_list_of_links_as_a_carried_value_and_a_huge_int_parameter():
    doc = copy.deepcopy(next(d for d in DOCS if "denoise" in d["nodes"] and d["description"].startswith("Text to image")))
    doc["nodes"]["denoise"]["carry"]["latents"] = [{"from": "noise.latents"}, {"from": "noise.noise"}]
    wf = Workflow.from_dict(doc)
    assert {p.code for p in wf.problems()} == {"type_mismatch"}
    with pytest.raises(ValidationFailed) as e:
        graphflow.load(Path(__file__).resolve().parents[2] / "workflows" / "txt2img.json").check({"seed": 2**70})
    assert e.value.problems[0].code == "bad_param" and e.value.problems[0].node == "noise"
