"""decide(): the whole policy, table-driven, without Ray."""

from __future__ import annotations

import pytest

from lifelong_ray.config import parse_config
from lifelong_ray.policy.decide import decide, recover
from lifelong_ray.policy.lifecycle import IllegalTransition, RetrainStage, RolloutStage, transition
from lifelong_ray.policy.model import (
    ActionKind,
    ControllerState,
    FeatureWindow,
    Observations,
    QualityWindow,
    RetrainOutcome,
    VersionStats,
)

CFG = parse_config({
    "model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
    "training": {"min_rows": 100},
    "drift": {"consecutive_windows": 2, "cooldown_seconds": 30},
    "rollout": {"canary_steps": [10, 50, 100], "min_labeled_per_step": 50, "retire_grace_seconds": 5},
})


def kinds(decision):
    return [e.kind.value for e in decision.events]


def acts(decision):
    return [a.kind.value for a in decision.actions]


def champion_state(**kw) -> ControllerState:
    base = dict(model="m", champion="v0001", champion_reference_accuracy=0.95, weights={"v0001": 100.0})
    base.update(kw)
    return ControllerState(**base)


def running(**kw) -> ControllerState:
    return champion_state(retrain=RetrainStage.RUNNING, retrain_job_id="m-retrain-0001", retrain_count=1, **kw)


def canary(step=0, **kw) -> ControllerState:
    return champion_state(rollout=RolloutStage.CANARY, candidate="v0002", step_index=step, step_started_t=0.0,
                          gate={"candidate_accuracy": 0.93, "champion_accuracy": 0.55}, **kw)


def ok_outcome(cand=0.93, champ=0.55, version="v0002") -> RetrainOutcome:
    return RetrainOutcome(job_id="m-retrain-0001", status="ok", version=version, candidate_accuracy=cand,
                          champion_accuracy=champ, holdout_rows=120, train_rows=480, train_seconds=3.2,
                          runner="ray")


def qwin(i, drifted, t=100.0):
    return QualityWindow(index=i, start_t=t + i * 10, end_t=t + i * 10 + 9, n=200, champion="v0001",
                         accuracy=0.5 if drifted else 0.95, reference_accuracy=0.95, drifted=drifted,
                         reason="accuracy 0.50 on 200 labeled < reference 0.95 - 0.10" if drifted else "ok")


def test_bootstrap_waits_for_rows_then_starts_first_retrain():
    assert kinds(decide(ControllerState(model="m"), Observations(labeled_total=99), CFG, 1.0)) == []
    d = decide(ControllerState(model="m"), Observations(labeled_total=150), CFG, 1.0)
    assert kinds(d) == ["retrain_requested", "retrain_started"]
    assert d.state.retrain == RetrainStage.RUNNING and d.state.retrain_job_id == "m-retrain-0001"
    (a,) = d.actions
    assert a.kind == ActionKind.START_RETRAIN and a.job_id == "m-retrain-0001" and a.seed == CFG.training.seed + 1


def test_first_version_is_promoted_without_canary():
    st = ControllerState(model="m", retrain=RetrainStage.RUNNING, retrain_job_id="m-retrain-0001")
    d = decide(st, Observations(retrain_outcome=ok_outcome(version="v0001", champ=None)), CFG, 5.0)
    assert kinds(d) == ["retrain_finished", "candidate_registered", "promoted"]
    assert d.events[-1].data["bootstrap"] is True
    assert acts(d) == ["deploy_version", "set_alias", "set_routing"]
    assert d.state.champion == "v0001" and d.state.weights == {"v0001": 100.0}


@pytest.mark.parametrize("outcome, events, rollout, weights", [
    (ok_outcome(), ["retrain_finished", "candidate_registered", "gate_passed", "canary_started"],
     RolloutStage.CANARY, {"v0001": 90.0, "v0002": 10.0}),
    (ok_outcome(cand=0.80, champ=0.90), ["retrain_finished", "candidate_registered", "gate_failed"],
     RolloutStage.STABLE, {"v0001": 100.0}),
    (RetrainOutcome(job_id="m-retrain-0001", status="failed", error="boom"), ["retrain_failed"],
     RolloutStage.STABLE, {"v0001": 100.0}),
])
def test_retrain_outcome_goes_through_the_gate(outcome, events, rollout, weights):
    d = decide(running(), Observations(retrain_outcome=outcome), CFG, 10.0)
    assert kinds(d) == events
    assert d.state.rollout == rollout and d.state.weights == weights
    assert d.state.retrain == RetrainStage.IDLE and d.state.last_retrain_finished_t == 10.0
    if "gate_failed" in events:
        reason = d.events[-1].reason
        assert "0.800" in reason and "0.900" in reason  # both numbers in the reason


