"""rollout.step_timeout_seconds: a step that gathers no verdict by its deadline is rolled back."""

from __future__ import annotations

import pytest

from lifelong_ray.config import ConfigError, parse_config
from lifelong_ray.events import EventKind
from lifelong_ray.policy.decide import decide
from lifelong_ray.policy.lifecycle import RolloutStage
from lifelong_ray.policy.model import ControllerState, Observations, ShadowStats, VersionStats

BASE = {"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
        "training": {"min_rows": 100}}


def _cfg(**rollout):
    return parse_config({**BASE, "rollout": {"canary_steps": [10, 50, 100], "min_labeled_per_step": 50,
                                             "step_timeout_seconds": 600, **rollout}})


CFG = _cfg()


def canary(**kw) -> ControllerState:
    base = dict(model="m", champion="v0001", champion_reference_accuracy=0.95, rollout=RolloutStage.CANARY,
                candidate="v0002", step_index=0, step_started_t=1000.0, weights={"v0001": 90.0, "v0002": 10.0},
                gate={"candidate_accuracy": 0.93, "champion_accuracy": 0.9, "holdout_rows": 200})
    base.update(kw)
    return ControllerState(**base)


NO_LABELS = Observations(step_stats={"v0002": VersionStats(served=300), "v0001": VersionStats(served=2700)})


def test_a_canary_without_labels_holds_until_its_deadline_then_rolls_back():
    d = decide(canary(), NO_LABELS, CFG, 1599.0)
    assert d.events == [] and d.state.rollout == RolloutStage.CANARY
    d = decide(canary(), NO_LABELS, CFG, 1600.0)
    (ev,) = d.events
    assert ev.kind == EventKind.ROLLED_BACK and ev.data["cause"] == "step_timeout" and ev.data["deadline"] == 1600.0
    assert "canary step 1 (10%) timed out" in ev.reason and "deadline t=1600" in ev.reason
    assert "0/50" in ev.reason  # the missing evidence, from the step's analysis
    assert d.state.rollout == RolloutStage.STABLE and d.state.weights == {"v0001": 100.0}


def test_a_step_that_advances_gets_a_new_deadline():
    st = canary(step_started_t=1500.0, step_index=1, weights={"v0001": 50.0, "v0002": 50.0})
    assert decide(st, NO_LABELS, CFG, 1600.0).state.rollout == RolloutStage.CANARY


def test_a_shadow_that_compares_too_few_answers_is_aborted():
    st = canary(rollout=RolloutStage.SHADOW, step_index=-1, step_started_t=None, shadow_started_t=1000.0,
                weights={"v0001": 100.0})
    obs = Observations(shadow_stats=ShadowStats(compared=12))
    d = decide(st, obs, CFG, 1600.0)
    (ev,) = d.events
    assert ev.kind == EventKind.ROLLOUT_ABORTED and "shadow timed out" in ev.reason
    assert "12/200 compared answers" in ev.reason


def test_a_probation_without_late_labels_goes_back_to_the_previous_champion():
    st = canary(rollout=RolloutStage.PROBATION, candidate=None, champion="v0002", previous_champion="v0001",
                step_index=-1, weights={"v0002": 100.0})
    cfg = _cfg(probation_labels=100)
    d = decide(st, Observations(step_stats={"v0002": VersionStats(served=500, labeled=7, correct=7)}), cfg, 1600.0)
    (ev,) = d.events
    assert ev.kind == EventKind.ROLLED_BACK and "probation of v0002 timed out" in ev.reason
    assert "7/100 late labels" in ev.reason and d.state.champion == "v0001"


def test_no_deadline_while_paused_awaiting_approval_or_when_off():
    assert decide(canary(paused=True), NO_LABELS, CFG, 9999.0).state.rollout == RolloutStage.CANARY
    approval = canary(rollout=RolloutStage.APPROVAL, approval_for="canary", step_index=-1, step_started_t=None,
                      weights={"v0001": 100.0})
    assert decide(approval, Observations(), CFG, 9999.0).state.rollout == RolloutStage.APPROVAL
    off = _cfg(step_timeout_seconds=None)
    assert decide(canary(), NO_LABELS, off, 1e9).state.rollout == RolloutStage.CANARY


def test_the_default_deadline_is_six_hours_and_must_exceed_the_minimum_step_time():
    assert parse_config(BASE).rollout.step_timeout_seconds == 21600.0
    with pytest.raises(ConfigError, match="must exceed min_seconds_per_step"):
        _cfg(min_seconds_per_step=600)
