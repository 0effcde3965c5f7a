"""The decision being built during one tick of :func:`~lifelong_ray.policy.decide.decide`.

A :class:`Tick` holds a private copy of the controller state plus the actions and
events the tick emits; the policy modules (``decide``, ``rollout``, ``operator``)
change the state only through it, so ``decide()`` never mutates its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lifelong_ray.config import Config
from lifelong_ray.drift.monitor import MonitorState
from lifelong_ray.events import Event, EventKind
from lifelong_ray.policy.model import Action, ActionKind, ControllerState, Observations


@dataclass
class Decision:
    state: ControllerState
    actions: list[Action]
    events: list[Event]


@dataclass
class Tick:
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

    def route(self, weights: dict[str, float], shadow: str | None = None, shadow_fraction: float = 0.0) -> None:
        """Write a new routing table: ``weights`` (percent), optionally mirroring
        ``shadow_fraction`` of the requests to ``shadow``."""
        self.s.routing_generation += 1
        self.s.weights = dict(weights)
        self.act(ActionKind.SET_ROUTING, weights=dict(weights), generation=self.s.routing_generation,
                 champion=self.s.champion, shadow=shadow, shadow_fraction=shadow_fraction if shadow else 0.0)


def reset_monitors(s: ControllerState) -> None:
    """Start drift detection afresh (a new champion, or a rollback: a drift that
    persists is detected again and retried)."""
    s.feature_monitor = MonitorState()
    s.quality_monitor = MonitorState()
    s.quality_streak_start_t = None
