"""``decide()``: the controller's whole policy as one pure function.

``(state, observations, config, now) -> Decision(new_state, actions, events)``.
No I/O, no clock, no Ray: the live controller and the backtest call this same
function; only where observations come from and how actions are carried out
differ. Every change of course is an :class:`~lifelong_ray.events.Event` with a
reason holding the numbers that drove it.

Order within one tick: operator commands are taken in; actions the executor
abandoned are reacted to (:mod:`~lifelong_ray.policy.failures`); the error budget may
freeze or thaw rollouts; a finished retrain is taken in (a job past
``training.timeout_seconds`` is cancelled and fails; else gate, then shadow,
approval or canary, or first promotion); the shadow, the running canary step and
a probation are analysed (advance, promote, roll back or hold), and one past its
deadline is rolled back (:mod:`~lifelong_ray.policy.deadlines`); new drift
windows update the monitors (a fired monitor requests a retrain); a pending
retrain starts when rows, cooldown, budget and quota allow; versions out of
traffic for long enough are retired. The pieces live in
:mod:`~lifelong_ray.policy.retraining`, :mod:`~lifelong_ray.policy.rollout` and
:mod:`~lifelong_ray.policy.operator`.

    >>> from lifelong_ray.config import parse_config
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}],
    ...                     "label": {"name": "y", "classes": [0, 1]}},
    ...                     "training": {"min_rows": 100}})
    >>> d = decide(ControllerState(model="m"), Observations(labeled_total=150), cfg, now=10.0)
    >>> [e.kind.value for e in d.events], [a.kind.value for a in d.actions]
    (['retrain_requested', 'retrain_started'], ['start_retrain'])
"""

from __future__ import annotations

from lifelong_ray.config import Config
from lifelong_ray.drift.monitor import update_monitor
from lifelong_ray.events import EventKind
from lifelong_ray.policy.analysis import Verdict, gate
from lifelong_ray.policy.lifecycle import RetrainStage, transition
from lifelong_ray.policy.model import Action, ActionKind, ControllerState, Observations, RetrainOutcome
from lifelong_ray.policy.deadlines import enforce_retrain_deadline, enforce_step_deadline
from lifelong_ray.policy.failures import take_failed_actions
from lifelong_ray.policy.operator import take_commands
from lifelong_ray.policy.quota import impact_score
from lifelong_ray.policy.retraining import (
    arm_settle,
    bootstrap,
    forgetting_margin,
    record_usage,
    request_retrain,
    retrain_action,
    schedule_online,
    schedule_retrain,
    schedule_settle,
    settle_refused,
)
from lifelong_ray.policy.rollout import analyze_canary, analyze_probation, analyze_shadow, enter_rollout, watch_budget
from lifelong_ray.policy.tick import Decision, Tick, reset_monitors

__all__ = ["Decision", "decide", "recover", "retrain_action"]


def decide(state: ControllerState, obs: Observations, cfg: Config, now: float) -> Decision:
    tick = Tick(state.model_copy(deep=True), cfg, now, obs)
    tick.s.seq += 1
    tick.s.last_tick_t = now
    take_commands(tick, obs)
    obs = tick.obs = take_failed_actions(tick, obs)
    watch_budget(tick, obs)
    obs = tick.obs = enforce_retrain_deadline(tick, obs)
    _take_retrain_outcome(tick, obs)
    analyze_shadow(tick, obs)
    analyze_canary(tick, obs)
    analyze_probation(tick, obs)
    enforce_step_deadline(tick, obs)
    _watch_drift(tick, obs)
    bootstrap(tick, obs)
    schedule_settle(tick, obs)
    schedule_retrain(tick, obs)
    schedule_online(tick, obs)
    _retire(tick)
    tick.s.pending_actions = list(tick.actions)
    return Decision(tick.s, tick.actions, tick.events)


def recover(state: ControllerState, cfg: Config) -> list[Action]:
    """Actions to re-apply after a restart: the persisted, unacknowledged ones,
    plus re-attaching to a retrain job that was running (jobs are idempotent)."""
    actions = list(state.pending_actions)
    if state.retrain == RetrainStage.RUNNING and not any(
        a.kind == ActionKind.START_RETRAIN for a in actions
    ):
        actions.append(retrain_action(state, cfg))
    return actions


# -- retrain outcome -> gate -> rollout ------------------------------------------

