"""The rollout of a gated candidate: shadow, approval, canary steps, promotion,
probation, rollback, and the error-budget freeze.

Stages and their legal moves are :class:`~lifelong_ray.policy.lifecycle.RolloutStage`
and its transition table. Pure: every function changes the state copy of the
:class:`~lifelong_ray.policy.tick.Tick` and emits events and actions.

* A candidate that passed the gate goes to ``SHADOW`` when ``rollout.shadow_fraction``
  is set (mirrored requests, answers discarded, compared with the champion's),
  then waits in ``APPROVAL`` when ``rollout.require_approval`` has ``canary`` (or,
  while the error budget is frozen, when the rollout is not urgent), then takes
  the ``CANARY`` steps; before 100% it waits again when ``require_approval`` has
  ``full``.
* A promoted candidate is on ``PROBATION`` for ``rollout.probation_labels`` late
  labels when configured, with the previous champion kept deployed; it is rolled
  back if its realized accuracy falls below the previous champion's.
* Failed or erroring canary steps roll back at once, even while paused.
"""

from __future__ import annotations

from lifelong_ray.events import EventKind
from lifelong_ray.policy.analysis import Verdict, analyze_step
from lifelong_ray.policy.lifecycle import RolloutStage, transition
from lifelong_ray.policy.model import ActionKind, Observations, OperatorCommand, RetrainOutcome, ShadowStats, VersionStats
from lifelong_ray.policy.retraining import arm_settle, settle_refused
from lifelong_ray.policy.tick import Tick, reset_monitors

#: served requests a probation champion needs before its error rate is judged
_MIN_SERVED_FOR_ERRORS = 20


def _goto(tick: Tick, stage: RolloutStage) -> None:
    tick.s.rollout = transition(tick.s.rollout, stage)


def _urgent(tick: Tick) -> bool:
    return bool(tick.s.gate.get("urgent", True))


def canary_steps(tick: Tick) -> list[int]:
    """The candidate's canary steps: those its canary started with (a config reload
    does not move a running canary), else ``rollout.urgent_canary_steps`` when it is
    urgent and they are set, else ``rollout.canary_steps``."""
    rc = tick.cfg.rollout
    pinned = tick.s.gate.get("canary_steps")
    if pinned:
        return list(pinned)
    return rc.urgent_canary_steps if rc.urgent_canary_steps and _urgent(tick) else rc.canary_steps


# -- entering -------------------------------------------------------------------

def enter_rollout(tick: Tick, out: RetrainOutcome) -> None:
    """Take a candidate that passed the gate into its rollout."""
    s, rc = tick.s, tick.cfg.rollout
    assert out.version is not None and s.champion is not None
    s.candidate = out.version
    s.gate = {"candidate_accuracy": out.candidate_accuracy, "champion_accuracy": out.champion_accuracy,
              "holdout_rows": out.holdout_rows, "kind": s.retrain_kind, "purpose": s.retrain_purpose,
              "urgent": s.retrain_urgent}
    tick.act(ActionKind.DEPLOY_VERSION, version=out.version)
    if rc.shadow_fraction > 0:
        _goto(tick, RolloutStage.SHADOW)
        s.shadow_started_t = tick.now
        tick.act(ActionKind.SET_ALIAS, alias="shadow", version=s.candidate)
        tick.route({s.champion: 100.0}, shadow=s.candidate, shadow_fraction=rc.shadow_fraction)
        tick.emit(EventKind.SHADOW_STARTED,
                  f"{s.candidate} answers {rc.shadow_fraction:.0%} of requests in shadow (answers discarded);"
                  f" needs {rc.shadow_min_samples} compared answers", s.candidate, fraction=rc.shadow_fraction)
        return
    _before_canary(tick)


def _before_canary(tick: Tick) -> None:
    s = tick.s
    if "canary" in tick.cfg.rollout.require_approval:
        _await(tick, "canary")
    elif s.budget_frozen and not _urgent(tick):
        _await(tick, "budget")
    else:
        start_canary(tick)


def _await(tick: Tick, what: str) -> None:
    s = tick.s
    _goto(tick, RolloutStage.APPROVAL)
    s.approval_for = what
    if what == "budget":
        tick.emit(EventKind.BUDGET_FROZEN,
                  f"rollout of {s.candidate} held: {s.budget_reason}; it goes on when the budget recovers"
                  f" or an operator approves it", s.candidate, held=s.candidate)
        return
    target = "its canary" if what == "canary" else "100%"
    tick.emit(EventKind.APPROVAL_REQUESTED,
              f"{s.candidate} waits for approval before {target}: `lifelong approve {s.model} {s.candidate}`"
              f" or POST /v1/models/{s.model}:approve", s.candidate, approval_for=what)


