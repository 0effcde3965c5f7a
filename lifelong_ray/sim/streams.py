"""Seeded, drifting tabular streams for the demo, the backtest and the tests.

Pure numpy (plus pyarrow for :meth:`Stream.to_table`); no Ray, no I/O, no clock.
Every generator is deterministic for a given ``seed`` and returns a
:class:`Stream`: feature columns, integer labels and the indices where a known
drift starts.

The main generator, :func:`abrupt_concept_drift`, matches ``configs/demo.yaml``:
five numeric features ``x0..x4`` in ``[-10, 10]`` and one categorical
``segment`` in ``{a, b, c}``; binary label ``y``.

    >>> s = abrupt_concept_drift(6000, drift_at=3000, seed=1)
    >>> len(s), s.drift_points, s.kind
    (6000, [3000], 'abrupt_concept_drift')
    >>> sorted(s.features)
    ['segment', 'x0', 'x1', 'x2', 'x3', 'x4']
    >>> s.rows(0, 1)[0]["segment"] in {"a", "b", "c"}
    True
    >>> bool(0.4 < s.labels.mean() < 0.6)
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

__all__ = [
    "Stream",
    "abrupt_concept_drift",
    "rotating_hyperplane",
    "sea_concepts",
    "DEMO_NUMERIC",
    "DEMO_SEGMENTS",
    "FEATURE_MIN",
    "FEATURE_MAX",
]

DEMO_NUMERIC: tuple[str, ...] = ("x0", "x1", "x2", "x3", "x4")
DEMO_SEGMENTS: tuple[str, ...] = ("a", "b", "c")
FEATURE_MIN, FEATURE_MAX = -10.0, 10.0

# Per-feature spread and resting centre of the demo features (before any shift).
_SCALES = np.array([1.0, 2.0, 1.5, 2.5, 1.2])
_CENTRES = np.array([0.0, 1.0, -1.0, 0.0, 0.5])
# Segment offsets of the score, in units of the score's standard deviation; the
# offsets sum to zero so classes stay balanced when segments are equally likely.
_SEG_BIAS = np.array([0.6, 0.0, -0.6])
# Strength of the mild pairwise interaction term (keeps a linear model a few
# points below the MLP without making the concept hard).
_INTERACTION = 0.15
# Rotation between consecutive concepts: well past 90 degrees, so a model of the
# old concept is at or below chance on the new one.
_ROTATION_DEG = 95.0


@dataclass(frozen=True)
class Stream:
    """A finite labeled stream with known drift onsets.

    ``features`` maps column name to a 1-D array: float64 for numeric columns,
    ``object`` arrays of ``str`` for categorical ones. ``labels`` is int64.

        >>> s = abrupt_concept_drift(10, drift_at=5, seed=0)
        >>> r = s.rows(3, 5, label="y")
        >>> len(r), sorted(r[0]), type(r[0]["x0"]).__name__, type(r[0]["y"]).__name__
        (2, ['segment', 'x0', 'x1', 'x2', 'x3', 'x4', 'y'], 'float', 'int')
        >>> s.to_table().schema.names
        ['x0', 'x1', 'x2', 'x3', 'x4', 'segment', 'y']
    """

    features: dict[str, np.ndarray]
    labels: np.ndarray
    drift_points: list[int]
    kind: str
    concept: np.ndarray | None = field(default=None, compare=False)
    """Optional per-row index of the concept that generated the row (0 before the first drift)."""

    def __post_init__(self) -> None:
        n = len(self.labels)
        for name, col in self.features.items():
            if len(col) != n:
                raise ValueError(f"feature {name!r} has {len(col)} rows, labels have {n}")
        if any(not 0 <= p <= n for p in self.drift_points):
            raise ValueError(f"drift points {self.drift_points} outside [0, {n}]")

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def feature_names(self) -> list[str]:
        return list(self.features)

    def rows(self, start: int, stop: int, *, label: str | None = None) -> list[dict[str, Any]]:
        """JSON-ready records ``[start, stop)``: python ``float``/``str`` values.

        With ``label`` set, each record also carries the label under that key
        (as a python ``int``); by default records hold features only, which is
        what ``POST :predict`` takes.
        """
        start, stop, _ = slice(start, stop).indices(len(self))
        cols: list[tuple[str, list[Any]]] = []
        for name, arr in self.features.items():
            part = arr[start:stop]
            if part.dtype == object:
                cols.append((name, [str(v) for v in part]))
            else:
                cols.append((name, part.astype(np.float64).tolist()))
        if label is not None:
            cols.append((label, self.labels[start:stop].astype(np.int64).tolist()))
        return [{name: vals[i] for name, vals in cols} for i in range(stop - start)]

    def slice(self, start: int, stop: int) -> "Stream":
        """Rows ``[start, stop)`` as a new stream; drift points are re-based."""
        start, stop, _ = slice(start, stop).indices(len(self))
        return Stream(
            features={k: v[start:stop] for k, v in self.features.items()},
            labels=self.labels[start:stop],
            drift_points=[p - start for p in self.drift_points if start <= p < stop],
            kind=self.kind,
            concept=None if self.concept is None else self.concept[start:stop],
        )

    def to_table(self, label: str = "y") -> pa.Table:
        """The stream as a pyarrow table: feature columns, then the label column."""
        arrays, names = [], []
        for name, arr in self.features.items():
            if arr.dtype == object:
                arrays.append(pa.array(arr.tolist(), type=pa.string()))
            else:
                arrays.append(pa.array(arr, type=pa.float64()))
            names.append(name)
        arrays.append(pa.array(self.labels, type=pa.int64()))
        names.append(label)
        return pa.Table.from_arrays(arrays, names=names)


def _drift_list(n: int, drift_at: int | Sequence[int]) -> list[int]:
    points = [int(drift_at)] if np.isscalar(drift_at) else [int(p) for p in drift_at]
    if points != sorted(set(points)):
        raise ValueError(f"drift points must be strictly increasing, got {points}")
    if any(not 0 < p < n for p in points):
        raise ValueError(f"drift points must lie in (0, {n}), got {points}")
    return points


def _check_common(n: int, noise: float) -> None:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"noise must be in [0, 0.5), got {noise}")


def _rotate_away(rng: np.random.Generator, w: np.ndarray, degrees: float) -> np.ndarray:
    """A unit vector at ``degrees`` from unit vector ``w``, in a random plane."""
    u = rng.normal(size=w.shape)
    u -= (u @ w) * w
    u /= np.linalg.norm(u)
    a = np.deg2rad(degrees)
    out = np.cos(a) * w + np.sin(a) * u
    return out / np.linalg.norm(out)


@dataclass(frozen=True)
class _Concept:
    w: np.ndarray          # unit weights over standardised numeric features
    seg_bias: np.ndarray   # score offset per segment
    pair: tuple[int, int]  # features of the mild interaction
    centre: np.ndarray     # where the numeric inputs are centred under this concept


def _demo_concepts(rng: np.random.Generator, k: int, covariate_shift: float) -> list[_Concept]:
    w = rng.normal(size=len(DEMO_NUMERIC))
    w /= np.linalg.norm(w)
    centre = _CENTRES.copy()
    perm = np.arange(len(DEMO_SEGMENTS))
    concepts = [_Concept(w, _SEG_BIAS[perm].copy(), (0, 1), centre.copy())]
    for i in range(1, k):
        w = _rotate_away(rng, w, _ROTATION_DEG)
        # Reverse the segment offsets so the categorical signal also turns around.
        perm = perm[::-1]
        # Shift a couple of features by `covariate_shift` of their spread, alternating
        # direction per drift so many drifts never walk the inputs out of range.
        a, b = (2 * (i - 1)) % 5, (2 * (i - 1) + 1) % 5
        sign = 1.0 if i % 2 else -1.0
        centre = centre.copy()
        centre[[a, b]] += sign * covariate_shift * _SCALES[[a, b]]
        pair = ((i + 2) % 5, (i + 4) % 5)
        concepts.append(_Concept(w, _SEG_BIAS[perm].copy(), pair, centre))
    return concepts


def _demo_inputs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal draws for the numeric features and uniform segment ids."""
    return rng.normal(size=(n, len(DEMO_NUMERIC))), rng.integers(0, len(DEMO_SEGMENTS), size=n)


