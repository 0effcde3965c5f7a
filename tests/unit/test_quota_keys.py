"""Every quota key limits: each one alone blocks a pending retrain, and the
``retrain_deferred`` reason names it."""

from __future__ import annotations

import pytest

from lifelong_ray.config import QuotaConfig, parse_config
from lifelong_ray.events import EventKind
from lifelong_ray.policy.decide import decide
from lifelong_ray.policy.lifecycle import RetrainStage
from lifelong_ray.policy.model import ControllerState, Observations
from lifelong_ray.policy.quota import DAY, HOUR, RetrainRecord, RetrainRequest

NOW = 10 * DAY + 12 * HOUR  # 12:00 UTC


def _cfg(quota: dict, **training):
    return parse_config({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
                         "training": {"min_rows": 100, **training}, "drift": {"cooldown_seconds": 0},
                         "quota": quota})


def _pending(history=()) -> ControllerState:
    return ControllerState(model="m", champion="v0001", weights={"v0001": 100.0}, retrain=RetrainStage.PENDING,
                           retrain_urgent=False, retrain_purpose="drift", retrain_reason="feature drift",
                           retrain_queue=[RetrainRequest(kind="feature_drift", reason="feature drift",
                                                         requested_t=NOW - 10)],
                           retrain_history=list(history))


CASES = {
    "max_concurrent_retrains": ({"max_concurrent_retrains": 2}, [], 2, {}),
    "max_retrains_per_hour": ({"max_retrains_per_hour": 1}, [RetrainRecord(start_t=NOW - 60)], 0, {}),
    "cpu_seconds_per_day": ({"cpu_seconds_per_day": 100}, [RetrainRecord(start_t=NOW - 7200, cpu_seconds=150)], 0, {}),
    "gpu_seconds_per_day": ({"gpu_seconds_per_day": 100},
                            [RetrainRecord(start_t=NOW - 7200, gpu_seconds=150)], 0, {"use_gpu": True}),
    "allowed_hours": ({"allowed_hours": [2, 3]}, [], 0, {}),
}


def test_every_quota_key_has_a_case():
    assert set(CASES) == set(QuotaConfig.model_fields)


@pytest.mark.parametrize("key", sorted(CASES))
def test_each_quota_key_blocks_a_retrain_naming_itself(key):
    quota, history, running, training = CASES[key]
    obs = Observations(labeled_total=1000, retrains_running=running)
    d = decide(_pending(history), obs, _cfg(quota, **training), NOW)
    (ev,) = [e for e in d.events if e.kind == EventKind.RETRAIN_DEFERRED]
    assert f"({key})" in ev.reason, ev.reason
    assert d.state.retrain == RetrainStage.PENDING and d.actions == []
    # without the limit the same retrain starts
    free = decide(_pending(history), obs, _cfg({"max_concurrent_retrains": 3}, **training), NOW)
    assert free.state.retrain == RetrainStage.RUNNING


def test_concurrency_counts_the_other_models_running_retrains():
    cfg = _cfg({"max_concurrent_retrains": 1})
    blocked = decide(_pending(), Observations(labeled_total=1000, retrains_running=1), cfg, NOW)
    assert "1/1 retrains running" in blocked.events[0].reason
    assert decide(_pending(), Observations(labeled_total=1000), cfg, NOW).state.retrain == RetrainStage.RUNNING


def test_the_controller_counts_running_retrains_of_other_models_on_its_storage(tmp_path):
    from lifelong_ray.control.jobs import running_retrains
    from lifelong_ray.storage import Storage

    s = Storage(str(tmp_path))
    for model, stage in (("a", "running"), ("b", "running"), ("c", "pending"), ("me", "pending")):
        s.write_json(f"models/{model}/controller/state.json", {"model": model, "retrain": stage})
    s.write_bytes("models/broken/controller/state.json", b"{not json")
    assert running_retrains(s, exclude="me") == 2
