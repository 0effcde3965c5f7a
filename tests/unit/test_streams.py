"""Drifting stream generators: shape, schema of the demo config, determinism, drift strength."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lifelong_ray.config import load_config
from lifelong_ray.data.schema import Schema
from lifelong_ray.sim.streams import (
    GENERATOR_KINDS,
    GENERATORS,
    Stream,
    abrupt_concept_drift,
    covariate_shift,
    label_prior_shift,
    make_stream,
    recurring_concepts,
    rotating_hyperplane,
    sea_concepts,
    stationary,
)

ROOT = Path(__file__).resolve().parents[2]


def _design(s: Stream, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([s.features[f"x{k}"][a:b] for k in range(5)], 1)
    seg = s.features["segment"][a:b]
    oh = np.stack([seg == c for c in "abc"], 1).astype(float)
    return np.hstack([x, oh]), s.labels[a:b].astype(float)


def _fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 400, lr: float = 0.5):
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    for _ in range(steps):  # plain full-batch gradient descent
        p = 1.0 / (1.0 + np.exp(-z @ w))
        w -= lr * z.T @ (p - y) / len(y)

    def predict(xn: np.ndarray) -> np.ndarray:
        zn = np.hstack([(xn - mu) / sd, np.ones((len(xn), 1))])
        return (zn @ w > 0).astype(float)

    return predict


def test_demo_stream_matches_demo_config() -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    s = abrupt_concept_drift(3000, drift_at=1500, seed=0)
    assert [f.name for f in cfg.model.features] == list(s.features)
    for f in cfg.model.features:
        col = s.features[f.name]
        if f.dtype == "category":
            assert col.dtype == object and set(col) <= set(f.categories)
        else:
            assert col.dtype == np.float64 and col.min() >= f.min and col.max() <= f.max
    assert s.labels.dtype == np.int64 and set(np.unique(s.labels)) <= set(cfg.model.label.classes)
    _, bad = Schema(cfg.model).validate_records(s.rows(0, len(s)))
    assert bad == []


def test_rows_are_json_ready_and_table_round_trips() -> None:
    s = abrupt_concept_drift(50, drift_at=[20, 40], seed=2)
    rows = s.rows(10, 15, label="y")
    assert len(rows) == 5
    json.dumps(rows)  # python floats/str/int only
    assert all(type(r["x0"]) is float and type(r["segment"]) is str and type(r["y"]) is int for r in rows)
    assert "y" not in s.rows(0, 1)[0]
    assert s.rows(45, 100) == s.rows(45, 50)
    t = s.to_table(label="label")
    assert t.num_rows == 50 and t.column_names[-1] == "label"
    assert t.schema.field("segment").type == pa.string() and t.schema.field("label").type == pa.int64()
    assert t.column("x3").to_numpy().tolist() == s.features["x3"].tolist()


def test_seeded_and_validated() -> None:
    a = abrupt_concept_drift(500, drift_at=250, seed=5)
    b = abrupt_concept_drift(500, drift_at=250, seed=5)
    c = abrupt_concept_drift(500, drift_at=250, seed=6)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.features["x1"], b.features["x1"])
    assert not np.array_equal(a.features["x1"], c.features["x1"])
    with pytest.raises(ValueError, match="drift points"):
        abrupt_concept_drift(100, drift_at=100)
    with pytest.raises(ValueError, match="increasing"):
        abrupt_concept_drift(100, drift_at=[60, 30])
    with pytest.raises(ValueError, match="noise"):
        abrupt_concept_drift(100, drift_at=50, noise=0.6)


def test_slice_rebases_drift_points() -> None:
    s = abrupt_concept_drift(1000, drift_at=[300, 700], seed=0)
    part = s.slice(200, 600)
    assert len(part) == 400 and part.drift_points == [100]
    assert part.rows(0, 1) == s.rows(200, 201)


def test_concept_drift_is_strong_and_learnable() -> None:
    s = abrupt_concept_drift(6000, drift_at=3000, seed=0)
    assert 0.44 < s.labels[:3000].mean() < 0.56 and 0.44 < s.labels[3000:].mean() < 0.56
    old = _fit_logistic(*_design(s, 0, 2000))
    x_old, y_old = _design(s, 2000, 3000)
    x_new, y_new = _design(s, 3000, 6000)
    assert (old(x_old) == y_old).mean() > 0.9
    assert 0.3 < (old(x_new) == y_new).mean() < 0.6
    new = _fit_logistic(*_design(s, 3000, 5000))
    x_te, y_te = _design(s, 5000, 6000)
    assert (new(x_te) == y_te).mean() > 0.9


def test_covariate_shift_is_visible() -> None:
    s = abrupt_concept_drift(4000, drift_at=2000, seed=1, covariate_shift=0.5)
    moved = [abs(s.features[f][2000:].mean() - s.features[f][:2000].mean()) / s.features[f][:2000].std()
             for f in ("x0", "x1", "x2", "x3", "x4")]
    assert sum(m > 0.35 for m in moved) == 2
    s0 = abrupt_concept_drift(4000, drift_at=2000, seed=1, covariate_shift=0.0)
    assert max(abs(s0.features[f][2000:].mean() - s0.features[f][:2000].mean()) for f in ("x0", "x1")) < 0.15


def test_other_generators() -> None:
    r = rotating_hyperplane(3000, drift_at=1000, width=1000, seed=0)
    assert len(r) == 3000 and r.drift_points == [1000] and 0.4 < r.labels.mean() < 0.6
    assert r.concept[999] == 0 and r.concept[-1] == 1
    q = sea_concepts(2000, drift_at=[500, 1000], seed=0, noise=0.0)
    x0, x1 = q.features["x0"], q.features["x1"]
    assert np.array_equal(q.labels[:500], (x0[:500] + x1[:500] <= 8.0).astype(np.int64))
    assert np.array_equal(q.labels[500:1000], (x0[500:1000] + x1[500:1000] <= 9.0).astype(np.int64))


def _acc(model, s: Stream, a: int, b: int) -> float:
    x, y = _design(s, a, b)
    return float((model(x) == y).mean())


DEMO_KINDS = ["abrupt", "gradual", "recurring", "covariate", "prior", "stationary"]


@pytest.mark.parametrize("kind", DEMO_KINDS)
def test_demo_schema_kinds_fit_the_demo_config(kind: str) -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    s = make_stream(kind, 2000, seed=4)
    assert list(s.features) == [f.name for f in cfg.model.features]
    assert s.labels.dtype == np.int64 and set(np.unique(s.labels)) == {0, 1}
    _, bad = Schema(cfg.model).validate_records(s.rows(0, len(s)))
    assert bad == []
    assert s.concept is not None and s.concept.dtype == np.int64 and len(s.concept) == len(s)
    assert GENERATOR_KINDS[s.kind] == kind


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_every_kind_is_seeded_and_takes_noise(kind: str) -> None:
    a, b = make_stream(kind, 1200, seed=11, noise=0.1), make_stream(kind, 1200, seed=11, noise=0.1)
    c = make_stream(kind, 1200, seed=12, noise=0.1)
    for name in a.features:
        assert np.array_equal(a.features[name], b.features[name])
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.concept, b.concept)
    assert a.drift_points == b.drift_points and a.params["noise"] == 0.1 and a.params["seed"] == 11
    assert not np.array_equal(a.features["x0"], c.features["x0"])
    # concept changes exactly at the drift points (gradual: halfway through each blend)
    changes = (np.flatnonzero(np.diff(a.concept)) + 1).tolist()
    if kind == "gradual":
        assert len(changes) == len(a.drift_points) and all(c > p for c, p in zip(changes, a.drift_points))
    else:
        assert changes == a.drift_points
    with pytest.raises(ValueError, match="noise"):
        make_stream(kind, 100, noise=0.7)


def test_noise_flips_that_share_of_labels() -> None:
    clean = sea_concepts(20000, drift_at=10000, seed=0, noise=0.0)
    noisy = sea_concepts(20000, drift_at=10000, seed=0, noise=0.2)
    assert np.array_equal(clean.features["x0"], noisy.features["x0"])
    assert abs((clean.labels != noisy.labels).mean() - 0.2) < 0.015
    # SEA is abrupt: the threshold steps from 8 to 9 at the drift point
    x = clean.features["x0"] + clean.features["x1"]
    assert np.array_equal(clean.labels, (x <= np.where(np.arange(20000) < 10000, 8.0, 9.0)).astype(np.int64))


def test_recurring_concepts_alternate() -> None:
    s = recurring_concepts(5000, period=1000, seed=0)
    assert s.drift_points == [1000, 2000, 3000, 4000] and s.kind == "recurring_concepts"
    assert [int(s.concept[i]) for i in range(0, 5000, 1000)] == [0, 1, 0, 1, 0]
    assert all(len(set(s.concept[a:a + 1000])) == 1 for a in range(0, 5000, 1000))
    model_a = _fit_logistic(*_design(s, 0, 1000))
    model_b = _fit_logistic(*_design(s, 1000, 2000))
    assert _acc(model_a, s, 2000, 3000) > 0.88 and _acc(model_a, s, 4000, 5000) > 0.88  # A is back
    assert _acc(model_a, s, 3000, 4000) < 0.6 and _acc(model_b, s, 2000, 3000) < 0.6
    assert _acc(model_b, s, 3000, 4000) > 0.88
    s3 = recurring_concepts(1200, period=200, concepts=3, seed=0)
    assert s3.concept[::200].tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match="period"):
        recurring_concepts(100, period=100)
    with pytest.raises(ValueError, match="concepts"):
        recurring_concepts(100, period=10, concepts=1)


def test_covariate_shift_moves_inputs_but_not_the_concept() -> None:
    s = covariate_shift(8000, drift_at=4000, shift=1.0, seed=0)
    assert s.drift_points == [4000] and s.concept[3999] == 0 and s.concept[4000] == 1
    moved = {f: (s.features[f][4000:].mean() - s.features[f][:4000].mean()) / s.features[f][:4000].std()
             for f in ("x0", "x1", "x2", "x3", "x4")}
    assert 0.9 < moved["x2"] < 1.1 and 0.9 < moved["x4"] < 1.1
    assert all(abs(moved[f]) < 0.1 for f in ("x0", "x1", "x3"))
    assert abs(s.labels[4000:].mean() - s.labels[:4000].mean()) < 0.03
    old = _fit_logistic(*_design(s, 0, 3000))
    before, after = _acc(old, s, 3000, 4000), _acc(old, s, 4000, 8000)
    assert before > 0.88 and abs(after - before) < 0.03
    # the same labelling function on both sides: a model trained after agrees with the old one
    new = _fit_logistic(*_design(s, 4000, 7000))
    x, _ = _design(s, 7000, 8000)
    assert (new(x) == old(x)).mean() > 0.95
    # two drift points: shifted, then back at rest
    s2 = covariate_shift(3000, drift_at=[1000, 2000], shift=-1.5, seed=1)
    x2 = s2.features["x2"]
    assert x2[1000:2000].mean() < x2[:1000].mean() - 1.5 and abs(x2[2000:].mean() - x2[:1000].mean()) < 0.2
    with pytest.raises(ValueError, match="shift"):
        covariate_shift(100, drift_at=50, shift=5.0)


def test_label_prior_shift_moves_the_prior_only() -> None:
    s = label_prior_shift(8000, drift_at=4000, prior_after=0.2, seed=0)
    assert s.drift_points == [4000] and s.concept[3999] == 0 and s.concept[4000] == 1
    assert abs(s.labels[:4000].mean() - 0.5) < 0.03 and abs(s.labels[4000:].mean() - 0.2) < 0.03
    # P(x|y) is fixed: class-conditional means agree before and after
    for cls in (0, 1):
        pre = (s.labels[:4000] == cls)
        post = (s.labels[4000:] == cls)
        for f in ("x0", "x1", "x2", "x3", "x4"):
            col = s.features[f]
            gap = abs(col[:4000][pre].mean() - col[4000:][post].mean()) / col.std()
            assert gap < 0.12, (cls, f, gap)
        seg_pre = np.mean(s.features["segment"][:4000][pre] == "a")
        seg_post = np.mean(s.features["segment"][4000:][post] == "a")
        assert abs(seg_pre - seg_post) < 0.05
    # the concept is unchanged: an old model stays accurate on the new mix
    old = _fit_logistic(*_design(s, 0, 3000))
    assert _acc(old, s, 4000, 8000) > 0.85
    m = label_prior_shift(6000, drift_at=[2000, 4000], prior_after=[0.8, 0.1], seed=2)
    assert [round(float(m.labels[a:a + 2000].mean()), 1) for a in (0, 2000, 4000)] == [0.5, 0.8, 0.1]
    alt = label_prior_shift(6000, drift_at=[2000, 4000], prior_after=0.3, seed=2)
    assert abs(alt.labels[4000:].mean() - 0.5) < 0.04 and abs(alt.labels[2000:4000].mean() - 0.3) < 0.04
    with pytest.raises(ValueError, match="priors"):
        label_prior_shift(100, drift_at=50, prior_after=1.0)
    with pytest.raises(ValueError, match="prior_after"):
        label_prior_shift(100, drift_at=[30, 60], prior_after=[0.2])


def test_stationary_has_no_drift_and_steady_accuracy() -> None:
    s = stationary(8000, seed=0)
    assert s.drift_points == [] and s.kind == "stationary" and not s.concept.any()
    model = _fit_logistic(*_design(s, 0, 2000))
    accs = [_acc(model, s, a, a + 1500) for a in (2000, 3500, 5000, 6500)]
    assert min(accs) > 0.88 and max(accs) - min(accs) < 0.03
    assert max(abs(s.features[f][4000:].mean() - s.features[f][:4000].mean()) / s.features[f].std()
               for f in ("x0", "x1", "x2", "x3", "x4")) < 0.1


def test_make_stream_defaults_and_errors() -> None:
    assert make_stream("abrupt", 1000).drift_points == [500]
    assert make_stream("abrupt_concept_drift", 1000, drift_at=None).drift_points == [500]
    g = make_stream("gradual", 6000)
    assert g.drift_points == [2000] and g.params["width"] == 1000
    assert make_stream("recurring", 4000).drift_points == [1000, 2000, 3000]
    assert make_stream("sea", 4000).drift_points == [1000, 2000, 3000]
    assert make_stream("sea", 4000).params["noise"] == 0.1  # the kind's own default
    assert make_stream("stationary", 50).drift_points == []
    with pytest.raises(ValueError, match="unknown stream kind"):
        make_stream("sudden", 100)
    with pytest.raises(ValueError, match="takes no period"):
        make_stream("abrupt", 100, period=10)
