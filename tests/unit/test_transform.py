"""FeatureTransform: fit/apply, one-hot, imputation, JSON round trip, column helpers."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lifelong_ray.config import FeatureSpec, LabelSpec, ModelSpec
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import FeatureTransform, columns_from_pandas, columns_from_table


@pytest.fixture
def schema():
    return Schema(ModelSpec(
        name="m",
        features=[FeatureSpec(name="x"), FeatureSpec(name="n", dtype="int", nullable=True),
                  FeatureSpec(name="c", dtype="category", categories=["a", "b", "c"], nullable=True)],
        label=LabelSpec(name="y", classes=[0, 1])))


@pytest.fixture
def cols():
    rng = np.random.default_rng(0)
    n = 200
    x = rng.normal(5.0, 2.0, n)
    nn = rng.integers(0, 10, n).astype(float)
    nn[::7] = np.nan
    c = rng.choice(np.array(["a", "b", "c"], dtype=object), n)
    c[::11] = None
    return {"x": x, "n": nn, "c": c}


def test_fit_statistics_and_standardization(schema, cols):
    t = FeatureTransform.fit(cols, schema)
    assert t.n_out == 1 + 1 + 3
    assert t.feature_names == ["x", "n", "c=a", "c=b", "c=c"]
    out = t.apply(cols)
    assert out.dtype == np.float32 and out.shape == (200, 5)
    assert abs(out[:, 0].mean()) < 1e-5 and abs(out[:, 0].std() - 1.0) < 1e-4
    step = t.steps[1]
    assert step["mean"] == pytest.approx(np.nanmean(cols["n"]))
    assert step["std"] == pytest.approx(np.nanstd(cols["n"]))


def test_nan_is_imputed_with_the_mean(schema, cols):
    t = FeatureTransform.fit(cols, schema)
    out = t.apply(cols)
    nan_rows = np.isnan(cols["n"])
    assert nan_rows.any()
    np.testing.assert_array_equal(out[nan_rows, 1], 0.0)  # the mean standardizes to 0
    assert np.isfinite(out).all()
    # None in an object column and inf are imputed too
    obj = {"x": np.array([None, np.inf], dtype=object), "n": np.array([1.0, 2.0]),
           "c": np.array(["a", "a"], dtype=object)}
    assert (t.apply(obj)[:, 0] == 0).all()


def test_one_hot(schema, cols):
    t = FeatureTransform.fit(cols, schema)
    probe = {"x": np.zeros(5), "n": np.zeros(5),
             "c": np.array(["a", "b", "c", None, "zzz"], dtype=object)}
    np.testing.assert_array_equal(t.apply(probe)[:, 2:], [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_constant_column_std_floor(schema):
    cols = {"x": np.full(10, 3.0), "n": np.full(10, np.nan), "c": np.array(["a"] * 10, dtype=object)}
    t = FeatureTransform.fit(cols, schema)
    assert t.steps[0]["std"] == 1e-6
    assert t.steps[1]["mean"] == 0.0  # all missing: neutral statistics
    assert np.isfinite(t.apply(cols)).all()


def test_json_round_trip_is_identical(schema, cols):
    t = FeatureTransform.fit(cols, schema)
    d = json.loads(json.dumps(t.to_json()))
    t2 = FeatureTransform.from_json(d)
    assert t2 == t
    np.testing.assert_array_equal(t2.apply(cols), t.apply(cols))
    assert t2.feature_names == t.feature_names


def test_bad_inputs(schema, cols):
    t = FeatureTransform.fit(cols, schema)
    with pytest.raises(KeyError, match="'c'"):
        t.apply({"x": cols["x"], "n": cols["n"]})
    with pytest.raises(ValueError, match="rows"):
        t.apply({"x": cols["x"], "n": cols["n"][:3], "c": cols["c"]})
    with pytest.raises(ValueError, match="format"):
        FeatureTransform.from_json({"format": 99, "steps": []})


def test_empty_batch(schema, cols):
    t = FeatureTransform.fit(cols, schema)
    empty = {"x": np.zeros(0), "n": np.zeros(0), "c": np.zeros(0, dtype=object)}
    assert t.apply(empty).shape == (0, 5)


def test_columns_from_table_and_pandas_agree(schema):
    table = pa.table({"x": pa.array([1.0, None, 3.0]), "n": pa.array([1, 2, None], pa.int64()),
                      "c": pa.array(["a", None, "b"]).dictionary_encode(), "y": [0, 1, 0]})
    a = columns_from_table(table, schema)
    assert a["x"].dtype == np.float64 and np.isnan(a["x"][1]) and np.isnan(a["n"][2])
    assert a["c"].dtype == object and a["c"].tolist() == ["a", None, "b"]
    df = pd.DataFrame({"x": [1.0, None, 3.0], "n": pd.array([1, 2, None], dtype="Int64"),
                       "c": ["a", None, "b"]})
    b = columns_from_pandas(df, schema)
    for k in ("x", "n"):
        np.testing.assert_array_equal(a[k], b[k])
    assert b["c"].tolist() == ["a", None, "b"]
    t = FeatureTransform.fit(a, schema)
    np.testing.assert_array_equal(t.apply(a), t.apply(b))
