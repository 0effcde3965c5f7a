"""Level-triggered reconcile: make what Serve runs match what the state says, every tick.

The policy decides *what* should serve (:func:`~lifelong_ray.policy.serving_target.plan_serving`);
this module lists what Serve hosts and deploys or retires versions until the two
agree. It does not depend on any recorded action: after ``lifelong down`` and
``lifelong up``, a Serve or head restart, or a RayService upgrade, the first tick
finds the champion missing and deploys it again.

A version that fails to deploy is retried with exponential backoff
(``RETRY_BASE_S`` doubling up to ``RETRY_MAX_S``); from its ``ALERT_AFTER``-th
consecutive failure an ``action_failed`` event names it and the error, once per
streak. Whatever still runs keeps serving meanwhile: reconcile never retires a
required version to make room.

Serve is reached through a :class:`ServingBackend` so the loop is tested without Ray::

    >>> from lifelong_ray.policy.model import ControllerState
    >>> class Fake:
    ...     def __init__(self): self.apps = set()
    ...     def running(self): return set(self.apps)
    ...     def deploy(self, v): self.apps.add(v)
    ...     def retire(self, v): self.apps.discard(v)
    >>> r = Reconciler("m", Fake())
    >>> events = r.reconcile(ControllerState(model="m", champion="v0002", weights={"v0002": 100.0}), now=0.0)
    >>> [e.kind.value for e in events], r.backend.apps, r.status()["in_sync"]
    (['serving_reconciled'], {'v0002'}, True)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from lifelong_ray.config import Config
from lifelong_ray.events import Event, EventKind
from lifelong_ray.policy.model import ControllerState
from lifelong_ray.policy.serving_target import plan_serving, required_versions

log = logging.getLogger(__name__)

RETRY_BASE_S = 5.0
RETRY_MAX_S = 300.0
ALERT_AFTER = 3


class ServingBackend(Protocol):
    """The Serve operations reconcile needs (one model's versions)."""

    def running(self) -> set[str]: ...
    def deploy(self, version: str) -> None: ...
    def retire(self, version: str) -> None: ...


class ServeBackend:
    """The model's versions on the current Ray Serve (each version its own app)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def running(self) -> set[str]:
        from lifelong_ray.serving.deploy import deployed_versions

        return set(deployed_versions(self.cfg))

    def deploy(self, version: str) -> None:
        from lifelong_ray.serving.deploy import deploy_version

        deploy_version(self.cfg, version)

    def retire(self, version: str) -> None:
        from lifelong_ray.serving.deploy import retire_version

        retire_version(self.cfg, version)


@dataclass
class _Failures:
    count: int
    retry_at: float
    error: str


class Reconciler:
    """Deploys and retires ``model``'s versions on ``backend`` to match the state."""

    def __init__(self, model: str, backend: ServingBackend) -> None:
        self.model = model
        self.backend = backend
        self._failures: dict[str, _Failures] = {}   # only versions the state requires: bounded
        self._last: dict[str, Any] = {"in_sync": None, "required": [], "running": [], "missing": [],
                                      "errors": {}}

    def reconcile(self, state: ControllerState, now: float) -> list[Event]:
        """One pass; returns the events to record (redeploys, retires, failures)."""
        running = self.backend.running()
        plan = plan_serving(state, running)
        events: list[Event] = []
        for v in plan.deploy:
            f = self._failures.get(v)
            if f is not None and now < f.retry_at:
                continue
            try:
                self.backend.deploy(v)
            except Exception as err:  # noqa: BLE001 - recorded, retried with backoff, the loop goes on
                events += self._failed(state, v, err, now)
                continue
            running.add(v)
            self._failures.pop(v, None)
            role = _role(state, v)
            log.info("reconcile: deployed %s %s of %s", role, v, self.model)
            events.append(Event(t=now, kind=EventKind.SERVING_RECONCILED, model=self.model, version=v,
                                reason=f"{role} {v} should serve but Serve did not run it: deployed again",
                                data={"deployed": v}))
        for v in plan.retire:
            try:
                self.backend.retire(v)
            except Exception as err:  # noqa: BLE001 - a stray app costs resources, not answers: next tick
                log.warning("reconcile: could not retire %s of %s: %s", v, self.model, err)
                continue
            running.discard(v)
            events.append(Event(t=now, kind=EventKind.SERVING_RECONCILED, model=self.model, version=v,
                                reason=f"{v} ran on Serve but the state neither routes to it nor keeps it"
                                       f" ready: retired", data={"retired": v}))
        required = required_versions(state)
        self._failures = {v: f for v, f in self._failures.items() if v in required}
        missing = sorted(required - running)
        self._last = {"in_sync": not missing, "required": sorted(required), "running": sorted(running),
                      "missing": missing, "errors": {v: f.error for v, f in self._failures.items()}}
        return events

    def status(self) -> dict[str, Any]:
        """The last pass: required and running versions, what is missing and why."""
        return dict(self._last)

    def _failed(self, state: ControllerState, v: str, err: BaseException, now: float) -> list[Event]:
        prev = self._failures.get(v)
        count = 1 if prev is None else prev.count + 1
        delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (count - 1))
        message = f"{type(err).__name__}: {err}"
        self._failures[v] = _Failures(count, now + delay, message)
        log.warning("reconcile: could not deploy %s of %s (%d times; next try in %.0fs): %s",
                    v, self.model, count, delay, message)
        if count != ALERT_AFTER:
            return []
        role = _role(state, v)
        keeps = [x for x, w in state.weights.items() if w > 0 and x != v]
        serving = f"{', '.join(sorted(keeps))} keep{'s' if len(keeps) == 1 else ''} serving" if keeps \
            else "requests routed to it fail with 503 until it deploys"
        return [Event(t=now, kind=EventKind.ACTION_FAILED, model=self.model, version=v,
                      reason=f"could not deploy {role} {v} ({count} attempts): {message}; {serving};"
                             f" retrying every {RETRY_MAX_S:.0f}s at most",
                      data={"action": "deploy_version", "attempts": count, "error": message, "role": role})]


def _role(state: ControllerState, v: str) -> str:
    if v == state.champion:
        return "champion"
    if v == state.candidate:
        return "candidate"
    if v == state.previous_champion:
        return "previous champion"
    return "version"
