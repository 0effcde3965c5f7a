"""How the policy reacts to an action the executor abandoned after its retries.

Pure (see :mod:`lifelong_ray.policy.decide`). Each abandoned action gets an
``action_failed`` event naming it, its attempts and its error; then:

* a candidate whose deployment failed is rolled back (``rolled_back`` once it had
  canary traffic, else ``rollout_aborted``), with the error as the reason;
* a champion that cannot be (re)deployed raises ``champion_unavailable`` and the
  version the routing table still serves (``Observations.serving_weights``) stays the
  champion: routing is never taken away from the last serving version;
* a retrain that could not start ends as a failed retrain (``retrain_failed``), so
  the next one can start;
* any other action (an alias, a routing table, retiring a version) is reported only:
  the next write of the same thing, or an operator, repairs it.

A candidate v2 whose Serve constructor throws on every try:

    >>> from lifelong_ray.config import parse_config
    >>> from lifelong_ray.policy.lifecycle import RolloutStage
    >>> from lifelong_ray.policy.model import Action, ActionKind, ControllerState, FailedAction, Observations
    >>> from lifelong_ray.policy.tick import Tick
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}],
    ...                     "label": {"name": "y", "classes": [0, 1]}}})
    >>> s = ControllerState(model="m", champion="v1", candidate="v2", rollout=RolloutStage.CANARY,
    ...                     step_index=0, weights={"v1": 90.0, "v2": 10.0})
    >>> failed = FailedAction(action=Action(kind=ActionKind.DEPLOY_VERSION, version="v2"),
    ...                       error="RuntimeError: sha256 mismatch", attempts=4)
    >>> tick = Tick(s, cfg, 50.0, Observations(failed_actions=[failed]))
    >>> _ = take_failed_actions(tick, tick.obs)
    >>> [e.kind.value for e in tick.events], tick.s.weights, tick.s.candidate
    (['action_failed', 'rolled_back'], {'v1': 100.0}, None)
"""

from __future__ import annotations

from lifelong_ray.events import EventKind
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage, transition
from lifelong_ray.policy.model import Action, ActionKind, FailedAction, Observations, RetrainOutcome
from lifelong_ray.policy.rollout import rollback
from lifelong_ray.policy.tick import Tick


def describe(a: Action) -> str:
    """A short human name of an action, for reasons.

    >>> describe(Action(kind=ActionKind.SET_ROUTING, weights={"v1": 90.0, "v2": 10.0}, generation=7))
    'set_routing generation 7 (v1 90%, v2 10%)'
    """
    if a.kind == ActionKind.SET_ROUTING:
        return f"set_routing generation {a.generation} (" + \
            ", ".join(f"{v} {w:g}%" for v, w in a.weights.items()) + ")"
    if a.kind == ActionKind.SET_ALIAS:
        return f"set_alias {a.alias} -> {a.version or 'none'}"
    if a.kind == ActionKind.START_RETRAIN:
        return f"start_retrain {a.job_id}"
    return f"{a.kind.value} {a.version}"


def take_failed_actions(tick: Tick, obs: Observations) -> Observations:
    """React to ``obs.failed_actions``; returns the observations the rest of the tick
    sees (a retrain that could not start reads as a failed retrain outcome)."""
    for f in obs.failed_actions:
        a = f.action
        skipped = f"; skipped with it: {', '.join(describe(x) for x in f.skipped)}" if f.skipped else ""
        tick.emit(EventKind.ACTION_FAILED,
                  f"{describe(a)} failed {f.attempts} time{'s' if f.attempts != 1 else ''} and was abandoned:"
                  f" {f.error}{skipped}", a.version, action=a.kind.value, attempts=f.attempts, error=f.error,
                  skipped=[x.kind.value for x in f.skipped])
        if a.kind == ActionKind.DEPLOY_VERSION and a.version is not None:
            _undeployable(tick, a.version, f, obs)
        elif a.kind == ActionKind.START_RETRAIN and tick.s.retrain == RetrainStage.RUNNING \
                and a.job_id == tick.s.retrain_job_id and obs.retrain_outcome is None:
            obs = obs.model_copy(update={"retrain_outcome": RetrainOutcome(
                job_id=a.job_id, status="failed", error=f"the job could not be started: {f.error}")})
    return obs


def _undeployable(tick: Tick, version: str, f: FailedAction, obs: Observations) -> None:
    s = tick.s
    why = f"{version} could not be deployed after {f.attempts} attempts ({f.error})"
    if version == s.candidate and s.rollout in (RolloutStage.SHADOW, RolloutStage.APPROVAL, RolloutStage.CANARY):
        rollback(tick, why, cause="deploy_failed")
        return
    if version != s.champion:
        return  # a version kept warm or being retired: the event says it
    serving = {v: w for v, w in (obs.serving_weights or {}).items() if w > 0}
    if version in serving:
        tick.emit(EventKind.CHAMPION_UNAVAILABLE,
                  f"champion {why}; the routing table still sends it {serving[version]:g}% and is left as it is",
                  version, error=f.error)
        return
    fallback = max(serving, key=lambda v: (serving[v], v)) if serving else None
    if fallback is None:
        s.champion, s.weights = None, {}
        s.retiring[version] = tick.now
        tick.act(ActionKind.SET_ALIAS, alias="champion", version=None)
        tick.emit(EventKind.CHAMPION_UNAVAILABLE,
                  f"champion {why}; no version serves: the next bootstrap retrain trains a new one", version,
                  error=f.error)
        return
    s.champion = fallback
    if s.previous_champion == fallback:
        s.previous_champion = None
    if s.rollout == RolloutStage.PROBATION:
        s.rollout = transition(s.rollout, RolloutStage.STABLE)  # the version on probation is the one that cannot run
        s.step_started_t, s.probation_baseline = None, None
    s.retiring.pop(fallback, None)
    s.retiring[version] = tick.now
    tick.act(ActionKind.SET_ALIAS, alias="champion", version=fallback)
    tick.route(serving)
    tick.emit(EventKind.CHAMPION_UNAVAILABLE,
              f"champion {why}; {fallback}, the version still serving, stays champion", version,
              champion=fallback, error=f.error)
