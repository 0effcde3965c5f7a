"""Vectorized drift statistics over many columns at once.

Every function works on 2-D arrays (rows x columns, or columns x bins) so a
whole window of features is tested in one call. Missing values are NaN and are
dropped per column, the way ``x[~np.isnan(x)]`` would. The KS test and the PSI
bins work on sorted columns (:func:`sorted_columns`; a window is sorted once and
both use it), and big windows are processed one column per thread -- numpy's
sorts and searches release the GIL. ``benchmarks/drift_speed.py`` measures this
against a per-feature ``scipy.stats.ks_2samp`` loop.

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

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import numpy as np
from scipy import stats as _st

__all__ = [
    "psi",
    "ks_2samp_columns",
    "bin_proportions",
    "sorted_columns",
    "category_counts",
    "chi2_homogeneity",
    "total_variation",
]

_T = TypeVar("_T")


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
    the end, as :class:`~lifelong_ray.drift.reference.Reference` keeps it), ``cur``
    is ``[n_cur, k]``. Sorting is not required for correctness: a column that is
    not already sorted (NaN last) is sorted here, so passing the output of
    :func:`sorted_columns` for ``cur`` only saves that work. NaN values are dropped
    per column, so a column may hold fewer values than the array has rows.
    Returns ``(statistic[k], pvalue[k])`` equal to
    ``scipy.stats.ks_2samp(a[~isnan(a)], b[~isnan(b)], method="asymp")`` for each
    column: the statistic exactly (ties handled the same way, by evaluating both
    empirical CDFs at every observed value), the p-value as
    ``kstwo.sf(D, round(n1 * n2 / (n1 + n2)))`` (NaN, like scipy, when that rounds
    to 0) -- to ~1e-12 relative, see :func:`_kstwo_sf`. A column with no finite
    value on either side gets NaN for both. Large inputs are split over threads,
    one column per task.

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

    def one(j: int) -> tuple[float, int, int]:
        x = _finite_sorted(a[:, j])
        y = _finite_sorted(b[:, j])
        if x.size == 0 or y.size == 0:
            return math.nan, x.size, y.size
        return _ks_statistic_sorted(x, y), x.size, y.size

    res = _map_columns(one, k, a.size + b.size)
    stat = np.array([r[0] for r in res], dtype=np.float64).reshape(k)
    n1 = np.array([r[1] for r in res], dtype=np.int64).reshape(k)
    n2 = np.array([r[2] for r in res], dtype=np.int64).reshape(k)
    pval = np.full(k, np.nan)
    ok = (n1 > 0) & (n2 > 0)
    if ok.any():
        en = np.round(n1[ok].astype(np.float64) * n2[ok] / (n1[ok] + n2[ok]))
        pval[ok] = _kstwo_sf(stat[ok], en)
    return stat, pval


def bin_proportions(x: np.ndarray, interior_edges: np.ndarray) -> np.ndarray:
    """Share of each column's rows per bin, plus a last bucket for NaN.

    ``x`` is ``[n, k]``; ``interior_edges`` is ``[k, bins - 1]`` (ascending; equal
    edges are allowed and leave empty bins). Bin ``i`` holds
    ``edges[i-1] <= v < edges[i]``, the outer bins are open-ended. Returns
    ``[k, bins + 1]`` whose rows sum to 1 (NaN rows when ``n == 0``). Columns are
    counted by sorting them (columns already sorted with NaN last, such as the
    output of :func:`sorted_columns`, are used as they are).

    >>> bin_proportions(np.array([[0.0], [1.0], [2.0], [np.nan]]), np.array([[1.0]])).tolist()
    [[0.25, 0.5, 0.25]]
    """
    x = np.asarray(x, dtype=np.float64)
    e = np.asarray(interior_edges, dtype=np.float64)
    if x.ndim != 2 or e.ndim != 2 or e.shape[0] != x.shape[1]:
        raise ValueError(f"expected x [n, k] and edges [k, bins-1], got {x.shape} and {e.shape}")
    n, k = x.shape
    bins = e.shape[1] + 1

    def one(j: int) -> np.ndarray:
        col = _finite_sorted(x[:, j])
        # values below each edge (NaN edges, of an all-missing reference, count all)
        below = np.searchsorted(col, e[j], side="left")
        return np.diff(below, prepend=0, append=[col.size, n])

    counts = np.array(_map_columns(one, k, x.size), dtype=np.int64).reshape(k, bins + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts / n


def sorted_columns(columns: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Each column sorted ascending with NaN last, as ``np.sort(x, axis=0)`` gives,
    in a Fortran-ordered float64 ``[n, k]`` array (contiguous columns).

    ``columns`` is an ``[n, k]`` array or a sequence of ``k`` equal-length 1-D
    arrays. Sort a window once with this and hand it to both
    :func:`bin_proportions` and :func:`ks_2samp_columns`, which then skip their own
    sort. Large inputs are sorted in threads, one column per task.

    >>> sorted_columns([np.array([3.0, np.nan, 1.0]), np.array([0.0, -1.0, 2.0])]).tolist()
    [[1.0, -1.0], [3.0, 0.0], [nan, 2.0]]
    """
    if isinstance(columns, np.ndarray):
        if columns.ndim != 2:
            raise ValueError(f"expected a 2-D [rows, columns] array, got shape {columns.shape}")
        cols = [columns[:, j] for j in range(columns.shape[1])]
        n = columns.shape[0]
    else:
        cols = [np.asarray(c) for c in columns]
        lengths = {c.shape for c in cols}
        if len(lengths) > 1 or any(c.ndim != 1 for c in cols):
            raise ValueError(f"expected equal-length 1-D columns, got shapes {sorted(lengths)}")
        n = cols[0].shape[0] if cols else 0
    out = np.empty((n, len(cols)), dtype=np.float64, order="F")

    def one(j: int) -> None:
        out[:, j] = cols[j]
        out[:, j].sort()

    _map_columns(one, len(cols), out.size)
    return out