def _take_retrain_outcome(tick: Tick, obs: Observations) -> None:
    s, out = tick.s, obs.retrain_outcome
    if s.retrain != RetrainStage.RUNNING or out is None or out.job_id != s.retrain_job_id:
        return
    s.retrain = transition(s.retrain, RetrainStage.IDLE)
    if s.retrain_kind != "online":  # cooldown and quota meter full retrains; incremental steps are cheap
        s.last_retrain_finished_t = tick.now
        record_usage(tick, out.train_seconds, out.cpu_seconds)
    if out.status != "ok" or out.version is None:
        # Re-arm the monitors: a drift that persists is detected again and retried
        # (after the cooldown, within the quota) instead of being forgotten.
        reset_monitors(s)
        tick.emit(EventKind.RETRAIN_FAILED,
                  f"job {out.job_id} failed: {out.error}; {s.champion or 'no version'} keeps serving",
                  job_id=out.job_id)
        return
    v = out.version
    tick.emit(EventKind.RETRAIN_FINISHED,
              f"job {out.job_id} trained {v} on {out.train_rows} rows in {out.train_seconds:.1f}s"
              f" ({out.runner} runner)", v, job_id=out.job_id, train_seconds=out.train_seconds,
              runner=out.runner, train_rows=out.train_rows)
    champ_txt = f"{out.champion_accuracy:.3f}" if out.champion_accuracy is not None else "n/a"
    tick.emit(EventKind.CANDIDATE_REGISTERED,
              f"{v}: holdout accuracy {out.candidate_accuracy:.3f} vs champion {champ_txt}"
              f" on {out.holdout_rows} recent labeled rows", v,
              candidate_accuracy=out.candidate_accuracy, champion_accuracy=out.champion_accuracy)
    if s.champion is None:
        _first_promotion(tick, out)
        return
    tc = tick.cfg.training
    min_gain = tc.online_min_gain if s.retrain_kind == "online" else \
        tc.settle_min_gain if s.retrain_purpose == "settle" else None
    verdict = gate(candidate_accuracy=out.candidate_accuracy, champion_accuracy=out.champion_accuracy,
                   margin=tick.cfg.rollout.gate_margin, rows=out.holdout_rows, min_gain=min_gain,
                   replay_candidate_accuracy=out.replay_candidate_accuracy,
                   replay_champion_accuracy=out.replay_champion_accuracy, replay_rows=out.replay_rows,
                   forgetting_margin=forgetting_margin(s, tick.cfg))
    scores = dict(candidate_accuracy=out.candidate_accuracy, champion_accuracy=out.champion_accuracy,
                  replay_candidate_accuracy=out.replay_candidate_accuracy,
                  replay_champion_accuracy=out.replay_champion_accuracy)
    if verdict.verdict != Verdict.SUCCESSFUL:
        tick.emit(EventKind.GATE_FAILED, f"{verdict.reason}; {s.champion} keeps serving", v, **scores)
        settle_refused(tick, s.retrain_purpose)
        return
    tick.emit(EventKind.GATE_PASSED, verdict.reason, v, **scores)
    enter_rollout(tick, out)


def _first_promotion(tick: Tick, out: RetrainOutcome) -> None:
    s, v = tick.s, out.version
    assert v is not None
    s.champion = v
    s.champion_reference_accuracy = out.candidate_accuracy
    tick.act(ActionKind.DEPLOY_VERSION, version=v)
    tick.act(ActionKind.SET_ALIAS, alias="champion", version=v)
    tick.route({v: 100.0})
    reset_monitors(s)
    arm_settle(tick, "bootstrap")
    tick.emit(EventKind.PROMOTED,
              f"first version {v} takes 100% (holdout accuracy {out.candidate_accuracy:.3f};"
              f" no champion to compare)", v, bootstrap=True)


# -- drift -> retrain -----------------------------------------------------------

def _watch_drift(tick: Tick, obs: Observations) -> None:
    s, dcfg = tick.s, tick.cfg.drift
    for w in sorted(obs.feature_windows, key=lambda w: w.index):
        if w.index < s.feature_windows_done:
            continue
        s.feature_windows_done = w.index + 1
        if w.champion != s.champion:  # measured against a champion replaced this tick
            continue
        s.feature_monitor, fired = update_monitor(s.feature_monitor, w.drifted, dcfg.consecutive_windows)
        s.last_feature_drift = {"index": w.index, "drifted": w.drifted, "reason": w.reason,
                                "max_psi": w.max_psi, "t": w.end_t, "psi": w.feature_psi, "version": w.champion}
        if fired:
            reason = f"feature drift: {w.reason}, for {dcfg.consecutive_windows} windows"
            tick.emit(EventKind.DRIFT_DETECTED, reason, s.champion, drift="feature", window=w.index)
            if dcfg.retrain_on_feature_drift:
                request_retrain(tick, w.start_t, reason, urgent=False, kind="feature_drift",
                                impact=impact_score(max_psi=w.max_psi, burn_rate=_burn(obs), cfg=dcfg))
    for w in sorted(obs.quality_windows, key=lambda w: w.index):
        if w.index < s.quality_windows_done:
            continue
        s.quality_windows_done = w.index + 1
        if w.champion != s.champion:
            continue
        if w.drifted and s.quality_monitor.consecutive == 0:
            # Train from where the accuracy shifted (the observer's change point),
            # else from the middle of the first flagged window.
            s.quality_streak_start_t = w.change_t if w.change_t is not None else (w.start_t + w.end_t) / 2
        # A sequential alarm has its own false-alarm control: it needs no second window.
        required = 1 if w.sequential_alarm else dcfg.consecutive_windows
        s.quality_monitor, fired = update_monitor(s.quality_monitor, w.drifted, required)
        s.last_quality = {"index": w.index, "accuracy": w.accuracy, "reference": w.reference_accuracy,
                          "n": w.n, "drifted": w.drifted, "reason": w.reason, "t": w.end_t, "version": w.champion}
        if fired:
            span = "" if w.sequential_alarm else f", for {dcfg.consecutive_windows} windows"
            reason = f"performance drift: {w.reason}{span}"
            tick.emit(EventKind.DRIFT_DETECTED, reason, s.champion, drift="performance", window=w.index)
            drop = (w.reference_accuracy - w.accuracy) if w.reference_accuracy is not None \
                and w.accuracy is not None else None
            request_retrain(tick, s.quality_streak_start_t, reason, kind="performance_drift",
                            impact=impact_score(accuracy_drop=drop, burn_rate=_burn(obs), cfg=dcfg))


def _burn(obs: Observations) -> float:
    """The fastest burn of any error budget over its longest alert window (0 without a budget)."""
    if obs.budget is None:
        return 0.0
    return max((sli.windows[-1].burn_rate for sli in obs.budget.slis.values() if sli.windows), default=0.0)


def _retire(tick: Tick) -> None:
    s = tick.s
    for v, since in sorted(s.retiring.items()):
        if tick.now - since >= tick.cfg.rollout.retire_grace_seconds:
            del s.retiring[v]
            if v not in s.weights and v != s.champion:
                tick.act(ActionKind.RETIRE_VERSION, version=v)
