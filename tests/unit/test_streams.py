"""Drifting stream generators: shape, schema of the demo config, determinism, drift strength."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lifelong_ray.config import load_config
from lifelong_ray.data.schema import Schema
from lifelong_ray.sim.streams import Stream, abrupt_concept_drift, rotating_hyperplane, sea_concepts

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
