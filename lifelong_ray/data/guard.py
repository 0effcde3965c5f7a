"""The poisoning and label guard: pure checks of a labeled batch against history.

Before a labeled batch is accepted it is compared with what the model has seen;
each check that fires gives a :class:`GuardFinding` whose message carries the
numbers, and the batch is quarantined whole (nothing of it is trained on):

* **label_disagreement** — the batch's labels disagree with the champion's
  predictions far more often than the champion's recent live error: the excess
  is above ``data.guard_disagreement_margin`` *and* a one-sided Fisher exact test
  (``scipy.stats.fisher_exact``) of batch vs baseline error is significant at
  ``data.guard_pvalue``. This is what catches a label-flip attack: flipping 30% of
  a balanced binary batch leaves its label distribution where it was, but the
  champion, right ~95% of the time on clean data, now "errs" on ~33% of rows.
* **label_shift** — the batch's label distribution is more than
  ``data.guard_label_shift`` away (total variation) from recent history, and a
  chi-square goodness-of-fit test against the history's (smoothed) proportions
  is significant at ``data.guard_pvalue``.
* **out_of_range** — more than ``data.guard_out_of_range_fraction`` of the rows
  have a numeric feature beyond the training min/max by more than
  ``data.guard_range_widths`` training ranges.

Batches smaller than ``data.guard_min_rows`` are not judged (too few rows for a
test; a slow drip of small poisoned batches is out of this guard's reach), nor
is a check whose history is missing (no champion yet: no disagreement check).

A genuine, sudden concept change looks exactly like mislabeling to any check of
one batch against the past: a batch-ingested drifted batch is quarantined too, and
an operator who knows the world changed releases it (``lifelong quarantine
release``). Live feedback joined by the controller does not pass this guard: a
real concept change there is what drift detection and retraining are for.

    >>> import numpy as np
    >>> from lifelong_ray.config import DataConfig
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.integers(0, 2, 1000)
    >>> champion = np.where(rng.random(1000) < 0.05, 1 - truth, truth)   # right 95% of the time
    >>> flipped = np.where(rng.random(1000) < 0.3, 1 - truth, truth)     # a 30% label flip
    >>> f = label_disagreement(flipped, champion, base_errors=30, base_rows=600, cfg=DataConfig())
    >>> f.reason.value, f.data["batch_error"] > 0.3, f.data["p_value"] < 1e-6
    ('label_disagreement', True, True)
    >>> label_disagreement(truth, champion, base_errors=30, base_rows=600, cfg=DataConfig()) is None
    True
    >>> label_shift(flipped, truth, classes=[0, 1], cfg=DataConfig()) is None   # priors unchanged
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Sequence

import numpy as np
from scipy import stats

from lifelong_ray.config import DataConfig


class GuardReason(str, Enum):
    LABEL_DISAGREEMENT = "label_disagreement"
    LABEL_SHIFT = "label_shift"
    OUT_OF_RANGE = "out_of_range"


@dataclass(frozen=True)
class GuardFinding:
    """One check that fired: the reason code, a message with the numbers, the numbers."""

    reason: GuardReason
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class History:
    """What a batch is judged against.

    ``labels``: recent labels of the labeled log; ``ranges``: training ``(min, max)``
    per numeric feature; ``base_errors``/``base_rows``: the champion's recent live
    error count over that many labeled rows (None without a champion)."""

    labels: np.ndarray
    ranges: dict[str, tuple[float, float]]
    base_errors: int | None = None
    base_rows: int = 0


def label_disagreement(labels: np.ndarray, champion_pred: np.ndarray, *, base_errors: int, base_rows: int,
                       cfg: DataConfig) -> GuardFinding | None:
    """Labels disagreeing with the champion far beyond its usual error (see the module doc)."""
    labels, champion_pred = np.asarray(labels), np.asarray(champion_pred)
    n = len(labels)
    if n < cfg.guard_min_rows or base_rows <= 0:
        return None
    errors = int((labels != champion_pred).sum())
    p_batch, p_base = errors / n, base_errors / base_rows
    excess = p_batch - p_base
    if excess <= cfg.guard_disagreement_margin:
        return None
    p_value = float(stats.fisher_exact([[errors, n - errors], [base_errors, base_rows - base_errors]],
                                       alternative="greater")[1])
    if p_value >= cfg.guard_pvalue:
        return None
    return GuardFinding(
        GuardReason.LABEL_DISAGREEMENT,
        f"labels disagree with the champion on {p_batch:.1%} of {n} rows vs its recent error "
        f"{p_base:.1%} on {base_rows} rows: +{excess:.1%} > {cfg.guard_disagreement_margin:.0%} "
        f"(Fisher exact p={p_value:.2g} < {cfg.guard_pvalue:g})",
        {"batch_error": p_batch, "base_error": p_base, "rows": n, "base_rows": base_rows, "p_value": p_value})


def label_shift(labels: np.ndarray, history: np.ndarray, *, classes: Sequence[int],
                cfg: DataConfig) -> GuardFinding | None:
    """A label distribution far (total variation) and significantly (chi-square) off history."""
    labels, history = np.asarray(labels), np.asarray(history)
    if len(labels) < cfg.guard_min_rows or len(history) < cfg.guard_min_rows:
        return None
    counts = np.array([(labels == c).sum() for c in classes], dtype=float)
    hist = np.array([(history == c).sum() for c in classes], dtype=float)
    p, q = counts / counts.sum(), hist / hist.sum()
    tv = 0.5 * float(np.abs(p - q).sum())
    if tv <= cfg.guard_label_shift:
        return None
    expected = (hist + 1) / (hist.sum() + len(classes)) * counts.sum()   # smoothed: no zero cells
    p_value = float(stats.chisquare(counts, expected).pvalue)
    if p_value >= cfg.guard_pvalue:
        return None
    shares = ", ".join(f"{c}: {a:.0%} vs {b:.0%}" for c, a, b in zip(classes, p, q))
    return GuardFinding(
        GuardReason.LABEL_SHIFT,
        f"label distribution of {len(labels)} rows departs from the last {len(history)} labeled rows "
        f"({shares}): total variation {tv:.2f} > {cfg.guard_label_shift:g} (chi-square p={p_value:.2g})",
        {"total_variation": tv, "p_value": p_value, "batch": p.tolist(), "history": q.tolist()})


def out_of_range(columns: dict[str, np.ndarray], ranges: dict[str, tuple[float, float]], *,
                 cfg: DataConfig) -> GuardFinding | None:
    """Too many rows far outside the training range of some numeric feature.

    A feature whose training range is a single value uses a range of
    ``max(|value|, 1)``."""
    n = len(next(iter(columns.values()))) if columns else 0
    if n < cfg.guard_min_rows or not ranges:
        return None
    far_rows = np.zeros(n, dtype=bool)
    per_feature: dict[str, int] = {}
    for name, (lo, hi) in ranges.items():
        x = np.asarray(columns[name], dtype=np.float64)
        width = hi - lo if hi > lo else max(abs(hi), 1.0)
        margin = cfg.guard_range_widths * width
        with np.errstate(invalid="ignore"):
            far = (x < lo - margin) | (x > hi + margin)
        if far.any():
            per_feature[name] = int(far.sum())
            far_rows |= far
    share = float(far_rows.mean())
    if share <= cfg.guard_out_of_range_fraction:
        return None
    worst = ", ".join(f"{k}: {v} rows outside [{ranges[k][0]:g}, {ranges[k][1]:g}] ± "
                      f"{cfg.guard_range_widths:g} ranges" for k, v in sorted(per_feature.items()))
    return GuardFinding(
        GuardReason.OUT_OF_RANGE,
        f"{share:.1%} of {n} rows are far outside the training range ({worst}) "
        f"> {cfg.guard_out_of_range_fraction:.0%}",
        {"share": share, "rows": n, "features": per_feature})


def check_batch(labels: np.ndarray, columns: dict[str, np.ndarray], history: History, *,
                classes: Sequence[int], cfg: DataConfig,
                champion_pred: np.ndarray | None = None) -> list[GuardFinding]:
    """Every check that fires on a labeled batch, worst first (disagreement, shift, range)."""
    findings = []
    if champion_pred is not None and history.base_errors is not None:
        findings.append(label_disagreement(labels, champion_pred, base_errors=history.base_errors,
                                           base_rows=history.base_rows, cfg=cfg))
    findings.append(label_shift(labels, history.labels, classes=classes, cfg=cfg))
    findings.append(out_of_range(columns, history.ranges, cfg=cfg))
    return [f for f in findings if f is not None]
