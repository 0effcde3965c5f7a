"""Canary analysis: the interval maths, every verdict and its boundaries, table-driven."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from lifelong_ray.config import RolloutConfig, parse_config
from lifelong_ray.control.windows import WindowTracker
from lifelong_ray.policy.analysis import (
    MIN_SERVED_FOR_RATES,
    Analysis,
    Verdict,
    analyze_step,
    diff_interval,
    wilson_interval,
    worst,
    z_value,
)
from lifelong_ray.policy.decide import decide
from lifelong_ray.policy.lifecycle import RolloutStage
from lifelong_ray.policy.model import ControllerState, Observations, VersionStats

CFG = RolloutConfig(min_labeled_per_step=50, min_seconds_per_step=10.0, quality_margin=0.05,
                    max_error_rate=0.05, max_latency_ratio=3.0, confidence=0.95)
GOOD_CHAMP = VersionStats(served=900, labeled=600, correct=540, latency_p95_ms=100.0, latency_samples=900)


# -- interval maths -------------------------------------------------------------------

@pytest.mark.parametrize("k1, n1, k2, n2, lo, hi", [
    # Newcombe (1998), "Interval estimation for the difference between independent
    # proportions", Stat. Med. 17:873-890, Table II, method 10 (hybrid score).
    (56, 70, 48, 80, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.1705, 0.8090),
    (6, 7, 2, 7, 0.0582, 0.8062),
    (5, 56, 0, 29, -0.0381, 0.1926),
    (0, 10, 0, 20, -0.1611, 0.2775),
    (0, 10, 0, 10, -0.2775, 0.2775),
    (10, 10, 0, 20, 0.6791, 1.0000),
    (10, 10, 0, 10, 0.6075, 1.0000),
])
def test_newcombe_interval_matches_the_published_table(k1, n1, k2, n2, lo, hi):
    got = diff_interval(k1 / n1, n1, k2 / n2, n2, 0.95)
    assert got == pytest.approx((lo, hi), abs=6e-5)


@pytest.mark.parametrize("k, n", [(0, 5), (1, 20), (17, 20), (81, 263), (500, 1000), (999, 1000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_interval_agrees_with_scipy(k, n, confidence):
    ref = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert wilson_interval(k / n, n, z_value(confidence)) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_a_known_baseline_gives_a_narrower_interval_than_a_measured_one():
    exact = diff_interval(0.9, 200, 0.9, None, 0.95)
    measured = diff_interval(0.9, 200, 0.9, 300, 0.95)
    assert measured[0] < exact[0] < 0 < exact[1] < measured[1]


def test_wilson_refuses_an_empty_sample():
    with pytest.raises(ValueError, match="n must be > 0"):
        wilson_interval(0.5, 0, 1.96)


# -- verdicts -----------------------------------------------------------------------------

def stats(served=0, errors=0, labeled=0, correct=0, p95=None, timed=None) -> VersionStats:
    return VersionStats(served=served, errors=errors, labeled=labeled, correct=correct, latency_p95_ms=p95,
                        latency_samples=(served if p95 is not None else 0) if timed is None else timed)


def run(cand, champ=GOOD_CHAMP, baseline=None, rows=0, seconds=60.0, cfg=CFG) -> Analysis:
    return analyze_step(candidate=cand, champion=champ, champion_baseline=baseline, seconds_in_step=seconds,
                        weight=10, cfg=cfg, baseline_rows=rows)


@pytest.mark.parametrize("name, cand, kw, verdict, numbers", [
    # missing stats / no successful answer at all
    ("stats missing", None, {}, Verdict.ERROR, ["10%"]),
    ("all errors, 20 requests", stats(20, 20), {"seconds": 0.5}, Verdict.ERROR, ["20 requests", "20 errors"]),
    ("all errors, 19 requests: too few to judge", stats(19, 19), {"seconds": 0.5}, Verdict.INCONCLUSIVE,
     ["0/50 labeled", "0.5s < 10.0s"]),
    # error rate: fails fast without labels or step time when surely above the limit
    ("8/20 errors: surely > 5%", stats(20, 8), {"seconds": 0.5}, Verdict.FAILED, ["40.0% > 5.0%", "8/20"]),
    ("2/20 errors: not yet sure", stats(20, 2), {"seconds": 0.5}, Verdict.INCONCLUSIVE,
     ["10.0% > 5.0% but not yet surely", "2/20", "waiting for more requests"]),
    ("6/100 errors: above the limit on a full step", stats(100, 6, 60, 55), {}, Verdict.FAILED,
     ["6.0% > 5.0%", "6/100"]),
    ("20/400 errors: at the limit is fine", stats(400, 20, 300, 290), {}, Verdict.SUCCESSFUL, ["5.0% <= 5.0%"]),
    # p95 latency versus the champion's
    ("latency 4x the champion's", stats(20, 0, p95=400.0), {"seconds": 0.5}, Verdict.FAILED,
     ["400.0ms > 3 x champion p95 100.0ms", "20 vs 900"]),
    ("latency exactly 3x", stats(100, 0, 60, 58, p95=300.0), {}, Verdict.SUCCESSFUL, ["300.0ms <= 3 x"]),
    ("latency 4x on 19 timed rows: no latency verdict", stats(19, 0, p95=400.0), {"seconds": 0.5},
     Verdict.INCONCLUSIVE, ["0/50 labeled"]),
    ("latency 4x, champion not timed: no latency verdict", stats(100, 0, 60, 58, p95=400.0),
     {"champ": stats(900, 0, 600, 540)}, Verdict.SUCCESSFUL, ["canary accuracy 0.967"]),
    # evidence
    ("49 labels", stats(100, 0, 49, 49), {}, Verdict.INCONCLUSIVE, ["49/50 labeled"]),
    ("9.9 seconds", stats(100, 0, 60, 60), {"seconds": 9.9}, Verdict.INCONCLUSIVE, ["9.9s < 10.0s"]),
    # labeled quality: interval of canary - champion versus -margin
    ("surely worse", stats(100, 0, 60, 30), {}, Verdict.FAILED, ["0.500 vs champion 0.900", "entirely below -0.05",
                                                                 "60 vs 600 labeled"]),
    ("equal accuracy on 60 labels: too few to call", stats(100, 0, 60, 54), {}, Verdict.INCONCLUSIVE,
     ["straddles -0.05", "waiting for more labels"]),
    ("non-inferior", stats(100, 0, 60, 58), {}, Verdict.SUCCESSFUL, [">= -0.05", "0.967 vs champion 0.900"]),
    # the champion's gate holdout stands in when it has too few labels in the step
    ("baseline, exact", stats(100, 0, 200, 180), {"champ": stats(900, 0, 19, 19), "baseline": 0.9},
     Verdict.SUCCESSFUL, ["champion holdout", "0.900 vs champion 0.900"]),
    ("baseline of 100 holdout rows: wider, inconclusive", stats(100, 0, 200, 180),
     {"champ": stats(900, 0, 19, 19), "baseline": 0.9, "rows": 100}, Verdict.INCONCLUSIVE,
     ["champion holdout of 100 rows"]),
    ("no champion labels, no baseline", stats(100, 0, 60, 60), {"champ": stats(900)}, Verdict.INCONCLUSIVE,
     ["no holdout baseline"]),
    ("champion stats missing: baseline", stats(100, 0, 60, 60), {"champ": None, "baseline": 0.5},
     Verdict.SUCCESSFUL, ["champion holdout"]),
    # worst wins, and every reason of the worst verdict is kept
    ("error beats failed", stats(20, 20, p95=900.0), {"seconds": 0.5}, Verdict.ERROR, ["none of its 20"]),
    ("failed beats inconclusive", stats(20, 8, p95=900.0), {"seconds": 0.5}, Verdict.FAILED,
     ["40.0% > 5.0%", "900.0ms > 3 x"]),
])
def test_step_verdicts(name, cand, kw, verdict, numbers):
    kw = dict(kw)
    a = run(cand, champ=kw.pop("champ", GOOD_CHAMP), **kw)
    assert a.verdict == verdict, (name, a.reason)
    for n in numbers:
        assert n in a.reason, (name, n, a.reason)


def _quality_at_margin(margin: float) -> Verdict:
    cfg = CFG.model_copy(update={"quality_margin": margin})
    return run(stats(300, 0, 300, 270), champ=stats(900, 0, 600, 540), cfg=cfg).verdict


def test_non_inferiority_boundary_is_inclusive():
    lo, hi = diff_interval(270 / 300, 300, 540 / 600, 600, CFG.confidence)
    assert lo < 0 < hi
    assert _quality_at_margin(-lo) == Verdict.SUCCESSFUL
    assert _quality_at_margin(-lo - 1e-9) == Verdict.INCONCLUSIVE


def test_failure_boundary_is_strict():
    cand, champ = stats(300, 0, 300, 210), stats(900, 0, 600, 540)
    lo, hi = diff_interval(210 / 300, 300, 540 / 600, 600, CFG.confidence)
    assert hi < 0

    def verdict(margin):
        return run(cand, champ=champ, cfg=CFG.model_copy(update={"quality_margin": margin})).verdict

    assert verdict(-hi) == Verdict.INCONCLUSIVE
    assert verdict(-hi - 1e-9) == Verdict.FAILED


@pytest.mark.parametrize("min_labeled, served, verdict", [
    (50, MIN_SERVED_FOR_RATES, Verdict.ERROR),
    (50, MIN_SERVED_FOR_RATES - 1, Verdict.INCONCLUSIVE),
    (5, 5, Verdict.ERROR),  # a step that needs only 5 labels judges errors from 5 requests
    (5, 4, Verdict.INCONCLUSIVE),
])
def test_errors_are_judged_from_min_of_20_and_the_step_minimum(min_labeled, served, verdict):
    cfg = CFG.model_copy(update={"min_labeled_per_step": min_labeled})
    assert run(stats(served, served), seconds=0.0, cfg=cfg).verdict == verdict


def test_a_higher_confidence_needs_more_evidence():
    cand = stats(200, 0, 120, 112)
    champ = stats(900, 0, 600, 540)
    assert run(cand, champ=champ).verdict == Verdict.SUCCESSFUL
    assert run(cand, champ=champ, cfg=CFG.model_copy(update={"confidence": 0.999})).verdict == Verdict.INCONCLUSIVE


def test_worst_of_nothing_is_successful():
    assert worst([]) == Analysis(Verdict.SUCCESSFUL, "no checks")


@pytest.mark.parametrize("field, kw", [
    ("errors", dict(served=10, errors=11)),
    ("correct", dict(labeled=10, correct=11)),
    ("latency_samples", dict(served=10, latency_samples=11)),
    ("served", dict(served=-1)),
])
def test_inconsistent_stats_are_refused_naming_the_field(field, kw):
    with pytest.raises(ValueError, match=field):
        VersionStats(**kw)


# -- end to end: tracker -> analysis -> decide ------------------------------------------------

TINY = parse_config({"model": {"name": "m", "features": [{"name": "x"}],
                                "label": {"name": "y", "classes": [0, 1]}}})
DECIDE_CFG = parse_config({
    "model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
    "rollout": {"canary_steps": [10, 50, 100], "min_labeled_per_step": 50, "min_seconds_per_step": 30},
})


@pytest.mark.parametrize("served, why", [
    (dict(error=["boom"] * 20, latency_ms=[2.0] * 20), "answered none of its 20 requests"),
    (dict(error=["boom", None] * 10, latency_ms=[2.0] * 20), "error rate 50.0% > 5.0% (10/20"),
    (dict(error=[None] * 20, latency_ms=[100.0] * 20), "p95 latency 100.0ms > 3 x champion p95 5.0ms"),
])
def test_a_broken_canary_is_rolled_back_on_the_first_analysis_that_sees_20_requests(served, why):
    tracker = WindowTracker(TINY, lambda v: None)

    def rows(version, lo, hi, **cols):
        t = np.arange(lo, hi, dtype=float) / 100
        return pd.DataFrame({"t": t, "version": version, "x": 0.0, **cols})

    tracker.add_served(rows("v0001", 0, 180, error=None, latency_ms=5.0))
    tracker.add_served(rows("v0002", 180, 200, **served))
    st = ControllerState(model="m", champion="v0001", weights={"v0001": 90.0, "v0002": 10.0},
                         rollout=RolloutStage.CANARY, candidate="v0002", step_index=0, step_started_t=0.0,
                         gate={"candidate_accuracy": 0.9, "champion_accuracy": 0.9, "holdout_rows": 200})
    step = tracker.step_stats(since=0.0)
    assert step["v0002"].served == 20 and step["v0001"].latency_p95_ms == pytest.approx(5.0)
    d = decide(st, Observations(step_stats=step), DECIDE_CFG, now=2.0)  # 2 s into a step of at least 30 s
    assert [e.kind.value for e in d.events] == ["rolled_back"]
    assert d.state.weights == {"v0001": 100.0}
    assert why in d.events[0].reason


def test_step_stats_give_the_p95_of_measured_latencies_only():
    tracker = WindowTracker(TINY, lambda v: None)
    lat = np.r_[np.arange(1.0, 101.0), [np.nan] * 10]
    tracker.add_served(pd.DataFrame({"t": np.arange(110.0), "version": "v0001", "error": None, "latency_ms": lat,
                                     "x": 0.0}))
    tracker.add_served(pd.DataFrame({"t": [200.0], "version": "v0002", "error": None, "x": 0.0}))  # no latency
    st = tracker.step_stats(since=0.0)
    assert st["v0001"].latency_samples == 100
    assert st["v0001"].latency_p95_ms == pytest.approx(np.percentile(lat[:100], 95))
    assert st["v0002"].latency_p95_ms is None and st["v0002"].latency_samples == 0
