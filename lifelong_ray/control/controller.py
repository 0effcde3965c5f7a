"""The controller loop: observe -> decide -> persist -> act, one tick at a time.

Plain Python so it can run in a Ray actor (:mod:`lifelong_ray.control.actor`) or
in-process. The decision is written (events, then state with its pending
actions) before any action runs; a restart reloads the state and re-applies the
pending actions, which are idempotent, so each step happens exactly once. A
failing action is retried with backoff and finally abandoned
(:mod:`lifelong_ray.control.retry`); the policy is told on the next tick and
reacts. Observe and decide run on every tick regardless: the loop never dies or
stalls, and the last good version keeps serving. Only the holder of the model's
lease (:mod:`lifelong_ray.control.lease`) ticks; every durable write checks it
still holds it.
"""

from __future__ import annotations

import logging
import os

from lifelong_ray.clock import Clock, WallClock
from lifelong_ray.config import Config
from lifelong_ray.control.commands import archive_commands
from lifelong_ray.control.executor import Executor
from lifelong_ray.control.housekeeping import Housekeeper
from lifelong_ray.control.jobs import running_retrains
from lifelong_ray.control.lease import Lease, LeaseLost, default_holder, leader_acquired_event, leader_lost_event
from lifelong_ray.control.observe import Observer
from lifelong_ray.control.reconcile import Reconciler, ServingBackend
from lifelong_ray.control.retry import Retries
from lifelong_ray.events import AuditLog
from lifelong_ray.policy.decide import Decision, decide, recover
from lifelong_ray.policy.lifecycle import RetrainStage
from lifelong_ray.policy.model import STATE_SCHEMA_VERSION, ControllerState, Observations
from lifelong_ray.registry.store import Registry
from lifelong_ray.serving.routing import read_routing
from lifelong_ray.storage import Storage

log = logging.getLogger(__name__)


def state_path(model: str) -> str:
    return f"models/{model}/controller/state.json"


def resolve_storage(cfg: Config) -> Config:
    """Make a relative local storage root absolute (Ray workers have other cwds)."""
    root = cfg.storage.root
    if "://" in root or os.path.isabs(root):
        return cfg
    return cfg.with_overrides(storage={"root": os.path.abspath(root)})


def load_state(storage: Storage, model: str) -> ControllerState | None:
    path = state_path(model)
    if not storage.exists(path):
        return None
    data = storage.read_json(path)
    if data.get("schema_version") != STATE_SCHEMA_VERSION:
        raise RuntimeError(f"controller state {path} has schema_version {data.get('schema_version')},"
                           f" this code reads {STATE_SCHEMA_VERSION}")
    return ControllerState.model_validate(data)