def test_outcome_of_another_job_is_ignored():
    out = ok_outcome().model_copy(update={"job_id": "m-retrain-0099"})
    d = decide(running(), Observations(retrain_outcome=out), CFG, 10.0)
    assert d.events == [] and d.state.retrain == RetrainStage.RUNNING


@pytest.mark.parametrize("cand, champ, step, expect, weights", [
    # too few labels: hold, never promote on thin evidence
    (VersionStats(served=40, labeled=30, correct=30), VersionStats(served=400, labeled=300, correct=165), 0,
     [], {"v0001": 100.0}),
    # good canary: next step
    (VersionStats(served=100, labeled=60, correct=56), VersionStats(served=900, labeled=600, correct=330), 0,
     ["canary_step"], {"v0001": 50.0, "v0002": 50.0}),
    # good at the last step before 100: promote
    (VersionStats(served=500, labeled=300, correct=280), VersionStats(served=500, labeled=300, correct=165), 1,
     ["promoted"], {"v0002": 100.0}),
    # worse canary: roll back
    (VersionStats(served=100, labeled=60, correct=20), VersionStats(served=900, labeled=600, correct=560), 0,
     ["rolled_back"], {"v0001": 100.0}),
    # erroring canary: roll back even before labels arrive
    (VersionStats(served=100, errors=40), VersionStats(served=900), 0, ["rolled_back"], {"v0001": 100.0}),
])
def test_canary_step_analysis(cand, champ, step, expect, weights):
    st = canary(step=step, weights={"v0001": 90.0, "v0002": 10.0} if step == 0 else {"v0001": 50.0, "v0002": 50.0})
    d = decide(st, Observations(step_stats={"v0002": cand, "v0001": champ}), CFG, 20.0)
    assert kinds(d) == expect
    if expect:
        assert d.state.weights == weights
        assert all(e.reason for e in d.events)
    else:
        assert d.actions == [] and d.state.step_index == step


def test_promotion_retires_the_old_champion_after_the_grace_period():
    st = canary(step=1, weights={"v0001": 50.0, "v0002": 50.0})
    good = {"v0002": VersionStats(served=500, labeled=300, correct=280)}
    d = decide(st, Observations(step_stats=good), CFG, 20.0)
    assert d.state.champion == "v0002" and d.state.previous_champion == "v0001"
    assert d.state.rollout == RolloutStage.STABLE and d.state.retiring == {"v0001": 20.0}
    assert "retire_version" not in acts(decide(d.state, Observations(), CFG, 22.0))
    later = decide(d.state, Observations(), CFG, 26.0)
    assert [(a.kind.value, a.version) for a in later.actions] == [("retire_version", "v0001")]


def test_performance_drift_needs_consecutive_windows_and_fires_once():
    st = champion_state()
    d1 = decide(st, Observations(quality_windows=[qwin(0, True)]), CFG, 200.0)
    assert kinds(d1) == []
    # 500 rows "since" an older onset must not count for this request: counted from the next tick on
    d2 = decide(d1.state, Observations(quality_windows=[qwin(1, True)], labeled_since_retrain=500), CFG, 210.0)
    assert kinds(d2) == ["drift_detected", "retrain_requested"]
    assert "accuracy 0.50" in d2.events[0].reason
    # retrain window starts in the middle of the first flagged window
    assert d2.state.retrain_since_t == pytest.approx(100.0 + 4.5)
    since = d2.state.retrain_since_t
    d3 = decide(d2.state, Observations(quality_windows=[qwin(2, True)], labeled_since_retrain=50,
                                       labeled_since_t=since), CFG, 215.0)
    assert kinds(d3) == [] and d3.state.retrain == RetrainStage.PENDING  # waiting for rows
    d4 = decide(d3.state, Observations(quality_windows=[qwin(3, True)], labeled_since_retrain=150,
                                       labeled_since_t=since), CFG, 220.0)
    assert kinds(d4) == ["retrain_started"]  # no second drift_detected while active


def test_windows_already_decided_are_not_counted_twice():
    st = champion_state(quality_windows_done=2)
    d = decide(st, Observations(quality_windows=[qwin(0, True), qwin(1, True)]), CFG, 1.0)
    assert d.events == [] and d.state.quality_monitor.consecutive == 0


