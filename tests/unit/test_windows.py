"""WindowTracker: the observations both the live observer and the backtest decide on."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lifelong_ray.config import load_config
from lifelong_ray.control.windows import WindowTracker
from lifelong_ray.data.schema import Schema
from lifelong_ray.drift.reference import Reference
from lifelong_ray.policy.model import ControllerState
from lifelong_ray.sim.streams import abrupt_concept_drift

CFG = load_config("configs/demo.yaml").with_overrides(drift={"window_size": 500, "label_window": 200})
STREAM = abrupt_concept_drift(6000, drift_at=3000, seed=4)


def reference(_version: str) -> Reference:
    cols = {k: v[:2000] for k, v in STREAM.features.items()}
    return Reference.from_columns(cols, Schema(CFG.model))


def served(lo: int, hi: int, version: str = "v0001") -> pd.DataFrame:
    df = pd.DataFrame({k: v[lo:hi] for k, v in STREAM.features.items()})
    df.insert(0, "t", np.arange(lo, hi, dtype=float))
    df.insert(1, "version", version)
    df.insert(2, "error", None)
    return df


def joined(lo: int, hi: int, correct: np.ndarray, version: str = "v0001") -> pd.DataFrame:
    y = STREAM.labels[lo:hi]
    return pd.DataFrame({"t": np.arange(lo, hi, dtype=float), "version": version,
                         "prediction": np.where(correct, y, 1 - y), "label": y})


STATE = ControllerState(model="demo", champion="v0001", champion_reference_accuracy=0.95)


def test_feature_windows_flag_the_shifted_inputs_only_after_the_drift():
    tr = WindowTracker(CFG, reference)
    tr.add_served(served(2000, 6000))
    wins = tr.feature_windows(STATE)
    assert [w.index for w in wins] == list(range(8))
    assert [w.drifted for w in wins] == [False, False, True, True, True, True, True, True]
    assert all(w.champion == "v0001" for w in wins) and "PSI" in wins[2].reason


def test_quality_windows_and_page_hinkley_on_a_step_in_the_error_rate():
    rng = np.random.default_rng(0)
    correct = np.r_[rng.random(1000) < 0.95, rng.random(1000) < 0.45]
    tr = WindowTracker(CFG, reference)
    tr.add_joined(joined(2000, 4000, correct))
    wins = tr.quality_windows(STATE)
    assert [w.drifted for w in wins[:5]] == [False] * 5
    first = next(w for w in wins if w.drifted)
    assert first.index == 5 and first.sequential_alarm  # the sequential test fires in the first bad window
    assert 2950 <= first.change_t <= 3050  # the CUSUM change point is near the true step at t=3000


def test_no_sequential_alarm_on_a_stationary_error_stream():
    rng = np.random.default_rng(1)
    tr = WindowTracker(CFG, reference)
    tr.add_joined(joined(0, 6000, rng.random(6000) < 0.93))
    assert not any(w.drifted or w.sequential_alarm for w in tr.quality_windows(STATE))


def test_windows_already_decided_are_counted_but_not_returned():
    tr = WindowTracker(CFG, reference)
    tr.add_served(served(2000, 4000))
    wins = tr.feature_windows(STATE.model_copy(update={"feature_windows_done": 3}))
    assert [w.index for w in wins] == [3] and tr.feature_index == 4


def test_step_stats_count_traffic_errors_and_labels_per_version():
    tr = WindowTracker(CFG, reference)
    a = served(0, 100)
    b = served(100, 150, "v0002")
    b.loc[b.index[:5], "error"] = "boom"
    tr.add_served(pd.concat([a, b]))
    tr.add_joined(joined(50, 100, np.ones(50, bool)))
    tr.add_joined(joined(100, 150, np.r_[np.ones(30, bool), np.zeros(20, bool)], "v0002"))
    st = tr.step_stats(since=50.0)
    assert (st["v0001"].served, st["v0001"].labeled, st["v0001"].correct) == (50, 50, 50)
    assert (st["v0002"].served, st["v0002"].errors, st["v0002"].labeled, st["v0002"].correct) == (50, 5, 50, 30)


def test_latency_counts_once_per_request_and_retried_canary_calls_spend_no_budget():
    import pandas as pd

    from lifelong_ray.config import parse_config
    from lifelong_ray.control.windows import WindowTracker

    cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}}})
    tr = WindowTracker(cfg, reference_for=lambda v: None)
    # one request of 10 instances failed on the canary and was answered by the champion; 30 plain requests
    rows = [dict(request_id=f"r{i}", t=1.0, version="v2", error="injected_abort", latency_ms=900.0, x=0.0)
            for i in range(10)]
    rows += [dict(request_id=f"r{i}", t=1.0, version="v1", error=None, latency_ms=30.0, x=0.0) for i in range(10)]
    rows += [dict(request_id=f"q{i}", t=2.0 + i, version="v1", error=None, latency_ms=10.0 + i, x=0.0)
             for i in range(30)]
    tr.add_served(pd.DataFrame(rows))
    st = tr.step_stats(0.0)
    assert st["v2"].errors == 10 and st["v2"].latency_samples == 1  # ten rows, one request
    assert st["v1"].latency_samples == 31
    errors = tr.budget(40.0).slis["error_rate"]
    assert errors.bad == 0 and errors.total == 40  # the retried call is not a failure a client saw


def test_a_champion_that_is_not_deployed_spends_error_budget():
    """After a restart without reconcile the champion answered 503 (`not deployed`); those
    requests are error rows no other row answered: each one counts. Over the hour they are
    diluted by the healthy traffic before (multi-window burn rates need both windows over
    the threshold), but the 5-minute window shows the outage at once."""
    from lifelong_ray.config import parse_config

    cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}}})
    tr = WindowTracker(cfg, reference_for=lambda v: None)
    ok = [dict(request_id=f"a{i}", t=float(i), version="v1", error=None, latency_ms=5.0, x=0.0) for i in range(3000)]
    down = [dict(request_id=f"b{i}", t=3300.0 + 15 * i, version="v2", latency_ms=1.0, x=0.0,
                 error=None if i == 0 else "version_unavailable: version v2 of m is not deployed") for i in range(20)]
    tr.add_served(pd.DataFrame(ok + down))
    errors = tr.budget(3600.0).slis["error_rate"]
    assert errors.bad == 19
    five_minutes = errors.windows[0]                          # shortest first
    assert five_minutes.burn_rate > 14.4, errors.windows
