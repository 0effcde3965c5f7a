"""Rollout state machine: shadow, approval, canary, probation, budget freeze and
operator commands, table-driven through the pure decide()."""

from __future__ import annotations

import itertools

import pytest

from lifelong_ray.config import parse_config
from lifelong_ray.policy.decide import decide
from lifelong_ray.policy.lifecycle import (
    ROLLOUT_TRANSITIONS,
    IllegalTransition,
    RetrainStage,
    RolloutStage,
    transition,
)
from lifelong_ray.policy.model import (
    CommandKind,
    ControllerState,
    Observations,
    OperatorCommand,
    RetrainOutcome,
    ShadowStats,
    VersionStats,
)
from lifelong_ray.policy.slo import BudgetStatus

BASE = {
    "model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
    "training": {"min_rows": 100},
    "drift": {"cooldown_seconds": 0},
    "rollout": {"canary_steps": [10, 50, 100], "min_labeled_per_step": 50, "retire_grace_seconds": 5},
}


def cfg(**rollout):
    data = {**BASE, "rollout": {**BASE["rollout"], **rollout}}
    return parse_config(data)


CFG = cfg()


def kinds(d):
    return [e.kind.value for e in d.events]


def running(purpose="drift", urgent=True):
    return ControllerState(model="m", champion="v0001", champion_reference_accuracy=0.95, weights={"v0001": 100.0},
                           retrain=RetrainStage.RUNNING, retrain_job_id="m-retrain-0002", retrain_count=2,
                           retrain_purpose=purpose, retrain_urgent=urgent, previous_champion=None)


OUT = RetrainOutcome(job_id="m-retrain-0002", status="ok", version="v0002", candidate_accuracy=0.93,
                     champion_accuracy=0.60, holdout_rows=300, train_rows=1200, train_seconds=2.0, runner="local")
GOOD = {"v0002": VersionStats(served=500, labeled=300, correct=280),
        "v0001": VersionStats(served=500, labeled=300, correct=180)}


def cmd(kind, version=None, who="ana", why="because"):
    return OperatorCommand(id=f"{kind}-{version}-{who}", kind=CommandKind(kind), model="m", version=version,
                           who=who, why=why, t=1.0)


def budget(exhausted: bool):
    return BudgetStatus(t=0.0, period_seconds=3600.0, slis={}, exhausted=exhausted, alerting=exhausted,
                        reason="error-rate budget exhausted: 3.0% errors > 1.0%" if exhausted else "within budget")


def step(state, c, now, **obs):
    return decide(state, Observations(**obs), c, now)


# -- the transition table ----------------------------------------------------------------

@pytest.mark.parametrize("src, dst", list(itertools.product(RolloutStage, RolloutStage)))
def test_every_rollout_transition_is_legal_or_raises(src, dst):
    if dst in ROLLOUT_TRANSITIONS[src]:
        assert transition(src, dst) == dst
    else:
        with pytest.raises(IllegalTransition, match=f"from {src.value} to {dst.value}"):
            transition(src, dst)


# -- shadow ---------------------------------------------------------------------------------

SHADOW = cfg(shadow_fraction=0.5, shadow_min_samples=100, shadow_min_agreement=0.7)


def in_shadow():
    d = step(running(), SHADOW, 10.0, retrain_outcome=OUT)
    assert kinds(d)[-2:] == ["gate_passed", "shadow_started"]
    routing = [a for a in d.actions if a.kind.value == "set_routing"][-1]
    assert routing.weights == {"v0001": 100.0} and routing.shadow == "v0002" and routing.shadow_fraction == 0.5
    assert d.state.rollout == RolloutStage.SHADOW
    return d.state


@pytest.mark.parametrize("stats, expect, stage", [
    (ShadowStats(compared=99, agree=99), [], RolloutStage.SHADOW),  # too few: hold
    (ShadowStats(compared=200, agree=180), ["canary_step", "canary_started"], RolloutStage.CANARY),
    (ShadowStats(compared=200, agree=100), ["rollout_aborted"], RolloutStage.STABLE),  # 50% < 70%
    (ShadowStats(compared=200, agree=160, labeled=100, candidate_correct=60, champion_correct=90),
     ["rollout_aborted"], RolloutStage.STABLE),  # worse on labels than the champion on the same requests
])
def test_shadow_verdicts(stats, expect, stage):
    d = step(in_shadow(), SHADOW, 20.0, shadow_stats=stats)
    assert kinds(d) == expect and d.state.rollout == stage
    if stage == RolloutStage.STABLE:
        assert d.state.weights == {"v0001": 100.0} and "v0002" in d.state.retiring
        assert "agreement" in d.events[-1].reason


