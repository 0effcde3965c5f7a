r"""Feature drift of one window of traffic against a version's training reference.

Numeric features: PSI over the reference quantile bins (+ a missing bucket) and a
two-sample KS test against the reference sample. Category features: PSI over the
categories (+ None/unknown) and a chi-square test of homogeneity, with the total
variation distance as effect size. A feature is drifted when

    PSI > psi_threshold   or   (p-value < ks_pvalue  and  effect >= ks_min_statistic)

The effect-size floor keeps huge windows from flagging negligible differences.

    >>> import numpy as np
    >>> from lifelong_ray.config import DriftConfig, FeatureSpec, LabelSpec, ModelSpec
    >>> from lifelong_ray.data.schema import Schema
    >>> schema = Schema(ModelSpec(name="m", label=LabelSpec(name="y", classes=[0, 1]),
    ...     features=[FeatureSpec(name="x0"), FeatureSpec(name="x1"),
    ...               FeatureSpec(name="c", dtype="category", categories=["a", "b"])]))
    >>> rng = np.random.default_rng(0)
    >>> def window(n, shift=0.0, p_a=0.5):
    ...     return {"x0": rng.normal(size=n), "x1": rng.normal(shift, 1.0, size=n),
    ...             "c": np.where(rng.random(n) < p_a, "a", "b").astype(object)}
    >>> ref = Reference.from_columns(window(5000), schema)
    >>> cfg = DriftConfig()
    >>> feature_drift(ref, window(500), cfg).reason
    'no feature drift: max PSI 0.03 (x0)'
    >>> report = feature_drift(ref, window(500, shift=1.0, p_a=0.9), cfg)
    >>> report.drifted, [f.feature for f in report.features if f.drifted]
    (True, ['x1', 'c'])
    >>> print(*report.reason.split("; "), sep="\n")
    PSI 0.90 > 0.20 on 2/3 features (c 0.90, x1 0.85)
    KS p<0.01 with D>=0.10 on 1/3 (x1 D=0.38)
    chi2 p<0.01 with TVD>=0.10 on 1/3 (c TVD=0.40)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from lifelong_ray.config import DriftConfig
from lifelong_ray.drift.reference import Reference
from lifelong_ray.drift.stats import (
    bin_proportions,
    category_counts,
    chi2_homogeneity,
    ks_2samp_columns,
    psi,
    sorted_columns,
    total_variation,
)

__all__ = ["FeatureDrift", "DriftReport", "feature_drift"]

_MAX_NAMED = 5  # features named per clause of a reason


def _num_out(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _num_in(v: float | None) -> float:
    return math.nan if v is None else float(v)


@dataclass(frozen=True)
class FeatureDrift:
    """Drift verdict of one feature. ``statistic`` is KS D (numeric) or the total
    variation distance (category); ``p_value`` is from KS or chi-square."""

    feature: str
    method: str  # "ks+psi" | "chi2+psi"
    psi: float
    statistic: float
    p_value: float
    drifted: bool

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("psi", "statistic", "p_value"):
            d[key] = _num_out(d[key])
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FeatureDrift":
        return cls(feature=d["feature"], method=d["method"], psi=_num_in(d["psi"]),
                   statistic=_num_in(d["statistic"]), p_value=_num_in(d["p_value"]),
                   drifted=bool(d["drifted"]))


@dataclass(frozen=True)
class DriftReport:
    """Feature drift of one window: per-feature verdicts and a reason with the numbers."""

    n: int
    features: list[FeatureDrift] = field(default_factory=list)
    n_drifted: int = 0
    drifted: bool = False
    reason: str = ""

    @property
    def max_psi(self) -> float:
        vals = [f.psi for f in self.features if math.isfinite(f.psi)]
        return max(vals, default=math.nan)

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "features": [f.to_json() for f in self.features],
                "n_drifted": self.n_drifted, "drifted": self.drifted, "reason": self.reason}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "DriftReport":
        return cls(n=int(d["n"]), features=[FeatureDrift.from_json(f) for f in d["features"]],
                   n_drifted=int(d["n_drifted"]), drifted=bool(d["drifted"]), reason=d["reason"])


def feature_drift(reference: Reference, current: Mapping[str, np.ndarray], cfg: DriftConfig) -> DriftReport:
    """Compare one window of ``current`` columns (as ``Schema.validate_records``
    returns them: numeric float64 with NaN for null, category object arrays of
    str/None) with ``reference``; see the module docstring for the rules."""
    missing = [name for name in reference.features if name not in current]
    if missing:
        raise ValueError(f"current window lacks features {missing}")
    lengths = {name: len(current[name]) for name in reference.features}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"current columns have different lengths: {lengths}")
    n = next(iter(lengths.values()), 0)
    if n == 0:
        return DriftReport(n=0, features=[], n_drifted=0, drifted=False,
                           reason="no feature drift check: empty window")

    verdicts: dict[str, FeatureDrift] = {}
    k_num = len(reference.numeric)
    if k_num:
        # sort the window once (threads, one column each); PSI and KS both use it
        x = sorted_columns([np.asarray(current[name], dtype=np.float64) for name in reference.numeric])
        psis = psi(reference.props, bin_proportions(x, reference.interior_edges))
        d, p = ks_2samp_columns(reference.sample, x)
        flags = _flags(psis, d, p, cfg)
        for j, name in enumerate(reference.numeric):
            verdicts[name] = FeatureDrift(name, "ks+psi", float(psis[j]), float(d[j]), float(p[j]),
                                          bool(flags[j]))
    k_cat = len(reference.categorical)
    if k_cat:
        width = max(len(c) for c in reference.counts)
        ref_counts = np.zeros((k_cat, width))
        cur_counts = np.zeros((k_cat, width))
        for j, name in enumerate(reference.categorical):
            rc = reference.counts[j]
            ref_counts[j, : len(rc)] = rc
            cur_counts[j, : len(rc)] = category_counts(current[name], reference.categories[j])
        ref_props = ref_counts / ref_counts.sum(axis=1, keepdims=True)
        cur_props = cur_counts / n
        psis = psi(ref_props, cur_props)
        tvd = total_variation(ref_props, cur_props)
        _, p = chi2_homogeneity(ref_counts, cur_counts)
        flags = _flags(psis, tvd, p, cfg)
        for j, name in enumerate(reference.categorical):
            verdicts[name] = FeatureDrift(name, "chi2+psi", float(psis[j]), float(tvd[j]), float(p[j]),
                                          bool(flags[j]))

    features = [verdicts[name] for name in reference.features]
    n_drifted = sum(f.drifted for f in features)
    drifted = n_drifted >= cfg.min_drifted_features
    return DriftReport(n=int(n), features=features, n_drifted=n_drifted, drifted=drifted,
                       reason=_reason(features, n_drifted, drifted, cfg))


def _flags(psis: np.ndarray, effect: np.ndarray, p: np.ndarray, cfg: DriftConfig) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (psis > cfg.psi_threshold) | ((p < cfg.ks_pvalue) & (effect >= cfg.ks_min_statistic))


def _by_psi(fs: list[FeatureDrift]) -> list[FeatureDrift]:
    return sorted(fs, key=lambda f: -f.psi if math.isfinite(f.psi) else math.inf)


def _names(fs: list[FeatureDrift], fmt: Callable[[FeatureDrift], str]) -> str:
    shown = ", ".join(fmt(f) for f in fs[:_MAX_NAMED])
    return shown + (f", +{len(fs) - _MAX_NAMED} more" if len(fs) > _MAX_NAMED else "")


def _reason(features: list[FeatureDrift], n_drifted: int, drifted: bool, cfg: DriftConfig) -> str:
    k = len(features)
    if n_drifted == 0:
        top = _by_psi(features)[0]
        return f"no feature drift: max PSI {top.psi:.2f} ({top.feature})"
    parts = []
    by_psi = _by_psi([f for f in features if f.psi > cfg.psi_threshold])
    if by_psi:
        parts.append(f"PSI {by_psi[0].psi:.2f} > {cfg.psi_threshold:.2f} on {len(by_psi)}/{k} features "
                     f"({_names(by_psi, lambda f: f'{f.feature} {f.psi:.2f}')})")
    for method, test, eff in (("ks+psi", "KS", "D"), ("chi2+psi", "chi2", "TVD")):
        hits = sorted((f for f in features if f.method == method and f.p_value < cfg.ks_pvalue
                       and f.statistic >= cfg.ks_min_statistic), key=lambda f: -f.statistic)
        if hits:
            parts.append(f"{test} p<{cfg.ks_pvalue:g} with {eff}>={cfg.ks_min_statistic:.2f} on "
                         f"{len(hits)}/{k} ({_names(hits, lambda f: f'{f.feature} {eff}={f.statistic:.2f}')})")
    text = "; ".join(parts)
    if not drifted:
        return (f"feature drift below quorum: {n_drifted}/{k} features drifted < "
                f"{cfg.min_drifted_features} required ({text})")
    return text
