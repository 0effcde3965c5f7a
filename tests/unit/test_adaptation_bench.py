"""Smoke test of benchmarks/adaptation.py at a tiny size: every method runs and the
``--json`` output has the documented structure (with River installed); the seeds
and config handling run without River. No timing or quality assertions
(those are what the benchmark itself measures)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

#: River is a benchmark-only dependency (pip install -e '.[bench]'); only the river-* methods need it.
needs_river = pytest.mark.skipif(importlib.util.find_spec("river") is None, reason="River is not installed")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("adaptation_bench", ROOT / "benchmarks" / "adaptation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


@pytest.fixture
def restore_torch_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


KEYS = {"accuracy": float, "retrains": int, "train_cpu_seconds": float, "false_alarms": int}


@needs_river
def test_json_output_has_every_method_with_the_documented_fields(bench, capsys, restore_torch_threads):
    rc = bench.main(["--json", "--samples", "3000", "--streams", "recurring", "--arf-streams", "all",
                     "--workers", "1"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    assert list(out) == ["streams"]
    assert list(out["streams"]) == ["recurring"]
    for stream, methods in out["streams"].items():
        assert list(methods) == list(bench.METHODS), stream
        for method, row in methods.items():
            assert set(row) == set(KEYS) | {"mean_detection_delay"}, (stream, method)
            for key, typ in KEYS.items():
                assert isinstance(row[key], typ), (stream, method, key)
            assert row["mean_detection_delay"] is None or isinstance(row["mean_detection_delay"], float)
            assert 0.0 <= row["accuracy"] <= 1.0 and row["retrains"] >= 0 and row["train_cpu_seconds"] >= 0
        for method in ("static", "periodic"):  # nothing to detect with
            assert methods[method]["mean_detection_delay"] is None and methods[method]["false_alarms"] == 0
        assert methods["static"]["retrains"] == 0


def test_config_overrides_and_a_stream_with_another_schema(bench, tmp_path):
    assert bench.parse_override("drift.accuracy_drop=0.07") == ("drift", "accuracy_drop", 0.07)
    with pytest.raises(Exception):
        bench.parse_override("accuracy_drop=0.07")
    from lifelong_ray.config import load_config

    sea = bench.STREAM_SPECS["sea"].build(500, 0)
    cfg = bench.config_for(load_config(bench.DEFAULT_CONFIG), sea, str(tmp_path))
    assert [f.name for f in cfg.model.features] == ["x0", "x1", "x2"]
    assert cfg.storage.root == str(tmp_path) and cfg.drift == load_config(bench.DEFAULT_CONFIG).drift


def test_several_seeds_report_the_mean_the_largest_retrain_count_and_each_seed(bench, capsys,
                                                                                  restore_torch_threads):
    argv = ["--samples", "3000", "--streams", "recurring", "--methods", "static,periodic", "--workers", "1"]
    assert bench.main(["--json", *argv, "--seeds", "0,1"]) == 0
    rows = json.loads(capsys.readouterr().out)["streams"]["recurring"]
    by_seed = {m: row["seeds"] for m, row in rows.items()}
    for method, row in rows.items():
        seeds = row.pop("seeds")
        assert list(seeds) == ["0", "1"], method
        assert set(row) == set(seeds["0"]) == set(KEYS) | {"mean_detection_delay"}
        assert row["accuracy"] == pytest.approx((seeds["0"]["accuracy"] + seeds["1"]["accuracy"]) / 2)
        assert row["retrains"] == max(s["retrains"] for s in seeds.values())
        assert row["false_alarms"] == sum(s["false_alarms"] for s in seeds.values())
    # each seed's row is that seed's own run: the same as a one-seed run of it
    assert bench.main(["--json", *argv, "--seed", "1"]) == 0
    alone = json.loads(capsys.readouterr().out)["streams"]["recurring"]
    assert {m: row for m, row in alone.items()} == {m: {**s["1"], "train_cpu_seconds": alone[m]["train_cpu_seconds"]}
                                                      for m, s in by_seed.items()}


def test_seed_arguments_are_checked(bench):
    assert bench.parse_args(["--seeds", "2,0"]).seeds == [2, 0]
    assert bench.parse_args(["--seed", "3"]).seeds == [3]
    assert bench.parse_args([]).seeds == [0]
    for bad in (["--seed", "1", "--seeds", "0,1"], ["--seeds", "0,0"], ["--seeds", "a,b"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
