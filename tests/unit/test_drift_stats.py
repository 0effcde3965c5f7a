"""Conformance of the vectorized drift statistics with scipy.stats."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lifelong_ray.drift.stats import (
    bin_proportions,
    category_counts,
    chi2_homogeneity,
    ks_2samp_columns,
    psi,
    total_variation,
)


def _scipy_ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    with np.errstate(divide="ignore"):  # scipy warns for 1 vs 1 values (NaN p-value)
        r = stats.ks_2samp(a[~np.isnan(a)], b[~np.isnan(b)], method="asymp")
    return float(r.statistic), float(r.pvalue)


def _random_columns(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Columns of different kinds: continuous, shifted, heavy ties, constant."""
    cols = []
    for j in range(k):
        kind = j % 5
        if kind == 0:
            cols.append(rng.normal(size=n))
        elif kind == 1:
            cols.append(rng.normal(rng.uniform(-0.5, 0.5), rng.uniform(0.5, 2), size=n))
        elif kind == 2:
            cols.append(np.round(rng.normal(size=n), 1))  # many ties
        elif kind == 3:
            cols.append(rng.integers(0, 4, size=n).astype(float))  # very few distinct values
        else:
            cols.append(rng.exponential(size=n))
    return np.column_stack(cols)


@pytest.mark.parametrize(
    "n_ref,n_cur,seed",
    [(50, 50, 0), (100, 37, 1), (1000, 250, 2), (5000, 500, 3), (7, 3000, 4), (1, 1, 5), (2000, 20000, 6)],
)
def test_ks_matches_scipy_asymp(n_ref, n_cur, seed):
    rng = np.random.default_rng(seed)
    ref = np.sort(_random_columns(rng, n_ref, 10), axis=0)
    cur = _random_columns(rng, n_cur, 10)
    d, p = ks_2samp_columns(ref, cur)
    assert d.shape == p.shape == (10,)
    for j in range(10):
        sd, sp = _scipy_ks(ref[:, j], cur[:, j])
        assert d[j] == sd, (j, d[j], sd)  # exactly
        assert abs(p[j] - sp) <= 1e-6 or (np.isnan(p[j]) and np.isnan(sp)), (j, p[j], sp)


def test_ks_shared_values_between_samples():
    # the samples share values (ties across the two sides)
    ref = np.array([[1.0], [1.0], [2.0], [2.0], [3.0], [5.0]])
    cur = np.array([[1.0], [2.0], [2.0], [2.0], [5.0], [5.0], [5.0]])
    d, p = ks_2samp_columns(ref, cur)
    sd, sp = _scipy_ks(ref[:, 0], cur[:, 0])
    assert d[0] == sd and abs(p[0] - sp) <= 1e-6


def test_ks_drops_nan_per_column():
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(300, 3))
    cur = rng.normal(0.3, 1, size=(200, 3))
    ref[rng.random(ref.shape) < 0.2] = np.nan
    cur[rng.random(cur.shape) < 0.3] = np.nan
    ref = np.sort(ref, axis=0)  # NaN padding at the end, as Reference keeps it
    d, p = ks_2samp_columns(ref, cur)
    for j in range(3):
        sd, sp = _scipy_ks(ref[:, j], cur[:, j])
        assert d[j] == sd and abs(p[j] - sp) <= 1e-6


def test_ks_does_not_need_sorted_reference():
    rng = np.random.default_rng(8)
    ref = rng.normal(size=(400, 4))
    cur = rng.normal(size=(300, 4))
    np.testing.assert_array_equal(ks_2samp_columns(ref, cur)[0], ks_2samp_columns(np.sort(ref, 0), cur)[0])


def test_ks_empty_column_gives_nan_and_others_unaffected():
    ref = np.column_stack([np.arange(10.0), np.full(10, np.nan)])
    cur = np.column_stack([np.arange(5.0), np.arange(5.0)])
    d, p = ks_2samp_columns(ref, cur)
    assert np.isfinite(d[0]) and np.isfinite(p[0])
    assert np.isnan(d[1]) and np.isnan(p[1])


def test_ks_identical_samples():
    x = np.sort(np.random.default_rng(9).normal(size=(100, 2)), axis=0)
    d, p = ks_2samp_columns(x, x)
    assert d.tolist() == [0.0, 0.0] and p.tolist() == [1.0, 1.0]


def test_ks_shape_errors():
    with pytest.raises(ValueError, match="2-D"):
        ks_2samp_columns(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="column counts"):
        ks_2samp_columns(np.zeros((5, 2)), np.zeros((5, 3)))


