"""The quarantine store and its release workflow (library and `lifelong quarantine`)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lifelong_ray.cli import main
from lifelong_ray.config import load_config
from lifelong_ray.data.ingest import ingest_table, release_quarantined, to_labeled
from lifelong_ray.data.logs import ModelLogs
from lifelong_ray.data.quarantine import (IllegalTransition, NotReleasable, QuarantineStatus, QuarantineStore,
                                          UnknownEntry)
from lifelong_ray.events import AuditLog, EventKind
from lifelong_ray.sim.streams import abrupt_concept_drift
from lifelong_ray.storage import Storage

BATCH = abrupt_concept_drift(30, drift_at=15, seed=2).to_table(label="y")


def _cfg(root, **features):
    cfg = load_config("configs/demo.yaml").with_overrides(storage={"root": str(root)})
    if features:
        feats = [{**f.model_dump(mode="json"), **features.get(f.name, {})} for f in cfg.model.features]
        cfg = cfg.with_overrides(model={"features": feats})
    return cfg


def _with_bad_x0(rows: list[int], value: float = 12.0) -> pa.Table:
    x0 = BATCH.column("x0").to_pylist()
    for i in rows:
        x0[i] = value
    return BATCH.set_column(0, "x0", pa.array(x0))


def _labeled(st: Storage) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in ModelLogs(st, "demo").labeled_files()])


def test_bad_rows_go_to_quarantine_with_reason_numbers_and_an_event(tmp_path):
    st = Storage(str(tmp_path))
    rep = ingest_table(st, _cfg(tmp_path), _with_bad_x0([4, 7]), t=5.0, source="b.parquet")
    assert (rep.received, rep.accepted, rep.quarantined) == (30, 28, 2)
    q = QuarantineStore(st, "demo")
    [entry] = q.list()
    assert (entry.reason, entry.rows, entry.source, entry.t) == ("above_max", 2, "b.parquet", 5.0)
    assert "x0:above_max x2" in entry.message and "row 4, row 7" in entry.message
    rows = q.rows(entry.id)
    assert rows.column("__row").to_pylist() == [4, 7] and rows.column("x0").to_pylist() == [12.0, 12.0]
    assert rows.column("__reason").to_pylist() == ["x0:above_max"] * 2
    assert q.counts() == {"above_max": 2}
    [ev] = AuditLog(st, "demo").read()
    assert ev.kind == EventKind.QUARANTINED and ev.data["id"] == entry.id and ev.t == 5.0
    # reconcile: the 28 accepted rows are exactly the other rows of the batch
    keep = [i for i in range(30) if i not in (4, 7)]
    assert _labeled(st).column("x1").to_pylist() == [BATCH.column("x1")[i].as_py() for i in keep]


def test_release_revalidates_against_the_current_config(tmp_path):
    st = Storage(str(tmp_path))
    rep = ingest_table(st, _cfg(tmp_path), _with_bad_x0([1]), t=5.0)
    qid = rep.quarantine_ids[0]
    with pytest.raises(NotReleasable, match=r"1 of 1 rows .* still break the contract \{'x0:above_max': 1\}"):
        release_quarantined(st, _cfg(tmp_path), qid, who="ana", why="looks fine", now=6.0)
    assert QuarantineStore(st, "demo").get(qid).status == QuarantineStatus.QUARANTINED
    wider = _cfg(tmp_path, x0={"max": 20})
    entry = release_quarantined(st, wider, qid, who="ana", why="x0 range widened to 20", now=6.0)
    assert entry.status == QuarantineStatus.RELEASED and entry.release["who"] == "ana"
    assert _labeled(st).num_rows == 30
    with pytest.raises(IllegalTransition, match="released; it cannot become released"):
        release_quarantined(st, wider, qid, who="ana", why="again", now=7.0)
    [ev] = AuditLog(st, "demo").read(kinds={EventKind.QUARANTINE_RELEASED})
    assert "ana released 1 rows" in ev.reason and "x0 range widened to 20" in ev.reason


def test_a_schema_changed_batch_cannot_be_released_as_is(tmp_path):
    st = Storage(str(tmp_path))
    rep = ingest_table(st, _cfg(tmp_path), BATCH.rename_columns([*BATCH.column_names[:-2], "seg", "y"]), t=1.0)
    assert rep.batch_reason == "schema_changed" and rep.quarantined == 30
    assert "column segment is missing" in rep.message and "column seg is not in the schema" in rep.message
    with pytest.raises(NotReleasable, match="cannot be released as is"):
        release_quarantined(st, _cfg(tmp_path), rep.quarantine_ids[0], who="ana", why="x", now=2.0)
    assert ModelLogs(st, "demo").labeled_files() == []


def test_an_interrupted_release_finishes_once(tmp_path):
    """A release killed after appending its rows but before marking the entry released
    is retried: the rows land once (same file), the event once."""
    st = Storage(str(tmp_path))
    wider = _cfg(tmp_path, x0={"max": 20})
    qid = ingest_table(st, _cfg(tmp_path), _with_bad_x0([1, 2]), t=5.0).quarantine_ids[0]
    q = QuarantineStore(st, "demo")
    intent = q.begin_release(qid, "ana", "first try", 6.0)
    # the crash: the rows were appended with the release's deterministic file name ...
    rows = q.rows(qid).drop_columns(["__row", "__reason"])
    ModelLogs(st, "demo").append_labeled(to_labeled(rows, wider.model, "y", intent["t"]), intent["t"],
                                         file_id=f"release-{qid}")
    # ... and the retry (by anyone) completes the first intent
    entry = release_quarantined(st, wider, qid, who="bob", why="retry", now=9.0)
    assert entry.release["who"] == "ana" and entry.release["t"] == 6.0
    assert _labeled(st).num_rows == 30
    assert len(AuditLog(st, "demo").read(kinds={EventKind.QUARANTINE_RELEASED})) == 1


def test_unknown_ids_and_reasons_are_refused(tmp_path):
    q = QuarantineStore(Storage(str(tmp_path)), "demo")
    with pytest.raises(UnknownEntry):
        q.get("q0000000000001-abcdef")
    with pytest.raises(UnknownEntry, match="is not a quarantine id"):
        q.get("../../etc")
    with pytest.raises(ValueError, match="unknown quarantine reason 'bad'"):
        q.put(BATCH, reason="bad", message="", source="x", t=1.0)


def test_cli_lists_and_releases(tmp_path, capsys):
    cfg_path = tmp_path / "demo.yaml"
    cfg_path.write_text(yaml.safe_dump(_cfg(tmp_path / "store", x0={"max": 20}).model_dump(mode="json")))
    bad = tmp_path / "bad.parquet"
    pq.write_table(_with_bad_x0([0], value=30.0), bad)
    assert main(["ingest", "demo", str(bad), "--config", str(cfg_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["received"], report["accepted"], report["quarantined"], report["balanced"]) == (30, 29, 1, True)
    assert main(["quarantine", "demo", "--config", str(cfg_path), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["counts"] == {"above_max": 1}
    qid = listing["entries"][0]["id"]
    assert main(["quarantine", "release", "demo", qid, "--config", str(cfg_path)]) == 2  # no --why
    assert "needs --why" in capsys.readouterr().err
    assert main(["quarantine", "release", "demo", qid, "--config", str(cfg_path), "--why", "ok"]) == 3
    assert "still break the contract" in capsys.readouterr().err
    changed = tmp_path / "changed.parquet"
    pq.write_table(BATCH.drop_columns(["x3"]), changed)
    assert main(["ingest", "demo", str(changed), "--config", str(cfg_path)]) == 3
    assert "quarantined" in capsys.readouterr().err
