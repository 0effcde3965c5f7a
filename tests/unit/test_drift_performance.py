"""Accuracy check and the Page-Hinkley detector on the labeled error stream."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lifelong_ray.config import DriftConfig
from lifelong_ray.drift import PageHinkley, QualityCheck, accuracy_check


# -- accuracy_check -------------------------------------------------------------

def test_accuracy_check_flags_a_drop():
    q = accuracy_check(np.arange(200) < 104, 0.91, DriftConfig())
    assert (q.n, q.accuracy, q.reference_accuracy, q.drifted) == (200, 0.52, 0.91, True)
    assert q.reason == "accuracy 0.52 on 200 labeled < reference 0.91 - 0.10"


def test_accuracy_check_within_tolerance():
    q = accuracy_check(np.arange(100) < 85, 0.91, DriftConfig())
    assert q.accuracy == 0.85 and not q.drifted
    assert q.reason == "accuracy 0.85 on 100 labeled >= reference 0.91 - 0.10"
    # the drop limit comes from the config
    assert accuracy_check(np.arange(100) < 85, 0.91, DriftConfig(accuracy_drop=0.05)).drifted


def test_accuracy_check_better_than_reference_and_empty():
    assert not accuracy_check(np.ones(50, dtype=bool), 0.6, DriftConfig()).drifted
    q = accuracy_check(np.array([], dtype=bool), 0.9, DriftConfig())
    assert q.n == 0 and math.isnan(q.accuracy) and not q.drifted
    assert q.reason == "no labeled rows to compare with reference 0.90 - 0.10"
    with pytest.raises(ValueError, match="reference_accuracy"):
        accuracy_check(np.ones(3, dtype=bool), 1.5, DriftConfig())


def test_quality_check_json_roundtrip():
    for q in (accuracy_check(np.arange(10) < 3, 0.9, DriftConfig()),
              accuracy_check(np.array([], dtype=bool), 0.9, DriftConfig())):
        blob = json.dumps(q.to_json(), allow_nan=False)
        back = QualityCheck.from_json(json.loads(blob))
        assert back.to_json() == q.to_json()


# -- PageHinkley ----------------------------------------------------------------

def step_stream(seed: int, before: float = 0.1, after: float = 0.5, n: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.r_[rng.random(n) < before, rng.random(n) < after].astype(float)


def sequential(ph: PageHinkley, xs: np.ndarray) -> list[int]:
    return [i for i, x in enumerate(xs) if ph.update(float(x))]


def test_page_hinkley_fires_at_known_index_after_step():
    assert sequential(PageHinkley(), step_stream(42)) == [1093]
    assert PageHinkley().update_many(step_stream(42)) == 1093
    # River's generic parameters fire on the same change too, later
    assert PageHinkley(delta=0.005, threshold=50.0).update_many(step_stream(42)) == 1137


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2, 0.3])
def test_page_hinkley_quiet_on_stationary_stream(rate):
    for seed in range(5):
        xs = (np.random.default_rng(seed).random(10000) < rate).astype(float)
        ph = PageHinkley()
        assert ph.update_many(xs) is None
        assert ph.n == 10000


def test_page_hinkley_resets_after_firing():
    ph = PageHinkley()
    xs = step_stream(42)
    assert ph.update_many(xs[:1094]) == 1093
    assert ph.n == 0 and ph.statistic == 0.0  # reset right away, no flag left set
    assert not ph.update(0.0) and ph.n == 1


@pytest.mark.parametrize("mode", ["up", "down", "both"])
@pytest.mark.parametrize("alpha", [1.0, 1 - 1e-4, 0.99])
def test_update_many_agrees_with_update(mode, alpha):
    for seed in range(4):
        rng = np.random.default_rng(seed)
        # several regime changes so that several firings (and resets) happen
        p = np.repeat(rng.uniform(0.0, 1.0, size=10), 700)
        xs = (rng.random(p.size) < p).astype(float)
        a = PageHinkley(threshold=15.0, alpha=alpha, mode=mode, min_instances=20)
        b = PageHinkley(threshold=15.0, alpha=alpha, mode=mode, min_instances=20)
        want = sequential(a, xs)
        got = b.update_batch(xs)
        assert len(want) >= 2  # the comparison covers firings and resets
        assert got == want
        if got:
            assert b.update_many(xs[:0]) is None
        state_a, state_b = a.to_json()["state"], b.to_json()["state"]
        assert state_a["n"] == state_b["n"]
        for key in ("total", "sum_inc", "sum_dec", "min_inc", "max_dec"):
            if alpha == 1.0:
                assert state_a[key] == state_b[key]  # bit for bit
            else:
                assert state_a[key] == pytest.approx(state_b[key], rel=1e-9, abs=1e-9)


def test_update_many_in_pieces_matches_one_call():
    xs = step_stream(3)
    whole = PageHinkley().update_batch(xs)
    ph = PageHinkley()
    pieces = []
    for start in range(0, xs.size, 137):
        pieces += [start + i for i in ph.update_batch(xs[start:start + 137])]
    assert pieces == whole and whole


def test_down_mode_detects_a_falling_mean():
    xs = step_stream(5, before=0.6, after=0.1)
    assert PageHinkley(mode="up").update_many(xs) is None
    i = PageHinkley(mode="down").update_many(xs)
    assert i is not None and 1000 < i < 1200
    assert PageHinkley(mode="both").update_many(xs) == i


def test_min_instances_holds_back_early_alarms():
    xs = np.r_[np.zeros(5), np.ones(200)]
    assert PageHinkley(threshold=1.0, min_instances=1).update_many(xs) == 6
    assert PageHinkley(threshold=1.0, min_instances=50).update_many(xs) == 49


def test_page_hinkley_json_roundtrip_continues_identically():
    xs = step_stream(42)
    ph = PageHinkley()
    ph.update_many(xs[:1020])
    blob = json.dumps(ph.to_json(), allow_nan=False)
    restored = PageHinkley.from_json(json.loads(blob))
    assert restored.to_json() == ph.to_json()
    assert sequential(restored, xs[1020:]) == sequential(ph, xs[1020:]) == [73]
    fresh = PageHinkley.from_json(json.loads(json.dumps(PageHinkley().to_json(), allow_nan=False)))
    assert fresh.n == 0 and fresh.to_json() == PageHinkley().to_json()
    with pytest.raises(ValueError, match="format"):
        PageHinkley.from_json({"format": 0})


@pytest.mark.parametrize("kwargs,match", [
    ({"min_instances": 0}, "min_instances"),
    ({"min_instances": 2.5}, "min_instances"),
    ({"delta": -1.0}, "delta"),
    ({"threshold": 0.0}, "threshold"),
    ({"threshold": math.inf}, "threshold"),
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": 1.5}, "alpha"),
    ({"mode": "sideways"}, "mode"),
])
def test_page_hinkley_validates_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PageHinkley(**kwargs)