# -- approval -------------------------------------------------------------------------------

def test_approval_before_canary_holds_until_the_right_version_is_approved():
    c = cfg(require_approval=["canary"])
    d = step(running(), c, 10.0, retrain_outcome=OUT)
    assert kinds(d)[-1] == "approval_requested" and d.state.rollout == RolloutStage.APPROVAL
    assert "lifelong approve m v0002" in d.events[-1].reason
    held = step(d.state, c, 20.0, step_stats=GOOD)
    assert kinds(held) == [] and held.state.weights == {"v0001": 100.0}
    wrong = step(held.state, c, 30.0, commands=[cmd("approve", "v0009")])
    assert kinds(wrong) == ["command_rejected"] and "v0009 is not the candidate" in wrong.events[0].reason
    ok = step(wrong.state, c, 40.0, commands=[cmd("approve", "v0002")])
    assert kinds(ok) == ["approved", "canary_started"]
    assert ok.events[0].data["who"] == "ana" and "because" in ok.events[0].reason
    assert ok.state.weights == {"v0001": 90.0, "v0002": 10.0}
    again = step(ok.state, c, 50.0, commands=[cmd("approve", "v0002")])  # the same command id: taken in once
    assert kinds(again) == []


def test_approval_before_full_holds_at_the_last_step_and_still_rolls_back_a_failure():
    c = cfg(require_approval=["full"])
    st = step(step(running(), c, 10.0, retrain_outcome=OUT).state, c, 20.0, step_stats=GOOD).state
    assert st.weights == {"v0001": 50.0, "v0002": 50.0}
    d = step(st, c, 30.0, step_stats=GOOD)
    assert kinds(d) == ["approval_requested"] and d.state.approval_for == "full"
    assert d.state.weights == {"v0001": 50.0, "v0002": 50.0}  # traffic stays at the last step
    bad = {"v0002": VersionStats(served=500, errors=400), "v0001": VersionStats(served=500)}
    rb = step(d.state, c, 40.0, step_stats=bad)
    assert kinds(rb) == ["rolled_back"] and rb.state.weights == {"v0001": 100.0}
    ok = step(d.state, c, 40.0, commands=[cmd("approve")])
    assert kinds(ok) == ["approved", "promoted"] and ok.state.champion == "v0002"


# -- probation ---------------------------------------------------------------------------------

PROB = cfg(probation_labels=200, probation_margin=0.03)


def on_probation():
    st = step(step(running(), PROB, 10.0, retrain_outcome=OUT).state, PROB, 20.0, step_stats=GOOD).state
    champ_in_step = {"v0002": VersionStats(served=500, labeled=300, correct=280),
                     "v0001": VersionStats(served=500, labeled=300, correct=270)}  # previous champion at 0.90
    d = step(st, PROB, 30.0, step_stats=champ_in_step)
    assert kinds(d) == ["promoted"] and d.state.rollout == RolloutStage.PROBATION
    assert d.state.previous_champion == "v0001" and "v0001" not in d.state.retiring  # kept ready
    assert d.state.probation_baseline == pytest.approx(0.9)
    return d.state


@pytest.mark.parametrize("stats, expect, champion", [
    (VersionStats(served=300, labeled=150, correct=100), [], "v0002"),  # too few late labels yet
    (VersionStats(served=300, labeled=200, correct=180), ["probation_passed"], "v0002"),  # 0.90 >= 0.87
    (VersionStats(served=300, labeled=200, correct=160), ["rolled_back"], "v0001"),  # 0.80 < 0.87
    (VersionStats(served=300, errors=60), ["rolled_back"], "v0001"),  # errors do not wait for labels
])
def test_probation_verdicts(stats, expect, champion):
    d = step(on_probation(), PROB, 40.0, step_stats={"v0002": stats})
    assert kinds(d) == expect and d.state.champion == champion
    if expect == ["rolled_back"]:
        assert d.state.weights == {"v0001": 100.0} and "v0002" in d.state.retiring
        assert [a.alias for a in d.actions if a.kind.value == "set_alias"] == ["champion"]
    if expect == ["probation_passed"]:
        assert "v0001" in d.state.retiring and d.state.rollout == RolloutStage.STABLE


# -- error budget ---------------------------------------------------------------------------------

