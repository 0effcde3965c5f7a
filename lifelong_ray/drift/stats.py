"""Vectorized drift statistics over many columns at once.

Every function works on 2-D arrays (rows x columns, or columns x bins) so a
whole window of features is tested in a handful of numpy calls. Missing values
are NaN and are dropped per column, the way ``x[~np.isnan(x)]`` would.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = np.sort(rng.normal(size=(1000, 2)), axis=0)
    >>> cur = rng.normal(size=(1000, 2)) + [0.0, 1.0]   # column 1 moved by one sd
    >>> d, p = ks_2samp_columns(ref, cur)
    >>> bool(p[0] > 0.01), bool(p[1] < 1e-10)
    (True, True)
    >>> edges = np.quantile(ref, [0.25, 0.5, 0.75], axis=0).T   # interior edges, [k, bins-1]
    >>> props = bin_proportions(cur, edges)                    # [k, bins + 1 missing]
    >>> psi(bin_proportions(ref, edges), props).round(2).tolist()
    [0.0, 0.86]
"""

from __future__ import annotations

import numpy as np
from scipy import stats as _st

__all__ = [
    "psi",
    "ks_2samp_columns",
    "bin_proportions",
    "category_counts",
    "chi2_homogeneity",
    "total_variation",
]


def psi(ref_props: np.ndarray, cur_props: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Population stability index over the last axis (bins).

    ``sum((cur - ref) * ln(cur / ref))`` with both proportions floored at ``eps``
    so that empty bins stay finite. Works on ``[..., bins]`` and returns ``[...]``;
    identical inputs give exactly 0.

    >>> psi(np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    np.float64(0.0)
    >>> float(psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])).round(3))
    0.879
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    r = np.clip(np.asarray(ref_props, dtype=np.float64), eps, None)
    c = np.clip(np.asarray(cur_props, dtype=np.float64), eps, None)
    if r.shape[-1:] != c.shape[-1:]:
        raise ValueError(f"bin counts differ: ref {r.shape} vs cur {c.shape}")
    return np.sum((c - r) * np.log(c / r), axis=-1)


