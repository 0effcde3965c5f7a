"""Batch ingest: a changed schema is quarantined whole; bad rows are quarantined by reason, good rows kept."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifelong_ray.config import load_config
from lifelong_ray.data.ingest import ingest_table, read_batch
from lifelong_ray.data.quarantine import QuarantineStore
from lifelong_ray.data.logs import LABELED_META
from lifelong_ray.sim.streams import abrupt_concept_drift
from lifelong_ray.storage import Storage

CFG = load_config("configs/demo.yaml")


def test_good_batch_lands_in_the_labeled_log(tmp_path):
    st = Storage(str(tmp_path))
    table = abrupt_concept_drift(300, drift_at=200).to_table(label="y")
    rep = ingest_table(st, CFG, table, t=5.0)
    assert (rep.received, rep.accepted, rep.quarantined) == (300, 300, 0)
    back = pq.read_table(st.path(rep.path))
    assert set(LABELED_META) <= set(back.column_names) and back.num_rows == 300
    assert back.column("label").to_pylist() == table.column("y").to_pylist()


def test_bad_rows_are_quarantined_and_nothing_valid_is_lost(tmp_path):
    table = abrupt_concept_drift(10, drift_at=5).to_table(label="y")
    x0 = table.column("x0").to_pylist()
    x0[1] = 99.0
    y = table.column("y").to_pylist()
    y[2] = 7
    table = table.set_column(0, "x0", pa.array(x0)).set_column(table.schema.get_field_index("y"), "y", pa.array(y))
    rep = ingest_table(Storage(str(tmp_path)), CFG, table, t=1.0)
    assert rep.accepted == 8 and rep.quarantined == 2
    assert rep.reasons == {"x0:above_max": 1, "y:label_domain": 1}
    assert rep.received == rep.accepted + rep.quarantined and rep.balanced


@pytest.mark.parametrize("mutate, word", [
    (lambda t: t.drop_columns(["x3"]), "x3 is missing"),
    (lambda t: t.append_column("surprise", pa.array([1.0] * t.num_rows)), "surprise is not in the schema"),
    (lambda t: t.set_column(0, "x0", pa.array([str(v) for v in t.column("x0").to_pylist()])), "x0 has type string"),
    (lambda t: t.drop_columns(["y"]), "label column 'y' is missing"),
])
def test_changed_schema_is_quarantined_whole(tmp_path, mutate, word):
    st = Storage(str(tmp_path))
    table = mutate(abrupt_concept_drift(20, drift_at=10).to_table(label="y"))
    rep = ingest_table(st, CFG, table, t=1.0)
    assert (rep.accepted, rep.quarantined, rep.batch_reason) == (0, 20, "schema_changed")
    assert word in rep.message
    assert st.list("models/demo/labeled") == []
    [entry] = QuarantineStore(st, "demo").list()
    assert entry.reason == "schema_changed" and word in entry.message and entry.rows == 20


def test_csv_and_parquet_read_alike(tmp_path):
    table = abrupt_concept_drift(20, drift_at=10).to_table(label="y")
    pq.write_table(table, tmp_path / "b.parquet")
    table.to_pandas().to_csv(tmp_path / "b.csv", index=False)
    a, b = read_batch(tmp_path / "b.parquet"), read_batch(tmp_path / "b.csv")
    assert a.num_rows == b.num_rows == 20
    assert ingest_table(Storage(str(tmp_path / "s")), CFG, b, t=1.0).accepted == 20
