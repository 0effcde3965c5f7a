"""SLOs and error budgets: time-bucketed SLI counts and multi-window burn-rate alerts.

Four SLIs, each a ratio of good events to all events with an objective (the
share of events that must be good; ``1 - objective`` is the error budget):

=============  ==============================================  ===========================
SLI            event (good when)                               objective
=============  ==============================================  ===========================
quality        a joined label (the prediction was correct)     ``slo.min_accuracy``
latency        a served row with a measured latency            0.95 (it is a p95 target)
               (latency ≤ ``slo.p95_latency_ms``)
error_rate     a served row (it got an answer, not an error)   ``1 - slo.max_error_rate``
freshness      a time bucket with served traffic (the newest   ``slo.objective``
               label is younger than ``max_label_age_seconds``)
=============  ==============================================  ===========================

The burn rate over a window is ``bad fraction / (1 - objective)``: 1.0 spends
the budget exactly over the period. An alert pair (Google SRE workbook, ch. 5)
fires when the burn rate over BOTH its long and its short window exceeds its
threshold (``slo.fast``: 1 h and 5 min at 14.4; ``slo.slow``: 6 h and 30 min at
6). A window without events has no burn (rate 0, and the reasons say "no data").
The budget left is ``1 - bad / (allowed bad)`` over the events of the budget
period that are retained: the last ``slo.period_seconds`` (:class:`SLIBuckets`
keeps exactly that much); it is spent (``exhausted``) when more bad events
happened than the budget allows (remaining < 0).

:class:`SLIBuckets` holds the counts in fixed-width time buckets (width
:func:`bucket_seconds`, a fifth of the shortest alert window), so windows are
resolved to one bucket and memory is bounded by the period. Served rows count
at their prediction time, labels at their arrival time (``t_label``).

    >>> import numpy as np
    >>> from lifelong_ray.config import SLOConfig
    >>> cfg = SLOConfig(max_error_rate=0.01)
    >>> b = SLIBuckets.for_config(cfg)
    >>> t = np.arange(0.0, 3600.0, 1.0)                     # one request a second for an hour
    >>> err = t >= 3000                                     # ... failing for the last 10 minutes
    >>> b.add_served(t, err, np.full(t.size, 20.0))
    >>> s = evaluate_budget(b, cfg, now=3600.0)
    >>> fast = s.slis["error_rate"].alerts[0]
    >>> fast.firing, round(fast.long.burn_rate, 1), round(fast.short.burn_rate, 1)
    (True, 16.7, 100.0)
    >>> s.exhausted, s.alerting
    (True, True)
    >>> for part in s.reason.split("; "): print(part)
    error-rate budget exhausted: 16.7% errors over 1h (3600 served rows) > 1.0% allowed (burn 16.7x)
    error-rate fast burn: 16.7x over 1h and 100.0x over 5m > 14.4x
    error-rate slow burn: 16.7x over 6h and 33.3x over 30m > 6x
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from pydantic import BaseModel, ConfigDict

from lifelong_ray.config import BurnWindow, SLOConfig

LATENCY_OBJECTIVE = 0.95  # the latency SLI is a p95 target: 95% of rows within p95_latency_ms
BUCKETS_PER_SHORT_WINDOW = 5


class SLI(str, Enum):
    QUALITY = "quality"
    LATENCY = "latency"
    ERROR_RATE = "error_rate"
    FRESHNESS = "freshness"


# Display name, what a bad event is, what an event is (for reasons).
_WORDS = {
    SLI.QUALITY: ("quality", "incorrect", "labels"),
    SLI.LATENCY: ("latency", "slow", "timed rows"),
    SLI.ERROR_RATE: ("error-rate", "errors", "served rows"),
    SLI.FRESHNESS: ("freshness", "stale", "buckets"),
}


def objectives(cfg: SLOConfig) -> dict[SLI, float]:
    """The objective (share of good events) of each SLI.

    >>> objectives(SLOConfig())[SLI.ERROR_RATE]
    0.99
    """
    return {SLI.QUALITY: cfg.min_accuracy, SLI.LATENCY: LATENCY_OBJECTIVE,
            SLI.ERROR_RATE: 1.0 - cfg.max_error_rate, SLI.FRESHNESS: cfg.objective}


def bucket_seconds(cfg: SLOConfig) -> float:
    """Bucket width: a fifth of the shortest alert window (60 s by default).

    >>> bucket_seconds(SLOConfig())
    60.0
    """
    return min(cfg.fast.short_seconds, cfg.slow.short_seconds) / BUCKETS_PER_SHORT_WINDOW


# -- the counts ----------------------------------------------------------------------

# Columns of SLIBuckets.counts.
_SERVED, _ERRORS, _TIMED, _SLOW, _LABELED, _INCORRECT = range(6)


@dataclass
class SLIBuckets:
    """SLI event counts per time bucket ``[k * width, (k + 1) * width)``.

    ``counts[i]`` is bucket ``start + i``: served rows, errors, rows with a
    measured latency, those slower than ``latency_ms``, joined labels, incorrect
    ones; ``newest_label[i]`` is the newest prediction time among the labels
    that arrived in the bucket (NaN if none). Only the last ``keep`` buckets are
    held: rows older than that are dropped when they arrive and old buckets when
    newer ones appear; ``newest_label_before`` remembers what the dropped buckets
    knew about freshness. Fill with :meth:`add_served` and :meth:`add_labels`.
    """

    width: float
    latency_ms: float
    keep: int
    max_label_age: float
    start: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))
    newest_label: np.ndarray = field(default_factory=lambda: np.zeros(0))
    newest_label_before: float = -math.inf
    first_served_t: float = math.inf

    @classmethod
    def for_config(cls, cfg: SLOConfig) -> SLIBuckets:
        """Empty buckets that retain ``cfg.period_seconds`` (at least the longest alert window)."""
        width = bucket_seconds(cfg)
        span = max(cfg.period_seconds, cfg.fast.long_seconds, cfg.slow.long_seconds)
        return cls(width=width, latency_ms=cfg.p95_latency_ms, keep=math.ceil(span / width) + 1,
                   max_label_age=cfg.max_label_age_seconds)

    @property
    def end(self) -> int:
        """One past the newest bucket id held."""
        return self.start + len(self.counts)

    def add_served(self, t: np.ndarray, error: np.ndarray, latency_ms: np.ndarray) -> None:
        """Served rows: prediction time, error flag, latency in ms (NaN: not measured)."""
        t = np.asarray(t, dtype=float)
        if t.size:
            self.first_served_t = min(self.first_served_t, float(t.min()))
        lat = np.asarray(latency_ms, dtype=float)
        timed = np.isfinite(lat)
        self._add(t, {_SERVED: np.ones(t.size), _ERRORS: np.asarray(error, dtype=float),
                      _TIMED: timed.astype(float), _SLOW: (timed & (lat > self.latency_ms)).astype(float)})

    def add_labels(self, arrival_t: np.ndarray, prediction_t: np.ndarray, correct: np.ndarray) -> None:
        """Joined labels: when each label arrived, the time of its prediction, and
        whether the prediction was correct."""
        arrival_t = np.asarray(arrival_t, dtype=float)
        ids = self._add(arrival_t, {_LABELED: np.ones(arrival_t.size),
                                    _INCORRECT: 1.0 - np.asarray(correct, dtype=float)})
        if ids is not None:
            idx, keep = ids
            np.fmax.at(self.newest_label, idx, np.asarray(prediction_t, dtype=float)[keep])

    def _add(self, t: np.ndarray, columns: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        if t.size == 0:
            return None
        ids = np.floor(t / self.width).astype(np.int64)
        if len(self.counts) == 0:
            self.start = int(ids.min())
        self._cover(int(ids.min()), int(ids.max()))
        keep = ids >= self.start  # rows older than the retained span are dropped
        idx = ids[keep] - self.start
        for col, values in columns.items():
            np.add.at(self.counts[:, col], idx, values[keep])
        return idx, keep

    def _cover(self, lo: int, hi: int) -> None:
        """Grow to hold bucket ids ``lo..hi``, then drop buckets beyond ``keep``."""
        new_start, new_end = min(lo, self.start), max(hi + 1, self.end)
        new_start = max(new_start, new_end - self.keep)
        if (new_start, new_end) == (self.start, self.end):
            return
        counts = np.zeros((new_end - new_start, 6))
        newest = np.full(new_end - new_start, np.nan)
        lo_old, hi_old = max(self.start, new_start), self.end  # the old buckets that stay
        if hi_old > lo_old:
            counts[lo_old - new_start:hi_old - new_start] = self.counts[lo_old - self.start:]
            newest[lo_old - new_start:hi_old - new_start] = self.newest_label[lo_old - self.start:]
        dropped = self.newest_label[:max(0, lo_old - self.start)]
        if dropped.size and np.isfinite(dropped).any():
            self.newest_label_before = max(self.newest_label_before, float(np.nanmax(dropped)))
        self.start, self.counts, self.newest_label = new_start, counts, newest

    def event_counts(self, now: float) -> dict[SLI, tuple[np.ndarray, np.ndarray]]:
        """Per bucket (``start .. end-1``), each SLI's (bad, total) events as of ``now``."""
        c = self.counts
        traffic = c[:, _SERVED] > 0
        ids = np.arange(self.start, self.end)
        bucket_end = np.minimum((ids + 1) * self.width, now)
        known = np.fmax.accumulate(np.nan_to_num(self.newest_label, nan=-np.inf)) if len(ids) else ids * 0.0
        # Before any label, the age counts from the first served row: a fresh service is not stale.
        newest = np.maximum(np.maximum(known, self.newest_label_before), self.first_served_t)
        stale = traffic & (bucket_end - newest > self.max_label_age)
        return {SLI.QUALITY: (c[:, _INCORRECT], c[:, _LABELED]),
                SLI.LATENCY: (c[:, _SLOW], c[:, _TIMED]),
                SLI.ERROR_RATE: (c[:, _ERRORS], c[:, _SERVED]),
                SLI.FRESHNESS: (stale.astype(float), traffic.astype(float))}