class Controller:
    """``serving``: the Serve backend that every tick reconciles with the state
    (:mod:`~lifelong_ray.control.reconcile`); None (in-process tests) reconciles nothing.
    ``holder``: who this controller is to the model's lease (default: host and pid)."""

    def __init__(self, cfg: Config, clock: Clock | None = None, serving: ServingBackend | None = None,
                 holder: str | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or WallClock()
        self.storage = Storage(cfg.storage.root)
        self.registry = Registry(self.storage, cfg.model.name)
        self.audit = AuditLog(self.storage, cfg.model.name)
        # one leader per model (control/lease.py): a standby observes and writes nothing
        self.lease = Lease(self.storage, cfg.model.name, holder=holder or default_holder(), clock=self.clock,
                           seconds=cfg.controller.lease_period)
        self.observer: Observer | None = None  # built on taking the lease
        self.executor = Executor(cfg, self.storage, self.registry)
        self.executor.fence = self.lease.hold
        self.reconciler = Reconciler(cfg.model.name, serving) if serving is not None else None
        self.retries = Retries(cfg.controller.action_retries, cfg.controller.action_backoff_seconds)
        self.housekeeper = Housekeeper(cfg, self.storage, self.registry, self.audit)
        self.state = load_state(self.storage, cfg.model.name) or ControllerState(model=cfg.model.name)
        self.restored = self.state.seq > 0
        try:
            if self.lease.acquire():
                self._lead()
        except LeaseLost as lost:
            self._step_down(lost)

    @property
    def role(self) -> str:
        """``leader`` (holds the model's lease and acts) or ``standby``."""
        return "leader" if self.lease.held else "standby"

    def _lead(self) -> None:
        """Just took the lease: start from the state on storage, as after a restart."""
        self.state = load_state(self.storage, self.cfg.model.name) or ControllerState(model=self.cfg.model.name)
        self.restored = self.state.seq > 0
        self.observer = Observer(self.cfg, self.storage, self.registry)
        self.state.pending_actions = recover(self.state, self.cfg)
        self.audit.append([leader_acquired_event(self.lease, self.cfg.model.name)],
                          key=f"leader-{self.lease.generation:012d}")
        self._drain()

    def _lead_or_stand_by(self) -> bool:
        """True if we lead this tick (renewing the lease, or taking it over)."""
        if self.lease.held:
            self.lease.hold()
            return True
        if self.lease.acquire():
            self._lead()
            return True
        return False

    def _step_down(self, lost: LeaseLost) -> None:
        log.warning("%s stands by: %s", self.lease.holder, lost)
        self.observer = None
        self.audit.append([leader_lost_event(lost, self.lease, self.cfg.model.name)],
                          key=f"leader-{lost.generation:012d}-lost")

    def release(self) -> None:
        """Give the lease up (a clean stop): a standby takes over at once."""
        self.lease.release()

    def _save(self) -> None:
        self.lease.hold()  # fencing: a deposed leader never overwrites the new one's state
        self.storage.write_json(state_path(self.cfg.model.name), self.state.model_dump(mode="json"))

    def _drain(self, now: float | None = None) -> bool:
        """Run the pending actions in order. A failing one is retried after its backoff
        (the ones behind it wait), then abandoned with those that depend on it; both stay
        queued until the policy has taken the failure in. True if none is left."""
        if not self.state.pending_actions:
            return True  # nothing ran: the state on storage is already this one
        queue, done = list(self.state.pending_actions), set()
        for i, action in enumerate(queue):
            if self.retries.dropped(action):
                continue
            if self.retries.waiting(action) is not None:
                now = self.clock.now() if now is None else now
                if not self.retries.ready(action, now):
                    break
            try:
                self.executor.execute(action)
            except Exception as e:  # noqa: BLE001 - one failing subsystem must not kill the loop
                now = self.clock.now() if now is None else now
                if self.retries.failed(action, e, now, queue):
                    log.exception("action %s failed; abandoned after its retries", action.kind.value)
                    continue
                attempts, at = self.retries.waiting(action) or (0, now)
                log.warning("action %s failed (attempt %d: %s); retrying at t=%.1f",
                            action.kind.value, attempts, e, at)
                break
            self.retries.succeeded(action)
            done.add(i)
        self.state.pending_actions = [a for i, a in enumerate(queue) if i not in done]
        self._save()
        return not self.state.pending_actions

    def _observe(self, now: float) -> Observations:
        """The observer's view plus what only this process knows (abandoned actions, a
        retrain task that died) and, while a retrain waits, the other models' running ones."""
        assert self.observer is not None
        obs = self.observer.observe(self.state, now)
        obs.failed_actions = self.retries.take_abandoned()
        if obs.failed_actions:
            obs.serving_weights = dict(read_routing(self.storage, self.cfg.model.name).weights)
        job = self.state.retrain_job_id
        if self.state.retrain == RetrainStage.RUNNING and job and obs.retrain_outcome is None:
            obs.retrain_outcome = self.executor.retrain_failure(job)
        if self.state.retrain == RetrainStage.PENDING:
            obs.retrains_running = running_retrains(self.storage, exclude=self.cfg.model.name)
        return obs

    def _archive_commands(self, obs: Observations) -> None:
        """Move the command files this state took in out of the pending folder (after the save)."""
        keys = [c.key for c in obs.commands] + obs.commands_unarchived
        try:
            archive_commands(self.storage, self.cfg.model.name, keys)
        except Exception:  # noqa: BLE001 - the ledger already stops a replay; the next tick retries
            log.exception("could not archive %d command files; will retry next tick", len(keys))

    def tick(self) -> Decision | None:
        """One observe-decide-persist-act round; it runs even while an action fails.
        None while standing by (another controller holds the model's lease)."""
        try:
            if not self._lead_or_stand_by():
                return None
            return self._tick()
        except LeaseLost as lost:
            self._step_down(lost)
            return None

    def _tick(self) -> Decision:
        now = self.clock.now()
        self._drain(now)
        obs = self._observe(now)
        decision = decide(self.state, obs, self.cfg, now)
        self.lease.hold()
        self.audit.append(decision.events, key=f"tick-{decision.state.seq:012d}")
        decision.state.pending_actions = self.retries.forget_dropped(self.state.pending_actions) + decision.actions
        self.state = decision.state
        self._save()
        self._archive_commands(obs)
        self._drain(now)
        self._reconcile()
        self.housekeeper.maybe_run(self.state, now)  # retention + compaction when due; never raises
        return decision

    def _reconcile(self) -> None:
        """Make Serve run what the state says should serve (level-triggered, every tick)."""
        if self.reconciler is None:
            return
        self.lease.hold()
        try:
            events = self.reconciler.reconcile(self.state, self.clock.now())
        except Exception:  # noqa: BLE001 - Serve unreachable: the next tick tries again
            log.exception("reconcile of %s failed; the next tick tries again", self.cfg.model.name)
            return
        if events:
            self.audit.append(events, key=f"reconcile-{self.state.seq:012d}-{int(events[0].t * 1e6):020d}")
