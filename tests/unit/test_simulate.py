"""Writing streams to parquet/CSV with a drift sidecar, and `lifelong simulate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from lifelong_ray import cli
from lifelong_ray.config import load_config
from lifelong_ray.data.ingest import read_batch
from lifelong_ray.data.schema import Schema
from lifelong_ray.sim.simulate import read_sidecar, read_stream, sidecar_path, simulate, write_stream
from lifelong_ray.sim.streams import GENERATORS, abrupt_concept_drift, recurring_concepts

ROOT = Path(__file__).resolve().parents[2]
SIDECAR_KEYS = {"kind", "drift_points", "n", "seed", "noise"}


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_write_and_read_back(tmp_path: Path, suffix: str) -> None:
    s = recurring_concepts(900, period=300, seed=2, noise=0.05)
    path = tmp_path / "deep" / f"s{suffix}"
    meta = write_stream(s, path)
    table = read_batch(path)
    assert table.column_names == ["x0", "x1", "x2", "x3", "x4", "segment", "y", "t"]
    assert table.schema.field("t").type == pa.int64() and table.schema.field("y").type == pa.int64()
    assert table.schema.field("segment").type == pa.string()
    assert table.column("t").to_pylist() == list(range(900))
    assert table.column("y").to_pylist() == s.labels.tolist()
    np.testing.assert_allclose(table.column("x3").to_numpy(), s.features["x3"], rtol=1e-12)
    side = json.loads(sidecar_path(path).read_text())
    assert side == meta and SIDECAR_KEYS <= set(side)
    assert side["kind"] == "recurring" and side["drift_points"] == [300, 600]
    assert (side["n"], side["seed"], side["noise"]) == (900, 2, 0.05)
    assert side["concept_runs"] == [[0, 0], [300, 1], [600, 0]]
    back = read_stream(path)
    assert back.kind == s.kind and back.drift_points == s.drift_points
    assert np.array_equal(back.concept, s.concept) and np.array_equal(back.labels, s.labels)
    assert list(back.features) == list(s.features)
    for name, col in s.features.items():
        if col.dtype == object:
            assert np.array_equal(back.features[name], col)
        else:
            np.testing.assert_allclose(back.features[name], col, rtol=1e-12)


def test_written_file_is_accepted_by_the_demo_schema(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    path = tmp_path / "a.parquet"
    write_stream(abrupt_concept_drift(300, drift_at=100, seed=0), path)
    table = pq.read_table(path)
    schema = Schema(cfg.model)
    assert schema.check_columns(table.schema, extra_ok=["y", "t"]) == []
    mask, bad = schema.row_mask(table)
    assert bool(np.all(mask)) and bad == []


def test_write_refuses_bad_names(tmp_path: Path) -> None:
    s = abrupt_concept_drift(100, drift_at=50)
    with pytest.raises(ValueError, match="format"):
        write_stream(s, tmp_path / "s.json")
    with pytest.raises(ValueError, match="clashes"):
        write_stream(s, tmp_path / "s.csv", label="x0")
    assert not list(tmp_path.iterdir())


def test_read_without_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    pacsv.write_csv(pa.table({"a": [1.0, 2.0], "c": ["u", "v"], "label": [0, 1]}), path)
    assert read_sidecar(path) is None
    s = read_stream(path, label="label")
    assert s.kind == "recorded" and s.drift_points == [] and s.concept is None
    assert s.features["c"].dtype == object and s.features["a"].dtype == np.float64
    with pytest.raises(ValueError, match="no label column"):
        read_stream(path)


def test_cli_takes_every_kind() -> None:
    for kind in GENERATORS:
        args = cli.build_parser().parse_args(["simulate", "--kind", kind, "--out", "x.csv"])
        assert args.func is cli.cmd_simulate and args.kind == kind and args.drift_at is None


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_cli_simulate_writes_file_and_sidecar(tmp_path: Path, suffix: str, capsys) -> None:
    out = tmp_path / f"abrupt{suffix}"
    rc = cli.main(["simulate", "--kind", "abrupt", "--out", str(out), "--n", "3000",
                   "--seed", "7", "--noise", "0.05", "--drift-at", "1000,2000"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "[1000, 2000]" in printed
    table = read_batch(out)
    assert table.num_rows == 3000 and table.column_names[-2:] == ["y", "t"]
    side = read_sidecar(out)
    assert {k: side[k] for k in SIDECAR_KEYS} == {"kind": "abrupt", "drift_points": [1000, 2000], "n": 3000,
                                                  "seed": 7, "noise": 0.05}
    expected = abrupt_concept_drift(3000, drift_at=[1000, 2000], seed=7, noise=0.05)
    assert table.column("y").to_pylist() == expected.labels.tolist()


def test_cli_simulate_defaults_and_kind_options(tmp_path: Path, capsys) -> None:
    assert cli.main(["simulate", "--kind", "sea", "--out", str(tmp_path / "sea.pq"), "--n", "2000"]) == 0
    side = read_sidecar(tmp_path / "sea.pq")
    assert side["drift_points"] == [500, 1000, 1500] and side["noise"] == 0.1 and side["seed"] == 0
    assert read_batch(tmp_path / "sea.pq").column_names == ["x0", "x1", "x2", "y", "t"]
    assert cli.main(["simulate", "--kind", "recurring", "--out", str(tmp_path / "r.csv"), "--n", "1000",
                     "--period", "250"]) == 0
    assert read_sidecar(tmp_path / "r.csv")["drift_points"] == [250, 500, 750]
    assert cli.main(["simulate", "--kind", "prior", "--out", str(tmp_path / "p.csv"), "--n", "3000",
                     "--drift-at", "1000,2000", "--prior-after", "0.8,0.1"]) == 0
    assert read_sidecar(tmp_path / "p.csv")["params"]["priors"] == [0.5, 0.8, 0.1]
    assert cli.main(["simulate", "--kind", "covariate", "--out", str(tmp_path / "c.csv"), "--n", "1000",
                     "--shift", "2"]) == 0
    assert read_sidecar(tmp_path / "c.csv")["params"]["shift"] == 2.0
    assert cli.main(["simulate", "--kind", "stationary", "--out", str(tmp_path / "s.parquet"), "--n", "500"]) == 0
    assert read_sidecar(tmp_path / "s.parquet")["drift_points"] == []
    capsys.readouterr()


def test_cli_simulate_errors(tmp_path: Path, capsys) -> None:
    assert cli.main(["simulate", "--kind", "stationary", "--out", str(tmp_path / "s.csv"), "--drift-at", "5"]) == 2
    assert "takes no drift_at" in capsys.readouterr().err
    assert cli.main(["simulate", "--kind", "abrupt", "--out", str(tmp_path / "s.txt")]) == 2
    assert ".parquet" in capsys.readouterr().err
    assert cli.main(["simulate", "--kind", "abrupt", "--out", str(tmp_path / "s.csv"), "--n", "100",
                     "--drift-at", "100"]) == 2
    assert "drift points" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--kind", "abrupt", "--out", "x.csv", "--drift-at", "a,b"])
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--kind", "sudden", "--out", "x.csv"])


def test_simulate_function_matches_make_stream(tmp_path: Path) -> None:
    meta = simulate("gradual", tmp_path / "g.parquet", n=3000, seed=5, drift_at=1000, width=400)
    assert meta["kind"] == "gradual" and meta["drift_points"] == [1000] and meta["params"]["width"] == 400
    assert meta["concept_runs"] == [[0, 0], [1201, 1]]  # just past halfway through the blend
