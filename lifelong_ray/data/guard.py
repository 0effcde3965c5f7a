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

A check needs ``data.guard_min_rows`` rows: a smaller batch is judged together
with the rows before it (batch ingest: the newest batch-ingested rows, see
:func:`lifelong_ray.data.ingest.guard_findings`), so a drip of small batches
accumulates instead of slipping through. A check whose history is missing (no
champion yet: no disagreement check) does not run.

Live ``:feedback`` labels go through :class:`RollingLabelGuard` in the ingress:
a bounded rolling window of the newest labels vs the served predictions, judged
with :func:`label_disagreement`'s test against a baseline of older accepted
labels on every request (small requests accumulate in the window). When the
window's disagreement collapses the stream is quarantined: every label is
diverted to the quarantine store (nothing of it reaches the feedback log, so
nothing of it trains) until the newest ``data.guard_live_window_rows`` labels agree
with the predictions again.

A genuine, sudden concept change looks exactly like mislabeling to any check of
one batch against the past: a batch-ingested drifted batch is quarantined too, and
an operator who knows the world changed releases it (``lifelong quarantine
release``). For live feedback that is why ``data.guard_live`` defaults to
``alert`` (flag, keep training: a real concept change there is what drift
detection and retraining are for) and quarantines only when set to ``quarantine``.

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

from collections import deque
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
    return disagreement_counts(int((labels != champion_pred).sum()), len(labels), base_errors=base_errors,
                               base_rows=base_rows, cfg=cfg)


def disagreement_counts(errors: int, n: int, *, base_errors: int, base_rows: int,
                        cfg: DataConfig) -> GuardFinding | None:
    """:func:`label_disagreement` from counts: ``errors`` of ``n`` rows vs ``base_errors`` of ``base_rows``.

    >>> from lifelong_ray.config import DataConfig
    >>> disagreement_counts(20, 60, base_errors=50, base_rows=1000, cfg=DataConfig()).data["rows"]
    60
    >>> disagreement_counts(20, 49, base_errors=50, base_rows=1000, cfg=DataConfig(guard_min_rows=50)) is None
    True
    """
    if n < cfg.guard_min_rows or base_rows <= 0:
        return None
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


# -- live feedback: the rolling-window guard (pure, no I/O) ----------------------------
#: the quarantine ``source`` of live ``:feedback`` labels (a release appends them to the feedback log)
LIVE_FEEDBACK_SOURCE = "live_feedback"


class StreamState(str, Enum):
    """Lifecycle of a model's live label stream: ``open`` ⇄ ``quarantined``."""

    OPEN = "open"
    QUARANTINED = "quarantined"


@dataclass(frozen=True)
class LiveVerdict:
    """What to do with one request's labels: ``accept`` them (else quarantine them),
    the stream's state after them, whether this request changed it, and the finding
    (the collapse that holds the stream quarantined, with its numbers)."""

    accept: bool
    state: StreamState
    changed: bool
    finding: GuardFinding | None
    window_rows: int


