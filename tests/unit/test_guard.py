"""The poisoning/label guard at batch ingest: a 30% label flip is caught, a clean batch
from the same generator passes, a real concept change is held for review, and every
row is accounted for (received = accepted + quarantined, by content)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from lifelong_ray.config import DataConfig, load_config
from lifelong_ray.data.guard import GuardReason, label_disagreement, label_shift, out_of_range
from lifelong_ray.data.ingest import ingest_table, release_quarantined
from lifelong_ray.data.logs import ModelLogs
from lifelong_ray.data.quarantine import QuarantineStore
from lifelong_ray.data.window import VALID, validate_batch, window_from_table
from lifelong_ray.events import AuditLog, EventKind
from lifelong_ray.registry.store import Registry
from lifelong_ray.sim.streams import abrupt_concept_drift
from lifelong_ray.storage import Storage
from lifelong_ray.training.retrain import train_and_register

T0 = 1.7e9
STREAM = abrupt_concept_drift(6000, drift_at=4000, seed=0)


def _cfg(root: str):
    return load_config("configs/demo.yaml").with_overrides(
        training={"runner": "local", "min_rows": 500, "window_recent": 1500},
        estimator={"kind": "logistic", "epochs": 10}, storage={"root": root})


def _labeled_rows(st: Storage) -> pa.Table:
    tables = [validate_batch(t, _cfg(st.uri).model) for t in
              [pq.read_table(p) for p in ModelLogs(st, "demo").labeled_files()]]
    table = pa.concat_tables(tables)
    return table.filter(table.column(VALID))


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory):
    """A store with 2000 labeled rows of the first concept and a champion trained on them."""
    root = str(tmp_path_factory.mktemp("guard"))
    cfg, st = _cfg(root), Storage(root)
    assert ingest_table(st, cfg, STREAM.slice(0, 2000).to_table(label="y"), t=T0).accepted == 2000
    valid = _labeled_rows(st).drop_columns([VALID, "__reason"])
    reg = Registry(st, "demo")
    res = train_and_register(cfg, reg, window_from_table(valid, cfg, since_t=None, seed=0),
                             job_id="boot", champion=None, seed=0)
    reg.set_alias("champion", res.version)
    assert res.candidate_accuracy > 0.85
    return root


@pytest.fixture
def store(champion_store, tmp_path):
    """A private copy of the champion store (tests write to it)."""
    import shutil

    shutil.copytree(champion_store, tmp_path / "s")
    return Storage(str(tmp_path / "s"))


def _flip(table: pa.Table, share: float, seed: int) -> pa.Table:
    y = table.column("y").to_numpy()
    flipped = np.where(np.random.default_rng(seed).random(len(y)) < share, 1 - y, y)
    return table.set_column(table.schema.get_field_index("y"), "y", pa.array(flipped))


def _same_rows(a: pa.Table, b: pa.Table) -> bool:
    cols = ["x0", "x1", "x2", "x3", "x4", "segment", "y"]
    return a.select(cols).sort_by("x0").equals(b.select(cols).sort_by("x0"))


def test_a_30_percent_label_flip_is_quarantined_and_a_clean_batch_passes(store):
    cfg = _cfg(store.uri)
    clean = STREAM.slice(2000, 2500).to_table(label="y")
    before = _labeled_rows(store).num_rows
    ok = ingest_table(store, cfg, clean, t=T0 + 10)
    assert (ok.accepted, ok.quarantined, ok.batch_reason) == (500, 0, None)

    poisoned = _flip(STREAM.slice(2500, 3000).to_table(label="y"), 0.3, seed=1)
    # the flip leaves the label distribution where it was: only the champion can tell
    assert abs(pc.mean(poisoned.column("y")).as_py() - pc.mean(clean.column("y")).as_py()) < 0.05
    rep = ingest_table(store, cfg, poisoned, t=T0 + 20)
    assert (rep.received, rep.accepted, rep.quarantined) == (500, 0, 500) and rep.balanced
    assert rep.batch_reason == "label_disagreement"
    assert "disagree with the champion" in rep.message and "Fisher exact p=" in rep.message
    [entry] = QuarantineStore(store, "demo").list()
    assert entry.reason == "label_disagreement" and entry.rows == 500
    assert entry.data["label_disagreement"]["batch_error"] > entry.data["label_disagreement"]["base_error"] + 0.2
    # nothing valid lost, nothing poisoned kept: the quarantine holds exactly the batch,
    # the labeled log exactly the earlier rows plus the clean batch
    assert _same_rows(QuarantineStore(store, "demo").rows(entry.id), poisoned)
    assert _labeled_rows(store).num_rows == before + 500
    [ev] = AuditLog(store, "demo").read(kinds={EventKind.QUARANTINED})
    assert ev.data["id"] == entry.id and "label_disagreement" in ev.reason


def test_a_real_concept_change_is_held_for_review_and_released_by_the_operator(store):
    """One batch cannot tell a new concept from mislabeling: it is quarantined like a
    poisoned one, and the operator who knows the world changed releases it."""
    cfg = _cfg(store.uri)
    drifted = STREAM.slice(4500, 5000).to_table(label="y")
    rep = ingest_table(store, cfg, drifted, t=T0 + 30, source="after-change.parquet")
    assert rep.batch_reason == "label_disagreement" and rep.quarantined == 500
    before = _labeled_rows(store).num_rows
    entry = release_quarantined(store, cfg, rep.quarantine_ids[0], who="ana", why="pricing changed on Monday",
                                now=T0 + 40)
    assert entry.status.value == "released" and entry.release["rows"] == 500
    assert _labeled_rows(store).num_rows == before + 500
    [ev] = AuditLog(store, "demo").read(kinds={EventKind.QUARANTINE_RELEASED})
    assert ev.data["who"] == "ana" and "pricing changed on Monday" in ev.reason
    assert QuarantineStore(store, "demo").counts() == {}


def test_values_far_outside_the_training_range_are_quarantined(store):
    cfg = _cfg(store.uri)
    batch = STREAM.slice(2000, 2300).to_table(label="y")
    x4 = batch.column("x4").to_numpy().copy()
    x4[:30] = 9.5  # inside the schema's [-10, 10], far outside the champion's training range
    batch = batch.set_column(batch.schema.get_field_index("x4"), "x4", pa.array(x4))
    rep = ingest_table(store, cfg, batch, t=T0 + 10)
    assert (rep.accepted, rep.quarantined, rep.batch_reason) == (0, 300, "out_of_range")
    assert "10.0% of 300 rows" in rep.message and "x4: 30 rows" in rep.message


def test_a_label_shift_is_caught_without_a_champion(tmp_path):
    cfg = _cfg(str(tmp_path))
    st = Storage(str(tmp_path))
    assert ingest_table(st, cfg, STREAM.slice(0, 1000).to_table(label="y"), t=T0).accepted == 1000
    batch = STREAM.slice(1000, 1400).to_table(label="y")
    ones = batch.filter(pc.equal(batch.column("y"), 1))
    rep = ingest_table(st, cfg, ones, t=T0 + 1)
    assert rep.batch_reason == "label_shift" and rep.quarantined == ones.num_rows and rep.accepted == 0
    assert "total variation" in rep.message
    # a normal batch from the same generator passes the same history
    assert ingest_table(st, cfg, batch, t=T0 + 2).accepted == 400


def test_bad_rows_and_a_guarded_batch_reconcile(store):
    """Row rules first (bad rows quarantined by rule), then the guard on the rest."""
    cfg = _cfg(store.uri)
    batch = _flip(STREAM.slice(2000, 2400).to_table(label="y"), 0.3, seed=2)
    x0 = batch.column("x0").to_numpy().copy()
    x0[[3, 9]] = 50.0
    batch = batch.set_column(0, "x0", pa.array(x0))
    rep = ingest_table(store, cfg, batch, t=T0 + 10)
    assert rep.reasons == {"x0:above_max": 2, "label_disagreement": 398}
    assert (rep.received, rep.accepted, rep.quarantined) == (400, 0, 400)
    store_q = QuarantineStore(store, "demo")
    rows = {e.reason: store_q.rows(e.id) for e in store_q.list()}
    assert rows["above_max"].column("__row").to_pylist() == [3, 9]
    assert rows["above_max"].num_rows + rows["label_disagreement"].num_rows == batch.num_rows


def test_49_row_batches_do_not_bypass_the_guard(store):
    """Batches under guard_min_rows are judged with the batch-ingested rows before them:
    a drip of 49-row flipped batches is caught (it slipped through whole before)."""
    cfg = _cfg(store.uri)
    assert cfg.data.guard_min_rows == 50
    reps = [ingest_table(store, cfg, _flip(STREAM.slice(2000 + 49 * k, 2049 + 49 * k).to_table(label="y"), 0.45, seed=k),
                         t=T0 + 10 + k) for k in range(4)]
    quarantined = [r.batch_reason for r in reps]
    assert quarantined.count("label_disagreement") >= 3, quarantined
    assert all(r.received == r.accepted + r.quarantined == 49 for r in reps)
    clean = ingest_table(store, cfg, STREAM.slice(2300, 2349).to_table(label="y"), t=T0 + 20)
    assert clean.accepted == 49, clean  # a clean small batch after them still passes


def test_small_batches_alone_are_not_judged_by_the_pure_checks():
    """Under guard_min_rows the pure tests have no power and say nothing; the callers
    judge a small batch together with the rows before it (ingest: recent_ingested;
    live feedback: RollingLabelGuard)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20)
    cfg = DataConfig(guard_min_rows=50)
    assert label_disagreement(1 - y, y, base_errors=5, base_rows=100, cfg=cfg) is None
    assert label_shift(np.ones(20), y, classes=[0, 1], cfg=cfg) is None


def test_out_of_range_pure():
    cfg = DataConfig(guard_out_of_range_fraction=0.05, guard_range_widths=0.5)
    x = np.zeros(100)
    assert out_of_range({"x": x}, {"x": (-1.0, 1.0)}, cfg=cfg) is None
    x[:6] = 2.5  # beyond 1 + 0.5 * 2
    f = out_of_range({"x": x}, {"x": (-1.0, 1.0)}, cfg=cfg)
    assert f.reason == GuardReason.OUT_OF_RANGE and f.data["features"] == {"x": 6}
    x[:6] = 1.9  # outside the range but not far
    assert out_of_range({"x": x}, {"x": (-1.0, 1.0)}, cfg=cfg) is None
