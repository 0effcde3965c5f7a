"""Compute quotas for retraining and the impact-ordered retrain queue."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lifelong_ray.config import DriftConfig, QuotaConfig
from lifelong_ray.policy.quota import (
    DAY,
    HOUR,
    Blocker,
    RetrainRecord,
    RetrainRequest,
    impact_score,
    pop_highest,
    push,
    quota_blocker,
)

NOW = 10 * DAY + 12 * HOUR  # 12:00 UTC


def rec(ago: float, cpu: float = 0.0, gpu: float = 0.0) -> RetrainRecord:
    return RetrainRecord(start_t=NOW - ago, cpu_seconds=cpu, gpu_seconds=gpu)


@pytest.mark.parametrize("name, cfg, history, running, urgent, allowed, blockers, retry_in, reason", [
    ("nothing configured blocks nothing", {}, [], 0, False, True, [], None,
     "quota: ok: 0/1 running, 0/6 in the last hour"),
    ("one running of one", {}, [], 1, False, False, [Blocker.CONCURRENCY], None,
     "quota: 1/1 retrains running; next slot when one finishes"),
    ("one running of two", {"max_concurrent_retrains": 2}, [], 1, False, True, [], None, "1/2 running"),
    ("6/6 in the last hour", {}, [rec(a) for a in (3188, 3000, 2000, 1000, 500, 10)], 0, False, False,
     [Blocker.PER_HOUR], 412, "quota: 6/6 retrains in the last hour; next slot in 412s"),
    ("a start exactly an hour ago has left the hour", {},
     [rec(a) for a in (HOUR, 3000, 2000, 1000, 500, 10)], 0, False, True, [], None, "5/6 in the last hour"),
    ("over the limit after lowering it: wait for enough starts to leave", {"max_retrains_per_hour": 2},
     [rec(a) for a in (3000, 2000, 1000)], 0, False, False, [Blocker.PER_HOUR], 1600, "3/2 retrains"),
    ("retrains disabled", {"max_retrains_per_hour": 0}, [], 0, False, False, [Blocker.PER_HOUR], None,
     "max_retrains_per_hour is 0"),
    ("CPU day spent", {"cpu_seconds_per_day": 1000}, [rec(80000, cpu=600), rec(100, cpu=400)], 0, False, False,
     [Blocker.CPU_DAY], DAY - 80000, "quota: 1000/1000 CPU-seconds in the last 24h; next slot in 6400s"),
    ("CPU day under", {"cpu_seconds_per_day": 1000}, [rec(80000, cpu=600), rec(DAY, cpu=400)], 0, False, True,
     [], None, "600/1000 CPU-seconds in the last 24h"),
    ("GPU day spent, both old runs must leave", {"gpu_seconds_per_day": 100},
     [rec(50000, gpu=60), rec(40000, gpu=60), rec(10, gpu=60)], 0, False, False, [Blocker.GPU_DAY],
     DAY - 40000, "180/100 GPU-seconds"),
    ("outside the allowed hours", {"allowed_hours": [22, 23]}, [], 0, False, False, [Blocker.HOURS], 10 * HOUR,
     "quota: hour 12 UTC is outside the allowed hours [22, 23]; next window at 22:00 UTC in 36000s"),
    ("urgent ignores the allowed hours", {"allowed_hours": [22, 23]}, [], 0, True, True, [], None,
     "urgent: allowed hours waived"),
    ("inside the allowed hours", {"allowed_hours": [12]}, [], 0, False, True, [], None, "quota: ok"),
    ("urgent never ignores concurrency", {"allowed_hours": [22]}, [], 1, True, False, [Blocker.CONCURRENCY], None,
     "1/1 retrains running"),
    ("several blockers: all named, retry when all time-based ones cleared",
     {"allowed_hours": [14], "max_retrains_per_hour": 1}, [rec(100)], 1, False, False,
     [Blocker.CONCURRENCY, Blocker.PER_HOUR, Blocker.HOURS], 2 * HOUR, "quota: 1/1 retrains running"),
])
def test_quota_blocker(name, cfg, history, running, urgent, allowed, blockers, retry_in, reason):
    v = quota_blocker(history, running, QuotaConfig(**cfg), NOW, urgent=urgent)
    assert v.allowed == allowed, (name, v.reason)
    assert v.blockers == blockers, name
    assert v.retry_at == (None if retry_in is None else pytest.approx(NOW + retry_in)), name
    assert reason in v.reason, (name, v.reason)
    assert v.reason.startswith("quota: ")


@pytest.mark.parametrize("hour, allowed, next_hour, wait_hours", [
    (23, [1, 2], 1, 2),     # across midnight
    (0, [23], 23, 23),
    (5, [6, 12], 6, 1),
])
def test_allowed_hours_wrap_around_midnight(hour, allowed, next_hour, wait_hours):
    now = 3 * DAY + hour * HOUR + 1800
    v = quota_blocker([], 0, QuotaConfig(allowed_hours=allowed), now)
    assert v.retry_at == 3 * DAY + (hour + wait_hours) * HOUR
    assert f"next window at {next_hour:02d}:00 UTC in {wait_hours * HOUR - 1800:.0f}s" in v.reason


def test_the_backtest_clock_starting_at_zero_is_hour_zero():
    assert quota_blocker([], 0, QuotaConfig(allowed_hours=[0]), 0.0).allowed
    assert not quota_blocker([], 0, QuotaConfig(allowed_hours=[1]), 0.0).allowed


def test_records_refuse_negative_usage():
    with pytest.raises(ValidationError, match="cpu_seconds"):
        RetrainRecord(start_t=0.0, cpu_seconds=-1.0)


# -- the queue -----------------------------------------------------------------------

def req(kind, t, impact=0.0, since=None, urgent=False, reason=""):
    return RetrainRequest(kind=kind, reason=reason or f"{kind}@{t}", requested_t=t, since_t=since, impact=impact,
                          urgent=urgent)


@pytest.mark.parametrize("old_since, new_since, kept", [
    (10.0, 20.0, 10.0),
    (20.0, 10.0, 10.0),
    (None, 20.0, None),  # None (all labeled rows) is the earliest
    (10.0, None, None),
])
def test_a_newer_request_of_a_kind_replaces_the_older_keeping_the_earliest_onset(old_since, new_since, kept):
    q = push([], req("performance_drift", 5.0, impact=1.0, since=old_since, reason="old"))
    q = push(q, req("performance_drift", 9.0, impact=3.0, since=new_since, reason="new"))
    (only,) = q
    assert (only.reason, only.impact, only.requested_t, only.since_t) == ("new", 3.0, 5.0, kept)


@pytest.mark.parametrize("requests, order", [
    ([req("a", 1, impact=1.0), req("b", 2, impact=2.0)], ["b", "a"]),          # impact first
    ([req("a", 2, impact=1.0), req("b", 1, impact=1.0)], ["b", "a"]),          # then who waited longest
    ([req("a", 1, impact=9.0), req("b", 2, impact=0.1, urgent=True)], ["b", "a"]),  # urgent before all
    ([req("b", 1), req("a", 1)], ["a", "b"]),                                   # full ties: by kind
])
def test_pop_highest_order(requests, order):
    q: list[RetrainRequest] = []
    for r in requests:
        q = push(q, r)
    popped = []
    while q:
        r, q = pop_highest(q)
        popped.append(r.kind)
    assert popped == order


def test_push_does_not_change_the_queue_it_was_given():
    q = [req("a", 1)]
    push(q, req("b", 2))
    assert [r.kind for r in q] == ["a"]


@pytest.mark.parametrize("kw, score", [
    (dict(), 0.0),
    (dict(accuracy_drop=0.2), 2.0),               # 2x the 0.1 accuracy-drop threshold
    (dict(max_psi=0.5), 2.5),                     # 2.5x the 0.2 PSI threshold
    (dict(accuracy_drop=0.2, max_psi=0.5), 2.5),  # the larger drift measure
    (dict(accuracy_drop=0.1, burn_rate=14.4), 15.4),
])
def test_impact_score(kw, score):
    assert impact_score(cfg=DriftConfig(), **kw) == pytest.approx(score)