def _demo_score(z: np.ndarray, seg: np.ndarray, c: _Concept) -> np.ndarray:
    i, j = c.pair
    return z @ c.w + _INTERACTION * z[:, i] * z[:, j] + c.seg_bias[seg]


def _demo_stream(x: np.ndarray, seg: np.ndarray, y: np.ndarray, points: list[int],
                 kind: str, concept_idx: np.ndarray) -> Stream:
    x = np.clip(x, FEATURE_MIN, FEATURE_MAX)
    features: dict[str, np.ndarray] = {name: x[:, k].astype(np.float64) for k, name in enumerate(DEMO_NUMERIC)}
    features["segment"] = np.array(DEMO_SEGMENTS, dtype=object)[seg]
    return Stream(features=features, labels=y.astype(np.int64), drift_points=points, kind=kind,
                  concept=concept_idx)


def _flip(rng: np.random.Generator, y: np.ndarray, noise: float) -> np.ndarray:
    return np.where(rng.random(len(y)) < noise, 1 - y, y)


def abrupt_concept_drift(
    n: int,
    drift_at: int | Sequence[int],
    seed: int = 0,
    noise: float = 0.03,
    covariate_shift: float = 0.5,
) -> Stream:
    """The demo stream: an abrupt concept change (plus an input shift) at each drift point.

    Inputs: ``x0..x4`` are normal with per-feature spread 1-2.5, clipped to
    ``[-10, 10]``; ``segment`` is uniform over ``a, b, c``. The label is
    ``y = [w·z + 0.15·z_i·z_j + b_segment > 0]`` on the standardised inputs ``z``,
    with a fraction ``noise`` of labels flipped. That is mostly linear, so a
    small MLP (and even logistic regression) learns it to about ``1 - noise``
    minus a point or two; classes are balanced.

    At each drift point the concept turns around: ``w`` rotates by 95 degrees,
    the segment offsets reverse and the interaction moves to another pair, so a
    model of the old concept scores roughly 35-50 % on the new one. At the same
    time two numeric features shift by ``covariate_shift`` of their standard
    deviation (0.5 gives PSI ≈ 0.25 and KS ≈ 0.2 per shifted feature), so the
    drift is visible without labels too. The new concept is centred on the
    shifted inputs, so it is as learnable and as balanced as the old one.

        >>> s = abrupt_concept_drift(4000, drift_at=[1500, 3000], seed=3)
        >>> len(s), s.drift_points
        (4000, [1500, 3000])
        >>> [int(s.concept[i]) for i in (0, 1499, 1500, 3999)]
        [0, 0, 1, 2]
        >>> bool(s.features["x0"][1500:].mean() - s.features["x0"][:1500].mean() > 0.3)
        True
    """
    _check_common(n, noise)
    if covariate_shift < 0:
        raise ValueError(f"covariate_shift must be >= 0, got {covariate_shift}")
    points = _drift_list(n, drift_at)
    rng = np.random.default_rng(seed)
    concepts = _demo_concepts(rng, len(points) + 1, covariate_shift)
    z, seg = _demo_inputs(rng, n)
    concept_idx = np.searchsorted(np.asarray(points, dtype=np.int64), np.arange(n), side="right")
    score = np.empty(n)
    x = np.empty_like(z)
    for k, c in enumerate(concepts):
        m = concept_idx == k
        score[m] = _demo_score(z[m], seg[m], c)
        x[m] = c.centre + z[m] * _SCALES
    y = _flip(rng, (score > 0).astype(np.int64), noise)
    return _demo_stream(x, seg, y, points, "abrupt_concept_drift", concept_idx)