def start_canary(tick: Tick) -> None:
    s = tick.s
    assert s.candidate is not None and s.champion is not None
    _goto(tick, RolloutStage.CANARY)
    s.approval_for = None
    s.step_index = 0
    s.step_started_t = tick.now
    s.gate["canary_steps"] = steps = list(canary_steps(tick))
    w = float(steps[0])
    if s.shadow_started_t is not None:
        tick.act(ActionKind.SET_ALIAS, alias="shadow", version=None)
        s.shadow_started_t = None
    tick.act(ActionKind.SET_ALIAS, alias="canary", version=s.candidate)
    tick.route({s.champion: 100.0 - w, s.candidate: w} if w < 100 else {s.candidate: 100.0})
    tick.emit(EventKind.CANARY_STARTED, f"{s.candidate} takes {w:g}% of traffic; champion {s.champion} {100 - w:g}%",
              s.candidate, weight=w)
    if w >= 100:
        promote(tick, "single canary step of 100%")


# -- shadow -----------------------------------------------------------------------

def analyze_shadow(tick: Tick, obs: Observations) -> None:
    s, rc = tick.s, tick.cfg.rollout
    if s.rollout != RolloutStage.SHADOW or s.paused:
        return
    st = obs.shadow_stats or ShadowStats()
    if st.compared < rc.shadow_min_samples:
        return
    agreement = st.agreement or 0.0
    numbers = f"agreement {agreement:.1%} on {st.compared} mirrored requests"
    if agreement < rc.shadow_min_agreement:
        rollback(tick, f"shadow: {numbers} < {rc.shadow_min_agreement:.1%}")
        return
    if st.labeled >= rc.min_labeled_per_step:
        cand, champ = st.candidate_correct / st.labeled, st.champion_correct / st.labeled
        numbers += f", accuracy {cand:.3f} vs champion {champ:.3f} on {st.labeled} labeled"
        if cand < champ - rc.quality_margin:
            rollback(tick, f"shadow: {numbers}: below champion - margin {rc.quality_margin:.2f}")
            return
    s.gate["shadow"] = {"agreement": agreement, "compared": st.compared, "labeled": st.labeled}
    tick.emit(EventKind.CANARY_STEP, f"shadow passed: {numbers}", s.candidate, stage="shadow")
    _before_canary(tick)  # mirroring goes on while an approval is awaited


# -- canary steps -------------------------------------------------------------------

def analyze_canary(tick: Tick, obs: Observations) -> None:
    s, rc = tick.s, tick.cfg.rollout
    live = s.rollout == RolloutStage.CANARY or (s.rollout == RolloutStage.APPROVAL and s.approval_for == "full")
    if not live or s.candidate is None:
        return
    steps = canary_steps(tick)
    weight = float(steps[s.step_index])
    analysis = analyze_step(
        candidate=obs.step_stats.get(s.candidate, VersionStats()),
        champion=obs.step_stats.get(s.champion or "", VersionStats()),
        champion_baseline=s.gate.get("champion_accuracy"),
        seconds_in_step=tick.now - (s.step_started_t or tick.now),
        weight=weight, cfg=rc, baseline_rows=int(s.gate.get("holdout_rows") or 0),
    )
    s.gate["last_analysis"] = {"verdict": analysis.verdict.value, "reason": analysis.reason, "t": tick.now}
    if analysis.verdict in (Verdict.FAILED, Verdict.ERROR):
        rollback(tick, analysis.reason)  # a failing canary is rolled back even while paused or awaiting approval
        return
    if analysis.verdict != Verdict.SUCCESSFUL or s.paused or s.rollout != RolloutStage.CANARY:
        return
    nxt = s.step_index + 1
    nxt_weight = float(steps[nxt])
    if nxt_weight >= 100:
        if "full" in rc.require_approval:
            _await(tick, "full")
        else:
            promote(tick, analysis.reason)
        return
    _goto(tick, RolloutStage.CANARY)
    s.step_index = nxt
    s.step_started_t = tick.now
    assert s.champion is not None
    tick.route({s.champion: 100.0 - nxt_weight, s.candidate: nxt_weight})
    tick.emit(EventKind.CANARY_STEP, f"{analysis.reason}; {s.candidate} now {nxt_weight:g}%",
              s.candidate, weight=nxt_weight)