def test_psi_zero_on_identical_and_large_on_shifted():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    assert psi(p, p) == 0.0
    assert psi(p, p[::-1]) > 0.5
    # formula check
    q = np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(p, q) == pytest.approx(np.sum((q - p) * np.log(q / p)))


def test_psi_broadcasts_over_leading_axes_and_floors_empty_bins():
    ref = np.array([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0]])
    cur = np.array([[0.5, 0.5, 0.0], [0.2, 0.7, 0.1]])
    out = psi(ref, cur)
    assert out.shape == (2,)
    assert out[0] == 0.0
    expected = (0.1 - 1e-4) * np.log(0.1 / 1e-4) + (0.7 - 0.8) * np.log(0.7 / 0.8)
    assert out[1] == pytest.approx(expected)
    assert np.isfinite(psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])))
    with pytest.raises(ValueError):
        psi(ref, cur, eps=0)


def test_psi_of_quantile_bins_shifted_normal():
    rng = np.random.default_rng(10)
    ref = rng.normal(size=(20000, 2))
    edges = np.quantile(ref, np.linspace(0, 1, 11)[1:-1], axis=0).T
    same = bin_proportions(rng.normal(size=(20000, 2)), edges)
    moved = bin_proportions(rng.normal(size=(20000, 2)) + [0.0, 1.0], edges)
    r = bin_proportions(ref, edges)
    assert psi(r, same).max() < 0.01
    assert psi(r, moved)[0] < 0.01 and psi(r, moved)[1] > 0.5


def test_bin_proportions_matches_histogram_and_counts_nan():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(1000, 3))
    x[::10, 1] = np.nan
    edges = np.tile([-1.0, 0.0, 1.0], (3, 1))
    props = bin_proportions(x, edges)
    assert props.shape == (3, 5)
    np.testing.assert_allclose(props.sum(axis=1), 1.0)
    for j in range(3):
        col = x[:, j]
        finite = col[~np.isnan(col)]
        counts = [np.sum(finite < -1), np.sum((finite >= -1) & (finite < 0)),
                  np.sum((finite >= 0) & (finite < 1)), np.sum(finite >= 1), np.isnan(col).sum()]
        np.testing.assert_allclose(props[j], np.array(counts) / 1000)
    assert props[1, -1] == pytest.approx(0.1)


def test_bin_proportions_duplicate_edges_leave_empty_bins():
    x = np.array([[0.0], [0.0], [0.0], [1.0]])
    props = bin_proportions(x, np.array([[0.0, 0.0, 0.5]]))
    assert props.tolist() == [[0.0, 0.0, 0.75, 0.25, 0.0]]


def test_category_counts_none_and_unknown_share_the_last_bucket():
    vals = np.array(["a", "c", None, "b", "a", "zzz", "None"], dtype=object)
    assert category_counts(vals, ["a", "b", "c", "None"]).tolist() == [2, 1, 1, 1, 2]
    assert category_counts(np.array([], dtype=object), ["a"]).tolist() == [0, 0]
    assert category_counts(np.array(["a", "b"]), ("a", "b")).tolist() == [1, 1, 0]


@pytest.mark.parametrize("seed", range(5))
def test_chi2_homogeneity_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 200, size=(4, 6)).astype(float)
    cur = rng.integers(0, 50, size=(4, 6)).astype(float)
    ref[1, 2] = cur[1, 2] = 0  # a category empty on both sides
    ref[2, 4:] = cur[2, 4:] = 0  # padding
    stat, p = chi2_homogeneity(ref, cur)
    for j in range(4):
        keep = (ref[j] + cur[j]) > 0
        res = stats.chi2_contingency(np.vstack([ref[j, keep], cur[j, keep]]), correction=False)
        assert stat[j] == pytest.approx(res.statistic, rel=1e-12)
        assert abs(p[j] - res.pvalue) <= 1e-12


def test_chi2_homogeneity_degenerate_rows():
    stat, p = chi2_homogeneity(np.array([[10, 0], [10, 5]]), np.array([[7, 0], [0, 0]]))
    assert stat[0] == 0.0 and p[0] == 1.0  # one category only
    assert np.isnan(stat[1]) and np.isnan(p[1])  # empty current side


def test_total_variation():
    assert total_variation(np.array([0.2, 0.8]), np.array([0.2, 0.8])) == 0.0
    assert total_variation(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 1.0
