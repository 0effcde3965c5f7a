"""Verdicts: the pre-canary gate and the analysis of one canary step.

A closed set of verdicts (Argo Rollouts style); when several checks run, the
worst verdict wins and the reasons of the checks with that verdict are reported.

    >>> gate(candidate_accuracy=0.93, champion_accuracy=0.55, margin=0.02, rows=300).verdict
    <Verdict.SUCCESSFUL: 'successful'>
    >>> print(gate(candidate_accuracy=0.80, champion_accuracy=0.90, margin=0.02, rows=300).reason)
    candidate holdout accuracy 0.800 < champion 0.900 - margin 0.02 on 300 rows
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from scipy.stats import norm

from lifelong_ray.config import RolloutConfig
from lifelong_ray.policy.model import VersionStats


class Verdict(str, Enum):
    SUCCESSFUL = "successful"
    INCONCLUSIVE = "inconclusive"
    FAILED = "failed"
    ERROR = "error"


_SEVERITY = {Verdict.SUCCESSFUL: 0, Verdict.INCONCLUSIVE: 1, Verdict.FAILED: 2, Verdict.ERROR: 3}


@dataclass(frozen=True)
class Analysis:
    verdict: Verdict
    reason: str


def worst(analyses: list[Analysis]) -> Analysis:
    """The most severe verdict, with the reasons of every analysis that has it
    (in order, joined by "; "). An empty list is successful.

    >>> worst([Analysis(Verdict.INCONCLUSIVE, "few labels"), Analysis(Verdict.SUCCESSFUL, "fast"),
    ...        Analysis(Verdict.INCONCLUSIVE, "short step")])
    Analysis(verdict=<Verdict.INCONCLUSIVE: 'inconclusive'>, reason='few labels; short step')
    """
    if not analyses:
        return Analysis(Verdict.SUCCESSFUL, "no checks")
    top = max(_SEVERITY[a.verdict] for a in analyses)
    hits = [a for a in analyses if _SEVERITY[a.verdict] == top]
    return Analysis(hits[0].verdict, "; ".join(a.reason for a in hits))


def gate(*, candidate_accuracy: float | None, champion_accuracy: float | None, margin: float,
         rows: int, min_gain: float | None = None, replay_candidate_accuracy: float | None = None,
         replay_champion_accuracy: float | None = None, replay_rows: int = 0,
         forgetting_margin: float | None = None) -> Analysis:
    """May a candidate be canaried? Not if it is worse than the champion on the
    same recent labeled holdout by more than ``margin``; with ``min_gain`` (an
    incremental or follow-up challenger) only if it beats the champion by at least
    that much. With replay accuracies (a holdout of the replay reservoir: past
    concepts) and ``forgetting_margin``, not if it forgets: worse than the champion
    there by more than the margin. The worst check wins.

    >>> gate(candidate_accuracy=0.91, champion_accuracy=0.90, margin=0.02, rows=120, min_gain=0.02).reason
    'challenger holdout accuracy 0.910 < champion 0.900 + required gain 0.020 on 120 rows'
    >>> print(gate(candidate_accuracy=0.95, champion_accuracy=0.60, margin=0.02, rows=300,
    ...            replay_candidate_accuracy=0.70, replay_champion_accuracy=0.90, replay_rows=200,
    ...            forgetting_margin=0.05).reason)
    forgetting: candidate replay accuracy 0.700 < champion 0.900 - margin 0.05 on 200 replay rows
    """
    if candidate_accuracy is None:
        return Analysis(Verdict.ERROR, "candidate has no holdout accuracy")
    if champion_accuracy is None:
        return Analysis(Verdict.SUCCESSFUL,
                        f"candidate holdout accuracy {candidate_accuracy:.3f} on {rows} rows; no champion to compare")
    if min_gain is not None:
        ok = candidate_accuracy >= champion_accuracy + min_gain
        recent = Analysis(Verdict.SUCCESSFUL if ok else Verdict.FAILED,
                          f"challenger holdout accuracy {candidate_accuracy:.3f} {'>=' if ok else '<'} champion"
                          f" {champion_accuracy:.3f} + required gain {min_gain:.3f} on {rows} rows")
    elif candidate_accuracy < champion_accuracy - margin:
        recent = Analysis(Verdict.FAILED,
                          f"candidate holdout accuracy {candidate_accuracy:.3f} < champion {champion_accuracy:.3f}"
                          f" - margin {margin:.2f} on {rows} rows")
    else:
        recent = Analysis(Verdict.SUCCESSFUL,
                          f"candidate holdout accuracy {candidate_accuracy:.3f} >= champion {champion_accuracy:.3f}"
                          f" - margin {margin:.2f} on {rows} rows")
    if forgetting_margin is None or replay_candidate_accuracy is None or replay_champion_accuracy is None \
            or replay_rows == 0:
        return recent
    worse = replay_candidate_accuracy < replay_champion_accuracy - forgetting_margin
    replay = Analysis(Verdict.FAILED if worse else Verdict.SUCCESSFUL,
                      f"{'forgetting: ' if worse else ''}candidate replay accuracy {replay_candidate_accuracy:.3f}"
                      f" {'<' if worse else '>='} champion {replay_champion_accuracy:.3f} - margin"
                      f" {forgetting_margin:.2f} on {replay_rows} replay rows")
    if worse:
        return replay
    return Analysis(recent.verdict, f"{recent.reason}; {replay.reason}")


MIN_SERVED_FOR_RATES = 20  # served rows before error-rate, all-errors and latency verdicts


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of ``confidence``.

    >>> round(z_value(0.95), 3)
    1.96
    """
    return float(norm.ppf((1 + confidence) / 2))


