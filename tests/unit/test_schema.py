"""Schema contracts: every rule names the row, the field and the rule."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from lifelong_ray.config import FeatureSpec, LabelSpec, ModelSpec
from lifelong_ray.data.schema import Rule, Schema

SPEC = ModelSpec(name="m", label=LabelSpec(name="y", classes=[0, 1]), features=[
    FeatureSpec(name="x", min=-1, max=1),
    FeatureSpec(name="n", dtype="int", min=0),
    FeatureSpec(name="c", dtype="category", categories=["a", "b"]),
    FeatureSpec(name="opt", nullable=True),
])
S = Schema(SPEC)
GOOD = {"x": 0.5, "n": 3, "c": "a", "opt": None}


@pytest.mark.parametrize("row, field, rule", [
    ({k: v for k, v in GOOD.items() if k != "x"}, "x", Rule.MISSING),
    ({**GOOD, "zz": 1}, "zz", Rule.UNEXPECTED),
    ({**GOOD, "x": "0.5"}, "x", Rule.TYPE),
    ({**GOOD, "x": True}, "x", Rule.TYPE),
    ({**GOOD, "x": math.nan}, "x", Rule.NOT_FINITE),
    ({**GOOD, "x": math.inf}, "x", Rule.NOT_FINITE),
    ({**GOOD, "x": 1.5}, "x", Rule.ABOVE_MAX),
    ({**GOOD, "n": -1}, "n", Rule.BELOW_MIN),
    ({**GOOD, "n": 2.5}, "n", Rule.NOT_INTEGER),
    ({**GOOD, "c": "z"}, "c", Rule.UNKNOWN_CATEGORY),
    ({**GOOD, "c": 3}, "c", Rule.TYPE),
    ({**GOOD, "c": None}, "c", Rule.NULL),
])
def test_each_rule(row, field, rule):
    _, bad = S.validate_records([GOOD, row])
    assert any(v.index == 1 and v.field == field and v.rule == rule for v in bad), bad
    assert all(v.index == 1 for v in bad)
    assert all(field in v.message for v in bad if v.field == field)


def test_good_rows_give_columns():
    cols, bad = S.validate_records([GOOD, {**GOOD, "opt": 2.0}])
    assert bad == []
    assert cols["x"].dtype == np.float64 and np.isnan(cols["opt"][0]) and cols["opt"][1] == 2.0
    assert list(cols["c"]) == ["a", "a"]


def test_non_object_row():
    _, bad = S.validate_records([[1, 2]])
    assert [(v.field, v.rule) for v in bad] == [("<row>", Rule.NOT_AN_OBJECT)]


def test_table_checks_columns_and_rows():
    t = pa.table({"x": [0.1, 9.0], "n": [1, 2], "c": ["a", "q"], "opt": [None, 1.0]})
    assert S.check_columns(t.schema) == []
    mask, bad = S.row_mask(t)
    assert mask.tolist() == [True, False]
    assert {(v.field, v.rule) for v in bad} == {("x", Rule.ABOVE_MAX), ("c", Rule.UNKNOWN_CATEGORY)}
    changed = pa.table({"x": ["0.1"], "n": [1], "extra": [1]})
    rules = {(v.field, v.rule) for v in S.check_columns(changed.schema)}
    assert rules == {("x", Rule.SCHEMA_CHANGED), ("c", Rule.SCHEMA_CHANGED), ("opt", Rule.SCHEMA_CHANGED),
                     ("extra", Rule.SCHEMA_CHANGED)}


def test_label_domain():
    assert S.label_ok(1) and S.label_ok(0.0)
    assert not S.label_ok(2) and not S.label_ok("1") and not S.label_ok(True) and not S.label_ok(0.5)
