"""SLOs and error budgets: SLI counts, burn rates, multi-window alerts, budget left."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lifelong_ray.config import ConfigError, SLOConfig, parse_config
from lifelong_ray.control.windows import WindowTracker
from lifelong_ray.policy.model import Observations
from lifelong_ray.policy.slo import SLI, BudgetStatus, SLIBuckets, bucket_seconds, evaluate_budget, objectives

CFG = SLOConfig()  # fast 1h/5m at 14.4, slow 6h/30m at 6; 60 s buckets; error objective 0.99
SIX_H = 6 * 3600


def served(buckets: SLIBuckets, lo: float, hi: float, bad=lambda t: np.zeros(t.size, bool), latency=20.0):
    """One request a second in [lo, hi); ``bad(t)`` marks the errors."""
    t = np.arange(lo, hi, 1.0)
    buckets.add_served(t, bad(t), np.full(t.size, latency))
    return t


def test_objectives_come_from_the_config():
    cfg = SLOConfig(min_accuracy=0.8, max_error_rate=0.02, objective=0.995)
    assert objectives(cfg) == {SLI.QUALITY: 0.8, SLI.LATENCY: 0.95, SLI.ERROR_RATE: pytest.approx(0.98),
                               SLI.FRESHNESS: 0.995}


@pytest.mark.parametrize("sli, feed", [
    (SLI.ERROR_RATE, lambda b, t, bad: b.add_served(t, bad, np.full(t.size, 10.0))),
    (SLI.LATENCY, lambda b, t, bad: b.add_served(t, np.zeros(t.size, bool), np.where(bad, 251.0, 250.0))),
    (SLI.QUALITY, lambda b, t, bad: b.add_labels(t, t - 100, ~bad)),
])
def test_burn_rate_is_the_bad_fraction_over_the_budget(sli, feed):
    b = SLIBuckets.for_config(CFG)
    t = np.arange(3000.0, 3600.0)
    bad = (np.arange(t.size) % 10) == 0  # 10% bad
    feed(b, t, bad)
    s = evaluate_budget(b, CFG, now=3600.0).slis[sli.value]
    short = next(w for w in s.windows if w.seconds == 300)
    assert (short.bad, short.total) == (30, 300)
    assert short.burn_rate == pytest.approx(0.1 / (1 - objectives(CFG)[sli]))
    assert (s.bad, s.total) == (60, 600)


def _errors_between(lo, hi, every=1):
    return lambda t: (t >= lo) & (t < hi) & (t.astype(int) % every == 0)


@pytest.mark.parametrize("name, bad, fast, slow", [
    ("a 5-minute spike pages nobody", _errors_between(SIX_H - 300, SIX_H), False, False),
    ("20% errors for the last hour: fast burn", _errors_between(SIX_H - 3600, SIX_H, 5), True, False),
    ("7% errors for 6 hours: slow burn", lambda t: t.astype(int) % 100 < 7, False, True),
    ("recovered 5 minutes ago: the short window resets the alert",
     _errors_between(SIX_H - 3600, SIX_H - 300, 5), False, False),
    ("no errors", lambda t: np.zeros(t.size, bool), False, False),
])
def test_multi_window_alerts(name, bad, fast, slow):
    b = SLIBuckets.for_config(CFG)
    served(b, 0, SIX_H, bad)
    s = evaluate_budget(b, CFG, now=SIX_H).slis["error_rate"]
    assert [a.firing for a in s.alerts] == [fast, slow], (name, s.reason)
    assert s.alerting == (fast or slow)
    for a in s.alerts:  # firing means both windows burn faster than the threshold
        assert a.firing == (a.long.burn_rate > a.threshold and a.short.burn_rate > a.threshold)
    if fast:
        assert "error-rate fast burn: 20.0x over 1h and 20.0x over 5m > 14.4x" in s.reason


def test_alert_threshold_is_strict():
    b = SLIBuckets.for_config(CFG)
    served(b, 0, 3600, _errors_between(0, 3600, 5))
    burn = evaluate_budget(b, CFG, now=3600.0).slis["error_rate"].alerts[0].long.burn_rate

    def fast_firing(rate):
        cfg = CFG.model_copy(update={"fast": CFG.fast.model_copy(update={"burn_rate": rate})})
        return evaluate_budget(b, cfg, now=3600.0).slis["error_rate"].alerts[0].firing

    assert fast_firing(burn) is False
    assert fast_firing(math.nextafter(burn, 0)) is True


def test_no_data_is_no_burn():
    s = evaluate_budget(SLIBuckets.for_config(CFG), CFG, now=1000.0)
    assert not s.exhausted and not s.alerting
    for sli in s.slis.values():
        assert sli.total == 0 and sli.remaining == 1.0 and sli.reason.endswith("no data, no burn")
        assert all(w.burn_rate == 0.0 and w.bad_fraction is None for w in sli.windows)
    assert s.reason.startswith("all SLIs within budget")


def test_a_window_without_events_does_not_burn_even_if_the_long_one_does():
    b = SLIBuckets.for_config(CFG)
    served(b, 0, 3000, lambda t: np.ones(t.size, bool))  # all errors, then silence for 10 minutes
    fast = evaluate_budget(b, CFG, now=3600.0).slis["error_rate"].alerts[0]
    assert fast.long.burn_rate == pytest.approx(100.0) and fast.short.total == 0 and not fast.firing


@pytest.mark.parametrize("errors, remaining, exhausted", [
    (0, 1.0, False),
    (5, 0.5, False),
    (10, 0.0, False),  # exactly spent is not overspent
    (11, -0.1, True),
    (1000, -99.0, True),
])
def test_budget_remaining_over_the_period(errors, remaining, exhausted):
    b = SLIBuckets.for_config(CFG)
    served(b, 0, 1000, lambda t: t < errors)
    s = evaluate_budget(b, CFG, now=1000.0)
    err = s.slis["error_rate"]
    assert err.remaining == pytest.approx(remaining, abs=1e-9) and err.exhausted == exhausted
    assert s.exhausted == exhausted
    if exhausted:
        assert s.reason.startswith(f"error-rate budget exhausted: {errors / 1000:.1%} errors over 16.7m"
                                   f" (1000 served rows) > 1.0% allowed")


def test_budget_counts_only_the_period():
    cfg = CFG.model_copy(update={"period_seconds": 7200.0})
    b = SLIBuckets.for_config(cfg)
    served(b, 0, 3600, lambda t: np.ones(t.size, bool))
    served(b, 3600, 10800)  # two good hours later, the bad hour is out of the period
    s = evaluate_budget(b, cfg, now=10800.0).slis["error_rate"]
    assert (s.bad, s.total, s.exhausted) == (0, 7200, False)


def _stale_buckets(width, served_until, newest_label_t, first_t, max_age):
    """Oracle: buckets with traffic whose end is more than max_age after the newest known label."""
    n = int(served_until // width)
    return sum(1 for k in range(n) if (k + 1) * width - max(newest_label_t(k), first_t) > max_age)


@pytest.mark.parametrize("label_until", [None, 3600.0, 9000.0, 10800.0])
def test_freshness_counts_buckets_whose_newest_label_is_too_old(label_until):
    cfg = CFG.model_copy(update={"max_label_age_seconds": 1800.0})
    b = SLIBuckets.for_config(cfg)
    served(b, 0, 10800)
    if label_until is not None:  # labels arrive 100 s after their predictions, until label_until
        pred_t = np.arange(0.0, label_until - 100)
        b.add_labels(pred_t + 100, pred_t, np.ones(pred_t.size, bool))
    w = bucket_seconds(cfg)

    def newest(k):  # the newest prediction labeled by the end of bucket k
        if label_until is None:
            return -math.inf
        return min((k + 1) * w, label_until) - 100 - 1

    expected = _stale_buckets(w, 10800, newest, 0.0, 1800.0)
    s = evaluate_budget(b, cfg, now=10800.0).slis["freshness"]
    assert (s.bad, s.total) == (expected, 180)
    assert (expected > 0) == (label_until != 10800.0)


def test_a_young_service_without_labels_is_not_stale():
    b = SLIBuckets.for_config(CFG)
    served(b, 5000, 6000)  # max_label_age is 1 h
    s = evaluate_budget(b, CFG, now=6000.0).slis["freshness"]
    assert s.bad == 0 and s.total > 0


def test_labels_count_when_they_arrive():
    b = SLIBuckets.for_config(CFG)
    pred_t = np.arange(0.0, 600.0)
    b.add_labels(np.full(pred_t.size, 3500.0), pred_t, pred_t < 300)
    q = evaluate_budget(b, CFG, now=3600.0).slis["quality"]
    short = next(w for w in q.windows if w.seconds == 300)
    assert (short.bad, short.total) == (300, 600)


def test_memory_is_bounded_by_the_period_and_old_rows_are_dropped():
    cfg = CFG.model_copy(update={"period_seconds": 86400.0})
    b = SLIBuckets.for_config(cfg)
    b.add_labels([100.0], [50.0], [True])
    for day_hour in range(72):
        served(b, day_hour * 3600.0, (day_hour + 1) * 3600.0)
    assert len(b.counts) <= b.keep == 1441
    assert b.newest_label_before == 50.0  # the dropped buckets' freshness is remembered
    before = b.counts.sum()
    b.add_served([10.0], [True], [1.0])  # far older than the retained span: dropped
    assert b.counts.sum() == before
    s = evaluate_budget(b, cfg, now=72 * 3600.0).slis["error_rate"]
    assert s.total == 86400


def test_latency_rows_without_a_measurement_are_not_latency_events():
    b = SLIBuckets.for_config(CFG)
    b.add_served(np.arange(100.0), np.zeros(100, bool), np.r_[np.full(50, 300.0), np.full(50, np.nan)])
    lat = evaluate_budget(b, CFG, now=100.0).slis["latency"]
    assert (lat.bad, lat.total, lat.exhausted) == (50, 50, True)
    assert "latency budget exhausted: 100.0% slow" in lat.reason


TINY = parse_config({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
                     "slo": {"max_error_rate": 0.01, "p95_latency_ms": 100.0}})


def test_window_tracker_produces_the_budget_for_observations():
    tr = WindowTracker(TINY, lambda v: None)
    t = np.arange(0.0, 600.0)
    tr.add_served(pd.DataFrame({"t": t, "version": "v1", "x": 0.0, "error": np.where(t >= 540, "boom", None),
                                "latency_ms": np.where(t % 10 == 0, 150.0, 20.0)}))
    tr.add_joined(pd.DataFrame({"t": t[:500], "t_label": t[:500] + 60, "version": "v1",
                                "prediction": 1, "label": (t[:500] % 4 != 0).astype(int)}))
    budget = tr.budget(now=600.0)
    s = budget.slis
    assert (s["error_rate"].bad, s["error_rate"].total) == (60, 600)
    assert (s["latency"].bad, s["latency"].total) == (60, 600)
    assert (s["quality"].bad, s["quality"].total) == (125, 500)
    assert s["freshness"].bad == 0
    assert budget.exhausted and "error-rate budget exhausted: 10.0% errors" in budget.reason
    obs = Observations(budget=budget)
    assert Observations.model_validate_json(obs.model_dump_json()).budget == budget
    assert BudgetStatus.model_validate(budget.model_dump()) == budget


@pytest.mark.parametrize("slo, message", [
    ({"min_accuracy": 1.0}, "slo.min_accuracy: Input should be less than 1"),
    ({"max_error_rate": 0.0}, "slo.max_error_rate: Input should be greater than 0"),
    ({"fast": {"long_seconds": 300, "short_seconds": 3600, "burn_rate": 14.4}},
     "slo.fast: short_seconds 3600 must be less than long_seconds 300"),
])
def test_an_slo_without_a_budget_or_with_swapped_windows_is_refused(slo, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
                      "slo": slo})


def test_rows_arriving_late_but_within_the_period_are_counted():
    b = SLIBuckets.for_config(CFG)
    b.add_served([5000.0], [False], [1.0])
    b.add_served([100.0, 200.0], [True, False], [1.0, 1.0])  # older than the first bucket: the span grows back
    s = evaluate_budget(b, CFG, now=5000.0).slis["error_rate"]
    assert (s.bad, s.total) == (1, 3)
