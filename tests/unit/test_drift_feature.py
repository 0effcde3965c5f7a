"""Training reference and feature drift of windows against it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lifelong_ray.config import DriftConfig, FeatureSpec, LabelSpec, ModelSpec
from lifelong_ray.data.schema import Schema
from lifelong_ray.drift import DriftReport, FeatureDrift, Reference, feature_drift

CATS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def schema() -> Schema:
    feats = [FeatureSpec(name=f"x{i}") for i in range(4)]
    feats.insert(2, FeatureSpec(name="c", dtype="category", categories=CATS, nullable=True))
    feats.append(FeatureSpec(name="k", dtype="int", nullable=True))
    return Schema(ModelSpec(name="m", features=feats, label=LabelSpec(name="y", classes=[0, 1])))


def make_window(rng, n, shift=(0.0, 0.0, 0.0, 0.0), mix=(0.5, 0.3, 0.2), k_null=0.0):
    cols = {f"x{i}": rng.normal(shift[i], 1.0, size=n) for i in range(4)}
    cols["c"] = np.asarray(CATS, dtype=object)[rng.choice(3, size=n, p=mix)]
    k = rng.poisson(3, size=n).astype(np.float64)
    k[rng.random(n) < k_null] = np.nan
    cols["k"] = k
    return cols


@pytest.fixture(scope="module")
def reference(schema) -> Reference:
    return Reference.from_columns(make_window(np.random.default_rng(0), 20000), schema)


# -- Reference ----------------------------------------------------------------

def test_reference_shapes_and_order(reference, schema):
    assert reference.features == tuple(schema.names)
    assert reference.numeric == ("x0", "x1", "x2", "x3", "k")
    assert reference.categorical == ("c",)
    assert reference.edges.shape == (5, 11) and reference.props.shape == (5, 11)
    assert reference.sample.shape == (5000, 5)
    assert np.all(np.diff(reference.sample, axis=0) >= 0)
    np.testing.assert_allclose(reference.props.sum(axis=1), 1.0)
    # quantile bins of continuous data hold ~10% each
    np.testing.assert_allclose(reference.props[:4, :10], 0.1, atol=1e-3)
    assert reference.counts[0].sum() == 20000 and reference.counts[0][-1] == 0
    np.testing.assert_allclose(reference.category_props()[0][:3], [0.5, 0.3, 0.2], atol=0.02)


def test_reference_sample_drops_nan_and_is_seeded(schema):
    rng = np.random.default_rng(1)
    cols = make_window(rng, 3000, k_null=0.5)
    ref = Reference.from_columns(cols, schema, bins=5, max_sample=1000, seed=3)
    k = ref.sample[:, ref.numeric.index("k")]
    assert ref.sample.shape == (1000, 5) and not np.isnan(k).any()
    assert ref.props[ref.numeric.index("k"), -1] == pytest.approx(np.isnan(cols["k"]).mean())
    # sample values come from the column
    assert np.isin(ref.sample[:, 0], cols["x0"]).all()
    again = Reference.from_columns(cols, schema, bins=5, max_sample=1000, seed=3)
    np.testing.assert_array_equal(ref.sample, again.sample)
    other = Reference.from_columns(cols, schema, bins=5, max_sample=1000, seed=4)
    assert not np.array_equal(ref.sample, other.sample)


def test_reference_small_data_keeps_everything_with_nan_padding(schema):
    cols = make_window(np.random.default_rng(2), 50, k_null=0.3)
    ref = Reference.from_columns(cols, schema, max_sample=5000)
    assert ref.sample.shape[0] == 50
    k = ref.sample[:, ref.numeric.index("k")]
    assert np.isnan(k).sum() == np.isnan(cols["k"]).sum()
    np.testing.assert_array_equal(ref.sample[:, 0], np.sort(cols["x0"]))


def test_reference_json_roundtrip(reference):
    blob = json.dumps(reference.to_json(), allow_nan=False)
    back = Reference.from_json(json.loads(blob))
    assert back.to_json() == reference.to_json()
    np.testing.assert_array_equal(back.sample, reference.sample)
    np.testing.assert_array_equal(back.edges, reference.edges)
    assert back.categories == reference.categories


def test_reference_all_null_numeric_column_is_json_safe(schema):
    cols = make_window(np.random.default_rng(3), 100)
    cols["k"] = np.full(100, np.nan)
    ref = Reference.from_columns(cols, schema)
    back = Reference.from_json(json.loads(json.dumps(ref.to_json(), allow_nan=False)))
    assert np.isnan(back.edges[back.numeric.index("k")]).all()
    report = feature_drift(back, make_window(np.random.default_rng(4), 200), DriftConfig())
    assert next(f for f in report.features if f.feature == "k").drifted  # nulls vanished


def test_reference_rejects_bad_input(schema):
    cols = make_window(np.random.default_rng(5), 10)
    with pytest.raises(ValueError, match="missing for features \\['c'\\]"):
        Reference.from_columns({k: v for k, v in cols.items() if k != "c"}, schema)
    with pytest.raises(ValueError, match="different lengths"):
        Reference.from_columns({**cols, "x0": cols["x0"][:5]}, schema)
    with pytest.raises(ValueError, match="bins"):
        Reference.from_columns(cols, schema, bins=1)
    with pytest.raises(ValueError, match="max_sample"):
        Reference.from_columns(cols, schema, max_sample=0)
    with pytest.raises(ValueError, match="at least one row"):
        Reference.from_columns({k: v[:0] for k, v in cols.items()}, schema)
    with pytest.raises(ValueError, match="format"):
        Reference.from_json({"format": 99})


# -- feature_drift ------------------------------------------------------------

def _by_name(report: DriftReport) -> dict[str, FeatureDrift]:
    return {f.feature: f for f in report.features}


def test_same_distribution_window_is_not_flagged(reference):
    report = feature_drift(reference, make_window(np.random.default_rng(10), 500), DriftConfig())
    assert not report.drifted and report.n_drifted == 0 and report.n == 500
    assert report.reason.startswith("no feature drift: max PSI 0.")
    assert [f.feature for f in report.features] == list(reference.features)
    assert {f.method for f in report.features} == {"ks+psi", "chi2+psi"}
    assert _by_name(report)["c"].method == "chi2+psi"


def test_shifted_numeric_column_is_flagged(reference):
    report = feature_drift(reference, make_window(np.random.default_rng(11), 500, shift=(0, 0, 0, 1.0)),
                           DriftConfig())
    f = _by_name(report)
    assert report.drifted and report.n_drifted == 1
    assert f["x3"].drifted and f["x3"].psi > 0.2 and f["x3"].statistic > 0.3 and f["x3"].p_value < 1e-10
    assert not any(v.drifted for k, v in f.items() if k != "x3")
    assert report.reason.startswith(f"PSI {f['x3'].psi:.2f} > 0.20 on 1/6 features (x3 {f['x3'].psi:.2f})")
    assert "KS p<0.01 with D>=0.10 on 1/6 (x3 D=" in report.reason


def test_changed_category_mix_is_flagged(reference):
    report = feature_drift(reference, make_window(np.random.default_rng(12), 500, mix=(0.2, 0.3, 0.5)),
                           DriftConfig())
    c = _by_name(report)["c"]
    assert report.drifted and c.drifted and report.n_drifted == 1
    assert c.method == "chi2+psi"
    assert c.statistic == pytest.approx(0.3, abs=0.05)  # total variation distance
    assert c.p_value < 1e-10
    assert "chi2 p<0.01 with TVD>=0.10 on 1/6 (c TVD=" in report.reason


def test_large_same_distribution_window_is_not_flagged(reference):
    # 100k rows: tests get extremely powerful, the effect-size floor keeps them quiet
    rng = np.random.default_rng(13)
    report = feature_drift(reference, make_window(rng, 100_000), DriftConfig())
    assert not report.drifted, report.reason
    assert max(f.psi for f in report.features) < 0.01


def test_effect_size_floor_decides_on_small_shift_in_large_window(reference):
    window = make_window(np.random.default_rng(14), 100_000, shift=(0.15, 0, 0, 0))
    with_floor = _by_name(feature_drift(reference, window, DriftConfig()))["x0"]
    assert with_floor.p_value < 0.01 and with_floor.statistic < 0.1 and with_floor.psi < 0.2
    assert not with_floor.drifted
    no_floor = _by_name(feature_drift(reference, window, DriftConfig(ks_min_statistic=0.0)))["x0"]
    assert no_floor.drifted


def test_null_rate_shift_is_caught_by_the_missing_bucket(reference):
    report = feature_drift(reference, make_window(np.random.default_rng(15), 1000, k_null=0.4), DriftConfig())
    k = _by_name(report)["k"]
    assert k.drifted and k.psi > 0.2
    assert k.p_value > 0.01  # the non-null values did not move


def test_categorical_none_and_unknown_go_to_the_other_bucket(reference):
    window = make_window(np.random.default_rng(16), 1000)
    window["c"][:300] = None
    window["c"][300:400] = "purple"
    c = _by_name(feature_drift(reference, window, DriftConfig()))["c"]
    assert c.drifted and c.statistic == pytest.approx(0.4, abs=0.01)


def test_quorum_of_drifted_features(reference):
    window = make_window(np.random.default_rng(17), 500, shift=(1.0, 0, 0, 0))
    report = feature_drift(reference, window, DriftConfig(min_drifted_features=2))
    assert report.n_drifted == 1 and not report.drifted
    assert report.reason.startswith("feature drift below quorum: 1/6 features drifted < 2 required (PSI ")
    window = make_window(np.random.default_rng(17), 500, shift=(1.0, 0, 0, -1.0))
    report = feature_drift(reference, window, DriftConfig(min_drifted_features=2))
    assert report.n_drifted == 2 and report.drifted
    assert "on 2/6 features (x" in report.reason


def test_report_json_roundtrip(reference):
    window = make_window(np.random.default_rng(18), 300, shift=(2.0, 0, 0, 0))
    window["k"][:] = np.nan  # no finite current values: KS is NaN
    report = feature_drift(reference, window, DriftConfig())
    blob = json.dumps(report.to_json(), allow_nan=False)
    back = DriftReport.from_json(json.loads(blob))
    assert back.to_json() == report.to_json()
    assert back.n == 300 and back.reason == report.reason
    k = _by_name(back)["k"]
    assert np.isnan(k.p_value) and k.drifted  # PSI sees the nulls
    assert report.max_psi == max(f.psi for f in report.features)


def test_empty_window_and_bad_input(reference):
    empty = {name: np.array([]) for name in reference.features}
    report = feature_drift(reference, empty, DriftConfig())
    assert report.n == 0 and not report.drifted and report.features == []
    window = make_window(np.random.default_rng(19), 10)
    with pytest.raises(ValueError, match="lacks features \\['x1'\\]"):
        feature_drift(reference, {k: v for k, v in window.items() if k != "x1"}, DriftConfig())
    with pytest.raises(ValueError, match="different lengths"):
        feature_drift(reference, {**window, "x0": window["x0"][:3]}, DriftConfig())


def test_validated_records_are_accepted_directly(reference, schema):
    rows = [{"x0": 0.1, "x1": -0.3, "c": "red", "x2": 1.0, "x3": 0.0, "k": 2},
            {"x0": 0.5, "x1": 0.3, "c": None, "x2": -1.0, "x3": 0.2, "k": None}]
    cols, bad = schema.validate_records(rows)
    assert bad == []
    report = feature_drift(reference, cols, DriftConfig())
    assert report.n == 2 and len(report.features) == 6