def test_feature_drift_alone_is_reported_but_does_not_retrain_by_default():
    fw = [FeatureWindow(index=i, start_t=i, end_t=i + 1, drifted=True, reason="PSI 0.40 > 0.20 on 2/6 features",
                        champion="v0001")
          for i in range(2)]
    d = decide(champion_state(), Observations(feature_windows=fw), CFG, 5.0)
    assert kinds(d) == ["drift_detected"] and d.state.retrain == RetrainStage.IDLE
    assert d.events[0].data["drift"] == "feature"


def test_cooldown_defers_a_retrain_once_then_starts_it():
    st = champion_state(retrain=RetrainStage.PENDING, retrain_since_t=0.0, last_retrain_finished_t=100.0,
                        retrain_reason="performance drift")
    obs = Observations(labeled_since_retrain=500, labeled_since_t=0.0)
    d1 = decide(st, obs, CFG, 110.0)
    assert kinds(d1) == ["retrain_deferred"] and "cooldown" in d1.events[0].reason
    d2 = decide(d1.state, obs, CFG, 120.0)
    assert kinds(d2) == []
    d3 = decide(d2.state, obs, CFG, 131.0)
    assert kinds(d3) == ["retrain_started"]


def test_decide_does_not_mutate_its_input():
    st = canary()
    before = st.model_dump()
    decide(st, Observations(step_stats={"v0002": VersionStats(served=100, errors=50)}), CFG, 3.0)
    assert st.model_dump() == before


def test_recover_reissues_the_same_retrain_job():
    st = running(retrain_since_t=42.0)
    (a,) = recover(st, CFG)
    assert a.kind == ActionKind.START_RETRAIN and a.job_id == "m-retrain-0001" and a.since_t == 42.0


def test_state_round_trips_through_json():
    d = decide(running(), Observations(retrain_outcome=ok_outcome()), CFG, 10.0)
    again = ControllerState.model_validate_json(d.state.model_dump_json())
    assert again == d.state


def test_illegal_transition_raises():
    with pytest.raises(IllegalTransition):
        transition(RetrainStage.RUNNING, RetrainStage.PENDING)


def test_failed_retrain_rearms_drift_detection():
    st = running(quality_monitor={"consecutive": 3, "active": True})
    out = RetrainOutcome(job_id="m-retrain-0001", status="failed", error="WindowTooSmall: 380 rows")
    d = decide(st, Observations(retrain_outcome=out), CFG, 10.0)
    assert kinds(d) == ["retrain_failed"] and "v0001 keeps serving" in d.events[0].reason
    assert d.state.quality_monitor.active is False
    d2 = decide(d.state, Observations(quality_windows=[qwin(0, True), qwin(1, True)]), CFG, 11.0)
    assert kinds(d2) == ["drift_detected", "retrain_requested", "retrain_deferred"]  # cooldown first


def test_windows_measured_against_a_replaced_champion_are_skipped():
    st = canary(step=1, weights={"v0001": 50.0, "v0002": 50.0})
    good = {"v0002": VersionStats(served=500, labeled=300, correct=280)}
    wins = [qwin(0, True), qwin(1, True)]  # the old champion's (v0001) bad windows
    d = decide(st, Observations(step_stats=good, quality_windows=wins), CFG, 20.0)
    assert kinds(d) == ["promoted"] and d.state.quality_windows_done == 2
    assert d.state.quality_monitor.consecutive == 0


def test_retrain_window_starts_at_the_estimated_change_point():
    w0 = qwin(0, True).model_copy(update={"change_t": 103.0})
    d = decide(champion_state(), Observations(quality_windows=[w0, qwin(1, True)]), CFG, 200.0)
    assert kinds(d) == ["drift_detected", "retrain_requested"] and d.state.retrain_since_t == 103.0


def test_a_sequential_alarm_fires_on_one_window():
    w = qwin(0, True).model_copy(update={"sequential_alarm": True, "reason": "Page-Hinkley alarm"})
    d = decide(champion_state(), Observations(quality_windows=[w]), CFG, 200.0)
    assert kinds(d) == ["drift_detected", "retrain_requested"]
    assert "for 2 windows" not in d.events[0].reason


ONLINE = CFG.with_overrides(training={"mode": "hybrid", "online_batch": 200, "online_min_gain": 0.02})