# -- the verdict ---------------------------------------------------------------------

class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class WindowBurn(_Frozen):
    """Events and burn rate of one SLI over the last ``seconds``."""

    seconds: float
    total: int
    bad: int
    burn_rate: float  # bad fraction / (1 - objective); 0.0 without data

    @property
    def bad_fraction(self) -> float | None:
        return self.bad / self.total if self.total else None


class PairAlert(_Frozen):
    """A multi-window burn-rate alert: firing when both windows burn faster than ``threshold``."""

    name: str  # "fast" | "slow"
    threshold: float
    long: WindowBurn
    short: WindowBurn
    firing: bool


class SLIStatus(_Frozen):
    sli: SLI
    objective: float
    total: int  # events in the budget period (retained)
    bad: int
    remaining: float  # 1 - bad / (allowed bad); 1.0 without data; < 0 overspent
    exhausted: bool
    windows: list[WindowBurn]  # the distinct alert windows, shortest first
    alerts: list[PairAlert]
    alerting: bool
    reason: str


class BudgetStatus(_Frozen):
    """Error budgets of every SLI at ``t``; ``reason`` names what is spent or burning, with numbers."""

    t: float
    period_seconds: float
    slis: dict[str, SLIStatus]
    exhausted: bool
    alerting: bool
    reason: str


