"""Ray Tune in the retrain path: 3 real trials on the window; the best by the metric is registered."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lifelong_ray.config import EstimatorConfig, parse_config
from lifelong_ray.data.logs import ModelLogs
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import columns_from_table
from lifelong_ray.data.window import LABEL, build_window, dataset_to_arrow
from lifelong_ray.registry.store import Registry
from lifelong_ray.storage import Storage
from lifelong_ray.training.retrain import run_retrain
from lifelong_ray.training.runner import class_indices
from lifelong_ray.training.tune import score, split_validation

pytestmark = pytest.mark.integration

LRS = [1e-5, 0.01, 0.05]


def _cfg(root: str):
    return parse_config({
        "model": {"name": "tuned", "features": [{"name": "a"}, {"name": "b"}],
                  "label": {"name": "y", "classes": [0, 1]}},
        "estimator": {"kind": "mlp", "hidden": [8], "epochs": 8, "lr": 0.01},
        "training": {"runner": "ray", "window_recent": 1200, "window_replay": 0, "min_rows": 200, "seed": 3,
                     "tune": {"enabled": True, "num_samples": 1, "time_budget_s": 120, "cpus_per_trial": 0.5,
                              "metric": "val_accuracy", "val_fraction": 0.25,
                              "search_space": {"lr": {"dist": "grid", "values": LRS},
                                               "hidden": {"dist": "choice", "values": [[8], [16, 8]]}}}},
        "storage": {"root": root},
    })


def _write_log(root: str, n: int = 1200, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = (a - 0.7 * b > 0).astype(np.int64)
    t = 1000.0 + np.arange(n, dtype=float)
    table = pa.table({"request_id": [f"r{i}" for i in range(n)], "t": t, "t_label": t + 1,
                      "version": pa.nulls(n, pa.string()), "prediction": pa.nulls(n, pa.int64()),
                      "label": y, "a": a, "b": b})
    ModelLogs(Storage(root), "tuned").append_labeled(table, t=float(t[-1]))


def test_three_trials_and_the_best_becomes_the_candidate(ray_session, tmp_path):
    root = str(tmp_path)
    cfg = _cfg(root)
    _write_log(root)
    res = run_retrain(cfg, job_id="tune-1", since_t=None, champion=None, seed=5)
    assert res.status == "ok", res.error
    assert res.runner == "tune"
    reg = Registry(Storage(root), "tuned")
    meta = reg.metadata(res.version)
    assert meta["runner"] == "tune"
    assert not Storage(root).list("ray_tune"), "Tune run directory left behind"

    # the same window the job trained on (seeded), its validation split, and the registered weights
    window = build_window(Storage(root), cfg, since_t=None, seed=5)
    table = dataset_to_arrow(window.train)
    loaded = reg.load(res.version)
    x = loaded.transform.apply(columns_from_table(table, Schema(cfg.model)))
    y = class_indices(table.column(LABEL).to_numpy(zero_copy_only=False), [0, 1])
    _, va = split_validation(len(y), cfg.training.tune.val_fraction, seed=5)

    # three real trials ran (one per grid value), each scored on that split; the lineage keeps them
    tune_meta = meta["tune"]
    rows = tune_meta["trials"]
    assert len(rows) == 3 and all(r["error"] is None for r in rows)
    # the quota is charged with the trials' CPU-seconds, not the search's wall time
    trial_cpu = sum(r["train_seconds"] for r in rows) * cfg.training.tune.cpus_per_trial
    assert res.cpu_seconds == pytest.approx(trial_cpu) and meta["cpu_seconds"] == pytest.approx(trial_cpu)
    assert sorted(r["config"]["lr"] for r in rows) == LRS
    accs = [r["val_accuracy"] for r in rows]
    assert max(accs) > min(accs) + 0.05  # lr 1e-5 barely moves in 8 epochs: the search matters
    best = tune_meta["best"]
    assert (tune_meta["metric"], tune_meta["mode"]) == ("val_accuracy", "max")
    assert best["val_accuracy"] == max(accs)
    assert best["config"] in [r["config"] for r in rows if r["val_accuracy"] == max(accs)]
    # the registered candidate IS that best trial: its architecture and lr, and its score on the split
    assert meta["estimator"]["lr"] == best["config"]["lr"]
    assert meta["estimator"]["hidden"] == best["config"]["hidden"]
    est = EstimatorConfig.model_validate(meta["estimator"])
    mine = score(loaded.module.state_dict(), est, x.shape[1], 2, x[va], y[va])
    assert mine["val_accuracy"] == pytest.approx(best["val_accuracy"])
    assert res.candidate_accuracy > 0.85
