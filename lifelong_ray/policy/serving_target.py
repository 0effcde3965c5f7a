"""What Serve should run for a model, derived from the controller state alone (pure).

The controller reconciles every tick (level-triggered, like Serve's own
controller): it lists the versions Serve hosts and makes that set match what the
persisted state says should serve. So a restart of anything (``lifelong down``
then ``up``, a Serve restart, a head restart, a RayService upgrade) converges back
to the persisted target without any action having been recorded for it.

* **required**: every version with weight, the champion, the candidate while it is
  in shadow, approval or canary, and the previous champion while the new one is on
  probation (kept ready for an instant rollback). A required version that Serve
  does not run is deployed.
* **tolerated**: versions retired from traffic but still in their grace period
  (``state.retiring``): left running if they run, not redeployed if they do not.
* anything else of the model's that Serve runs is retired.

>>> from lifelong_ray.policy.model import ControllerState
>>> s = ControllerState(model="m", champion="v0002", weights={"v0002": 100.0}, retiring={"v0001": 5.0})
>>> plan = plan_serving(s, running={"v0001", "v0003"})
>>> plan.deploy, plan.retire
(('v0002',), ('v0003',))
>>> plan.reason
'v0002 should serve but Serve does not run it; v0003 runs but nothing in the state needs it'
>>> plan_serving(s, running={"v0002"}).in_sync
True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lifelong_ray.policy.lifecycle import RolloutStage
from lifelong_ray.policy.model import ControllerState

__all__ = ["ServingPlan", "plan_serving", "required_versions"]

_CANDIDATE_SERVES = (RolloutStage.SHADOW, RolloutStage.APPROVAL, RolloutStage.CANARY)


def required_versions(state: ControllerState) -> set[str]:
    """The versions that must be servable now (see the module docstring)."""
    out = {v for v, w in state.weights.items() if w > 0}
    if state.champion:
        out.add(state.champion)
    if state.candidate and state.rollout in _CANDIDATE_SERVES:
        out.add(state.candidate)
    if state.previous_champion and state.rollout == RolloutStage.PROBATION:
        out.add(state.previous_champion)
    return out


@dataclass(frozen=True)
class ServingPlan:
    """Versions to deploy and to retire so that Serve matches the state."""

    deploy: tuple[str, ...]
    retire: tuple[str, ...]

    @property
    def in_sync(self) -> bool:
        return not self.deploy and not self.retire

    @property
    def reason(self) -> str:
        parts = []
        if self.deploy:
            parts.append(f"{', '.join(self.deploy)} should serve but Serve does not run "
                         f"{'it' if len(self.deploy) == 1 else 'them'}")
        if self.retire:
            parts.append(f"{', '.join(self.retire)} {'runs' if len(self.retire) == 1 else 'run'}"
                         f" but nothing in the state needs {'it' if len(self.retire) == 1 else 'them'}")
        return "; ".join(parts) or "in sync"


def plan_serving(state: ControllerState, running: Iterable[str]) -> ServingPlan:
    """Compare what should serve (``state``) with what Serve ``running`` hosts."""
    running = set(running)
    required = required_versions(state)
    tolerated = required | set(state.retiring)
    return ServingPlan(deploy=tuple(sorted(required - running)), retire=tuple(sorted(running - tolerated)))