def rotating_hyperplane(
    n: int,
    drift_at: int | Sequence[int],
    width: int = 1000,
    seed: int = 0,
    noise: float = 0.03,
    covariate_shift: float = 0.5,
) -> Stream:
    """Gradual drift on the demo schema: each drift blends into the next concept over ``width`` rows.

    Same features, concepts and input shifts as :func:`abrupt_concept_drift`, but
    from each drift point on, the weight vector, segment offsets and input centre
    move linearly to the next concept's over ``width`` samples.

        >>> s = rotating_hyperplane(3000, drift_at=1000, width=800, seed=0)
        >>> len(s), s.drift_points, s.kind
        (3000, [1000], 'rotating_hyperplane')
    """
    _check_common(n, noise)
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    points = _drift_list(n, drift_at)
    rng = np.random.default_rng(seed)
    concepts = _demo_concepts(rng, len(points) + 1, covariate_shift)
    z, seg = _demo_inputs(rng, n)
    idx = np.arange(n)
    # progress in [0, len(points)]: k + fraction of the way from concept k to k+1
    progress = np.zeros(n)
    for p in points:
        progress += np.clip((idx - p) / width, 0.0, 1.0)
    lo = np.minimum(np.floor(progress).astype(int), len(concepts) - 1)
    hi = np.minimum(lo + 1, len(concepts) - 1)
    f = (progress - lo)[:, None]
    W = np.stack([c.w for c in concepts])
    B = np.stack([c.seg_bias for c in concepts])
    C = np.stack([c.centre for c in concepts])
    w = (1 - f) * W[lo] + f * W[hi]
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    bias = (1 - f[:, 0]) * B[lo, seg] + f[:, 0] * B[hi, seg]
    centre = (1 - f) * C[lo] + f * C[hi]
    pairs = np.array([c.pair for c in concepts])
    near = np.where(f[:, 0] < 0.5, lo, hi)
    inter = _INTERACTION * z[idx, pairs[near, 0]] * z[idx, pairs[near, 1]]
    score = np.einsum("ij,ij->i", z, w) + inter + bias
    y = _flip(rng, (score > 0).astype(np.int64), noise)
    x = centre + z * _SCALES
    return _demo_stream(x, seg, y, points, "rotating_hyperplane", np.rint(progress).astype(np.int64))