# -- internals -------------------------------------------------------------------

# Below this many elements per call, columns are processed in the calling thread:
# thread start-up costs more than it saves on small windows.
_PARALLEL_MIN_ELEMENTS = 1 << 18


def _workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _map_columns(fn: Callable[[int], _T], k: int, elements: int) -> list[_T]:
    """``[fn(j) for j in range(k)]``, over a short-lived thread pool when the work
    is big enough. numpy's sorts, searches and ufunc loops release the GIL, so
    columns really run in parallel; the pool is made per call, so nothing
    outlives it (no fork hazards, no global state)."""
    workers = min(_workers(), k)
    if workers < 2 or elements < _PARALLEL_MIN_ELEMENTS:
        return [fn(j) for j in range(k)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drift-stats") as pool:
        return list(pool.map(fn, range(k)))


def _finite_sorted(col: np.ndarray) -> np.ndarray:
    """The finite values of a 1-D column, ascending. A column that is already
    sorted with NaN last (``np.sort`` order) is returned as a view, else sorted."""
    nf = col.size - int(np.count_nonzero(np.isnan(col)))
    head = col[:nf]
    # an ascending head has no NaN (every comparison with NaN is False)
    if nf == 0 or (not np.isnan(head[0]) and bool(np.all(head[1:] >= head[:-1]))):
        return head
    return np.sort(col)[:nf]


# Runs of the current sample per block when bounding F1 - F2 (see below).
_KS_BLOCK = 64


def _ks_statistic_sorted(x: np.ndarray, y: np.ndarray) -> float:
    """KS statistic of two non-empty, finite, ascending samples, bit for bit as
    ``scipy.stats.ks_2samp`` computes it.

    ``F1 - F2`` only rises at values of ``x`` and only falls at values of ``y``. So
    its maximum is reached just before the first of a run of equal ``y`` values
    ``u`` (``F1 = #(x < u) / n1``, ``F2 = start / n2``) and its minimum at the end of
    such a run (``F1 = #(x <= u) / n1``, ``F2 = end / n2``): only the runs of ``y``
    matter. For long samples the runs are cut into blocks of ``_KS_BLOCK``; counts
    at each block's first and last run bound ``F1 - F2`` inside it, and only the
    blocks whose bound reaches the best value seen at a block edge are searched
    run by run (typically under 2% of them). The comparisons use exact integers
    (``count1 * n2 - count2 * n1``); the differences themselves are formed as scipy
    forms them (``count1 / n1 - count2 / n2``), so D is identical.
    """
    n1, n2 = x.size, y.size
    if n2 > 1:
        new = np.empty(n2, dtype=bool)
        new[0] = True
        np.not_equal(y[1:], y[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        u = y if starts.size == n2 else y[starts]
    else:
        starts = np.zeros(1, dtype=np.intp)
        u = y
    ends = np.empty_like(starts)  # one past each run = #(y <= u)
    ends[:-1] = starts[1:]
    ends[-1] = n2
    m = u.size
    if m > 4 * _KS_BLOCK:
        first = np.arange(0, m, _KS_BLOCK)
        last = np.minimum(first + _KS_BLOCK, m) - 1
        lo = np.searchsorted(x, u[first], side="left").astype(np.int64)  # #(x < u) at block start
        hi = np.searchsorted(x, u[last], side="right").astype(np.int64)  # #(x <= u) at block end
        s0 = starts[first].astype(np.int64)
        e1 = ends[last].astype(np.int64)
        best_max = (lo * n2 - s0 * n1).max()  # attained values of (F1 - F2) * n1 * n2
        best_min = (hi * n2 - e1 * n1).min()
        refine = (hi * n2 - s0 * n1 >= best_max) | (lo * n2 - e1 * n1 <= best_min)
        if refine.mean() < 0.25:
            keep = np.flatnonzero(np.repeat(refine, _KS_BLOCK)[:m])
            u, starts, ends = u[keep], starts[keep], ends[keep]
    below, upto = _count_below_upto(x, u)
    dmax = float(np.max(below / n1 - starts / n2))
    dmin = float(np.min(upto / n1 - ends / n2))
    min_s = min(max(-dmin, 0.0), 1.0)
    return min_s if min_s > dmax else dmax


def _count_below_upto(x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(#(x < u[i]), #(x <= u[i]))`` for ascending ``x`` and ascending distinct ``u``."""
    if u.size * 8 < x.size:
        return np.searchsorted(x, u, side="left"), np.searchsorted(x, u, side="right")
    # long u: one linear merge (a stable argsort of two sorted runs; ties put u first)
    order = np.argsort(np.concatenate([u, x]), kind="stable")
    below = np.flatnonzero(order < u.size) - np.arange(u.size)
    tie = x[np.minimum(below, x.size - 1)] == u
    upto = below
    if tie.any():
        upto = below.copy()
        upto[tie] = np.searchsorted(x, u[tie], side="right")
    return below, upto


# kstwo.sf(d, n) is 2 * scipy.special.smirnov(n, d) for 2.2 <= n d^2 < 370 (and
# n > 140); scipy evaluates smirnov in double-double arithmetic over all n terms of
# its series, about 1 microsecond each: 0.6 s for one p-value at n = 500,000 (two
# 1M-row samples). From this n on we evaluate the same series as below.
_SMIRNOV_SUM_MIN_N = 20_000


def _kstwo_sf(d: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``scipy.stats.kstwo.sf(d, n)`` elementwise, to within 1e-12 relative.

    Where scipy would compute ``2 * smirnov(n, d)`` with ``n >= 20,000`` this uses
    :func:`_smirnov_series` (about 1 ms instead of up to seconds); everything else
    is ``kstwo.sf`` itself.
    """
    d = np.asarray(d, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        t = n * d * d
        big = (n >= _SMIRNOV_SUM_MIN_N) & (t >= 2.2) & (t < 370.0) & (d < 0.5)
    d, n, big = np.broadcast_arrays(d, n, big)
    out = np.empty(d.shape)
    rest = ~big
    if rest.any():
        with np.errstate(divide="ignore", invalid="ignore"):  # n == 0: NaN, as scipy
            out[rest] = _st.kstwo.sf(d[rest], n[rest])
    for i in zip(*np.nonzero(big)):
        out[i] = 2.0 * _smirnov_series(int(n[i]), float(d[i]))
    return np.clip(out, 0.0, 1.0)


def _smirnov_series(n: int, d: float) -> float:
    """One-sided KS tail ``P(D+_n >= d)``, i.e. ``scipy.special.smirnov(n, d)``,
    for large ``n`` and ``2.2 <= n d^2 < 370``.

    Birnbaum-Tingey series written with binomial probabilities (all terms
    positive): ``sum_j f(j)``, ``f(j) = d / p_j * binom.pmf(j, n, p_j)`` with
    ``p_j = d + j / n``, ``j = 0 .. floor(n (1 - d))``. ``f`` is a smooth, single
    bump that vanishes at both ends, about ``n / sqrt(8 n d^2)`` terms wide, so the
    sum is computed by the trapezoidal rule on every ``h``-th term (``h`` * the sum
    of ``f(0), f(h), f(2h), ...``), which converges exponentially in width / h
    (Poisson summation). With 64 samples per width -- a few hundred to a few
    thousand terms whatever ``n`` -- it matches the full series to ~1e-12
    relative over the whole range used (tests compare it with scipy).
    """
    t = n * d * d
    h = max(1, int(n / (64.0 * math.sqrt(8.0 * t))))
    j = np.arange(0, math.floor(n * (1.0 - d)) + 1, h, dtype=np.float64)
    p = np.minimum(d + j / n, 1.0)
    return h * float(np.sum(_st.binom.pmf(j, n, p) * (d / p)))


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
