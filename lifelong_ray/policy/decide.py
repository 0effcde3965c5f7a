"""``decide()``: the controller's whole policy as one pure function.

``(state, observations, config, now) -> Decision(new_state, actions, events)``.
No I/O, no clock, no Ray: the live controller and the backtest call this same
function; only where observations come from and how actions are carried out
differ. Every change of course is an :class:`~lifelong_ray.events.Event` with a
reason holding the numbers that drove it.

Order within one tick: a finished retrain is taken in (gate, then canary or
first promotion); the running canary step is analysed (advance, promote, roll
back or hold); new drift windows update the monitors (a fired monitor requests
a retrain); a pending retrain starts when rows, cooldown and quota allow;
versions out of traffic for long enough are retired.

    >>> from lifelong_ray.config import parse_config
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}],
    ...                     "label": {"name": "y", "classes": [0, 1]}},
    ...                     "training": {"min_rows": 100}})
    >>> d = decide(ControllerState(model="m"), Observations(labeled_total=150), cfg, now=10.0)
    >>> [e.kind.value for e in d.events], [a.kind.value for a in d.actions]
    (['retrain_requested', 'retrain_started'], ['start_retrain'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lifelong_ray.config import Config
from lifelong_ray.drift.monitor import MonitorState, update_monitor
from lifelong_ray.events import Event, EventKind
from lifelong_ray.policy.analysis import Verdict, analyze_step, gate
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage, transition
from lifelong_ray.policy.model import (
    Action,
    ActionKind,
    ControllerState,
    Observations,
    RetrainOutcome,
    VersionStats,
)

HOUR = 3600.0


@dataclass
class Decision:
    state: ControllerState
    actions: list[Action]
    events: list[Event]


@dataclass
class _Tick:
    """The decision being built: a private copy of the state plus what it emits."""

    s: ControllerState
    cfg: Config
    now: float
    obs: Observations
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def emit(self, kind: EventKind, reason: str, version: str | None = None, **data: Any) -> None:
        self.events.append(Event(t=self.now, kind=kind, model=self.s.model, version=version,
                                 reason=reason, data=data))

    def act(self, kind: ActionKind, **kw: Any) -> None:
        self.actions.append(Action(kind=kind, **kw))

    def route(self, weights: dict[str, float]) -> None:
        self.s.routing_generation += 1
        self.s.weights = dict(weights)
        self.act(ActionKind.SET_ROUTING, weights=dict(weights), generation=self.s.routing_generation,
                 champion=self.s.champion)


def decide(state: ControllerState, obs: Observations, cfg: Config, now: float) -> Decision:
    tick = _Tick(state.model_copy(deep=True), cfg, now, obs)
    tick.s.seq += 1
    tick.s.last_tick_t = now
    _take_retrain_outcome(tick, obs)
    _analyze_canary(tick, obs)
    _watch_drift(tick, obs)
    _bootstrap(tick, obs)
    _schedule_settle(tick, obs)
    _schedule_retrain(tick, obs)
    _schedule_online(tick, obs)
    _retire(tick)
    tick.s.pending_actions = list(tick.actions)
    return Decision(tick.s, tick.actions, tick.events)


def retrain_action(state: ControllerState, cfg: Config) -> Action:
    """The START_RETRAIN action of the state's current job (deterministic, so a
    restarted controller re-issues exactly the same job)."""
    return Action(kind=ActionKind.START_RETRAIN, job_id=state.retrain_job_id, job_kind=state.retrain_kind,
                  since_t=state.retrain_since_t, seed=cfg.training.seed + state.retrain_count,
                  champion=state.champion)


def recover(state: ControllerState, cfg: Config) -> list[Action]:
    """Actions to re-apply after a restart: the persisted, unacknowledged ones,
    plus re-attaching to a retrain job that was running (jobs are idempotent)."""
    actions = list(state.pending_actions)
    if state.retrain == RetrainStage.RUNNING and not any(
        a.kind == ActionKind.START_RETRAIN for a in actions
    ):
        actions.append(retrain_action(state, cfg))
    return actions


# -- retrain outcome -> gate -> canary ------------------------------------------

def _take_retrain_outcome(tick: _Tick, obs: Observations) -> None:
    s, out = tick.s, obs.retrain_outcome
    if s.retrain != RetrainStage.RUNNING or out is None or out.job_id != s.retrain_job_id:
        return
    s.retrain = transition(s.retrain, RetrainStage.IDLE)
    if s.retrain_kind != "online":  # cooldown and quota meter full retrains; incremental steps are cheap
        s.last_retrain_finished_t = tick.now
    if out.status != "ok" or out.version is None:
        # Re-arm the monitors: a drift that persists is detected again and retried
        # (after the cooldown, within the quota) instead of being forgotten.
        _reset_monitors(s)
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
                   margin=tick.cfg.rollout.gate_margin, rows=out.holdout_rows, min_gain=min_gain)
    if verdict.verdict != Verdict.SUCCESSFUL:
        tick.emit(EventKind.GATE_FAILED, f"{verdict.reason}; {s.champion} keeps serving", v,
                  candidate_accuracy=out.candidate_accuracy, champion_accuracy=out.champion_accuracy)
        return
    tick.emit(EventKind.GATE_PASSED, verdict.reason, v,
              candidate_accuracy=out.candidate_accuracy, champion_accuracy=out.champion_accuracy)
    _start_canary(tick, out)


def _first_promotion(tick: _Tick, out: RetrainOutcome) -> None:
    s, v = tick.s, out.version
    assert v is not None
    s.champion = v
    s.champion_reference_accuracy = out.candidate_accuracy
    tick.act(ActionKind.DEPLOY_VERSION, version=v)
    tick.act(ActionKind.SET_ALIAS, alias="champion", version=v)
    tick.route({v: 100.0})
    _reset_monitors(s)
    tick.emit(EventKind.PROMOTED,
              f"first version {v} takes 100% (holdout accuracy {out.candidate_accuracy:.3f};"
              f" no champion to compare)", v, bootstrap=True)


def _start_canary(tick: _Tick, out: RetrainOutcome) -> None:
    s, v = tick.s, out.version
    assert v is not None and s.champion is not None
    s.rollout = transition(s.rollout, RolloutStage.CANARY)
    s.candidate = v
    s.step_index = 0
    s.step_started_t = tick.now
    s.gate = {"candidate_accuracy": out.candidate_accuracy, "champion_accuracy": out.champion_accuracy,
              "holdout_rows": out.holdout_rows, "kind": s.retrain_kind, "purpose": s.retrain_purpose}
    w = float(tick.cfg.rollout.canary_steps[0])
    tick.act(ActionKind.DEPLOY_VERSION, version=v)
    tick.act(ActionKind.SET_ALIAS, alias="canary", version=v)
    tick.route({s.champion: 100.0 - w, v: w} if w < 100 else {v: 100.0})
    tick.emit(EventKind.CANARY_STARTED, f"{v} takes {w:g}% of traffic; champion {s.champion} {100 - w:g}%",
              v, weight=w)
    if w >= 100:
        _promote(tick, "single canary step of 100%")


# -- canary analysis ------------------------------------------------------------

def _analyze_canary(tick: _Tick, obs: Observations) -> None:
    s, cfg = tick.s, tick.cfg.rollout
    if s.rollout != RolloutStage.CANARY or s.paused or s.candidate is None:
        return
    weight = float(cfg.canary_steps[s.step_index])
    analysis = analyze_step(
        candidate=obs.step_stats.get(s.candidate, VersionStats()),
        champion=obs.step_stats.get(s.champion or "", VersionStats()),
        champion_baseline=s.gate.get("champion_accuracy"),
        seconds_in_step=tick.now - (s.step_started_t or tick.now),
        weight=weight, cfg=cfg,
    )
    s.gate["last_analysis"] = {"verdict": analysis.verdict.value, "reason": analysis.reason, "t": tick.now}
    if analysis.verdict in (Verdict.FAILED, Verdict.ERROR):
        _rollback(tick, analysis.reason)
    elif analysis.verdict == Verdict.SUCCESSFUL:
        nxt = s.step_index + 1
        nxt_weight = float(cfg.canary_steps[nxt])
        if nxt_weight >= 100:
            _promote(tick, analysis.reason)
            return
        s.rollout = transition(s.rollout, RolloutStage.CANARY)
        s.step_index = nxt
        s.step_started_t = tick.now
        assert s.champion is not None
        tick.route({s.champion: 100.0 - nxt_weight, s.candidate: nxt_weight})
        tick.emit(EventKind.CANARY_STEP, f"{analysis.reason}; {s.candidate} now {nxt_weight:g}%",
                  s.candidate, weight=nxt_weight)


def _promote(tick: _Tick, reason: str) -> None:
    s = tick.s
    new, old = s.candidate, s.champion
    assert new is not None
    s.rollout = transition(s.rollout, RolloutStage.STABLE)
    s.previous_champion, s.champion = old, new
    s.champion_reference_accuracy = s.gate.get("candidate_accuracy")
    s.candidate, s.step_index, s.step_started_t = None, -1, None
    tick.act(ActionKind.SET_ALIAS, alias="champion", version=new)
    tick.act(ActionKind.SET_ALIAS, alias="canary", version=None)
    tick.route({new: 100.0})
    if old is not None:
        s.retiring[old] = tick.now
    _reset_monitors(s)
    _arm_settle(tick)
    tick.emit(EventKind.PROMOTED, f"{reason}; {new} takes 100%, replacing {old}", new, previous=old)


def _rollback(tick: _Tick, reason: str) -> None:
    s = tick.s
    bad, champ = s.candidate, s.champion
    assert bad is not None and champ is not None
    s.rollout = transition(s.rollout, RolloutStage.STABLE)
    s.candidate, s.step_index, s.step_started_t = None, -1, None
    tick.route({champ: 100.0})
    tick.act(ActionKind.SET_ALIAS, alias="canary", version=None)
    s.retiring[bad] = tick.now
    _reset_monitors(s)  # a drift that persists is detected again and retried
    tick.emit(EventKind.ROLLED_BACK, f"{reason}; {champ} back to 100%", bad, champion=champ)


# -- drift -> retrain -----------------------------------------------------------

def _reset_monitors(s: ControllerState) -> None:
    s.feature_monitor = MonitorState()
    s.quality_monitor = MonitorState()
    s.quality_streak_start_t = None


def _watch_drift(tick: _Tick, obs: Observations) -> None:
    s, dcfg = tick.s, tick.cfg.drift
    for w in sorted(obs.feature_windows, key=lambda w: w.index):
        if w.index < s.feature_windows_done:
            continue
        s.feature_windows_done = w.index + 1
        if w.champion != s.champion:  # measured against a champion replaced this tick
            continue
        s.feature_monitor, fired = update_monitor(s.feature_monitor, w.drifted, dcfg.consecutive_windows)
        s.last_feature_drift = {"index": w.index, "drifted": w.drifted, "reason": w.reason,
                                "max_psi": w.max_psi, "t": w.end_t}
        if fired:
            reason = f"feature drift: {w.reason}, for {dcfg.consecutive_windows} windows"
            tick.emit(EventKind.DRIFT_DETECTED, reason, s.champion, drift="feature", window=w.index)
            if dcfg.retrain_on_feature_drift:
                _request_retrain(tick, w.start_t, reason)
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
                          "n": w.n, "drifted": w.drifted, "reason": w.reason, "t": w.end_t}
        if fired:
            span = "" if w.sequential_alarm else f", for {dcfg.consecutive_windows} windows"
            reason = f"performance drift: {w.reason}{span}"
            tick.emit(EventKind.DRIFT_DETECTED, reason, s.champion, drift="performance", window=w.index)
            _request_retrain(tick, s.quality_streak_start_t, reason)


def _arm_settle(tick: _Tick) -> None:
    """After promoting a full retrain made for a drift (or a settle that gained),
    schedule the follow-up: once ``window_recent`` fresh labeled rows exist, retrain
    on them. The version trained right after a drift has seen only ``min_rows``
    rows, partly from mid-change; the follow-up is canaried only if it gains."""
    s, tc = tick.s, tick.cfg.training
    purpose = s.gate.get("purpose")
    if s.gate.get("kind") == "online" or purpose not in ("drift", "settle"):
        return
    if purpose == "drift":
        s.settles_left = tc.settle_retrains
    if s.settles_left > 0:
        s.settle_due_labeled = tick.obs.labeled_total + tc.window_recent


def _schedule_settle(tick: _Tick, obs: Observations) -> None:
    s = tick.s
    if s.settle_due_labeled is None or s.paused or s.retrain != RetrainStage.IDLE \
            or s.rollout != RolloutStage.STABLE or obs.labeled_total < s.settle_due_labeled:
        return
    fresh = obs.labeled_total - (s.settle_due_labeled - tick.cfg.training.window_recent)
    s.settles_left -= 1
    s.settle_due_labeled = None
    _pend(tick, None, f"settle: {fresh} labeled rows since {s.champion} was promoted after a drift;"
                      f" retraining on the newest {tick.cfg.training.window_recent}", purpose="settle")


def _request_retrain(tick: _Tick, since_t: float | None, reason: str, purpose: str = "drift") -> None:
    s = tick.s
    s.settles_left, s.settle_due_labeled = 0, None  # a new drift supersedes a pending follow-up
    if tick.cfg.training.mode == "online" and s.champion is not None:
        return  # online mode adapts by incremental steps only
    if s.retrain == RetrainStage.PENDING:
        return
    busy = s.retrain != RetrainStage.IDLE or s.rollout != RolloutStage.STABLE
    if busy and s.retrain_kind == "online":
        # An incremental step is in flight: a full retrain follows it, not lost.
        s.queued_retrain = {"since_t": since_t, "reason": reason, "purpose": purpose}
        tick.emit(EventKind.RETRAIN_REQUESTED, f"{reason}; queued behind incremental job {s.retrain_job_id}",
                  s.champion, since_t=since_t, queued=True)
        return
    if busy:
        return  # a full retrain's candidate is already in flight
    _pend(tick, since_t, reason, purpose=purpose)


def _pend(tick: _Tick, since_t: float | None, reason: str, announce: bool = True, purpose: str = "drift") -> None:
    s = tick.s
    s.retrain = transition(s.retrain, RetrainStage.PENDING)
    s.retrain_purpose = purpose
    s.retrain_since_t = since_t
    s.retrain_reason = reason
    s.retrain_deferred_reason = ""
    if announce:
        tick.emit(EventKind.RETRAIN_REQUESTED, reason, s.champion, since_t=since_t)


def _bootstrap(tick: _Tick, obs: Observations) -> None:
    s = tick.s
    if s.champion is None and s.retrain == RetrainStage.IDLE and not s.paused \
            and obs.labeled_total >= tick.cfg.training.min_rows:
        _request_retrain(tick, None, f"no champion yet; {obs.labeled_total} labeled rows available",
                         purpose="bootstrap")


def _schedule_retrain(tick: _Tick, obs: Observations) -> None:
    s, cfg = tick.s, tick.cfg
    if s.queued_retrain and s.retrain == RetrainStage.IDLE and s.rollout == RolloutStage.STABLE:
        queued, s.queued_retrain = s.queued_retrain, None
        _pend(tick, queued["since_t"], queued["reason"], announce=False, purpose=queued.get("purpose", "drift"))
    if s.retrain != RetrainStage.PENDING or s.paused:
        return
    blocked = _quota_blocker(s, cfg, tick.now)
    if blocked:
        if blocked.split(":")[0] != s.retrain_deferred_reason.split(":")[0]:
            tick.emit(EventKind.RETRAIN_DEFERRED, blocked, s.champion)
        s.retrain_deferred_reason = blocked
        return
    if s.retrain_since_t is None:
        available = obs.labeled_total
    elif obs.labeled_since_t == s.retrain_since_t:
        available = obs.labeled_since_retrain
    else:  # requested this tick: the rows since the onset are counted on the next one
        available = 0
    if available < cfg.training.min_rows:
        s.retrain_deferred_reason = (f"rows: waiting for labeled rows since the drift onset:"
                                     f" {available}/{cfg.training.min_rows}")
        return
    s.retrain = transition(s.retrain, RetrainStage.RUNNING)
    s.retrain_count += 1
    s.retrain_kind = "full"
    s.retrain_job_id = f"{s.model}-retrain-{s.retrain_count:04d}"
    s.retrain_started_t = tick.now
    s.retrain_history_t = [t for t in s.retrain_history_t if tick.now - t < HOUR] + [tick.now]
    s.retrain_deferred_reason = ""
    tick.actions.append(retrain_action(s, cfg))
    tick.emit(EventKind.RETRAIN_STARTED,
              f"job {s.retrain_job_id}: {s.retrain_reason}; {available} labeled rows in the window",
              s.champion, job_id=s.retrain_job_id, since_t=s.retrain_since_t)


def _schedule_online(tick: _Tick, obs: Observations) -> None:
    """online / hybrid: fine-tune a challenger copy of the champion on each fresh
    labeled mini-batch while nothing else is in flight; it reaches traffic only
    through the gate (with a required gain) and the canary."""
    s, tc = tick.s, tick.cfg.training
    if tc.mode == "batch" or s.champion is None or s.paused or s.retrain != RetrainStage.IDLE \
            or s.rollout != RolloutStage.STABLE or s.queued_retrain:
        return
    fresh = obs.labeled_total - s.online_labeled_mark
    if fresh < tc.online_batch:
        return
    s.retrain = transition(s.retrain, RetrainStage.RUNNING)
    s.retrain_count += 1
    s.retrain_kind = "online"
    s.retrain_job_id = f"{s.model}-online-{s.retrain_count:04d}"
    s.retrain_since_t = None
    s.retrain_started_t = tick.now
    s.online_labeled_mark = obs.labeled_total
    tick.actions.append(retrain_action(s, tick.cfg))
    tick.emit(EventKind.RETRAIN_STARTED,
              f"job {s.retrain_job_id}: incremental step, a copy of {s.champion} fine-tuned on the newest"
              f" {tc.online_window} labeled rows ({fresh} fresh)", s.champion, job_id=s.retrain_job_id,
              job_kind="online")


def _quota_blocker(s: ControllerState, cfg: Config, now: float) -> str:
    if s.last_retrain_finished_t is not None:
        left = cfg.drift.cooldown_seconds - (now - s.last_retrain_finished_t)
        if left > 0:
            return f"cooldown: {left:.0f}s left of {cfg.drift.cooldown_seconds:.0f}s after the last retrain"
    recent = [t for t in s.retrain_history_t if now - t < HOUR]
    if len(recent) >= cfg.quota.max_retrains_per_hour:
        nxt = min(recent) + HOUR - now
        return (f"quota: {len(recent)}/{cfg.quota.max_retrains_per_hour} retrains in the last hour;"
                f" next slot in {nxt:.0f}s")
    return ""


def _retire(tick: _Tick) -> None:
    s = tick.s
    for v, since in sorted(s.retiring.items()):
        if tick.now - since >= tick.cfg.rollout.retire_grace_seconds:
            del s.retiring[v]
            if v not in s.weights and v != s.champion:
                tick.act(ActionKind.RETIRE_VERSION, version=v)
