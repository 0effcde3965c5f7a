"""Deadlines of a rollout step and of a retrain job (pure).

**Step deadline** (``rollout.step_timeout_seconds``, like Argo Rollouts' inconclusive
limit): a shadow, a canary step or a probation that has not gathered the evidence it
needs (compared answers, labels, seconds) by ``start + step_timeout_seconds`` is
resolved by rolling back, with a reason naming the missing evidence and the deadline.
Approvals wait for a person and have no deadline; nor does a step while the model is
paused (an operator is looking at it). ``null`` turns it off (a step then holds
until its evidence arrives).

**Retrain deadline** (``training.timeout_seconds``): :func:`retrain_overdue` says whether
the running job has run too long; :func:`enforce_retrain_deadline` then ends it as a
failed retrain (``retrain_failed``, so the next one can start) and asks the executor to
cancel the job (a ``cancel_retrain`` action).

A canary at 10% that got no labels in an hour:

    >>> from lifelong_ray.config import parse_config
    >>> from lifelong_ray.policy.lifecycle import RolloutStage
    >>> from lifelong_ray.policy.model import ControllerState, Observations
    >>> from lifelong_ray.policy.tick import Tick
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}],
    ...                     "label": {"name": "y", "classes": [0, 1]}},
    ...                     "rollout": {"step_timeout_seconds": 3600}})
    >>> s = ControllerState(model="m", champion="v1", candidate="v2", rollout=RolloutStage.CANARY,
    ...                     step_index=0, step_started_t=1000.0, weights={"v1": 90.0, "v2": 10.0},
    ...                     gate={"last_analysis": {"reason": "canary has 0/100 labels at 10%"}})
    >>> step_deadline(s, cfg)
    4600.0
    >>> tick = Tick(s, cfg, 4600.0, Observations())
    >>> enforce_step_deadline(tick, tick.obs)
    >>> print(tick.events[-1].reason)  # doctest: +NORMALIZE_WHITESPACE
    canary step 1 (10%) timed out: no verdict by its deadline t=4600 (rollout.step_timeout_seconds 3600s):
    canary has 0/100 labels at 10%; v1 back to 100%
"""

from __future__ import annotations

from lifelong_ray.config import Config
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage
from lifelong_ray.policy.model import ActionKind, ControllerState, Observations, RetrainOutcome, ShadowStats, VersionStats
from lifelong_ray.policy.rollout import canary_steps, revert_champion, rollback
from lifelong_ray.policy.tick import Tick


def step_deadline(s: ControllerState, cfg: Config) -> float | None:
    """When the current shadow, canary step or probation must have reached a verdict
    (None: no step running, the model is paused, or deadlines are off)."""
    timeout = cfg.rollout.step_timeout_seconds
    if timeout is None or s.paused:
        return None
    start = s.shadow_started_t if s.rollout == RolloutStage.SHADOW else \
        s.step_started_t if s.rollout in (RolloutStage.CANARY, RolloutStage.PROBATION) else None
    return None if start is None else start + timeout


def enforce_step_deadline(tick: Tick, obs: Observations) -> None:
    """Roll back a step past its deadline (after this tick's analyses had their chance)."""
    s, rc = tick.s, tick.cfg.rollout
    deadline = step_deadline(s, tick.cfg)
    if deadline is None or tick.now < deadline:
        return
    if s.rollout == RolloutStage.SHADOW:
        st = obs.shadow_stats or ShadowStats()
        what = "shadow"
        evidence = f"{st.compared}/{rc.shadow_min_samples} compared answers"
    elif s.rollout == RolloutStage.CANARY:
        steps = canary_steps(tick)
        what = f"canary step {s.step_index + 1} ({steps[s.step_index]:g}%)"
        evidence = str((s.gate.get("last_analysis") or {}).get("reason") or "no analysis yet")
    else:
        st = obs.step_stats.get(s.champion or "", VersionStats())
        what = f"probation of {s.champion}"
        evidence = f"{st.labeled}/{rc.probation_labels} late labels"
    reason = (f"{what} timed out: no verdict by its deadline t={deadline:.0f}"
              f" (rollout.step_timeout_seconds {rc.step_timeout_seconds:g}s): {evidence}")
    data = {"cause": "step_timeout", "deadline": deadline}
    if s.rollout == RolloutStage.PROBATION:
        if s.previous_champion is not None:
            revert_champion(tick, reason, **data)
        return
    rollback(tick, reason, **data)


def retrain_overdue(s: ControllerState, cfg: Config, now: float) -> str | None:
    """Why the running retrain job should be cancelled now (None: it may go on).

    >>> from lifelong_ray.config import parse_config
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}],
    ...                     "label": {"name": "y", "classes": [0, 1]}},
    ...                     "training": {"timeout_seconds": 600}})
    >>> s = ControllerState(model="m", retrain=RetrainStage.RUNNING, retrain_job_id="m-retrain-0001",
    ...                     retrain_started_t=100.0)
    >>> retrain_overdue(s, cfg, 699.0) is None
    True
    >>> retrain_overdue(s, cfg, 700.0)
    'job m-retrain-0001 ran 600s, past training.timeout_seconds 600s: cancelled'
    """
    timeout = cfg.training.timeout_seconds
    if timeout is None or s.retrain != RetrainStage.RUNNING or s.retrain_started_t is None:
        return None
    ran = now - s.retrain_started_t
    if ran < timeout:
        return None
    return f"job {s.retrain_job_id} ran {ran:.0f}s, past training.timeout_seconds {timeout:g}s: cancelled"


def enforce_retrain_deadline(tick: Tick, obs: Observations) -> Observations:
    """The observations with an overdue running job turned into a failed outcome (and
    its cancellation queued); unchanged when the job reported or is within its time."""
    s = tick.s
    if obs.retrain_outcome is not None and obs.retrain_outcome.job_id == s.retrain_job_id:
        return obs
    why = retrain_overdue(s, tick.cfg, tick.now)
    if why is None:
        return obs
    assert s.retrain_job_id is not None
    tick.act(ActionKind.CANCEL_RETRAIN, job_id=s.retrain_job_id)
    return obs.model_copy(update={"retrain_outcome": RetrainOutcome(job_id=s.retrain_job_id, status="failed",
                                                                    error=why)})
