"""Seeded, drifting tabular streams for the demo, the backtest and the tests.

Pure numpy (plus pyarrow for :meth:`Stream.to_table`); no Ray, no I/O, no clock.
Every generator is deterministic for a given ``seed`` and returns a
:class:`Stream`: feature columns, integer labels and the indices where a known
drift starts.

The main generator, :func:`abrupt_concept_drift`, matches ``configs/demo.yaml``:
five numeric features ``x0..x4`` in ``[-10, 10]`` and one categorical
``segment`` in ``{a, b, c}``; binary label ``y``.

Every generator takes ``seed`` and ``noise`` (the fraction of labels flipped),
and :func:`make_stream` builds one by its short kind (:data:`GENERATORS`):

============  ============================  ============  =============================================
kind          generator                     schema        what changes at each drift point
============  ============================  ============  =============================================
abrupt        :func:`abrupt_concept_drift`  demo          concept turns around at once (+ input shift)
gradual       :func:`rotating_hyperplane`   demo          concept blends into the next over ``width``
recurring     :func:`recurring_concepts`    demo          concepts take turns A, B, A, B every ``period``
covariate     :func:`covariate_shift`       demo          input means move; P(y|x) and P(y) stay
prior         :func:`label_prior_shift`     demo          P(y) moves; P(x|y) stays
sea           :func:`sea_concepts`          SEA x0..x2    threshold of ``x0 + x1 <= θ`` (abrupt)
stationary    :func:`stationary`            demo          nothing: no drift points
============  ============================  ============  =============================================

``Stream.concept`` says, per row, which concept (or input/prior regime)
generated it; ``Stream.params`` records the generator's arguments.

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

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

__all__ = [
    "Stream",
    "abrupt_concept_drift",
    "rotating_hyperplane",
    "sea_concepts",
    "recurring_concepts",
    "covariate_shift",
    "label_prior_shift",
    "stationary",
    "GENERATORS",
    "GENERATOR_KINDS",
    "default_params",
    "make_stream",
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
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    """The generator's arguments as JSON-ready values (``seed``, ``noise``, ``drift_at``, …)."""

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
            params=dict(self.params),
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
                 kind: str, concept_idx: np.ndarray, params: dict[str, Any]) -> Stream:
    x = np.clip(x, FEATURE_MIN, FEATURE_MAX)
    features: dict[str, np.ndarray] = {name: x[:, k].astype(np.float64) for k, name in enumerate(DEMO_NUMERIC)}
    features["segment"] = np.array(DEMO_SEGMENTS, dtype=object)[seg]
    return Stream(features=features, labels=y.astype(np.int64), drift_points=points, kind=kind,
                  concept=np.asarray(concept_idx, dtype=np.int64), params=params)