# -- the end of a rollout --------------------------------------------------------------

def promote(tick: Tick, reason: str) -> None:
    s, rc = tick.s, tick.cfg.rollout
    new, old = s.candidate, s.champion
    assert new is not None
    probation = rc.probation_labels > 0 and old is not None
    _goto(tick, RolloutStage.PROBATION if probation else RolloutStage.STABLE)
    if probation:
        before = tick.obs.step_stats.get(old or "", VersionStats())
        s.probation_baseline = before.accuracy if before.labeled >= rc.min_labeled_per_step \
            else s.gate.get("champion_accuracy")
    s.previous_champion, s.champion = old, new
    s.previous_reference_accuracy = s.champion_reference_accuracy
    s.champion_reference_accuracy = s.gate.get("candidate_accuracy")
    s.candidate, s.approval_for = None, None
    s.step_index, s.step_started_t = -1, tick.now if probation else None
    tick.act(ActionKind.SET_ALIAS, alias="champion", version=new)
    tick.act(ActionKind.SET_ALIAS, alias="canary", version=None)
    tick.route({new: 100.0})
    if old is not None and not probation:
        s.retiring[old] = tick.now
    reset_monitors(s)
    arm_settle(tick, "online" if s.gate.get("kind") == "online" else s.gate.get("purpose"))
    tail = f"; on probation for {rc.probation_labels} late labels, {old} kept ready" if probation else ""
    tick.emit(EventKind.PROMOTED, f"{reason}; {new} takes 100%, replacing {old}{tail}", new, previous=old,
              probation=probation)


def rollback(tick: Tick, reason: str, **data: object) -> None:
    """Send the candidate's traffic back to the champion (``rolled_back``), or stop a
    candidate that never took live traffic (``rollout_aborted``)."""
    s = tick.s
    bad, champ = s.candidate, s.champion
    assert bad is not None and champ is not None
    had_traffic = s.rollout == RolloutStage.CANARY or s.approval_for == "full"
    _goto(tick, RolloutStage.STABLE)
    s.candidate, s.approval_for, s.step_index, s.step_started_t, s.shadow_started_t = None, None, -1, None, None
    tick.route({champ: 100.0})
    tick.act(ActionKind.SET_ALIAS, alias="canary", version=None)
    tick.act(ActionKind.SET_ALIAS, alias="shadow", version=None)
    s.retiring[bad] = tick.now
    reset_monitors(s)  # a drift that persists is detected again and retried
    settle_refused(tick, s.gate.get("purpose"))
    if had_traffic:
        tick.emit(EventKind.ROLLED_BACK, f"{reason}; {champ} back to 100%", bad, champion=champ, **data)
    else:
        tick.emit(EventKind.ROLLOUT_ABORTED, f"{reason}; {bad} never took traffic, {champ} keeps serving",
                  bad, champion=champ, **data)


def analyze_probation(tick: Tick, obs: Observations) -> None:
    s, rc = tick.s, tick.cfg.rollout
    if s.rollout != RolloutStage.PROBATION or s.champion is None or tick.now <= (s.step_started_t or tick.now):
        return  # promoted this tick: the step stats seen are still the canary's
    st = obs.step_stats.get(s.champion, VersionStats())
    if st.served >= _MIN_SERVED_FOR_ERRORS and st.error_rate > rc.max_error_rate:
        revert_champion(tick, f"probation: {s.champion} error rate {st.error_rate:.1%} > {rc.max_error_rate:.1%}"
                              f" ({st.errors}/{st.served} requests)")
        return
    if st.labeled < rc.probation_labels or st.accuracy is None:
        return
    base = s.probation_baseline
    numbers = f"{s.champion} realized accuracy {st.accuracy:.3f} on {st.labeled} late labels"
    if base is not None and st.accuracy < base - rc.probation_margin:
        revert_champion(tick, f"probation: {numbers} < {s.previous_champion} {base:.3f}"
                              f" - margin {rc.probation_margin:.2f}")
        return
    _goto(tick, RolloutStage.STABLE)
    old = s.previous_champion
    if old is not None:
        s.retiring[old] = tick.now
    s.step_started_t = None
    versus = f" >= {old} {base:.3f} - margin {rc.probation_margin:.2f}" if base is not None else ""
    tick.emit(EventKind.PROBATION_PASSED, f"probation: {numbers}{versus}; {old} retires", s.champion,
              accuracy=st.accuracy, baseline=base)