def ks_2samp_columns(ref_sorted: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided two-sample Kolmogorov-Smirnov test on every column at once.

    ``ref_sorted`` is ``[n_ref, k]`` (each column sorted ascending, NaN padding at
    the end, as :class:`~lifelong_ray.drift.reference.Reference` keeps it; sorting
    is not actually required for correctness), ``cur`` is ``[n_cur, k]``. NaN values
    are dropped per column, so a column may hold fewer values than the array has
    rows. Returns ``(statistic[k], pvalue[k])`` equal to
    ``scipy.stats.ks_2samp(a[~isnan(a)], b[~isnan(b)], method="asymp")`` for each
    column: the statistic exactly (ties handled the same way, by evaluating both
    empirical CDFs at every observed value), the p-value through the same
    ``kstwo.sf(D, round(n1 * n2 / (n1 + n2)))`` (NaN, like scipy, when that rounds
    to 0). A column with no finite value on either side gets NaN for both.

    >>> a = np.array([[0.0], [1.0], [2.0], [3.0]])
    >>> b = np.array([[2.0], [3.0], [4.0], [5.0], [np.nan]])
    >>> d, p = ks_2samp_columns(a, b)
    >>> float(d[0]), round(float(p[0]), 6)
    (0.5, 0.5)
    """
    a = np.asarray(ref_sorted, dtype=np.float64)
    b = np.asarray(cur, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"expected 2-D [rows, columns] arrays, got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"column counts differ: ref has {a.shape[1]}, cur has {b.shape[1]}")
    k = a.shape[1]
    n1 = np.count_nonzero(~np.isnan(a), axis=0)
    n2 = np.count_nonzero(~np.isnan(b), axis=0)
    stat = np.full(k, np.nan)
    pval = np.full(k, np.nan)
    ok = (n1 > 0) & (n2 > 0)
    if not ok.any():
        return stat, pval

    merged = np.concatenate([a, b], axis=0)
    order = np.argsort(merged, axis=0, kind="stable")  # NaN sort last
    vals = np.take_along_axis(merged, order, axis=0)
    finite = ~np.isnan(vals)
    from_a = order < a.shape[0]
    c1 = np.cumsum(from_a & finite, axis=0)
    c2 = np.cumsum(~from_a & finite, axis=0)
    # Evaluate the ECDFs at the last element of each run of tied values: that is
    # searchsorted(..., side="right") at every observed value, as scipy does.
    run_end = finite.copy()
    run_end[:-1] &= vals[1:] != vals[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = c1 / n1 - c2 / n2
    dmax = np.where(run_end, diff, -np.inf).max(axis=0)
    dmin = np.where(run_end, diff, np.inf).min(axis=0)
    min_s = np.clip(-dmin, 0, 1)
    d = np.where(min_s > dmax, min_s, dmax)

    en = np.round(n1[ok].astype(np.float64) * n2[ok] / (n1[ok] + n2[ok]))
    stat[ok] = d[ok]
    with np.errstate(divide="ignore", invalid="ignore"):  # en == 0 (1 vs 1 value): NaN, as scipy
        pval[ok] = np.clip(_st.kstwo.sf(d[ok], en), 0, 1)
    return stat, pval


def bin_proportions(x: np.ndarray, interior_edges: np.ndarray) -> np.ndarray:
    """Share of each column's rows per bin, plus a last bucket for NaN.

    ``x`` is ``[n, k]``; ``interior_edges`` is ``[k, bins - 1]`` (ascending; equal
    edges are allowed and leave empty bins). Bin ``i`` holds
    ``edges[i-1] <= v < edges[i]``, the outer bins are open-ended. Returns
    ``[k, bins + 1]`` whose rows sum to 1 (NaN rows when ``n == 0``).

    >>> bin_proportions(np.array([[0.0], [1.0], [2.0], [np.nan]]), np.array([[1.0]])).tolist()
    [[0.25, 0.5, 0.25]]
    """
    x = np.asarray(x, dtype=np.float64)
    e = np.asarray(interior_edges, dtype=np.float64)
    if x.ndim != 2 or e.ndim != 2 or e.shape[0] != x.shape[1]:
        raise ValueError(f"expected x [n, k] and edges [k, bins-1], got {x.shape} and {e.shape}")
    n, k = x.shape
    bins = e.shape[1] + 1
    idx = np.zeros((n, k), dtype=np.intp)
    for j in range(bins - 1):  # loop over edges, vectorized over rows and columns
        idx += x >= e[:, j]
    idx[np.isnan(x)] = bins
    flat = idx + np.arange(k) * (bins + 1)
    counts = np.bincount(flat.ravel(), minlength=k * (bins + 1)).reshape(k, bins + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts / n


def category_counts(values: np.ndarray, categories: list[str] | tuple[str, ...]) -> np.ndarray:
    """Counts per category, plus a last bucket for None and unknown values.

    >>> category_counts(np.array(["a", "b", None, "a", "zz"], dtype=object), ["a", "b"]).tolist()
    [2, 1, 2]
    """
    arr = np.asarray(values, dtype=object).ravel()
    counts = np.zeros(len(categories) + 1, dtype=np.int64)
    is_none = np.equal(arr, None)
    present = arr[~is_none]
    counts[-1] += int(is_none.sum())
    if present.size:
        uniq, cnt = np.unique(present.astype(str), return_counts=True)
        index = {c: i for i, c in enumerate(categories)}
        pos = np.array([index.get(u, len(categories)) for u in uniq.tolist()], dtype=np.intp)
        np.add.at(counts, pos, cnt)
    return counts


def chi2_homogeneity(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson chi-square test that two count vectors share one distribution.

    Row-wise over ``[k, c]`` arrays (pad shorter rows with zeros). Cells whose
    category is empty on both sides are left out, as are their degrees of
    freedom, so the result equals
    ``scipy.stats.chi2_contingency([ref, cur][:, nonempty], correction=False)``.
    A row with a single non-empty category gives statistic 0 and p-value 1; a row
    with an empty side gives NaN.

    >>> s, p = chi2_homogeneity(np.array([[50, 50, 0]]), np.array([[30, 70, 0]]))
    >>> round(float(s[0]), 4), round(float(p[0]), 6)
    (8.3333, 0.003892)
    """
    r = np.atleast_2d(np.asarray(ref_counts, dtype=np.float64))
    c = np.atleast_2d(np.asarray(cur_counts, dtype=np.float64))
    if r.shape != c.shape:
        raise ValueError(f"count shapes differ: {r.shape} vs {c.shape}")
    nr = r.sum(axis=1, keepdims=True)
    nc = c.sum(axis=1, keepdims=True)
    total = nr + nc
    col = r + c
    with np.errstate(divide="ignore", invalid="ignore"):
        er = nr * col / total
        ec = nc * col / total
        cells = np.where(col > 0, (r - er) ** 2 / er + (c - ec) ** 2 / ec, 0.0)
    stat = cells.sum(axis=1)
    dof = np.count_nonzero(col > 0, axis=1) - 1
    p = np.where(dof > 0, _st.chi2.sf(stat, np.maximum(dof, 1)), 1.0)
    stat = np.where(dof > 0, stat, 0.0)
    empty = (nr[:, 0] == 0) | (nc[:, 0] == 0)
    return np.where(empty, np.nan, stat), np.where(empty, np.nan, p)


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total variation distance ``0.5 * sum|p - q|`` over the last axis.

    >>> float(total_variation(np.array([0.5, 0.5]), np.array([0.9, 0.1])))
    0.4
    """
    return 0.5 * np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)).sum(axis=-1)