_SEA_THRESHOLDS = (8.0, 9.0, 7.0, 9.5)


def sea_concepts(
    n: int,
    drift_at: int | Sequence[int],
    seed: int = 0,
    noise: float = 0.1,
    thresholds: Sequence[float] = _SEA_THRESHOLDS,
) -> Stream:
    """The classic SEA concepts (Street & Kim, 2001): ``y = [x0 + x1 <= θ]``.

    Three features uniform in ``[0, 10]`` (``x2`` is irrelevant); the threshold
    ``θ`` steps through ``thresholds`` (cycling) at each drift point. This is
    not the demo schema; use it with a config that declares ``x0..x2``.

        >>> s = sea_concepts(2000, drift_at=[500, 1000, 1500], seed=0)
        >>> len(s), s.drift_points, sorted(s.features)
        (2000, [500, 1000, 1500], ['x0', 'x1', 'x2'])
    """
    _check_common(n, noise)
    if not thresholds:
        raise ValueError("thresholds must not be empty")
    points = _drift_list(n, drift_at)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 10.0, size=(n, 3))
    concept_idx = np.searchsorted(np.asarray(points, dtype=np.int64), np.arange(n), side="right")
    theta = np.asarray(thresholds, dtype=np.float64)[concept_idx % len(thresholds)]
    y = _flip(rng, (x[:, 0] + x[:, 1] <= theta).astype(np.int64), noise)
    features = {f"x{k}": x[:, k].copy() for k in range(3)}
    return Stream(features=features, labels=y, drift_points=points, kind="sea_concepts",
                  concept=concept_idx)