def evaluate_budget(buckets: SLIBuckets, cfg: SLOConfig, now: float) -> BudgetStatus:
    """Burn rates, alerts and budget left of every SLI at ``now`` (pure)."""
    events = buckets.event_counts(now)
    ids = np.arange(buckets.start, buckets.end)
    span = _data_span(buckets, ids, events, now, cfg.period_seconds)
    alert_seconds = sorted({cfg.fast.short_seconds, cfg.fast.long_seconds, cfg.slow.short_seconds,
                            cfg.slow.long_seconds})
    slis: dict[str, SLIStatus] = {}
    for sli, objective in objectives(cfg).items():
        bad, total = events[sli]
        first_id = {s: math.floor((now - s) / buckets.width) for s in (*alert_seconds, cfg.period_seconds)}
        burns = {s: _burn(s, bad[ids >= k], total[ids >= k], objective) for s, k in first_id.items()}
        windows = {s: burns[s] for s in alert_seconds}
        alerts = [_pair(name, pair, windows) for name, pair in (("fast", cfg.fast), ("slow", cfg.slow))]
        period = burns[cfg.period_seconds]
        allowed = (1 - objective) * period.total
        remaining = 1.0 - period.bad / allowed if allowed else 1.0  # allowed is 0 only without events
        exhausted = period.total > 0 and period.bad > allowed
        alerting = any(a.firing for a in alerts)
        slis[sli.value] = SLIStatus(
            sli=sli, objective=objective, total=period.total, bad=period.bad, remaining=remaining,
            exhausted=exhausted, windows=list(windows.values()), alerts=alerts, alerting=alerting,
            reason=_sli_reason(sli, objective, period, span, exhausted, alerts))
    exhausted = any(s.exhausted for s in slis.values())
    alerting = any(s.alerting for s in slis.values())
    trouble = [s.reason for s in slis.values() if s.exhausted or s.alerting]
    reason = "; ".join(trouble) if trouble else "all SLIs within budget: " + ", ".join(
        s.reason for s in slis.values())
    return BudgetStatus(t=now, period_seconds=cfg.period_seconds, slis=slis, exhausted=exhausted,
                        alerting=alerting, reason=reason)


