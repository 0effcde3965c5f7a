"""jobs/backfill.py on real Ray Data and real parquet: day partitions, quarantine, and a
re-run that the next training window counts once."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifelong_ray.config import load_config
from lifelong_ray.data.quarantine import QuarantineStore
from lifelong_ray.data.window import build_window
from lifelong_ray.sim.streams import stationary
from lifelong_ray.storage import Storage

pytestmark = pytest.mark.integration

_SPEC = importlib.util.spec_from_file_location("backfill_job", Path(__file__).parents[2] / "jobs" / "backfill.py")
backfill_job = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(backfill_job)

DAY1, DAY2 = 1_767_225_600.0, 1_767_312_000.0  # 2026-01-01 and 2026-01-02, 00:00 UTC
N = 600  # valid rows, half on each day


def test_backfill_files_days_quarantines_bad_rows_and_a_rerun_counts_once(ray_session, tmp_path):
    cfg = load_config("configs/demo.yaml").with_overrides(
        model={"name": "bf"}, storage={"root": str(tmp_path / "store")},
        training={"min_rows": 100, "window_recent": 2 * N, "window_replay": 0})
    table = stationary(N, seed=11).to_table(label="y")
    t = np.where(np.arange(N) < N // 2, DAY1 + np.arange(N), DAY2 + np.arange(N))
    table = table.append_column("t", pa.array(t))
    bad = table.slice(0, 2).to_pylist()
    bad[0]["x0"], bad[1]["y"] = 99.0, 7  # out of range; a label outside the classes
    table = pa.concat_tables([table, pa.Table.from_pylist(bad, schema=table.schema)])
    src = tmp_path / "archive"
    src.mkdir()
    pq.write_table(table.slice(0, 400), src / "part-0.parquet")
    pq.write_table(table.slice(400), src / "part-1.parquet")

    # small chunks: a day's rows arrive in more than one chunk, and its report adds them up
    out = backfill_job.backfill(cfg, str(src), now=DAY2 + 86_400, chunk_rows=250)
    assert (out["layout"], out["received"], out["accepted"], out["quarantined"]) == ("batch", N + 2, N, 2)
    assert [(d["day"], d["received"], d["accepted"], d["balanced"]) for d in out["days"]] == \
        [("2026-01-01", N // 2 + 2, N // 2, True), ("2026-01-02", N // 2, N // 2, True)]
    storage = Storage(cfg.storage.root)
    days = {p.split("date=")[1].split("/")[0] for p in storage.list("models/bf/labeled", suffix=".parquet")}
    assert days == {"2026-01-01", "2026-01-02"}  # filed at the rows' own time
    held = sorted((e.reason, e.data["fields"]) for e in QuarantineStore(storage, "bf").list())
    assert held == [("above_max", {"x0:above_max": 1}), ("label_domain", {"y:label_domain": 1})]

    again = backfill_job.backfill(cfg, str(src), now=DAY2 + 86_400)
    assert (again["accepted"], again["quarantined"]) == (N, 2)  # received = accepted + quarantined, again
    window = build_window(storage, cfg, since_t=None, seed=0).summary()
    assert window["duplicate_rows"] == N  # the re-run's rows carry the same content ids
    assert window["rows"] + window["holdout_rows"] == N
