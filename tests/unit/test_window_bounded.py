"""The bounded training-window read (``build_window``) against the full read.

``build_window`` reads the keys of every labeled row, then only the rows the window
needs. These tests run its passes in process (``engine="local"``: the same UDFs and
parquet reads Ray Data runs, without a cluster; tests/integration/test_training_ray.py
covers the Ray path) and check that it builds exactly the window of the full read
(``validate_batch`` on every file + ``window_from_table``), and that it never decodes
the feature columns of rows outside the window.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifelong_ray.config import parse_config
from lifelong_ray.data.logs import ModelLogs
from lifelong_ray.data.replay import ReplayReservoir
from lifelong_ray.data.window import (REASON, VALID, TrainingWindow, WindowTooSmall, build_window, validate_batch,
                                      window_from_table)
from lifelong_ray.storage import Storage

FEATURES = [{"name": "a", "min": -10, "max": 10}, {"name": "b"},
            {"name": "c", "dtype": "category", "categories": ["p", "q"]}]
DAY = 86400.0
T0 = 1.7e9


def _cfg(root: str, replay_capacity: int, **training):
    return parse_config({
        "model": {"name": "lin", "features": FEATURES, "label": {"name": "y", "classes": [0, 1]}},
        "training": {"runner": "local", "window_recent": 400, "window_replay": 50, "min_rows": 100,
                     "holdout_fraction": 0.2, **training},
        "data": {"replay_capacity": replay_capacity},
        "storage": {"root": root},
    })


def _rows(ids: list[str], t: np.ndarray, rng: np.random.Generator, t_label: np.ndarray | None = None) -> pa.Table:
    n = len(ids)
    a, b = rng.normal(size=n), rng.normal(size=n)
    return pa.table({"request_id": ids, "t": t, "t_label": t + 0.5 if t_label is None else t_label,
                     "version": ["v0001"] * n, "prediction": pa.nulls(n, pa.int64()),
                     "label": (a > b).astype(np.int64), "a": a, "b": b, "c": rng.choice(["p", "q"], size=n)})


def _messy_log(root: str) -> ModelLogs:
    """Six files over four date partitions: duplicates, late labels, invalid rows (one
    of them the latest label of its request), a NaN time, a schema change."""
    rng = np.random.default_rng(0)
    logs = ModelLogs(Storage(root), "lin")
    for k in range(4):  # rows t in [0, 1200), one file per day
        t = k * 300.0 + np.arange(300.0)
        logs.append_labeled(_rows([f"r{int(x)}" for x in t], t, rng), t=T0 + k * DAY)
    # late labels: old requests (t in the window and far before it) labeled again, later
    late_t = np.array([1150.0, 1100.0, 1000.0, 50.0, 10.0])
    late = _rows([f"r{int(x)}" for x in late_t], late_t, rng, t_label=np.full(5, 5000.0))
    late = late.set_column(late.schema.get_field_index("a"), "a", pa.array([0.1, 50.0, 0.2, 0.3, 70.0]))
    logs.append_labeled(late, t=T0 + 3 * DAY + 60)  # r1100 and r10: the latest label is invalid (a above max)
    # new rows, one of them invalid, one with a NaN time, plus rows without a request id
    t = 1200.0 + np.arange(60.0)
    new = _rows([f"n{i}" for i in range(58)] + [None, None], t, rng)
    labels = new.column("label").to_pylist()
    new = new.set_column(new.schema.get_field_index("label"), "label", pa.array(labels[:1] + [7] + labels[2:]))
    new = new.set_column(new.schema.get_field_index("t"), "t", pa.array([np.nan] + t.tolist()[1:]))
    logs.append_labeled(new, t=T0 + 4 * DAY)
    # a file whose feature 'b' became a string: quarantined whole
    chg = _rows([f"chg{i}" for i in range(7)], 1250.0 + np.arange(7.0), rng)
    logs.append_labeled(chg.set_column(chg.schema.get_field_index("b"), "b", pa.array(["x"] * 7)), t=T0 + 4 * DAY + 1)
    return logs


def _full_read(storage: Storage, cfg) -> tuple[pa.Table, int, dict[str, int]]:
    """The full read: every file validated whole, valid rows in file order."""
    parts, reasons = [], {}
    for path in ModelLogs(storage, cfg.model.name).labeled_files():
        checked = validate_batch(pq.read_table(path), cfg.model)
        for r in checked.column(REASON).drop_null().to_pylist():
            reasons[r] = reasons.get(r, 0) + 1
        parts.append(checked.filter(checked.column(VALID)).drop_columns([VALID, REASON]))
    return pa.concat_tables(parts), sum(reasons.values()), dict(sorted(reasons.items()))


def _same_window(bounded: TrainingWindow, full: TrainingWindow) -> None:
    for name in ("rows", "holdout_rows", "replay_rows", "recent_rows", "until_t", "since_t",
                 "replay_source", "replay_holdout_rows"):
        assert getattr(bounded, name) == getattr(full, name), name
    for name in ("train", "holdout", "reference", "replay_holdout"):
        got, want = getattr(bounded, name), getattr(full, name)
        assert got.schema.equals(want.schema), name
        assert got.equals(want), name


@pytest.mark.parametrize("since_t", [None, 700.0])
def test_bounded_window_equals_the_full_read_with_the_log_as_replay_pool(tmp_path, since_t):
    storage = Storage(str(tmp_path))
    _messy_log(str(tmp_path))
    cfg = _cfg(str(tmp_path), replay_capacity=0)
    valid, quarantined, reasons = _full_read(storage, cfg)
    full = window_from_table(valid, cfg, since_t=since_t, seed=3, quarantined=quarantined, reasons=reasons)
    bounded = build_window(storage, cfg, since_t=since_t, seed=3, engine="local")
    _same_window(bounded, full)
    assert bounded.duplicate_rows == full.duplicate_rows
    # every row is validated (the pool's size seeds the replay sample): the same quarantine counts
    assert bounded.quarantine_reasons == reasons == {"a:above_max": 2, "b:schema_changed": 7,
                                                     "label:label_domain": 1, "t:not_finite": 1}
    assert bounded.quarantined_rows == quarantined == 11
    assert full.duplicate_rows == 3  # r1150, r1000, r50 relabeled validly; r1100 and r10 keep their first label
    assert bounded.replay_rows == 50 and bounded.replay_holdout_rows > 0


@pytest.mark.parametrize("since_t", [None, 1100.0])
def test_bounded_window_equals_the_full_read_with_the_reservoir(tmp_path, since_t):
    storage = Storage(str(tmp_path))
    _messy_log(str(tmp_path))
    cfg = _cfg(str(tmp_path), replay_capacity=300, min_rows=50)
    bounded = build_window(storage, cfg, since_t=since_t, seed=5, engine="local")
    valid, quarantined, reasons = _full_read(storage, cfg)
    pool = ReplayReservoir.load(storage, cfg).rows  # what build_window fed and used
    full = window_from_table(valid, cfg, since_t=since_t, seed=5, quarantined=quarantined, reasons=reasons,
                             replay=pool)
    _same_window(bounded, full)
    assert bounded.replay_source == "reservoir" and bounded.replay_rows == 50
    # counted for what was read: the changed file whole, and every row the window read (the
    # invalid relabel of r1100, in the window, always; that of r10 only when the region is the log)
    assert bounded.quarantine_reasons["b:schema_changed"] == 7
    assert bounded.quarantine_reasons["a:above_max"] == (2 if since_t is None else 1)
    assert all(bounded.quarantine_reasons[k] <= v for k, v in reasons.items() if k in bounded.quarantine_reasons)
    assert set(bounded.quarantine_reasons) <= set(reasons)
    assert 1 <= bounded.duplicate_rows <= full.duplicate_rows  # r1150's relabel is in the window


def test_bounded_window_reads_every_key_when_the_latest_rows_are_invalid(tmp_path):
    """The latest 1,500 rows all have a bad label: the region of latest rows cannot hold the
    window, so the build falls back to the keys of every row, and still equals the full read."""
    storage = Storage(str(tmp_path))
    _messy_log(str(tmp_path))
    rng = np.random.default_rng(3)
    t = 2000.0 + np.arange(1500.0)
    junk = _rows([f"j{i}" for i in range(1500)], t, rng)
    ModelLogs(storage, "lin").append_labeled(junk.set_column(junk.schema.get_field_index("label"), "label",
                                                             pa.array(np.full(1500, 9))), t=T0 + 5 * DAY)
    cfg = _cfg(str(tmp_path), replay_capacity=300, window_recent=100, min_rows=50)
    bounded = build_window(storage, cfg, since_t=None, seed=2, engine="local")
    valid, quarantined, reasons = _full_read(storage, cfg)
    full = window_from_table(valid, cfg, since_t=None, seed=2, quarantined=quarantined, reasons=reasons,
                             replay=ReplayReservoir.load(storage, cfg).rows)
    _same_window(bounded, full)
    assert bounded.read_stats.key_rows == 1272 + 1500 - 7  # every key (the changed file's rows are markers)
    assert bounded.quarantine_reasons["label:label_domain"] == 1500 + 1


def test_bounded_window_decodes_only_the_row_groups_of_the_window(tmp_path):
    storage = Storage(str(tmp_path))
    logs = ModelLogs(storage, "lin")
    rng = np.random.default_rng(1)
    for k in range(10):  # 10 files x 300 rows, one row group each; t increases file by file
        t = k * 300.0 + np.arange(300.0)
        logs.append_labeled(_rows([f"r{int(x)}" for x in t], t, rng), t=T0 + k * DAY)
    cfg = _cfg(str(tmp_path), replay_capacity=100, window_recent=250)
    from lifelong_ray.data.replay import refresh_reservoir

    refresh_reservoir(storage, cfg)  # the reservoir has read the log already (it is fed incrementally)
    w = build_window(storage, cfg, since_t=None, seed=0, engine="local")
    stats = w.read_stats
    assert stats is not None and stats.files == 10
    # keys (request_id, t, t_label) reach the driver for the latest rows only: the window's 250 plus
    # a margin (1,000 rows), whose ids are then looked up in every file
    assert stats.key_rows == 250 + 1000
    assert stats.feature_rows_decoded == 300      # the newest file only: the 250 window rows are there
    assert stats.rows_fetched == 250 and stats.passes == 1
    assert w.recent_rows == 250 and w.holdout.column("t").to_numpy().min() >= 2750.0

    # with the log as the replay pool every row is validated in the key pass (the pool's size
    # seeds the sample), but only the window's rows (recent + replay + replay holdout) are fetched
    cfg0 = _cfg(str(tmp_path), replay_capacity=0, window_recent=250)
    w0 = build_window(storage, cfg0, since_t=None, seed=0, engine="local")
    assert w0.read_stats.rows_fetched == 250 + 50 + w0.replay_holdout_rows < 3000
    assert w0.read_stats.feature_rows_decoded == 3000 + 3000  # key pass, then the row groups of those rows


def test_bounded_window_too_small_names_the_quarantined_rows(tmp_path):
    storage = Storage(str(tmp_path))
    _messy_log(str(tmp_path))
    with pytest.raises(WindowTooSmall, match=r"lin: only 58 valid labeled rows.*t >= 1200.*rows quarantined"):
        build_window(storage, _cfg(str(tmp_path), replay_capacity=0), since_t=1200.0, seed=0, engine="local")
    with pytest.raises(ValueError, match="engine"):
        build_window(storage, _cfg(str(tmp_path), replay_capacity=0), engine="spark")
