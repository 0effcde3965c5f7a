"""Drift detectors: pure numpy/scipy, no Ray, no I/O, no clock.

- :class:`Reference` -- a version's training feature summary (JSON-serializable)
- :func:`feature_drift` -- PSI + KS (numeric) / PSI + chi-square (category) per window
- :func:`accuracy_check`, :class:`PageHinkley` -- performance drift on labeled errors
- :func:`update_monitor` -- hysteresis over consecutive flagged windows
- :mod:`lifelong_ray.drift.stats` -- the vectorized statistics underneath
"""

from lifelong_ray.drift.feature import DriftReport, FeatureDrift, feature_drift
from lifelong_ray.drift.monitor import MonitorState, update_monitor
from lifelong_ray.drift.performance import PageHinkley, QualityCheck, accuracy_check
from lifelong_ray.drift.reference import Reference
from lifelong_ray.drift.stats import (
    bin_proportions,
    category_counts,
    chi2_homogeneity,
    ks_2samp_columns,
    psi,
    total_variation,
)

__all__ = [
    "Reference",
    "FeatureDrift",
    "DriftReport",
    "feature_drift",
    "QualityCheck",
    "accuracy_check",
    "PageHinkley",
    "MonitorState",
    "update_monitor",
    "psi",
    "ks_2samp_columns",
    "bin_proportions",
    "category_counts",
    "chi2_homogeneity",
    "total_variation",
]
