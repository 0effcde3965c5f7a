"""Training without Ray: fit_numpy, window validation/selection, the local runner,
and the retrain job's result file and failure path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from lifelong_ray.config import EstimatorConfig, TrainingConfig, parse_config
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import columns_from_table
from lifelong_ray.data.window import (TrainingWindow, WindowTooSmall, dedupe_latest_label, select_window,
                                      validate_batch)
from lifelong_ray.storage import Storage
from lifelong_ray.training.loop import fit_numpy
from lifelong_ray.training.retrain import RetrainResult, job_path, run_retrain
from lifelong_ray.training.runner import class_indices, train


def _cfg(root: str = "unused", **training):
    return parse_config({
        "model": {"name": "m",
                  "features": [{"name": "a", "min": -10, "max": 10}, {"name": "b"},
                               {"name": "c", "dtype": "category", "categories": ["p", "q"]}],
                  "label": {"name": "y", "classes": [3, 7]}},
        "estimator": {"kind": "mlp", "hidden": [16], "epochs": 15, "lr": 0.02},
        "training": {"runner": "local", "min_rows": 50, **training},
        "storage": {"root": root},
    })


def _linear(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([1.5, -2.0, 0.5]) + 0.2 > 0).astype(np.int64)
    return x, y


# -- fit_numpy ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_fit_numpy_learns_a_linear_rule(kind):
    x, y = _linear(1000, seed=1)
    xt, yt = _linear(500, seed=2)
    est = EstimatorConfig(kind=kind, hidden=[16], epochs=20)
    state, info = fit_numpy(x, y, est, n_classes=2, seed=0)
    from lifelong_ray.training.estimators import build_module, predict_proba

    module = build_module(est, 3, 2)
    module.load_state_dict(state)
    acc = float((predict_proba(module, xt).argmax(1) == yt).mean())
    assert acc > 0.9
    assert info["epochs"] == 20 and len(info["losses"]) == 20 and info["rows"] == 1000
    assert info["losses"][-1] < info["losses"][0]


def test_fit_numpy_is_seeded():
    x, y = _linear(300, seed=3)
    est = EstimatorConfig(kind="mlp", hidden=[8], epochs=3)
    s1, _ = fit_numpy(x, y, est, 2, seed=5)
    s2, _ = fit_numpy(x, y, est, 2, seed=5)
    s3, _ = fit_numpy(x, y, est, 2, seed=6)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


def test_fit_numpy_rejects_bad_input():
    x, y = _linear(10, seed=0)
    with pytest.raises(ValueError, match="class indices"):
        fit_numpy(x, y + 5, EstimatorConfig(), 2, seed=0)
    with pytest.raises(ValueError, match="need x"):
        fit_numpy(x[:5], y, EstimatorConfig(), 2, seed=0)


def test_class_indices_maps_non_contiguous_classes():
    assert class_indices(np.array([7, 3, 7]), [3, 7]).tolist() == [1, 0, 1]
    assert class_indices(np.array([1, 9]), [9, 1]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="not in classes"):
        class_indices(np.array([3, 5]), [3, 7])


# -- validation ----------------------------------------------------------------------
def test_validate_batch_marks_each_broken_rule():
    cfg = _cfg()
    batch = pa.table({
        "request_id": ["r0", "r1", "r2", "r3", "r4", "r5"],
        "t": [1.0, 2.0, 3.0, 4.0, float("nan"), 6.0],
        "t_label": [1.5] * 6,
        "version": ["v0001"] * 6,
        "prediction": pa.nulls(6, pa.int64()),
        "label": [3, 7, 7, 5, 3, None],
        "a": [0.0, 11.0, 1.0, 1.0, 1.0, 1.0],
        "b": [0.0, 0.0, None, 0.0, 0.0, 0.0],
        "c": ["p", "q", "p", "p", "z", "q"],
        "surprise": [1, 2, 3, 4, 5, 6],   # unknown extra columns are ignored
    })
    out = validate_batch(batch, cfg.model)
    assert out.column("__valid").to_pylist() == [True, False, False, False, False, False]
    assert out.column("__reason").to_pylist() == [
        None, "a:above_max", "b:null", "label:label_domain", "c:unknown_category", "label:null"]
    assert out.column("label").to_pylist()[0] == 3
    assert out.schema.field("a").type == pa.float64() and out.schema.field("c").type == pa.string()
    assert "surprise" not in out.column_names


def test_validate_batch_quarantines_a_batch_with_a_changed_schema():
    cfg = _cfg()
    batch = pa.table({"t": [1.0, 2.0], "label": [3, 7], "a": ["x", "y"], "b": [0.0, 1.0], "c": ["p", "q"]})
    out = validate_batch(batch, cfg.model)
    assert out.column("__valid").to_pylist() == [False, False]
    assert set(out.column("__reason").to_pylist()) == {"a:schema_changed"}
    missing = validate_batch(pa.table({"t": [1.0], "a": [1.0], "b": [0.0], "c": ["p"]}), cfg.model)
    assert missing.column("__reason").to_pylist() == ["label:schema_changed"]


def test_dedupe_keeps_the_latest_label_and_rows_without_id():
    table = pa.table({
        "request_id": ["a", "b", "a", None, None],
        "t": [1.0, 2.0, 1.0, 3.0, 3.0],
        "t_label": [5.0, 5.0, 9.0, 4.0, 4.0],
        "label": [3, 3, 7, 3, 7],
    })
    out, dropped = dedupe_latest_label(table)
    assert dropped == 1
    assert out.num_rows == 4
    rows = out.to_pylist()
    assert [r["request_id"] for r in rows][:2] == ["a", "b"]      # sorted by t
    assert rows[0]["label"] == 7                                 # the correction wins


# -- selection -----------------------------------------------------------------------
def test_select_window_recent_holdout_replay():
    rng = np.random.default_rng(0)
    t = rng.permutation(np.arange(1000, dtype=float))            # any order
    cfg = TrainingConfig(window_recent=300, window_replay=50, min_rows=100, holdout_fraction=0.2)
    sel = select_window(t, cfg, since_t=None, seed=1)
    assert len(sel.recent) == 300 and t[sel.recent].min() == 700.0
    assert len(sel.holdout) == 60 and set(sel.holdout) <= set(sel.recent)
    assert not set(sel.holdout) & set(sel.train_recent)
    assert len(sel.train_recent) == 240
    assert len(sel.replay) == 50 and t[sel.replay].max() < 700.0
    assert len(sel.train) == 290
    again = select_window(t, cfg, since_t=None, seed=1)
    assert np.array_equal(again.holdout, sel.holdout) and np.array_equal(again.replay, sel.replay)
    other = select_window(t, cfg, since_t=None, seed=2)
    assert not np.array_equal(other.holdout, sel.holdout)


def test_select_window_since_t_and_too_small():
    t = np.arange(1000, dtype=float)
    cfg = TrainingConfig(window_recent=2000, window_replay=100, min_rows=100)
    sel = select_window(t, cfg, since_t=800.0, seed=0)
    assert len(sel.recent) == 200 and t[sel.recent].min() == 800.0
    assert t[sel.replay].max() < 800.0 and len(sel.replay) == 100
    with pytest.raises(WindowTooSmall, match="only 50 valid labeled rows.*t >= 950"):
        select_window(t, cfg, since_t=950.0, seed=0)
    no_replay = select_window(t, cfg.model_copy(update={"window_replay": 0}), since_t=800.0, seed=0)
    assert len(no_replay.replay) == 0


def test_select_window_newest_holdout_is_the_tail_in_time():
    """A grown follow-up window holds out its newest rows: the champion, trained on
    older rows of the same window, cannot have seen them."""
    rng = np.random.default_rng(0)
    t = rng.permutation(np.arange(1000, dtype=float))
    cfg = TrainingConfig(window_recent=500, window_replay=20, min_rows=100, holdout_fraction=0.2,
                         holdout_split="newest")
    sel = select_window(t, cfg, since_t=300.0, seed=4)
    assert sorted(t[sel.holdout]) == list(np.arange(900.0, 1000.0))
    assert sorted(t[sel.train_recent]) == list(np.arange(500.0, 900.0))
    assert len(sel.replay) == 20 and t[sel.replay].max() < 500.0


# -- local runner on a hand-built window ---------------------------------------------
def _raw_table(n: int, seed: int, t0: float = 0.0) -> pa.Table:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["p", "q"], size=n)
    y = np.where(a - b + np.where(c == "p", 0.5, -0.5) > 0, 7, 3)
    return pa.table({"a": a, "b": b, "c": c, "label": y, "t": t0 + np.arange(n, dtype=float)})


def test_local_runner_trains_on_a_table_window():
    cfg = _cfg()
    train_t, hold = _raw_table(800, seed=0).drop_columns(["t"]), _raw_table(300, seed=1)
    window = TrainingWindow(train=train_t, holdout=hold, rows=800, holdout_rows=300, since_t=None,
                            until_t=299.0, replay_rows=0, quarantined_rows=0)
    trained = train(window, cfg, seed=0)
    assert trained.runner == "local" and trained.classes == [3, 7] and trained.n_in == 4
    pred = trained.predict(columns_from_table(hold, Schema(cfg.model)))
    assert float((pred == hold.column("label").to_numpy()).mean()) > 0.9
    assert trained.metrics["epochs"] == 15 and trained.metrics["rows"] == 800
    assert trained.train_seconds > 0


# -- retrain job ---------------------------------------------------------------------
def test_retrain_result_json_roundtrip_tolerates_new_keys():
    r = RetrainResult("j", "ok", "v0001", 0.9, 0.5, 10, 90, 1.5, "ray", None, 123.0)
    d = r.to_json()
    assert RetrainResult.from_json({**d, "from_the_future": 1}) == r


def test_run_retrain_without_data_fails_into_the_result_file(tmp_path):
    cfg = _cfg(str(tmp_path))
    res = run_retrain(cfg, job_id="job-1", since_t=None, champion=None, seed=0)
    assert res.status == "failed" and res.version is None
    assert "WindowTooSmall" in res.error and "only 0 valid labeled rows" in res.error
    stored = Storage(str(tmp_path)).read_json(job_path("m", "job-1"))
    assert stored["status"] == "failed" and stored["error"] == res.error
    # the same job id again: the stored result, not a new attempt
    Storage(str(tmp_path)).write_json(job_path("m", "job-1"), {**stored, "error": "marker"})
    assert run_retrain(cfg, job_id="job-1", since_t=None, champion=None, seed=0).error == "marker"


def test_importing_the_retrain_job_does_not_import_ray():
    code = ("import sys, lifelong_ray.training.retrain as r, lifelong_ray.training.runner, "
            "lifelong_ray.data.window; assert 'ray' not in sys.modules, 'ray imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