def test_online_step_starts_on_each_fresh_labeled_batch():
    st = champion_state(online_labeled_mark=1000)
    assert kinds(decide(st, Observations(labeled_total=1150), ONLINE, 1.0)) == []
    d = decide(st, Observations(labeled_total=1200), ONLINE, 1.0)
    assert kinds(d) == ["retrain_started"] and d.events[0].data["job_kind"] == "online"
    (a,) = d.actions
    assert a.job_kind == "online" and a.job_id == "m-online-0001" and d.state.online_labeled_mark == 1200
    assert decide(st, Observations(labeled_total=5000), CFG, 1.0).events == []  # batch mode: never


def test_an_incremental_challenger_must_beat_the_champion_to_be_canaried():
    st = running(retrain_kind="online")
    d = decide(st, Observations(retrain_outcome=ok_outcome(cand=0.91, champ=0.90)), ONLINE, 5.0)
    assert kinds(d)[-1] == "gate_failed" and "required gain 0.02" in d.events[-1].reason
    assert d.state.last_retrain_finished_t is None  # incremental steps do not start the cooldown
    d = decide(st, Observations(retrain_outcome=ok_outcome(cand=0.95, champ=0.90)), ONLINE, 5.0)
    assert kinds(d)[-2:] == ["gate_passed", "canary_started"]


def test_a_drift_during_an_incremental_step_queues_a_full_retrain():
    st = running(retrain_kind="online")
    wins = [qwin(0, True), qwin(1, True)]
    d = decide(st, Observations(quality_windows=wins), ONLINE, 5.0)
    assert kinds(d) == ["drift_detected", "retrain_requested"] and d.state.queued_retrain is not None
    out = RetrainOutcome(job_id="m-retrain-0001", status="failed", error="x")
    d2 = decide(d.state, Observations(retrain_outcome=out, labeled_since_retrain=0), ONLINE, 6.0)
    assert d2.state.retrain == RetrainStage.PENDING and d2.state.queued_retrain is None
    assert "retrain_started" not in kinds(d2)  # rows since the onset are counted from the next tick


def _promote_last_step(purpose: str, labeled_total: int, cfg=CFG):
    """A canary at its last step before 100% that the analysis promotes."""
    st = canary(step=1, retrain_purpose=purpose)
    st.gate.update(kind="full", purpose=purpose)
    stats = {"v0002": VersionStats(served=500, labeled=200, correct=190),
             "v0001": VersionStats(served=500, labeled=200, correct=188)}
    return decide(st, Observations(step_stats=stats, labeled_total=labeled_total), cfg, 50.0)


@pytest.mark.parametrize("purpose, due", [("drift", 5000 + CFG.training.window_recent), ("bootstrap", None)])
def test_promoting_a_drift_retrain_arms_one_settle_retrain(purpose, due):
    d = _promote_last_step(purpose, labeled_total=5000)
    assert "promoted" in kinds(d)
    assert d.state.settle_due_labeled == due


def test_settle_after_rows_sets_how_soon_the_follow_up_comes():
    cfg = CFG.with_overrides(training={"settle_after_rows": 700})
    d = _promote_last_step("drift", labeled_total=5000, cfg=cfg)
    assert d.state.settle_due_labeled == 5700
    d = decide(d.state, Observations(labeled_total=5700), cfg, 90.0)
    assert "settle: 700 labeled rows since" in d.events[0].reason


def test_settle_retrain_starts_once_enough_fresh_rows_and_needs_a_gain():
    d = _promote_last_step("drift", labeled_total=5000)
    st = d.state
    due = st.settle_due_labeled
    assert kinds(decide(st, Observations(labeled_total=due - 1), CFG, 60.0)) == []
    d = decide(st, Observations(labeled_total=due), CFG, 90.0)
    assert kinds(d) == ["retrain_requested", "retrain_started"]
    assert d.state.retrain_purpose == "settle" and d.state.settles_left == 0 and d.state.settle_due_labeled is None
    assert d.actions[0].since_t is None  # the newest window_recent rows, not since the old onset
    # its candidate is canaried only if it gains settle_min_gain over the champion
    st = d.state
    gain = CFG.training.settle_min_gain
    job = st.retrain_job_id
    small = RetrainOutcome(job_id=job, status="ok", version="v0003", candidate_accuracy=0.9 + gain / 2,
                           champion_accuracy=0.9, holdout_rows=300)
    assert kinds(decide(st, Observations(retrain_outcome=small), CFG, 120.0))[-1] == "gate_failed"
    big = small.model_copy(update={"candidate_accuracy": 0.9 + 2 * gain})
    assert kinds(decide(st, Observations(retrain_outcome=big), CFG, 120.0))[-1] == "canary_started"


