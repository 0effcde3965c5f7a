"""The training reference a model version's features are compared against.

Built once from the training columns when a version is trained, stored as JSON
next to the model, and handed to :func:`~lifelong_ray.drift.feature.feature_drift`
with each window of live traffic.

    >>> import numpy as np
    >>> from lifelong_ray.config import FeatureSpec, LabelSpec, ModelSpec
    >>> from lifelong_ray.data.schema import Schema
    >>> schema = Schema(ModelSpec(name="m", label=LabelSpec(name="y", classes=[0, 1]),
    ...     features=[FeatureSpec(name="x"), FeatureSpec(name="c", dtype="category", categories=["a", "b"])]))
    >>> rng = np.random.default_rng(0)
    >>> cols = {"x": rng.normal(size=1000), "c": rng.choice(np.array(["a", "b"], dtype=object), 1000)}
    >>> ref = Reference.from_columns(cols, schema, bins=4, max_sample=100)
    >>> ref.numeric, ref.categorical, ref.sample.shape
    (('x',), ('c',), (100, 1))
    >>> ref.props.round(2).tolist()          # 4 quantile bins + a missing bucket
    [[0.25, 0.25, 0.25, 0.25, 0.0]]
    >>> Reference.from_json(ref.to_json()).to_json() == ref.to_json()
    True
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from lifelong_ray.drift.stats import bin_proportions, category_counts, sorted_columns

__all__ = ["Reference", "REFERENCE_FORMAT"]

REFERENCE_FORMAT = 1


class _FeatureLike(Protocol):
    name: str
    dtype: str
    categories: list[str] | None


class _SchemaLike(Protocol):
    features: Sequence[_FeatureLike]


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values.tolist()]


def _none_to_nan(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Reference:
    """Training reference of a model version's features, for drift checks.

    Numeric features keep quantile bin ``edges`` (``[k, bins + 1]``, min to max),
    the reference share of rows per bin ``props`` (``[k, bins + 1]``: ``bins``
    bins and a last bucket for missing values) and a sorted random ``sample`` of
    the finite values for KS tests (``[m, k]``, NaN padding at the end of columns
    that had fewer finite values). Category features keep ``counts`` per schema
    category plus a last bucket for None/unknown values. Build with
    :meth:`from_columns`; persist with :meth:`to_json` / :meth:`from_json`.
    """

    n: int
    bins: int
    features: tuple[str, ...]
    numeric: tuple[str, ...]
    edges: np.ndarray
    props: np.ndarray
    sample: np.ndarray
    categorical: tuple[str, ...]
    categories: tuple[tuple[str, ...], ...]
    counts: tuple[np.ndarray, ...]

    # -- construction --------------------------------------------------------
    @classmethod
    def from_columns(
        cls,
        columns: Mapping[str, np.ndarray],
        schema: _SchemaLike,
        bins: int = 10,
        max_sample: int = 5000,
        seed: int = 0,
    ) -> "Reference":
        """Summarize training columns (numeric float64 with NaN for null, category
        as str/None object arrays) for every feature of ``schema``. With
        ``max_sample`` >= the number of rows the KS sample is every finite training
        value (a full reference: KS against the whole training set, not a sample)."""
        if int(bins) != bins or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins}")
        if int(max_sample) != max_sample or max_sample < 1:
            raise ValueError(f"max_sample must be an integer >= 1, got {max_sample}")
        feats = list(schema.features)
        missing = [f.name for f in feats if f.name not in columns]
        if missing:
            raise ValueError(f"reference columns missing for features {missing}")
        lengths = {f.name: len(columns[f.name]) for f in feats}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"reference columns have different lengths: {lengths}")
        n = next(iter(lengths.values()))
        if n == 0:
            raise ValueError("a reference needs at least one row")

        num = [f for f in feats if f.dtype != "category"]
        cat = [f for f in feats if f.dtype == "category"]
        k = len(num)
        x = np.empty((n, k), dtype=np.float64, order="F")  # contiguous columns
        for j, f in enumerate(num):
            x[:, j] = np.asarray(columns[f.name], dtype=np.float64)
        xs = sorted_columns(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            edges = np.nanquantile(xs, np.linspace(0.0, 1.0, bins + 1), axis=0).T.reshape(k, bins + 1)
        props = bin_proportions(xs, edges[:, 1:-1])
        sample = _sorted_sample(x, xs, int(max_sample), np.random.default_rng(seed))
        return cls(
            n=int(n),
            bins=int(bins),
            features=tuple(f.name for f in feats),
            numeric=tuple(f.name for f in num),
            edges=edges,
            props=props,
            sample=sample,
            categorical=tuple(f.name for f in cat),
            categories=tuple(tuple(f.categories or ()) for f in cat),
            counts=tuple(category_counts(columns[f.name], f.categories or []) for f in cat),
        )

    # -- derived views -------------------------------------------------------
    @property
    def interior_edges(self) -> np.ndarray:
        """The ``bins - 1`` edges between bins, ``[k, bins - 1]``."""
        return self.edges[:, 1:-1]

    def category_props(self) -> list[np.ndarray]:
        """Reference share per category (+ None/unknown) for each category feature."""
        return [c / c.sum() for c in self.counts]

    # -- persistence ---------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN stored as null)."""
        numeric = {}
        for j, name in enumerate(self.numeric):
            col = self.sample[:, j]
            numeric[name] = {
                "edges": _nan_to_none(self.edges[j]),
                "props": self.props[j].tolist(),
                "sample": col[~np.isnan(col)].tolist(),
            }
        categorical = {
            name: {"categories": list(cats), "counts": counts.tolist()}
            for name, cats, counts in zip(self.categorical, self.categories, self.counts)
        }
        return {
            "format": REFERENCE_FORMAT,
            "n": self.n,
            "bins": self.bins,
            "features": list(self.features),
            "numeric": numeric,
            "categorical": categorical,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Reference":
        """Rebuild a reference written by :meth:`to_json`."""
        fmt = d.get("format")
        if fmt != REFERENCE_FORMAT:
            raise ValueError(f"unsupported reference format {fmt!r}, expected {REFERENCE_FORMAT}")
        bins = int(d["bins"])
        num: Mapping[str, Any] = d["numeric"]
        cat: Mapping[str, Any] = d["categorical"]
        k = len(num)
        samples = [np.asarray(v["sample"], dtype=np.float64) for v in num.values()]
        m = max((len(s) for s in samples), default=0)
        sample = np.full((m, k), np.nan, order="F")
        for j, s in enumerate(samples):
            sample[: len(s), j] = s
        return cls(
            n=int(d["n"]),
            bins=bins,
            features=tuple(d["features"]),
            numeric=tuple(num),
            edges=np.array([_none_to_nan(v["edges"]) for v in num.values()]).reshape(k, bins + 1),
            props=np.array([v["props"] for v in num.values()], dtype=np.float64).reshape(k, bins + 1),
            sample=sample,
            categorical=tuple(cat),
            categories=tuple(tuple(v["categories"]) for v in cat.values()),
            counts=tuple(np.asarray(v["counts"], dtype=np.int64) for v in cat.values()),
        )


def _sorted_sample(x: np.ndarray, xs: np.ndarray, max_sample: int, rng: np.random.Generator) -> np.ndarray:
    """Per column, up to ``max_sample`` finite values drawn without replacement,
    sorted, NaN-padded; one shared random row order keeps it vectorized. ``xs`` is
    ``x`` already sorted per column: the whole of it is the sample when
    ``max_sample`` covers every row (a full reference). Fortran order, so each
    column is contiguous for the KS test."""
    n, k = x.shape
    if n > max_sample:
        rank = rng.permutation(n)
        key = np.where(np.isnan(x), n, rank[:, None])
        pick = np.argpartition(key, max_sample - 1, axis=0)[:max_sample]
        xs = sorted_columns(np.take_along_axis(x, pick, axis=0))
    rows = int(np.count_nonzero(~np.isnan(xs), axis=0).max(initial=0))
    return np.asfortranarray(xs[:rows])