def _concept_rows(z: np.ndarray, seg: np.ndarray, concepts: Sequence[_Concept],
                  concept_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and scores when row ``i`` comes from ``concepts[concept_idx[i]]``."""
    score = np.empty(len(z))
    x = np.empty_like(z)
    for k, c in enumerate(concepts):
        m = concept_idx == k
        score[m] = _demo_score(z[m], seg[m], c)
        x[m] = c.centre + z[m] * _SCALES
    return x, score


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
    x, score = _concept_rows(z, seg, concepts, concept_idx)
    y = _flip(rng, (score > 0).astype(np.int64), noise)
    return _demo_stream(x, seg, y, points, "abrupt_concept_drift", concept_idx,
                        {"seed": seed, "noise": noise, "drift_at": points, "covariate_shift": covariate_shift})


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
    return _demo_stream(x, seg, y, points, "rotating_hyperplane", np.rint(progress).astype(np.int64),
                        {"seed": seed, "noise": noise, "drift_at": points, "width": width,
                         "covariate_shift": covariate_shift})


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
    ``θ`` steps through ``thresholds`` (cycling) at each drift point, an abrupt
    change; ``noise`` flips that fraction of labels (10 %, as in the original).
    This is not the demo schema; use it with a config that declares ``x0..x2``
    (floats in ``[0, 10]``) and label ``y`` in ``{0, 1}``.

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
                  concept=concept_idx, params={"seed": seed, "noise": noise, "drift_at": points,
                                               "thresholds": [float(t) for t in thresholds]})


def recurring_concepts(
    n: int,
    period: int,
    concepts: int = 2,
    seed: int = 0,
    noise: float = 0.03,
    covariate_shift: float = 0.5,
) -> Stream:
    """Recurring drift on the demo schema: concepts take turns A, B, A, B, … every ``period`` rows.

    Row ``i`` comes from concept ``(i // period) % concepts`` (that is
    ``Stream.concept``); a drift point sits at every switch, ``period,
    2·period, …``. The concepts are the demo's (see :func:`abrupt_concept_drift`):
    consecutive ones are 95 degrees apart with reversed segment offsets and
    inputs shifted by ``covariate_shift`` standard deviations, so a model of A
    fails on B and is good again when A comes back. Schema: the demo's
    (``x0..x4``, ``segment``; label ``y``).

        >>> s = recurring_concepts(4000, period=1000, seed=0)
        >>> s.drift_points, s.kind
        ([1000, 2000, 3000], 'recurring_concepts')
        >>> [int(s.concept[i]) for i in (0, 999, 1000, 2000, 3999)]
        [0, 0, 1, 0, 1]
        >>> [int(c) for c in recurring_concepts(900, period=200, concepts=3).concept[::200]]
        [0, 1, 2, 0, 1]
    """
    _check_common(n, noise)
    if concepts < 2:
        raise ValueError(f"concepts must be at least 2, got {concepts}")
    if not 1 <= period < n:
        raise ValueError(f"period must be in [1, {n}), got {period}")
    if covariate_shift < 0:
        raise ValueError(f"covariate_shift must be >= 0, got {covariate_shift}")
    rng = np.random.default_rng(seed)
    cs = _demo_concepts(rng, concepts, covariate_shift)
    z, seg = _demo_inputs(rng, n)
    concept_idx = (np.arange(n) // period) % concepts
    points = [int(p) for p in range(period, n, period)]
    x, score = _concept_rows(z, seg, cs, concept_idx)
    y = _flip(rng, (score > 0).astype(np.int64), noise)
    return _demo_stream(x, seg, y, points, "recurring_concepts", concept_idx,
                        {"seed": seed, "noise": noise, "period": int(period), "concepts": int(concepts),
                         "covariate_shift": covariate_shift})


def _base_concept(rng: np.random.Generator) -> _Concept:
    """The demo's first concept: the fixed labelling function of the drift-free generators."""
    return _demo_concepts(rng, 1, 0.0)[0]


def _fixed_labels(rng: np.random.Generator, x: np.ndarray, seg: np.ndarray, c: _Concept,
                  noise: float) -> np.ndarray:
    """Labels as a fixed function of the (clipped) inputs ``x``: P(y|x) never moves."""
    z = (x - c.centre) / _SCALES
    return _flip(rng, (_demo_score(z, seg, c) > 0).astype(np.int64), noise)


def _regimes(n: int, points: list[int]) -> np.ndarray:
    return np.searchsorted(np.asarray(points, dtype=np.int64), np.arange(n), side="right")


# Features that `covariate_shift` moves: outside the base concept's interaction pair
# (x0, x1), so the shift does not turn the interaction into a new linear term.
_COVARIATE_FEATURES = [2, 4]


def covariate_shift(
    n: int,
    drift_at: int | Sequence[int],
    shift: float = 1.0,
    seed: int = 0,
    noise: float = 0.03,
) -> Stream:
    """Feature drift without concept drift, on the demo schema.

    At each drift point the means of ``x2`` and ``x4`` move by ``shift`` of
    their standard deviation (and back at the next one: regimes alternate
    between the resting and the shifted inputs; ``Stream.concept`` is the
    regime index). The label is one fixed function of the clipped inputs, so
    P(y|x) never changes. The shift runs parallel to the linear part of the
    decision boundary, so the class balance stays put too, and a model trained
    before the drift is about as accurate after it (within a point or two):
    input-drift detectors fire, quality does not drop, and nothing should be
    retrained. Schema: the demo's (``x0..x4``, ``segment``; label ``y``).

        >>> s = covariate_shift(4000, drift_at=2000, shift=1.0, seed=0)
        >>> s.drift_points, s.kind, [int(s.concept[i]) for i in (1999, 2000)]
        ([2000], 'covariate_shift', [0, 1])
        >>> x2 = s.features["x2"]
        >>> round(float((x2[2000:].mean() - x2[:2000].mean()) / x2[:2000].std()), 1)
        1.0
        >>> bool(abs(s.labels[2000:].mean() - s.labels[:2000].mean()) < 0.03)
        True
    """
    _check_common(n, noise)
    if not np.isfinite(shift) or abs(shift) > 3.0:
        raise ValueError(f"shift must be within [-3, 3] standard deviations, got {shift}")
    points = _drift_list(n, drift_at)
    rng = np.random.default_rng(seed)
    c = _base_concept(rng)
    d = np.zeros(len(DEMO_NUMERIC))
    d[_COVARIATE_FEATURES] = 1.0 / np.sqrt(len(_COVARIATE_FEATURES))
    w = c.w - (c.w @ d) * d  # boundary parallel to the shift (in standardised units)
    c = _Concept(w / np.linalg.norm(w), c.seg_bias, c.pair, c.centre)
    z, seg = _demo_inputs(rng, n)
    regime = _regimes(n, points)
    offset = np.zeros(len(DEMO_NUMERIC))
    offset[_COVARIATE_FEATURES] = shift * _SCALES[_COVARIATE_FEATURES]
    x = np.clip(c.centre + z * _SCALES + (regime % 2)[:, None] * offset, FEATURE_MIN, FEATURE_MAX)
    y = _fixed_labels(rng, x, seg, c, noise)
    return _demo_stream(x, seg, y, points, "covariate_shift", regime,
                        {"seed": seed, "noise": noise, "drift_at": points, "shift": shift})


def label_prior_shift(
    n: int,
    drift_at: int | Sequence[int],
    prior_after: float | Sequence[float] = 0.2,
    seed: int = 0,
    noise: float = 0.03,
    prior_before: float = 0.5,
) -> Stream:
    """Label shift on the demo schema: P(y = 1) changes at each drift point, P(x|y) does not.

    Each row first draws its label with the current prior, then its inputs
    from the fixed class-conditional distribution of the drift-free demo
    concept (rows of the stationary stream with that observed label, noise
    flips included). Priors run ``prior_before`` then ``prior_after``; with
    several drift points ``prior_after`` is either one value (the prior then
    alternates between the two) or one value per drift point.
    ``Stream.concept`` is the regime index. Schema: the demo's.

        >>> s = label_prior_shift(6000, drift_at=3000, prior_after=0.2, seed=0)
        >>> s.drift_points, s.kind
        ([3000], 'label_prior_shift')
        >>> round(float(s.labels[:3000].mean()), 1), round(float(s.labels[3000:].mean()), 1)
        (0.5, 0.2)
        >>> s = label_prior_shift(3000, drift_at=[1000, 2000], prior_after=[0.8, 0.1])
        >>> [round(float(s.labels[a:a + 1000].mean()), 1) for a in (0, 1000, 2000)]
        [0.5, 0.8, 0.1]
    """
    _check_common(n, noise)
    points = _drift_list(n, drift_at)
    if np.isscalar(prior_after):
        priors = [prior_before] + [prior_after if k % 2 else prior_before for k in range(1, len(points) + 1)]
    else:
        after = [float(p) for p in prior_after]  # type: ignore[union-attr]
        if len(after) != len(points):
            raise ValueError(f"prior_after has {len(after)} values for {len(points)} drift points")
        priors = [prior_before, *after]
    priors = [float(p) for p in priors]
    if any(not 0.0 < p < 1.0 for p in priors):
        raise ValueError(f"priors must lie in (0, 1), got {priors}")
    rng = np.random.default_rng(seed)
    c = _base_concept(rng)
    regime = _regimes(n, points)
    y = (rng.random(n) < np.asarray(priors)[regime]).astype(np.int64)
    need = [int((y == 0).sum()), int((y == 1).sum())]
    pool_x: list[list[np.ndarray]] = [[], []]
    pool_s: list[list[np.ndarray]] = [[], []]
    have = [0, 0]
    while have[0] < need[0] or have[1] < need[1]:  # about half of each draw falls in each class
        z, seg = _demo_inputs(rng, 2 * n + 256)
        xs = np.clip(c.centre + z * _SCALES, FEATURE_MIN, FEATURE_MAX)
        ys = _fixed_labels(rng, xs, seg, c, noise)
        for cls in (0, 1):
            m = ys == cls
            pool_x[cls].append(xs[m])
            pool_s[cls].append(seg[m])
            have[cls] += int(m.sum())
    x = np.empty((n, len(DEMO_NUMERIC)))
    segs = np.empty(n, dtype=np.int64)
    for cls in (0, 1):
        m = y == cls
        x[m] = np.concatenate(pool_x[cls])[: need[cls]]
        segs[m] = np.concatenate(pool_s[cls])[: need[cls]]
    return _demo_stream(x, segs, y, points, "label_prior_shift", regime,
                        {"seed": seed, "noise": noise, "drift_at": points, "priors": priors})


def stationary(n: int, seed: int = 0, noise: float = 0.03) -> Stream:
    """A drift-free stream on the demo schema: the demo's first concept, forever.

    No drift points; ``Stream.concept`` is all zeros. The control case: a
    healthy loop should neither detect drift nor retrain on it.

        >>> s = stationary(2000, seed=0)
        >>> s.drift_points, s.kind, int(s.concept.max()), sorted(s.features)
        ([], 'stationary', 0, ['segment', 'x0', 'x1', 'x2', 'x3', 'x4'])
    """
    _check_common(n, noise)
    rng = np.random.default_rng(seed)
    c = _base_concept(rng)
    z, seg = _demo_inputs(rng, n)
    x = np.clip(c.centre + z * _SCALES, FEATURE_MIN, FEATURE_MAX)
    y = _fixed_labels(rng, x, seg, c, noise)
    return _demo_stream(x, seg, y, [], "stationary", np.zeros(n, dtype=np.int64),
                        {"seed": seed, "noise": noise})


GENERATORS: dict[str, Callable[..., Stream]] = {
    "abrupt": abrupt_concept_drift,
    "gradual": rotating_hyperplane,
    "recurring": recurring_concepts,
    "covariate": covariate_shift,
    "prior": label_prior_shift,
    "sea": sea_concepts,
    "stationary": stationary,
}
"""Stream kinds (the ``--kind`` of ``lifelong simulate``) and their generators."""

GENERATOR_KINDS: dict[str, str] = {fn.__name__: kind for kind, fn in GENERATORS.items()}
"""``Stream.kind`` (the generator's name) -> its short kind in :data:`GENERATORS`."""


def _points(n: int, fractions: Sequence[float]) -> list[int]:
    return sorted({int(n * f) for f in fractions if 0 < int(n * f) < n})


def default_params(kind: str, n: int) -> dict[str, Any]:
    """The drift arguments :func:`make_stream` uses for ``kind`` when none are given.

        >>> default_params("sea", 8000), default_params("recurring", 8000)
        ({'drift_at': [2000, 4000, 6000]}, {'period': 2000})
    """
    kind = _resolve(kind)
    if kind in ("abrupt", "covariate", "prior"):
        return {"drift_at": _points(n, [0.5])}
    if kind == "gradual":
        return {"drift_at": _points(n, [1 / 3]), "width": max(1, n // 6)}
    if kind == "recurring":
        return {"period": max(1, n // 4)}
    if kind == "sea":
        return {"drift_at": _points(n, [0.25, 0.5, 0.75])}
    return {}


def _resolve(kind: str) -> str:
    if kind in GENERATORS:
        return kind
    if kind in GENERATOR_KINDS:
        return GENERATOR_KINDS[kind]
    raise ValueError(f"unknown stream kind {kind!r}; choose from {', '.join(GENERATORS)}")


def make_stream(kind: str, n: int, seed: int = 0, noise: float | None = None, **kw: Any) -> Stream:
    """Build a stream by kind: ``abrupt``, ``gradual``, ``recurring``, ``covariate``,
    ``prior``, ``sea`` or ``stationary`` (or the generator's own name).

    Arguments left out (or ``None``) take the generator's defaults, and the
    drift arguments those of :func:`default_params`; ``noise=None`` keeps the
    generator's own label-flip rate. An argument the generator does not take
    is a ``ValueError``.

        >>> s = make_stream("recurring", 3000, seed=1, noise=0.05)
        >>> s.kind, s.drift_points, s.params["noise"]
        ('recurring_concepts', [750, 1500, 2250], 0.05)
        >>> make_stream("abrupt", 1000, drift_at=[200, 600]).drift_points
        [200, 600]
        >>> make_stream("stationary", 10, drift_at=5)
        Traceback (most recent call last):
        ...
        ValueError: stream kind 'stationary' takes no drift_at; it takes noise
    """
    key = _resolve(kind)
    fn = GENERATORS[key]
    params = {**default_params(key, n), **{k: v for k, v in kw.items() if v is not None}}
    if noise is not None:
        params["noise"] = noise
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("n", "seed")]
    bad = sorted(set(params) - set(accepted))
    if bad:
        raise ValueError(f"stream kind {key!r} takes no {', '.join(bad)}; it takes {', '.join(accepted)}")
    return fn(n, seed=seed, **params)