GROWN = CFG.with_overrides(training={"settle_retrains": 2, "settle_growth": 4, "settle_window": 8000,
                                     "settle_after_bootstrap": True})


def test_grown_follow_ups_train_on_every_row_since_the_chain_began_and_wait_longer():
    d = _promote_last_step("drift", labeled_total=5000, cfg=GROWN)
    gap = GROWN.training.window_recent
    assert (d.state.settle_due_labeled, d.state.settle_since_t, d.state.settles_left) == (5000 + gap, 50.0, 2)
    d = decide(d.state, Observations(labeled_total=5000 + gap), GROWN, 90.0)
    assert kinds(d) == ["retrain_requested"]  # rows since the window start are counted on the next tick
    assert "every labeled row since t=50, the newest 8000 at most" in d.events[0].reason
    d = decide(d.state, Observations(labeled_total=5000 + gap, labeled_since_t=50.0, labeled_since_retrain=gap),
               GROWN, 91.0)
    assert kinds(d) == ["retrain_started"]
    start = d.actions[0]
    assert (start.since_t, start.window_rows) == (50.0, 8000)  # rows since the promotion, up to 8,000
    # the follow-up gains and is promoted: the next one waits growth x as long, same window start
    st = canary(step=1, retrain_purpose="settle", settles_left=1, settle_gap=gap, settle_since_t=50.0)
    st.gate.update(kind="full", purpose="settle")
    stats = {"v0002": VersionStats(served=500, labeled=200, correct=190),
             "v0001": VersionStats(served=500, labeled=200, correct=188)}
    d = decide(st, Observations(step_stats=stats, labeled_total=9000), GROWN, 200.0)
    assert "promoted" in kinds(d)
    assert (d.state.settle_due_labeled, d.state.settle_since_t) == (9000 + 4 * gap, 50.0)


@pytest.mark.parametrize("left, due", [(1, 7000 + 4 * GROWN.training.window_recent), (0, None)])
def test_a_refused_follow_up_keeps_its_chain_going(left, due):
    gap = GROWN.training.window_recent
    chain = dict(retrain_purpose="settle", settles_left=left, settle_gap=gap, settle_since_t=50.0)
    # refused at the gate: the next follow-up waits growth x as long, on the same (grown) window
    worse = ok_outcome(cand=0.90, champ=0.93)
    d = decide(running(**chain), Observations(retrain_outcome=worse, labeled_total=7000), GROWN, 100.0)
    assert kinds(d)[-1] == "gate_failed" and d.state.champion == "v0001"
    assert (d.state.settle_due_labeled, d.state.settles_left, d.state.settle_since_t) == (due, left, 50.0)
    # refused in its canary: the same
    st = canary(step=1, **chain)
    st.gate.update(kind="full", purpose="settle")
    bad = {"v0002": VersionStats(served=500, labeled=200, correct=120),
           "v0001": VersionStats(served=500, labeled=200, correct=188)}
    d = decide(st, Observations(step_stats=bad, labeled_total=7000), GROWN, 100.0)
    assert "rolled_back" in kinds(d) and d.state.settle_due_labeled == due


@pytest.mark.parametrize("since_t, expect", [
    (50.0, "canary_started"),  # a drift's follow-up: the champion was trained after the drift too
    (None, "gate_failed"),     # a refresh of the first version must not forget what it knew
])
def test_the_forgetting_check_skips_a_drifts_follow_ups(since_t, expect):
    forgets = ok_outcome(cand=0.95, champ=0.93).model_copy(update={
        "replay_candidate_accuracy": 0.50, "replay_champion_accuracy": 0.60, "replay_rows": 2000})
    st = running(retrain_purpose="settle", settles_left=1, settle_gap=1500, settle_since_t=since_t)
    d = decide(st, Observations(retrain_outcome=forgets, labeled_total=7000), GROWN, 100.0)
    assert kinds(d)[-1] == expect
    if expect == "gate_failed":
        assert "forgetting" in d.events[-1].reason


def test_a_drift_retrain_has_no_grown_window():
    st = champion_state()
    wins = [qwin(i, True) for i in (0, 1)]
    d = decide(st, Observations(quality_windows=wins), GROWN, 5.0)
    d = decide(d.state, Observations(labeled_since_retrain=500, labeled_since_t=d.state.retrain_since_t,
                                     labeled_total=9000), GROWN, 40.0)
    starts = [a for a in d.actions if a.kind == ActionKind.START_RETRAIN]
    assert len(starts) == 1 and starts[0].window_rows is None and starts[0].since_t == d.state.retrain_since_t


