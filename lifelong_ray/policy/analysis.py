"""Verdicts: the pre-canary gate and the analysis of one canary step.

A closed set of verdicts (Argo Rollouts style); when several checks run, the
worst verdict wins and its reason is the one reported.

    >>> gate(candidate_accuracy=0.93, champion_accuracy=0.55, margin=0.02, rows=300).verdict
    <Verdict.SUCCESSFUL: 'successful'>
    >>> print(gate(candidate_accuracy=0.80, champion_accuracy=0.90, margin=0.02, rows=300).reason)
    candidate holdout accuracy 0.800 < champion 0.900 - margin 0.02 on 300 rows
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

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
    """The most severe analysis; ties keep the first. An empty list is successful."""
    if not analyses:
        return Analysis(Verdict.SUCCESSFUL, "no checks")
    return max(analyses, key=lambda a: _SEVERITY[a.verdict])


def gate(*, candidate_accuracy: float | None, champion_accuracy: float | None, margin: float,
         rows: int, min_gain: float | None = None) -> Analysis:
    """May a candidate be canaried? Not if it is worse than the champion on the
    same recent labeled holdout by more than ``margin``; with ``min_gain`` (an
    incremental challenger) only if it beats the champion by at least that much.

    >>> gate(candidate_accuracy=0.91, champion_accuracy=0.90, margin=0.02, rows=120, min_gain=0.02).reason
    'challenger holdout accuracy 0.910 < champion 0.900 + required gain 0.02 on 120 rows'
    """
    if candidate_accuracy is None:
        return Analysis(Verdict.ERROR, "candidate has no holdout accuracy")
    if champion_accuracy is None:
        return Analysis(Verdict.SUCCESSFUL,
                        f"candidate holdout accuracy {candidate_accuracy:.3f} on {rows} rows; no champion to compare")
    if min_gain is not None:
        ok = candidate_accuracy >= champion_accuracy + min_gain
        return Analysis(Verdict.SUCCESSFUL if ok else Verdict.FAILED,
                        f"challenger holdout accuracy {candidate_accuracy:.3f} {'>=' if ok else '<'} champion"
                        f" {champion_accuracy:.3f} + required gain {min_gain:.2f} on {rows} rows")
    if candidate_accuracy < champion_accuracy - margin:
        return Analysis(Verdict.FAILED,
                        f"candidate holdout accuracy {candidate_accuracy:.3f} < champion {champion_accuracy:.3f}"
                        f" - margin {margin:.2f} on {rows} rows")
    return Analysis(Verdict.SUCCESSFUL,
                    f"candidate holdout accuracy {candidate_accuracy:.3f} >= champion {champion_accuracy:.3f}"
                    f" - margin {margin:.2f} on {rows} rows")


def analyze_step(*, candidate: VersionStats, champion: VersionStats, champion_baseline: float | None,
                 seconds_in_step: float, weight: float, cfg: RolloutConfig) -> Analysis:
    """Analyse the current canary step.

    Checks, worst wins: the candidate's error rate; enough labeled samples and
    time in the step (else inconclusive: hold, never promote on thin evidence);
    labeled accuracy not worse than the champion's by more than the margin. The
    champion's accuracy is taken from the same step when it has enough labels,
    otherwise from ``champion_baseline`` (its accuracy on the gate's holdout).

    >>> from lifelong_ray.config import RolloutConfig
    >>> cfg = RolloutConfig(min_labeled_per_step=50)
    >>> a = analyze_step(candidate=VersionStats(served=100, labeled=80, correct=40),
    ...                  champion=VersionStats(served=900, labeled=700, correct=630),
    ...                  champion_baseline=None, seconds_in_step=5, weight=10, cfg=cfg)
    >>> a.verdict.value, a.reason
    ('failed', 'canary accuracy 0.500 < champion 0.900 - margin 0.05 (80 vs 700 labeled at 10%)')
    """
    checks: list[Analysis] = []
    if candidate.served and candidate.error_rate > cfg.max_error_rate:
        checks.append(Analysis(Verdict.FAILED,
                               f"canary error rate {candidate.error_rate:.1%} > {cfg.max_error_rate:.1%}"
                               f" ({candidate.errors}/{candidate.served} requests at {weight:g}%)"))
    if candidate.labeled < cfg.min_labeled_per_step:
        checks.append(Analysis(Verdict.INCONCLUSIVE,
                               f"canary has {candidate.labeled}/{cfg.min_labeled_per_step} labeled samples"
                               f" at {weight:g}%"))
    if seconds_in_step < cfg.min_seconds_per_step:
        checks.append(Analysis(Verdict.INCONCLUSIVE,
                               f"step at {weight:g}% has run {seconds_in_step:.1f}s"
                               f" < {cfg.min_seconds_per_step:.1f}s"))
    cand_acc = candidate.accuracy
    if champion.labeled >= max(20, cfg.min_labeled_per_step // 2):
        champ_acc, champ_src = champion.accuracy, f"{candidate.labeled} vs {champion.labeled} labeled"
    else:
        champ_acc, champ_src = champion_baseline, f"{candidate.labeled} labeled vs champion holdout"
    if cand_acc is not None and champ_acc is not None and candidate.labeled >= cfg.min_labeled_per_step:
        if cand_acc < champ_acc - cfg.quality_margin:
            checks.append(Analysis(Verdict.FAILED,
                                   f"canary accuracy {cand_acc:.3f} < champion {champ_acc:.3f}"
                                   f" - margin {cfg.quality_margin:.2f} ({champ_src} at {weight:g}%)"))
        else:
            checks.append(Analysis(Verdict.SUCCESSFUL,
                                   f"canary accuracy {cand_acc:.3f} >= champion {champ_acc:.3f}"
                                   f" - margin {cfg.quality_margin:.2f} ({champ_src} at {weight:g}%),"
                                   f" error rate {candidate.error_rate:.1%}"))
    return worst(checks)