def test_spent_budget_rolls_back_a_non_urgent_canary_and_holds_the_next_one():
    st = step(running(purpose="settle", urgent=False), CFG, 10.0, retrain_outcome=OUT).state
    assert st.rollout == RolloutStage.CANARY
    d = step(st, CFG, 20.0, budget=budget(True))
    assert kinds(d) == ["budget_frozen", "rolled_back"] and d.state.budget_frozen
    assert "error budget exhausted" in d.events[-1].reason
    held = step(running(purpose="settle", urgent=False).model_copy(update={"budget_frozen": True,
                                                                          "budget_reason": "spent"}),
                CFG, 30.0, retrain_outcome=OUT, budget=budget(True))
    assert kinds(held)[-1] == "budget_frozen" and held.state.approval_for == "budget"
    thaw = step(held.state, CFG, 40.0, budget=budget(False))
    assert kinds(thaw) == ["budget_unfrozen", "canary_started"]


def test_spent_budget_lets_an_urgent_canary_go_on():
    st = step(running(purpose="drift", urgent=True), CFG, 10.0, retrain_outcome=OUT).state
    d = step(st, CFG, 20.0, budget=budget(True), step_stats=GOOD)
    assert kinds(d) == ["budget_frozen", "canary_step"]


def test_spent_budget_defers_a_refresh_retrain_but_not_a_performance_drift_retrain():
    idle = ControllerState(model="m", champion="v0001", weights={"v0001": 100.0}, budget_frozen=True,
                           budget_reason="error-rate budget exhausted", retrain=RetrainStage.PENDING,
                           retrain_urgent=False, retrain_reason="settle")
    d = step(idle, CFG, 10.0, labeled_total=5000, budget=budget(True))
    assert kinds(d) == ["retrain_deferred"] and "budget" in d.events[0].reason
    urgent = idle.model_copy(update={"retrain_urgent": True})
    assert kinds(step(urgent, CFG, 10.0, labeled_total=5000, budget=budget(True))) == ["retrain_started"]


# -- operator commands ------------------------------------------------------------------------------

def stable():
    return ControllerState(model="m", champion="v0002", previous_champion="v0001", weights={"v0002": 100.0},
                           champion_reference_accuracy=0.93, previous_reference_accuracy=0.95)


@pytest.mark.parametrize("state, command, expect", [
    (stable(), "pause", ["paused"]),
    (stable().model_copy(update={"paused": True}), "pause", ["command_rejected"]),
    (stable().model_copy(update={"paused": True}), "resume", ["resumed"]),
    (stable(), "resume", ["command_rejected"]),
    (stable(), "retrain", ["retrain_requested", "retrain_started"]),
    (stable().model_copy(update={"retrain": RetrainStage.RUNNING, "retrain_job_id": "j"}), "retrain",
     ["command_rejected"]),
    (stable(), "rollback", ["rolled_back"]),  # back to the previous champion
    (stable().model_copy(update={"previous_champion": None}), "rollback", ["command_rejected"]),
    (stable(), "approve", ["command_rejected"]),
])
def test_operator_commands(state, command, expect):
    d = step(state, CFG, 10.0, commands=[cmd(command)], labeled_total=5000)
    assert kinds(d) == expect
    assert d.events[0].data["who"] == "ana"
    if command == "rollback" and expect == ["rolled_back"]:
        assert d.state.champion == "v0001" and d.state.weights == {"v0001": 100.0}
        assert [a.kind.value for a in d.actions][:2] == ["deploy_version", "set_alias"]
    if command == "retrain" and expect[0] == "retrain_requested":
        assert d.state.retrain_purpose == "operator" and d.state.retrain_urgent


def test_operator_rollback_of_a_canary_and_pause_holds_steps_but_not_rollbacks():
    st = step(running(), CFG, 10.0, retrain_outcome=OUT).state
    paused = step(st, CFG, 20.0, commands=[cmd("pause")]).state
    assert kinds(step(paused, CFG, 30.0, step_stats=GOOD)) == []  # a good step does not advance
    bad = {"v0002": VersionStats(served=500, errors=400), "v0001": VersionStats(served=500)}
    assert kinds(step(paused, CFG, 30.0, step_stats=bad)) == ["rolled_back"]
    d = step(st, CFG, 20.0, commands=[cmd("rollback", why="customer complaints")])
    assert kinds(d) == ["rolled_back"] and "customer complaints" in d.events[0].reason
    assert d.state.weights == {"v0001": 100.0} and d.state.rollout == RolloutStage.STABLE


# -- quotas and the retrain queue ----------------------------------------------------------------