@pytest.mark.parametrize("after_bootstrap, due", [(True, 3000 + CFG.training.window_recent), (False, None)])
def test_the_first_version_gets_follow_ups_only_when_asked(after_bootstrap, due):
    cfg = GROWN.with_overrides(training={"settle_after_bootstrap": after_bootstrap})
    st = ControllerState(model="m", retrain=RetrainStage.RUNNING, retrain_job_id="m-retrain-0001",
                         retrain_count=1, retrain_purpose="bootstrap")
    out = ok_outcome(champ=None, version="v0001").model_copy(update={"job_id": "m-retrain-0001"})
    d = decide(st, Observations(retrain_outcome=out, labeled_total=3000), cfg, 10.0)
    assert d.state.champion == "v0001"
    assert d.state.settle_due_labeled == due
    if after_bootstrap:  # its follow-ups reach back over all rows (the history it was trained on)
        assert d.state.settle_since_t is None and d.state.settles_left == 2


def test_a_new_drift_cancels_a_pending_settle():
    st = _promote_last_step("drift", labeled_total=5000).state
    st.retiring.clear()
    wins = [qwin(i, True).model_copy(update={"champion": "v0002"}) for i in (0, 1)]
    d = decide(st, Observations(quality_windows=wins, labeled_total=5100), CFG, 200.0)
    assert "drift_detected" in kinds(d)
    assert d.state.settle_due_labeled is None and d.state.settles_left == 0


def test_a_drift_seen_during_a_follow_ups_canary_leaves_its_chain_going():
    # The champion drifts while a follow-up is in its canary: the candidate in flight
    # answers the drift, so no retrain is requested and the chain is not cancelled.
    gap = GROWN.training.window_recent
    st = canary(step=0, retrain_purpose="settle", settles_left=1, settle_gap=gap, settle_since_t=50.0)
    st.gate.update(kind="full", purpose="settle")
    wins = [qwin(i, True) for i in (0, 1)]
    d = decide(st, Observations(quality_windows=wins, labeled_total=7000), GROWN, 100.0)
    assert "drift_detected" in kinds(d) and "retrain_requested" not in kinds(d)
    assert d.state.settles_left == 1 and d.state.rollout == RolloutStage.CANARY
    # its promotion schedules the next follow-up, growth x later, on the same window
    d.state.step_index = 1
    good = {"v0002": VersionStats(served=500, labeled=200, correct=190),
            "v0001": VersionStats(served=500, labeled=200, correct=150)}
    d = decide(d.state, Observations(step_stats=good, labeled_total=7200), GROWN, 120.0)
    assert "promoted" in kinds(d)
    assert (d.state.settle_due_labeled, d.state.settle_since_t) == (7200 + 4 * gap, 50.0)


@pytest.mark.parametrize("purpose, urgent, first, second", [
    ("drift", True, 90.0, None),       # the champion is failing: 90% at once, then 100%
    ("settle", False, 10.0, 50.0),     # a follow-up replaces a healthy champion: the usual steps
])
def test_an_urgent_candidate_takes_the_urgent_canary_steps(purpose, urgent, first, second):
    cfg = CFG.with_overrides(rollout={"urgent_canary_steps": [90, 100]}, training={"settle_min_gain": 0.0})
    st = running(retrain_purpose=purpose, retrain_urgent=urgent)
    d = decide(st, Observations(retrain_outcome=ok_outcome()), cfg, 10.0)
    assert d.state.weights == {"v0001": 100.0 - first, "v0002": first}
    good = {"v0002": VersionStats(served=500, labeled=200, correct=190),
            "v0001": VersionStats(served=500, labeled=200, correct=150)}
    # the steps are pinned when the canary starts: a config reload does not move it
    d = decide(d.state, Observations(step_stats=good), CFG, 20.0)
    if second is None:
        assert "promoted" in kinds(d) and d.state.weights == {"v0002": 100.0}
    else:
        assert kinds(d) == ["canary_step"] and d.state.weights == {"v0001": 100.0 - second, "v0002": second}


def test_urgent_canary_steps_follow_the_canary_steps_rule():
    with pytest.raises(ValueError, match="urgent_canary_steps must end at 100"):
        CFG.with_overrides(rollout={"urgent_canary_steps": [90]})
