"""Date partitions, retention, compaction (LogTail reads every row once across it) and PII hashing."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifelong_ray.config import ConfigError, load_config, parse_config
from lifelong_ray.data.logs import LogTail, ModelLogs, is_compacted
from lifelong_ray.data.privacy import MissingSalt
from lifelong_ray.data.replay import ReplayReservoir
from lifelong_ray.data.retention import apply_retention, compact_day
from lifelong_ray.storage import Storage

DAY = 86400.0
T0 = 1.7e9  # 2023-11-14 22:13 UTC


def _cfg(root, **data):
    return load_config("configs/demo.yaml").with_overrides(storage={"root": str(root)}, data=data)


def _feedback(logs: ModelLogs, ids: list[str], t: float) -> str:
    return logs.append_feedback(ids, [1] * len(ids), t=t)


def _ids(table: pa.Table | None) -> list[str]:
    return [] if table is None else table.column("request_id").to_pylist()


def test_logs_are_partitioned_by_utc_day(tmp_path):
    st = Storage(str(tmp_path))
    logs = ModelLogs(st, "demo")
    a = _feedback(logs, ["a"], T0)
    b = _feedback(logs, ["b"], T0 + 2 * 3600)  # past midnight UTC
    assert a.startswith("models/demo/feedback/date=2023-11-14/")
    assert b.startswith("models/demo/feedback/date=2023-11-15/")


def test_retention_deletes_old_partitions_of_every_log_after_feeding_the_reservoir(tmp_path):
    st = Storage(str(tmp_path))
    cfg = _cfg(tmp_path, retention_days=3, replay_capacity=100)
    logs = ModelLogs(st, "demo")
    from lifelong_ray.data.ingest import ingest_table
    from lifelong_ray.sim.streams import abrupt_concept_drift

    old, new = T0 - 10 * DAY, T0
    for t in (old, new):
        _feedback(logs, [f"f{t}"], t)
        ingest_table(st, cfg, abrupt_concept_drift(40, drift_at=20, seed=int(t) % 7).to_table(label="y"), t=t)
    rep = apply_retention(st, cfg, now=T0 + 3600)
    assert sorted(rep.deleted) == ["models/demo/feedback/date=2023-11-04", "models/demo/labeled/date=2023-11-04"]
    assert st.list_dirs("models/demo/labeled") == ["date=2023-11-14"]
    # the expired rows were sampled into the reservoir before their partition went
    res = ReplayReservoir.load(st, cfg)
    assert res.n_seen == 80 and rep.replay_rows_fed == 80
    assert min(res.rows.column("t").to_pylist()) == old
    # the quarantine and the audit log are not touched by retention
    assert apply_retention(st, cfg, now=T0 + 3600).deleted == []


def test_compaction_merges_a_past_day_and_a_tail_reads_each_row_once(tmp_path):
    st = Storage(str(tmp_path))
    logs = ModelLogs(st, "demo")
    day = T0 - 2 * DAY
    tail = LogTail(st, logs.feedback_prefix)
    for i in range(10):
        _feedback(logs, [f"r{i}a", f"r{i}b"], day + i)
    got = _ids(tail.read_new())  # the tail read the first 10 files
    for i in range(10, 40):
        _feedback(logs, [f"r{i}a", f"r{i}b"], day + i)
    rep = apply_retention(st, _cfg(tmp_path, compact_min_files=32, replay_capacity=0), now=T0)
    [(path, merged)] = rep.compacted
    assert merged == 40 and is_compacted(path)
    assert st.list(logs.feedback_prefix) == [path]
    got += _ids(tail.read_new())  # only the 30 files it had not read, from inside the compacted file
    _feedback(logs, ["late"], T0)
    got += _ids(tail.read_new())
    want = [f"r{i}{s}" for i in range(40) for s in "ab"] + ["late"]
    assert sorted(got) == sorted(want) and len(got) == len(want)
    # a fresh reader sees every row once
    assert sorted(_ids(LogTail(st, logs.feedback_prefix).read_new())) == sorted(want)


def test_a_reader_between_the_compacted_write_and_the_source_deletes_sees_each_row_once(tmp_path):
    """Compaction writes its file before deleting the sources; a listing in between sees both."""
    st = Storage(str(tmp_path))
    logs = ModelLogs(st, "demo")
    files = [_feedback(logs, [f"r{i}"], T0 - DAY + i) for i in range(5)]
    blobs = {f: st.read_bytes(f) for f in files}
    tail = LogTail(st, logs.feedback_prefix)
    assert _ids(tail.read_new()) == ["r0", "r1", "r2", "r3", "r4"]
    partition = files[0].rsplit("/", 1)[0]
    compacted, _ = compact_day(st, partition)
    for f, b in blobs.items():  # the state just before the deletes
        st.write_bytes(f, b)
    assert tail.read_new() is None
    fresh = LogTail(st, logs.feedback_prefix)
    assert sorted(_ids(fresh.read_new())) == ["r0", "r1", "r2", "r3", "r4"]
    assert logs.live_files(logs.feedback_prefix) == [compacted]


def test_compacting_again_flattens_and_never_double_reads(tmp_path):
    st = Storage(str(tmp_path))
    logs = ModelLogs(st, "demo")
    day = T0 - 3 * DAY
    for i in range(3):
        _feedback(logs, [f"a{i}"], day + i)
    partition = st.list(logs.feedback_prefix)[0].rsplit("/", 1)[0]
    slow = LogTail(st, logs.feedback_prefix)
    assert len(_ids(slow.read_new())) == 3  # read the originals, never saw the first compacted file
    first, _ = compact_day(st, partition)
    for i in range(3, 6):
        _feedback(logs, [f"a{i}"], day + i)
    second, merged = compact_day(st, partition)
    assert merged == 4 and st.list(partition) == [second]
    assert _ids(slow.read_new()) == ["a3", "a4", "a5"]
    assert sorted(_ids(LogTail(st, logs.feedback_prefix).read_new())) == [f"a{i}" for i in range(6)]


def test_today_and_small_days_are_not_compacted(tmp_path):
    st = Storage(str(tmp_path))
    logs = ModelLogs(st, "demo")
    for i in range(5):
        _feedback(logs, [f"t{i}"], T0 + i)          # today
        _feedback(logs, [f"y{i}"], T0 - DAY + i)    # yesterday, but only 5 files
    rep = apply_retention(st, _cfg(tmp_path, compact_min_files=8, replay_capacity=0), now=T0 + 60)
    assert rep.compacted == [] and len(st.list(logs.feedback_prefix)) == 10


def test_pii_key_is_hashed_before_it_is_written(tmp_path, monkeypatch):
    st = Storage(str(tmp_path))
    cfg = _cfg(tmp_path, pii_fields=["key"])
    monkeypatch.delenv("LIFELONG_PII_SALT", raising=False)
    with pytest.raises(MissingSalt, match="export LIFELONG_PII_SALT"):
        ModelLogs.from_config(st, cfg)
    monkeypatch.setenv("LIFELONG_PII_SALT", "s3cret")
    logs = ModelLogs.from_config(st, cfg)
    feats = {f.name: pa.array([0.0] if f.dtype != "category" else ["a"]) for f in cfg.model.features}
    path = logs.append_predictions(request_ids=["r1"], t=T0, version="v0001", features=feats, predictions=[1],
                                   confidence=[0.9], latency_ms=1.0, key="alice@example.com")
    raw = st.read_bytes(path)
    assert b"alice" not in raw
    key = pq.read_table(st.path(path)).column("key")[0].as_py()
    assert key.startswith("sha256:") and len(key) == 7 + 64
    # same salt, same hash (joins still work); another salt, another hash
    assert ModelLogs.from_config(st, cfg).pii.hash_key("alice@example.com") == key
    monkeypatch.setenv("LIFELONG_PII_SALT", "other")
    assert ModelLogs.from_config(st, cfg).pii.hash_key("alice@example.com") != key
    # without pii_fields the key is written as is
    plain = ModelLogs.from_config(st, _cfg(tmp_path))
    assert plain.pii.hash_key("alice") == "alice"


def test_hashing_a_feature_is_a_config_error():
    base = {"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}}}
    with pytest.raises(ConfigError, match=r"data.pii_fields: \['x'\] cannot be hashed.*train/serve skew"):
        parse_config({**base, "data": {"pii_fields": ["x"]}})
    assert parse_config({**base, "data": {"pii_fields": ["key"]}}).data.pii_fields == ["key"]


def test_day_end_ignores_foreign_directories(tmp_path):
    st = Storage(str(tmp_path))
    st.write_bytes("models/demo/feedback/not-a-day/x.parquet", b"junk")
    rep = apply_retention(st, _cfg(tmp_path, retention_days=1, replay_capacity=0), now=T0)
    assert rep.deleted == [] and st.exists("models/demo/feedback/not-a-day/x.parquet")
