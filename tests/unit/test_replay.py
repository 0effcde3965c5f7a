"""The replay reservoir (Algorithm R, persisted) and the replay part of training windows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from lifelong_ray.config import load_config
from lifelong_ray.data.ingest import ingest_table
from lifelong_ray.data.logs import ModelLogs
from lifelong_ray.data.replay import ReplayReservoir, algorithm_r, refresh_reservoir
from lifelong_ray.data.retention import compact_day
from lifelong_ray.data.window import empty_valid, window_from_table
from lifelong_ray.sim.streams import abrupt_concept_drift
from lifelong_ray.storage import Storage

T0 = 1.7e9


def _cfg(root, capacity=200, **training):
    return load_config("configs/demo.yaml").with_overrides(
        storage={"root": str(root)}, data={"replay_capacity": capacity},
        training={"min_rows": 100, "window_recent": 300, "window_replay": 50, **training})


def _rows(cfg, n: int, start: int = 0) -> pa.Table:
    """n valid labeled rows (empty_valid columns), request ids r<start>..."""
    s = abrupt_concept_drift(n, drift_at=n // 2, seed=start)
    t = s.to_table(label="label")
    cols = {"request_id": pa.array([f"r{i}" for i in range(start, start + n)]),
            "t": pa.array(np.arange(start, start + n, dtype=float)), "t_label": pa.array(np.zeros(n)),
            "label": t.column("label")}
    cols.update({f.name: t.column(f.name) for f in cfg.model.features})
    return pa.table(cols).cast(empty_valid(cfg.model).schema)


def test_every_row_is_kept_with_equal_probability():
    """After n rows each is in the reservoir with probability k/n (chi-square over many seeds)."""
    n, k, runs = 40, 8, 3000
    hits = np.zeros(n)
    for seed in range(runs):
        slots = np.full(k, -1)
        rng = np.random.default_rng(seed)
        seen = 0
        for chunk in (13, 27):  # fed in two batches, as the log feeds it
            s = algorithm_r(seen, chunk, k, rng)
            for i in np.flatnonzero(s >= 0):
                slots[s[i]] = seen + i
            seen += chunk
        hits[slots] += 1
    assert hits.sum() == runs * k
    assert stats.chisquare(hits).pvalue > 0.001


def test_capacity_bound_persistence_and_continuity(tmp_path):
    cfg = _cfg(tmp_path, capacity=50)
    st = Storage(str(tmp_path))
    one = ReplayReservoir(cfg.model, 50, seed=3)
    for start in (0, 120):
        one.add(_rows(cfg, 120, start))
    two = ReplayReservoir.load(st, cfg.with_overrides(training={"seed": 3}))
    two.add(_rows(cfg, 120, 0))
    two.save(st)
    two = ReplayReservoir.load(st, cfg.with_overrides(training={"seed": 3}))
    two.add(_rows(cfg, 120, 120))
    assert one.rows.num_rows == 50 and one.n_seen == 240
    # saving and loading in between changes nothing: same rows, same generator
    assert one.rows.equals(two.rows)
    ids = set(one.rows.column("request_id").to_pylist())
    assert any(int(i[1:]) < 120 for i in ids) and any(int(i[1:]) >= 120 for i in ids)


def test_the_reservoir_reads_the_labeled_log_once_across_compaction(tmp_path):
    cfg = _cfg(tmp_path, capacity=1000)
    st = Storage(str(tmp_path))
    day = T0 - 2 * 86400
    batches = [abrupt_concept_drift(30, drift_at=15, seed=i).to_table(label="y") for i in range(6)]
    for i, b in enumerate(batches[:3]):
        assert ingest_table(st, cfg, b, t=day + i).accepted == 30
    assert refresh_reservoir(st, cfg).n_seen == 90
    partition = ModelLogs(st, "demo").live_files(ModelLogs(st, "demo").labeled_prefix)[0].rsplit("/", 1)[0]
    for i, b in enumerate(batches[3:], start=3):
        ingest_table(st, cfg, b, t=day + i)
    compact_day(st, partition)
    res = refresh_reservoir(st, cfg)
    assert res.n_seen == 180 and res.rows.num_rows == 180
    assert len(set(res.rows.column("request_id").to_pylist())) == 180
    assert refresh_reservoir(st, cfg).n_seen == 180  # nothing new: nothing fed


def test_invalid_rows_and_unreadable_files_are_not_sampled(tmp_path):
    cfg = _cfg(tmp_path)
    st = Storage(str(tmp_path))
    good = _rows(cfg, 10)
    bad_label = good.set_column(good.schema.get_field_index("label"), "label", pa.array([5] * 10, pa.int64()))
    meta = {"version": pa.nulls(10, pa.string()), "prediction": pa.nulls(10, pa.int64())}
    logs = ModelLogs(st, "demo")
    for table, t in ((good, T0), (bad_label, T0 + 1)):
        for k, v in meta.items():
            table = table.append_column(k, v)
        logs.append_labeled(table, t)
    corrupt = f"{logs.labeled_prefix}/date=2023-11-14/zz-corrupt.parquet"
    st.write_bytes(corrupt, b"not parquet")
    res = refresh_reservoir(st, cfg)
    assert res.rows.num_rows == 10 and res.n_seen == 10
    assert corrupt in res.seen_files  # skipped once, not retried on every refresh


def test_window_takes_replay_from_the_pool_and_keeps_a_disjoint_replay_holdout(tmp_path):
    cfg = _cfg(tmp_path, capacity=400)
    log_rows = _rows(cfg, 1000)
    res = ReplayReservoir(cfg.model, 400, seed=0)
    res.add(log_rows)
    w = window_from_table(log_rows, cfg, since_t=None, seed=1, replay=res.rows)
    assert w.replay_source == "reservoir" and w.replay_rows == 50
    recent_t = set(range(700, 1000))
    hold_t = w.replay_holdout.column("t").to_pylist()
    # the pool minus the recent window: ~70% of 400 rows; 50 to train, the rest held out
    pool = [t for t in res.rows.column("t").to_pylist() if t not in recent_t]
    assert w.replay_holdout_rows == len(pool) - 50
    assert not set(hold_t) & recent_t
    assert w.rows == (300 - w.holdout_rows) + 50
    assert w.summary()["replay_holdout_rows"] == w.replay_holdout_rows
    assert set(w.replay_holdout.column_names) == {f.name for f in cfg.model.features} | {"label", "t"}


def test_without_a_pool_the_replay_comes_from_older_log_rows(tmp_path):
    cfg = _cfg(tmp_path)
    log_rows = _rows(cfg, 1000)
    w = window_from_table(log_rows, cfg, since_t=None, seed=1)
    assert w.replay_source == "log" and w.replay_rows == 50
    hold_t = np.asarray(w.replay_holdout.column("t").to_pylist())
    assert len(hold_t) == 700 - 50 and hold_t.max() < 700
    # train and holdout replay rows never overlap (x0 is continuous: equal values are the same row)
    train_x0 = pc.unique(w.train.column("x0")).to_pylist()
    hold_x0 = w.replay_holdout.column("x0").to_pylist()
    assert not set(hold_x0) & set(train_x0)