def revert_champion(tick: Tick, reason: str, **data: object) -> None:
    """Give all traffic back to the previous champion (probation failure or an operator's rollback)."""
    s = tick.s
    bad, good = s.champion, s.previous_champion
    assert bad is not None and good is not None
    if s.rollout == RolloutStage.PROBATION:
        _goto(tick, RolloutStage.STABLE)
    s.champion, s.previous_champion = good, None
    s.champion_reference_accuracy, s.previous_reference_accuracy = s.previous_reference_accuracy, None
    s.step_started_t, s.probation_baseline = None, None
    s.settles_left, s.settle_due_labeled = 0, None
    s.retiring.pop(good, None)
    tick.act(ActionKind.DEPLOY_VERSION, version=good)  # still deployed on probation; redeployed otherwise
    tick.act(ActionKind.SET_ALIAS, alias="champion", version=good)
    tick.route({good: 100.0})
    s.retiring[bad] = tick.now
    reset_monitors(s)
    tick.emit(EventKind.ROLLED_BACK, f"{reason}; {good} back to 100%", bad, champion=good, **data)


# -- operator and budget --------------------------------------------------------------

def approve(tick: Tick, cmd: OperatorCommand) -> str:
    """Apply an approval; returns why it does not apply ("" when it did)."""
    s = tick.s
    if s.rollout != RolloutStage.APPROVAL or s.candidate is None:
        return f"nothing waits for approval (rollout stage {s.rollout.value})"
    if cmd.version is not None and cmd.version != s.candidate:
        return f"{cmd.version} is not the candidate waiting for approval ({s.candidate})"
    what = s.approval_for
    tick.emit(EventKind.APPROVED, f"{cmd.who} approved {s.candidate} for {'100%' if what == 'full' else 'its canary'}"
                                  f": {cmd.why or 'no reason given'}", s.candidate, who=cmd.who, why=cmd.why,
              command_id=cmd.id, approval_for=what)
    if what == "full":
        promote(tick, f"approved by {cmd.who}")
    else:
        start_canary(tick)
    return ""


def operator_rollback(tick: Tick, cmd: OperatorCommand) -> str:
    s = tick.s
    reason = f"rollback by {cmd.who}: {cmd.why or 'no reason given'}"
    who = {"who": cmd.who, "why": cmd.why, "command_id": cmd.id}
    if s.candidate is not None and s.rollout in (RolloutStage.SHADOW, RolloutStage.APPROVAL, RolloutStage.CANARY):
        rollback(tick, reason, **who)
    elif s.previous_champion is not None and s.rollout in (RolloutStage.PROBATION, RolloutStage.STABLE):
        revert_champion(tick, reason, **who)
    else:
        return "nothing to roll back: no candidate in rollout and no previous champion"
    return ""


def watch_budget(tick: Tick, obs: Observations) -> None:
    """Freeze non-urgent rollouts while the error budget is spent, and thaw them after."""
    s, budget = tick.s, obs.budget
    if budget is None:
        return
    s.budget = {"exhausted": budget.exhausted, "alerting": budget.alerting, "reason": budget.reason,
                "slis": {name: {"remaining": round(st.remaining, 4),
                                "burn": {f"{w.seconds:g}s": round(w.burn_rate, 3) for w in st.windows},
                                "alerts": [a.name for a in st.alerts if a.firing]}
                         for name, st in budget.slis.items()}}
    frozen = tick.cfg.slo.freeze_when_exhausted and budget.exhausted
    if frozen and not s.budget_frozen:
        s.budget_frozen, s.budget_reason = True, budget.reason
        tick.emit(EventKind.BUDGET_FROZEN,
                  f"{budget.reason}: non-urgent rollouts freeze, rollback is preferred, refresh retrains wait",
                  s.champion)
        if s.candidate is not None and not _urgent(tick) and s.rollout in (RolloutStage.CANARY, RolloutStage.APPROVAL,
                                                                             RolloutStage.SHADOW):
            rollback(tick, f"error budget exhausted ({budget.reason}); the known champion is preferred")
    elif not frozen and s.budget_frozen:
        s.budget_frozen, s.budget_reason = False, ""
        tick.emit(EventKind.BUDGET_UNFROZEN, f"error budget recovered: {budget.reason}", s.champion)
        if s.rollout == RolloutStage.APPROVAL and s.approval_for == "budget":
            start_canary(tick)
    elif frozen:
        s.budget_reason = budget.reason