class RollingLabelGuard:
    """The label-flip guard of a live label stream over bounded rolling windows.

    Every request's labels are compared with the predictions that were served for
    them. ``window`` holds the disagreement (1 = label != prediction) of the newest
    ``window_rows`` labels; ``baseline`` the older accepted ones that left it (at
    most ``baseline_rows``). Each request is judged with :func:`disagreement_counts`
    on the window *including the request* against the baseline (or, while the
    baseline has fewer than ``guard_min_rows`` rows, the ``prior`` given: the
    champion's holdout error), so no request is too small to count: small requests
    accumulate in the window.

    * **open**: a request whose window collapses is quarantined and the stream
      becomes **quarantined**; the window it judged becomes the probation window.
    * **quarantined**: every request is quarantined and added to the probation
      window (the newest ``window_rows`` labels); once that window no longer
      collapses, the stream is **open** again (the request that showed it is still
      quarantined) and the probation window becomes the window.

    Memory is bounded by ``window_rows + baseline_rows`` booleans.

    >>> from lifelong_ray.config import DataConfig
    >>> g = RollingLabelGuard(DataConfig(guard_min_rows=50), window_rows=100, baseline_rows=1000)
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.integers(0, 2, 2000)
    >>> pred = np.where(rng.random(2000) < 0.05, 1 - truth, truth)       # served, right 95% of the time
    >>> [g.judge(truth[i:i + 1], pred[i:i + 1]).accept for i in range(600)].count(False)   # clean: one at a time
    0
    >>> flipped = np.where(rng.random(2000) < 0.4, 1 - truth, truth)     # a 40% flip, 1-row requests
    >>> verdicts = [g.judge(flipped[i:i + 1], pred[i:i + 1]) for i in range(600, 1000)]
    >>> first = next(i for i, v in enumerate(verdicts) if not v.accept)
    >>> verdicts[first].state.value, verdicts[first].finding.reason.value, all(not v.accept for v in verdicts[first:])
    ('quarantined', 'label_disagreement', True)
    >>> back = [g.judge(truth[i:i + 1], pred[i:i + 1]) for i in range(1000, 1300)]   # clean again: reopens
    >>> back[-1].state.value, back[-1].accept
    ('open', True)
    """

    def __init__(self, cfg: DataConfig, *, window_rows: int, baseline_rows: int,
                 prior: tuple[int, int] | None = None) -> None:
        if window_rows < 1 or baseline_rows < 1:
            raise ValueError(f"window_rows and baseline_rows must be >= 1, got {window_rows}, {baseline_rows}")
        self.cfg = cfg
        self.window_rows, self.baseline_rows = int(window_rows), int(baseline_rows)
        self.prior = prior
        self.state = StreamState.OPEN
        self.window: deque[int] = deque()
        self.baseline: deque[int] = deque()
        self._window_errors = 0
        self._base_errors = 0
        self.finding: GuardFinding | None = None

    def base(self) -> tuple[int, int] | None:
        """``(errors, rows)`` the window is judged against, or None (no baseline, no judgement)."""
        if len(self.baseline) >= self.cfg.guard_min_rows:
            return self._base_errors, len(self.baseline)
        return self.prior

    def _test(self, errors: int, rows: int) -> GuardFinding | None:
        base = self.base()
        if base is None:
            return None
        return disagreement_counts(errors, rows, base_errors=base[0], base_rows=base[1], cfg=self.cfg)

    def _push_window(self, errs: np.ndarray, *, to_baseline: bool) -> None:
        for e in errs.tolist():
            self.window.append(e)
            self._window_errors += e
            if len(self.window) > self.window_rows:
                old = self.window.popleft()
                self._window_errors -= old
                if to_baseline:
                    self.baseline.append(old)
                    self._base_errors += old
                    if len(self.baseline) > self.baseline_rows:
                        self._base_errors -= self.baseline.popleft()

    def judge(self, labels: np.ndarray, predictions: np.ndarray) -> LiveVerdict:
        """Judge one request's labels (aligned with the predictions served for them) and
        update the windows. An empty request changes nothing."""
        errs = (np.asarray(labels) != np.asarray(predictions)).astype(np.int64)
        if errs.size == 0:
            return LiveVerdict(self.state == StreamState.OPEN, self.state, False, self.finding, len(self.window))
        tail = errs[-self.window_rows:]
        keep = max(0, self.window_rows - tail.size)
        kept = list(self.window)[len(self.window) - keep:] if keep else []
        rows, errors = len(kept) + tail.size, sum(kept) + int(tail.sum())
        finding = self._test(errors, rows)
        if self.state == StreamState.OPEN:
            if finding is None:
                self._push_window(errs, to_baseline=True)
                return LiveVerdict(True, self.state, False, None, len(self.window))
            self.state, self.finding = StreamState.QUARANTINED, finding
            self._push_window(errs, to_baseline=False)   # the window becomes the probation window
            return LiveVerdict(False, self.state, True, finding, len(self.window))
        self._push_window(errs, to_baseline=False)
        if finding is None and len(self.window) >= min(self.window_rows, self.cfg.guard_min_rows):
            self.state, self.finding = StreamState.OPEN, None
            return LiveVerdict(False, self.state, True, None, len(self.window))
        self.finding = finding or self.finding
        return LiveVerdict(False, self.state, False, self.finding, len(self.window))