def test_quota_defers_a_retrain_says_when_and_runs_it_then():
    from lifelong_ray.policy.quota import RetrainRecord

    c = parse_config({**BASE, "quota": {"max_retrains_per_hour": 1}})
    st = ControllerState(model="m", champion="v0001", weights={"v0001": 100.0},
                         retrain_history=[RetrainRecord(start_t=1000.0, cpu_seconds=5.0)])
    d = step(st, c, 2000.0, commands=[cmd("retrain")], labeled_total=5000)
    assert kinds(d) == ["retrain_requested", "retrain_deferred"]
    deferred = d.events[-1]
    assert "1/1 retrains in the last hour" in deferred.reason and deferred.data["retry_at"] == pytest.approx(4600.0)
    assert kinds(step(d.state, c, 3000.0, labeled_total=5000)) == []  # still blocked: said once
    again = step(d.state, c, 3500.0, labeled_total=5000, commands=[cmd("retrain", who="bob")])
    assert kinds(again) == ["retrain_requested", "retrain_deferred"]  # merged into the queued request
    assert again.events[0].data["command_id"] == "retrain-None-bob"
    later = step(again.state, c, 4600.0, labeled_total=5000)
    assert kinds(later) == ["retrain_started"] and later.state.retrain_purpose == "operator"
    # the one retrain answers both commands: `jobs/retrain.py --wait` follows its command by id
    assert later.events[0].data["command_ids"] == ["retrain-None-ana", "retrain-None-bob"]


@pytest.mark.parametrize("measured, charged", [(None, 2.0 * 2 * 1.5), (37.0, 37.0)])
def test_a_finished_retrain_is_charged_what_it_measured_else_seconds_x_workers_x_cpus(measured, charged):
    from lifelong_ray.policy.quota import RetrainRecord

    c = parse_config({**BASE, "training": {"min_rows": 100, "num_workers": 2, "cpus_per_worker": 1.5}})
    st = running().model_copy(update={"retrain_history": [RetrainRecord(start_t=5.0)]})
    out = OUT.model_copy(update={"cpu_seconds": measured})   # a Tune search reports its trials' CPU-seconds
    d = step(st, c, 10.0, retrain_outcome=out)
    assert d.state.retrain_history[-1].cpu_seconds == pytest.approx(charged)


def test_the_queue_runs_the_most_urgent_request_first_and_one_retrain_answers_all():
    c = parse_config({**BASE, "quota": {"allowed_hours": [22]}})  # t=1000 is 00:16 UTC: outside
    st = ControllerState(model="m", champion="v0001", weights={"v0001": 100.0})
    d = step(st, c, 1000.0, commands=[cmd("retrain")], labeled_total=5000)  # operator: urgent, runs anyway
    assert kinds(d) == ["retrain_requested", "retrain_started"]
    settle = ControllerState(model="m", champion="v0001", weights={"v0001": 100.0}, settle_due_labeled=5000,
                             settles_left=1)
    d = step(settle, c, 1000.0, labeled_total=5000)  # a refresh is not urgent: waits for the allowed hour
    assert kinds(d) == ["retrain_requested", "retrain_deferred"] and "allowed hours" in d.events[-1].reason
    assert [r.kind for r in d.state.retrain_queue] == ["settle"]


@pytest.mark.parametrize("purpose, expect", [
    ("settle", "gate_failed"),     # a refresh of the same concept must not forget the past
    ("operator", "gate_failed"),
    ("drift", "canary_started"),   # after a drift, the replay rows hold the old concept
])
def test_forgetting_check_applies_except_after_a_drift(purpose, expect):
    out = OUT.model_copy(update={"candidate_accuracy": 0.95, "champion_accuracy": 0.90,
                                 "replay_candidate_accuracy": 0.70, "replay_champion_accuracy": 0.90,
                                 "replay_rows": 500})
    d = step(running(purpose=purpose), CFG, 10.0, retrain_outcome=out)
    assert kinds(d)[-1] == expect
    if expect == "gate_failed":
        assert "forgetting" in d.events[-1].reason and "0.700" in d.events[-1].reason


def test_an_operator_retrain_goes_ahead_of_a_refresh_waiting_on_the_budget():
    from lifelong_ray.policy.quota import RetrainRequest

    refresh = RetrainRequest(kind="feature_drift", reason="PSI 0.4", requested_t=1.0, since_t=0.5, purpose="drift")
    waiting = ControllerState(model="m", champion="v0001", weights={"v0001": 100.0}, budget_frozen=True,
                              budget_reason="error-rate budget exhausted", retrain=RetrainStage.PENDING,
                              retrain_queue=[refresh], retrain_urgent=False, retrain_since_t=0.5)
    d = step(waiting, CFG, 10.0, labeled_total=5000, budget=budget(True))
    assert kinds(d) == ["retrain_deferred"] and "budget" in d.events[0].reason
    d = step(d.state, CFG, 20.0, labeled_total=5000, budget=budget(True), commands=[cmd("retrain")])
    assert kinds(d) == ["retrain_requested", "retrain_started"]
    assert d.state.retrain_purpose == "operator" and "1 other queued request" in d.events[-1].reason
