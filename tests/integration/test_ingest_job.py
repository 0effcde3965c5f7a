"""jobs/ingest.py (Ray Data) on the session Ray, and a training window fed by the replay reservoir.

The job's ``main`` is called in-process against the shared Ray (a real ``ray job submit``
is tested with the deployment work)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lifelong_ray.config import load_config
from lifelong_ray.data.logs import ModelLogs
from lifelong_ray.data.quarantine import QuarantineStore
from lifelong_ray.data.window import build_window
from lifelong_ray.events import AuditLog, EventKind
from lifelong_ray.sim.streams import abrupt_concept_drift
from lifelong_ray.storage import Storage

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def job():
    spec = importlib.util.spec_from_file_location("ingest_job", ROOT / "jobs" / "ingest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def _config_file(tmp_path: Path, **training) -> Path:
    cfg = load_config(ROOT / "configs" / "demo.yaml").with_overrides(
        storage={"root": str(tmp_path / "store")}, data={"replay_capacity": 300},
        training={"min_rows": 200, "window_recent": 600, "window_replay": 40, **training})
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _labeled(root: Path) -> pa.Table:
    st = Storage(str(root))
    return pa.concat_tables([pq.read_table(p) for p in ModelLogs(st, "demo").labeled_files()])


def test_job_quarantines_bad_rows_and_appends_the_rest(ray_session, job, tmp_path, capsys):
    cfg_path = _config_file(tmp_path)
    table = abrupt_concept_drift(1000, drift_at=800, seed=3).to_table(label="y")
    x2 = table.column("x2").to_numpy().copy()
    x2[[10, 500, 999]] = np.nan
    seg = table.column("segment").to_pylist()
    seg[20] = "zebra"
    table = table.set_column(2, "x2", pa.array(x2)).set_column(5, "segment", pa.array(seg))
    table = table.append_column("request_id", pa.array([f"id{i}" for i in range(1000)]))
    path = tmp_path / "batch.parquet"
    pq.write_table(table, path, row_group_size=100)  # several blocks for map_batches

    assert job.main(["--config", str(cfg_path), str(path)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["received"], report["accepted"], report["quarantined"], report["balanced"]) == (1000, 996, 4, True)
    assert report["reasons"] == {"segment:unknown_category": 1, "x2:not_finite": 3}
    store = QuarantineStore(Storage(str(tmp_path / "store")), "demo")
    q_ids = sorted(i for e in store.list() for i in store.rows(e.id).column("request_id").to_pylist())
    assert q_ids == ["id10", "id20", "id500", "id999"]
    # reconcile by id: every row is in exactly one place
    accepted = _labeled(tmp_path / "store").column("request_id").to_pylist()
    assert sorted(accepted + q_ids) == sorted(f"id{i}" for i in range(1000)) and len(set(accepted)) == 996


def test_job_quarantines_a_changed_csv_whole(ray_session, job, tmp_path, capsys):
    cfg_path = _config_file(tmp_path)
    table = abrupt_concept_drift(300, drift_at=200, seed=4).to_table(label="y").rename_columns(
        ["x0", "x1", "x2", "x3", "x_four", "segment", "y"])
    path = tmp_path / "changed.csv"
    table.to_pandas().to_csv(path, index=False)
    assert job.main(["--config", str(cfg_path), str(path)]) == 3
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["accepted"], report["quarantined"], report["batch_reason"]) == (0, 300, "schema_changed")
    assert "column x4 is missing" in report["message"] and "column x_four is not in the schema" in report["message"]
    st = Storage(str(tmp_path / "store"))
    assert ModelLogs(st, "demo").labeled_files() == []
    [ev] = AuditLog(st, "demo").read(kinds={EventKind.QUARANTINED})
    assert ev.data["reason"] == "schema_changed" and ev.data["source"] == "changed.csv"


def test_window_replays_from_the_reservoir_and_exposes_a_replay_holdout(ray_session, job, tmp_path, capsys):
    cfg_path = _config_file(tmp_path)
    stream = abrupt_concept_drift(1600, drift_at=800, seed=5)
    for i, (lo, hi) in enumerate([(0, 800), (800, 1600)]):
        part = stream.slice(lo, hi).to_table(label="y")
        part = part.append_column("t", pa.array(np.arange(lo, hi, dtype=float)))
        path = tmp_path / f"part{i}.parquet"
        pq.write_table(part, path)
        # the second concept would trip the guard (no champion here: no disagreement check)
        assert job.main(["--config", str(cfg_path), str(path)]) == 0
    capsys.readouterr()
    cfg = load_config(cfg_path)
    w = build_window(Storage(cfg.storage.root), cfg, since_t=None, seed=0)
    assert w.replay_source == "reservoir" and w.replay_rows == 40
    hold_t = np.asarray(w.replay_holdout.column("t").to_pylist())
    assert w.replay_holdout_rows > 0 and hold_t.max() < 1000  # the recent 600 rows are t >= 1000
    assert w.summary()["replay_holdout_rows"] == w.replay_holdout_rows
    assert Storage(cfg.storage.root).exists("models/demo/replay/reservoir.parquet")