def wilson_interval(p: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` > 0 trials.

    >>> lo, hi = wilson_interval(81 / 263, 263, z_value(0.95))   # Newcombe (1998a), example
    >>> round(lo, 4), round(hi, 4)
    (0.2553, 0.3662)
    """
    if n <= 0:
        raise ValueError(f"n must be > 0 for an interval, got {n}")
    z2 = z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def diff_interval(p1: float, n1: int, p2: float, n2: int | None, confidence: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval for ``p1 - p2`` from the two Wilson
    intervals; ``n2`` None (or 0): ``p2`` is known exactly.

    >>> lo, hi = diff_interval(56 / 70, 70, 48 / 80, 80, 0.95)   # Newcombe (1998b), example (a)
    >>> round(lo, 4), round(hi, 4)
    (0.0524, 0.3339)
    >>> [round(x, 4) for x in diff_interval(0.9, 100, 0.85, None, 0.95)]
    [-0.0244, 0.0948]
    """
    z = z_value(confidence)
    l1, u1 = wilson_interval(p1, n1, z)
    l2, u2 = wilson_interval(p2, n2, z) if n2 else (p2, p2)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def analyze_step(*, candidate: VersionStats | None, champion: VersionStats | None,
                 champion_baseline: float | None, seconds_in_step: float, weight: float,
                 cfg: RolloutConfig, baseline_rows: int = 0) -> Analysis:
    """Analyse the current canary step from both versions' stats since it began.

    Checks, worst wins (ERROR > FAILED > INCONCLUSIVE > SUCCESSFUL):

    * ERROR: no stats for the canary (pass None only when they could not be
      measured, not when it had no traffic yet), or it answered none of at
      least ``n = min(MIN_SERVED_FOR_RATES, min_labeled_per_step)`` requests.
    * error rate, from ``n`` served requests on: FAILED when the Wilson
      interval (``cfg.confidence``) of the canary's error rate lies above
      ``max_error_rate``, or, from ``min_labeled_per_step`` requests on, when the
      rate itself does; a higher rate not yet that sure is INCONCLUSIVE.
    * p95 latency, when both versions have ``n`` timed requests: FAILED when the
      canary's p95 exceeds ``max_latency_ratio`` x the champion's.
    * evidence: fewer than ``min_labeled_per_step`` canary labels, or less than
      ``min_seconds_per_step`` in the step: INCONCLUSIVE (hold; never promote on
      thin evidence). Error and latency failures wait for neither, so a broken
      canary is rolled back on the first analysis that sees ``n`` of its requests.
    * quality, with enough canary labels: Newcombe's interval of canary minus
      champion accuracy. FAILED when it lies entirely below ``-quality_margin``,
      SUCCESSFUL when its lower bound is at least ``-quality_margin``
      (non-inferior), else INCONCLUSIVE (wait for labels). The champion's
      accuracy comes from the same step when it has ``max(20,
      min_labeled_per_step // 2)`` labels there, else from ``champion_baseline``
      (its accuracy on the gate's holdout of ``baseline_rows`` rows; 0: taken as
      exact); with neither, INCONCLUSIVE.

    >>> from lifelong_ray.config import RolloutConfig
    >>> cfg = RolloutConfig(min_labeled_per_step=50)
    >>> a = analyze_step(candidate=VersionStats(served=100, labeled=80, correct=40),
    ...                  champion=VersionStats(served=900, labeled=700, correct=630),
    ...                  champion_baseline=None, seconds_in_step=5, weight=10, cfg=cfg)
    >>> a.verdict.value
    'failed'
    >>> for part in a.reason.split(", 95% "): print(part)
    canary accuracy 0.500 vs champion 0.900: difference -0.400
    interval [-0.509, -0.290] entirely below -0.05 (80 vs 700 labeled at 10%)
    >>> a = analyze_step(candidate=VersionStats(served=25, errors=25), champion=VersionStats(served=225),
    ...                  champion_baseline=0.9, seconds_in_step=1, weight=10, cfg=cfg)
    >>> a.verdict.value, a.reason
    ('error', 'canary answered none of its 25 requests (25 errors at 10%)')
    """
    at = f"at {weight:g}%"
    if candidate is None:
        return Analysis(Verdict.ERROR, f"no step statistics for the canary {at}")
    champion = champion or VersionStats()
    n_min = min(MIN_SERVED_FOR_RATES, cfg.min_labeled_per_step)
    checks = [
        _answers(candidate, n_min, at),
        _error_rate(candidate, cfg, n_min, at),
        _latency(candidate, champion, cfg, n_min, at),
        *_evidence(candidate, seconds_in_step, cfg, at),
        _quality(candidate, champion, champion_baseline, baseline_rows, cfg, at),
    ]
    return worst([c for c in checks if c is not None])


def _answers(c: VersionStats, n_min: int, at: str) -> Analysis | None:
    if c.served >= n_min and c.errors == c.served:
        return Analysis(Verdict.ERROR, f"canary answered none of its {c.served} requests ({c.errors} errors {at})")
    return None


def _error_rate(c: VersionStats, cfg: RolloutConfig, n_min: int, at: str) -> Analysis | None:
    if c.served < n_min:
        return None
    rate = c.error_rate
    lo, hi = wilson_interval(rate, c.served, z_value(cfg.confidence))
    numbers = (f"({c.errors}/{c.served} requests {at}; {cfg.confidence:.0%} interval"
               f" [{lo:.1%}, {hi:.1%}])")
    if lo > cfg.max_error_rate or (rate > cfg.max_error_rate and c.served >= cfg.min_labeled_per_step):
        return Analysis(Verdict.FAILED, f"canary error rate {rate:.1%} > {cfg.max_error_rate:.1%} {numbers}")
    if rate > cfg.max_error_rate:
        return Analysis(Verdict.INCONCLUSIVE, f"canary error rate {rate:.1%} > {cfg.max_error_rate:.1%} but not"
                                              f" yet surely {numbers}; waiting for more requests")
    return Analysis(Verdict.SUCCESSFUL, f"error rate {rate:.1%} <= {cfg.max_error_rate:.1%} {numbers}")


def _latency(c: VersionStats, champ: VersionStats, cfg: RolloutConfig, n_min: int, at: str) -> Analysis | None:
    if c.latency_p95_ms is None or champ.latency_p95_ms is None \
            or min(c.latency_samples, champ.latency_samples) < n_min:
        return None
    bound = cfg.max_latency_ratio * champ.latency_p95_ms
    numbers = (f"canary p95 latency {c.latency_p95_ms:.1f}ms {{}} {cfg.max_latency_ratio:g} x champion p95"
               f" {champ.latency_p95_ms:.1f}ms ({c.latency_samples} vs {champ.latency_samples} requests {at})")
    if c.latency_p95_ms > bound:
        return Analysis(Verdict.FAILED, numbers.format(">"))
    return Analysis(Verdict.SUCCESSFUL, numbers.format("<="))


def _evidence(c: VersionStats, seconds_in_step: float, cfg: RolloutConfig, at: str) -> list[Analysis]:
    out = []
    if c.labeled < cfg.min_labeled_per_step:
        out.append(Analysis(Verdict.INCONCLUSIVE,
                            f"canary has {c.labeled}/{cfg.min_labeled_per_step} labeled samples {at}"))
    if seconds_in_step < cfg.min_seconds_per_step:
        out.append(Analysis(Verdict.INCONCLUSIVE,
                            f"step {at} has run {seconds_in_step:.1f}s < {cfg.min_seconds_per_step:.1f}s"))
    return out


def _quality(c: VersionStats, champ: VersionStats, baseline: float | None, baseline_rows: int,
             cfg: RolloutConfig, at: str) -> Analysis | None:
    if c.accuracy is None or c.labeled < cfg.min_labeled_per_step:
        return None  # _evidence holds the step
    margin = cfg.quality_margin
    if champ.accuracy is not None and champ.labeled >= max(20, cfg.min_labeled_per_step // 2):
        p2, n2, src = champ.accuracy, champ.labeled, f"{c.labeled} vs {champ.labeled} labeled {at}"
    elif baseline is not None:
        rows = f" of {baseline_rows} rows" if baseline_rows else ""
        p2, n2, src = baseline, baseline_rows, f"{c.labeled} labeled vs champion holdout{rows} {at}"
    else:
        return Analysis(Verdict.INCONCLUSIVE,
                        f"canary accuracy {c.accuracy:.3f} on {c.labeled} labeled {at}; champion has"
                        f" {champ.labeled} labeled in the step and no holdout baseline to compare with")
    lo, hi = diff_interval(c.accuracy, c.labeled, p2, n2, cfg.confidence)
    text = (f"canary accuracy {c.accuracy:.3f} vs champion {p2:.3f}: difference {c.accuracy - p2:+.3f},"
            f" {cfg.confidence:.0%} interval [{lo:+.3f}, {hi:+.3f}]")
    if hi < -margin:
        return Analysis(Verdict.FAILED, f"{text} entirely below -{margin:.2f} ({src})")
    if lo >= -margin:
        return Analysis(Verdict.SUCCESSFUL, f"{text} >= -{margin:.2f} ({src})")
    return Analysis(Verdict.INCONCLUSIVE, f"{text} straddles -{margin:.2f}; waiting for more labels ({src})")