def _burn(seconds: float, bad: np.ndarray, total: np.ndarray, objective: float) -> WindowBurn:
    b, n = int(round(bad.sum())), int(round(total.sum()))
    return WindowBurn(seconds=seconds, total=n, bad=b, burn_rate=(b / n) / (1 - objective) if n else 0.0)


def _pair(name: str, pair: BurnWindow, windows: dict[float, WindowBurn]) -> PairAlert:
    long, short = windows[pair.long_seconds], windows[pair.short_seconds]
    firing = long.burn_rate > pair.burn_rate and short.burn_rate > pair.burn_rate
    return PairAlert(name=name, threshold=pair.burn_rate, long=long, short=short, firing=firing)


def _data_span(buckets: SLIBuckets, ids: np.ndarray, events: dict[SLI, tuple[np.ndarray, np.ndarray]],
               now: float, period: float) -> float:
    """Seconds from the first bucket with any event in the period to ``now``."""
    any_event = np.zeros(len(ids), dtype=bool)
    for _, total in events.values():
        any_event |= total > 0
    in_period = any_event & (ids >= math.floor((now - period) / buckets.width))
    return max(0.0, now - float(ids[in_period][0]) * buckets.width) if in_period.any() else 0.0


def _sli_reason(sli: SLI, objective: float, period: WindowBurn, span: float, exhausted: bool,
                alerts: list[PairAlert]) -> str:
    label, bad_word, unit = _WORDS[sli]
    if period.total == 0:
        return f"{label}: no data, no burn"
    frac, allowed = period.bad / period.total, 1 - objective
    numbers = (f"{frac:.1%} {bad_word} over {duration(span)} ({period.total} {unit})"
               f" {'>' if exhausted else '<='} {allowed:.1%} allowed (burn {frac / allowed:.1f}x)")
    parts = [f"{label} budget exhausted: {numbers}" if exhausted else f"{label} {numbers}"]
    for a in alerts:
        if a.firing:
            parts.append(f"{label} {a.name} burn: {a.long.burn_rate:.1f}x over {duration(a.long.seconds)}"
                         f" and {a.short.burn_rate:.1f}x over {duration(a.short.seconds)} > {a.threshold:g}x")
    return "; ".join(parts)


def duration(seconds: float) -> str:
    """A short human duration.

    >>> duration(21600), duration(300), duration(90), duration(2.5), duration(86400 * 30)
    ('6h', '5m', '1.5m', '2.5s', '30d')
    """
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{seconds:.3g}s"
