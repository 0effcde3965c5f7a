"""Smoke test of benchmarks/drift_speed.py at a tiny size (no timing assertions), and
conformance of the fast paths in lifelong_ray.drift.stats that it measures (threaded
columns, the block-bounded KS scan, the large-n KS p-value) with scipy."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import special, stats

from lifelong_ray.drift import stats as dstats
from lifelong_ray.drift.stats import bin_proportions, ks_2samp_columns, sorted_columns

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "drift_speed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("drift_speed_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


# -- the benchmark ------------------------------------------------------------

def test_benchmark_core_small(bench):
    r = bench.run_benchmark(rows=2000, features=3, repeats=1, seed=0)
    summary = bench.json_summary(r)
    assert list(summary) == ["seconds", "baseline_seconds", "speedup", "max_pvalue_diff"]
    assert all(isinstance(v, float) for v in summary.values())
    assert r["verdicts_agree"]
    assert [f["drifted"] for f in r["per_feature"]] == [f["drifted_scipy"] for f in r["per_feature"]]
    assert r["n_drifted"] >= 1 and r["n_drifted"] < 3  # odd feature clearly shifted, even ones not
    assert summary["max_pvalue_diff"] <= 1e-6
    assert r["max_statistic_diff"] == 0.0


def test_benchmark_features_alternate_unchanged_and_changed(bench):
    kinds = bench.feature_kinds(20)
    assert [k.change.startswith("none") for k in kinds] == [j % 2 == 0 for j in range(20)]
    assert len({k.change for k in kinds}) == 15  # 5 unchanged families, 10 distinct changes


def test_benchmark_json_cli_prints_exactly_the_summary():
    out = subprocess.run(
        [sys.executable, str(BENCH), "--json", "--rows", "2000", "--features", "3", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=120,
    )
    data = json.loads(out.stdout)
    assert list(data) == ["seconds", "baseline_seconds", "speedup", "max_pvalue_diff"]
    assert all(isinstance(v, float) for v in data.values())


# -- the fast paths it measures --------------------------------------------------

def _columns(rng, n, shift):
    return np.column_stack([
        rng.normal(shift, 1.0, n),
        np.round(rng.normal(shift, 1.0, n), 1),  # heavy ties
        rng.integers(0, 5, n).astype(float),  # a handful of values
        rng.exponential(1.0 + shift, n),
        rng.normal(0.0, 1.0 + shift, n),
    ])


@pytest.mark.parametrize("shift", [0.0, 0.03, 0.3])
def test_ks_threaded_long_columns_match_scipy(shift, monkeypatch):
    # enough elements to go through threads and the block-bounded scan; n * d^2 of the
    # shifted columns falls in the range of the large-n p-value series
    monkeypatch.setattr(dstats, "_PARALLEL_MIN_ELEMENTS", 1000)
    rng = np.random.default_rng(12)
    ref = _columns(rng, 60000, 0.0)
    cur = _columns(rng, 50000, shift)
    ref[rng.random(ref.shape) < 0.01] = np.nan
    cur[rng.random(cur.shape) < 0.02] = np.nan
    ref_sorted = np.sort(ref, axis=0)
    d, p = ks_2samp_columns(ref_sorted, cur)
    d2, p2 = ks_2samp_columns(ref, sorted_columns(cur))  # unsorted reference, pre-sorted window
    np.testing.assert_array_equal(d, d2)
    np.testing.assert_array_equal(p, p2)
    for j in range(ref.shape[1]):
        a, b = ref[:, j], cur[:, j]
        res = stats.ks_2samp(a[~np.isnan(a)], b[~np.isnan(b)], method="asymp")
        assert d[j] == res.statistic, j
        assert abs(p[j] - res.pvalue) <= 1e-12, (j, p[j], res.pvalue)


def test_ks_identical_long_samples():
    x = np.sort(np.random.default_rng(13).normal(size=(30000, 1)), axis=0)
    d, p = ks_2samp_columns(x, x[::-1])
    assert d.tolist() == [0.0] and p.tolist() == [1.0]


@pytest.mark.parametrize("n", [20000, 31337, 120000])
def test_large_n_kstwo_sf_matches_scipy(n):
    t = np.array([2.2, 2.5, 4.0, 9.0, 25.0, 120.0, 369.0, 1.5, 400.0])  # n d^2, both sides of the range
    d = np.sqrt(t / n)
    ours = dstats._kstwo_sf(d, np.full(t.shape, float(n)))
    theirs = stats.kstwo.sf(d, n)
    np.testing.assert_allclose(ours, theirs, rtol=1e-11, atol=1e-300)
    nd2 = n * d * d  # as scipy forms it (2.2 itself rounds to just below)
    inside = (nd2 >= 2.2) & (nd2 < 370)
    assert inside.sum() >= 6
    np.testing.assert_allclose(2 * np.array([special.smirnov(n, x) for x in d[inside]]), ours[inside],
                               rtol=1e-11, atol=1e-300)


def test_sorted_columns_and_bin_proportions_on_sorted_input(monkeypatch):
    monkeypatch.setattr(dstats, "_PARALLEL_MIN_ELEMENTS", 10)
    rng = np.random.default_rng(14)
    x = rng.normal(size=(5000, 4))
    x[rng.random(x.shape) < 0.1] = np.nan
    xs = sorted_columns(x)
    assert xs.flags.f_contiguous
    np.testing.assert_array_equal(xs, np.sort(x, axis=0))
    np.testing.assert_array_equal(sorted_columns([x[:, j] for j in range(4)]), xs)
    edges = np.tile([-1.0, -1.0, 0.0, 0.5], (4, 1))
    np.testing.assert_array_equal(bin_proportions(xs, edges), bin_proportions(x, edges))
    with pytest.raises(ValueError):
        sorted_columns([np.zeros(3), np.zeros(4)])
