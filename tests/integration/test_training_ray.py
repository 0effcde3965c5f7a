"""Training windows on Ray Data and the retrain job on Ray Train (shared local Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lifelong_ray.config import parse_config
from lifelong_ray.data.logs import ModelLogs
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import columns_from_table
from lifelong_ray.data.window import build_window, dataset_to_arrow
from lifelong_ray.registry.store import Registry
from lifelong_ray.storage import Storage
from lifelong_ray.training import runner as runner_mod
from lifelong_ray.training.retrain import RetrainResult, job_path, run_retrain

pytestmark = pytest.mark.integration

FEATURES = [{"name": "a", "min": -10, "max": 10}, {"name": "b"},
            {"name": "c", "dtype": "category", "categories": ["p", "q"]}]


def _cfg(root: str, runner: str = "ray", **training):
    return parse_config({
        "model": {"name": "lin", "features": FEATURES, "label": {"name": "y", "classes": [0, 1]}},
        "estimator": {"kind": "mlp", "hidden": [16], "epochs": 20, "lr": 0.02},
        "training": {"runner": runner, "window_recent": 1500, "window_replay": 100, "min_rows": 200,
                     "holdout_fraction": 0.2, **training},
        "storage": {"root": root},
    })


def _rows(n: int, rng: np.random.Generator, t0: float, ids: str) -> pa.Table:
    """An easy linear problem: y = [a - b + 0.5*(c == 'p') > 0]."""
    a, b = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["p", "q"], size=n)
    y = (a - b + np.where(c == "p", 0.5, -0.5) > 0).astype(np.int64)
    t = t0 + np.arange(n, dtype=float)
    return pa.table({"request_id": [f"{ids}{i}" for i in range(n)], "t": t, "t_label": t + 0.5,
                     "version": ["v0001"] * n, "prediction": pa.nulls(n, pa.int64()), "label": y,
                     "a": a, "b": b, "c": c})


def _write_log(root: str, files: int = 8, per_file: int = 250, seed: int = 0) -> ModelLogs:
    rng = np.random.default_rng(seed)
    logs = ModelLogs(Storage(root), "lin")
    for k in range(files):
        table = _rows(per_file, rng, t0=1000.0 + k * per_file, ids=f"f{k}-")
        logs.append_labeled(table, t=float(table.column("t")[-1].as_py()))
    return logs


def test_build_window_validates_selects_and_counts(ray_session, tmp_path):
    import ray.data

    root = str(tmp_path)
    logs = _write_log(root, files=4, per_file=250)            # t in [1000, 2000)
    bad = _rows(6, np.random.default_rng(9), t0=2000.0, ids="bad-")
    bad = bad.set_column(bad.schema.get_field_index("a"), "a", pa.array([0.0, 50.0, 0.0, 0.0, 0.0, 0.0]))
    bad = bad.set_column(bad.schema.get_field_index("label"), "label", pa.array([0, 1, 4, 1, 0, 1]))
    bad = bad.set_column(bad.schema.get_field_index("c"), "c", pa.array(["p", "q", "p", "zz", "q", "p"]))
    logs.append_labeled(bad, t=2010.0)
    # a label corrected later: the same request id, written again with another label
    fix = _rows(1, np.random.default_rng(1), t0=2000.0, ids="bad-")
    fix = fix.set_column(fix.schema.get_field_index("t_label"), "t_label", pa.array([2100.0]))
    logs.append_labeled(fix, t=2100.0)
    # a file whose feature 'b' became a string: the whole file is quarantined
    changed = _rows(5, np.random.default_rng(2), t0=2050.0, ids="chg-")
    changed = changed.set_column(changed.schema.get_field_index("b"), "b", pa.array(["x"] * 5))
    logs.append_labeled(changed, t=2200.0)
    # and a file that is not parquet at all: counted once, never fatal
    Storage(root).write_bytes(f"{logs.labeled_prefix}/date=1970-01-01/zz-corrupt.parquet", b"not parquet")

    cfg = _cfg(root, window_recent=500, window_replay=40)
    w = build_window(Storage(root), cfg, since_t=1200.0, seed=3)

    assert w.quarantined_rows == 3 + 5 + 1
    assert w.quarantine_reasons == {"a:above_max": 1, "label:label_domain": 1, "c:unknown_category": 1,
                                    "b:schema_changed": 5, "file:unreadable": 1}
    assert w.duplicate_rows == 1
    assert w.recent_rows == 500 and w.holdout_rows == 100 and w.replay_rows == 40
    assert w.rows == 400 + 40
    assert isinstance(w.train, ray.data.Dataset)
    train = dataset_to_arrow(w.train)
    assert train.num_rows == w.rows and set(train.column_names) == {"a", "b", "c", "label"}
    t_hold = w.holdout.column("t").to_numpy()
    assert w.holdout.num_rows == 100 and t_hold.min() >= 1000.0 + 1000 - 500 + 3  # the recent 500 rows
    assert w.until_t == 2005.0
    assert w.reference is not None and w.reference.num_rows == 500
    # the window is seeded
    w2 = build_window(Storage(root), cfg, since_t=1200.0, seed=3)
    assert w2.holdout.equals(w.holdout)
    assert dataset_to_arrow(w2.train).equals(train)


def test_run_retrain_with_ray_train_registers_a_good_version_once(ray_session, tmp_path, monkeypatch):
    from lifelong_ray.training.retrain import retrain_task
    import ray

    root = str(tmp_path)
    _write_log(root, files=8, per_file=250)                   # 2000 rows, recent 1500
    cfg = _cfg(root)

    # the controller's path: a Ray task running the whole job (Ray Data + Ray Train inside)
    out = ray.get(retrain_task.remote(cfg.model_dump(mode="json"), job_id="job-1", since_t=None,
                                      champion=None, seed=0))
    res = RetrainResult.from_json(out)
    assert res.status == "ok", res.error
    assert res.runner == "ray" and res.version == "v0001"
    assert res.train_rows == 1200 + 100 and res.holdout_rows == 300
    assert res.candidate_accuracy > 0.9 and res.champion_accuracy is None
    assert res.train_seconds > 0

    storage = Storage(root)
    reg = Registry(storage, "lin")
    assert reg.list_versions() == ["v0001"] and reg.find_by_job("job-1") == "v0001"
    meta = reg.metadata("v0001")
    assert meta["metrics"]["holdout_accuracy"] == res.candidate_accuracy
    assert meta["window"]["rows"] == 1300 and meta["window"]["quarantined_rows"] == 0
    assert meta["config_hash"] == cfg.config_hash() and meta["seed"] == 0 and meta["runner"] == "ray"
    assert meta["parent"] is None and meta["reference_accuracy"] == res.candidate_accuracy
    assert reg.reference("v0001").num_rows == 1500
    assert storage.list_dirs("ray_train") == []               # the Ray Train run dir was cleaned up

    model = reg.load("v0001")
    fresh = _rows(1000, np.random.default_rng(42), t0=5000.0, ids="new-")
    labels, conf = model.predict(columns_from_table(fresh, Schema(cfg.model)))
    assert float((labels == fresh.column("label").to_numpy()).mean()) > 0.9

    # same job id again: the stored result, and no training at all
    def _no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(runner_mod, "train", _no_training)
    again = run_retrain(cfg, job_id="job-1", since_t=None, champion=None, seed=0)
    assert again == res
    # registered but the result file lost (died before writing it): the version is reused
    storage.fs.delete_file(storage.path(job_path("lin", "job-1")))
    reused = run_retrain(cfg, job_id="job-1", since_t=None, champion=None, seed=0)
    assert reused.status == "ok" and reused.version == "v0001" and reused.reused
    assert reused.candidate_accuracy == res.candidate_accuracy
    assert reg.list_versions() == ["v0001"]
    monkeypatch.undo()

    # a next job, gated against the champion (local runner: the same window code, fast)
    res2 = run_retrain(_cfg(root, runner="local"), job_id="job-2", since_t=1500.0, champion="v0001", seed=1)
    assert res2.status == "ok", res2.error
    assert res2.version == "v0002" and res2.champion_accuracy > 0.9 and res2.runner == "local"
    assert reg.metadata("v0002")["parent"] == "v0001"

    # a follow-up with a grown window, through the controller's Ray task: every row
    # (2000 > window_recent), and the newest fifth held out, not a random one
    out3 = ray.get(retrain_task.remote(_cfg(root, runner="local").model_dump(mode="json"), job_id="job-3",
                                       since_t=None, champion="v0002", seed=2, window_rows=2000))
    res3 = RetrainResult.from_json(out3)
    assert res3.status == "ok", res3.error
    assert res3.holdout_rows == 400 and res3.train_rows == 1600
    assert reg.metadata(res3.version)["window"]["recent_rows"] == 2000
