"""The controller loop: observe -> decide -> persist -> act, one tick at a time.

Plain Python so it can run in a Ray actor (:mod:`lifelong_ray.control.actor`) or
in-process. The decision is written (events, then state with its pending
actions) before any action runs; a restart reloads the state and re-applies the
pending actions, which are idempotent, so each step happens exactly once. A
failing action is logged and retried on the next tick: the loop never dies
and the last good version keeps serving. Only the holder of the model's lease
(:mod:`lifelong_ray.control.lease`) ticks; every durable write checks it still
holds it.
"""

from __future__ import annotations

import logging
import os

from lifelong_ray.clock import Clock, WallClock
from lifelong_ray.config import Config
from lifelong_ray.control.commands import archive_commands
from lifelong_ray.control.executor import Executor
from lifelong_ray.control.lease import Lease, LeaseLost, default_holder, leader_acquired_event, leader_lost_event
from lifelong_ray.control.observe import Observer
from lifelong_ray.events import AuditLog
from lifelong_ray.policy.decide import Decision, decide, recover
from lifelong_ray.policy.model import STATE_SCHEMA_VERSION, Action, ControllerState, Observations
from lifelong_ray.registry.store import Registry
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
    def __init__(self, cfg: Config, clock: Clock | None = None, holder: str | None = None) -> None:
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

    def _drain(self) -> bool:
        """Run the pending actions in order; stop at the first failure. True if all ran."""
        if not self.state.pending_actions:
            return True  # nothing ran: the state on storage is already this one
        while self.state.pending_actions:
            action: Action = self.state.pending_actions[0]
            try:
                self.executor.execute(action)
            except Exception:  # noqa: BLE001 - one failing subsystem must not kill the loop
                log.exception("action %s failed; will retry next tick", action.kind.value)
                self._save()
                return False
            self.state.pending_actions = self.state.pending_actions[1:]
        self._save()
        return True

    def _archive_commands(self, obs: Observations) -> None:
        """Move the command files this state took in out of the pending folder (after the save)."""
        keys = [c.key for c in obs.commands] + obs.commands_unarchived
        try:
            archive_commands(self.storage, self.cfg.model.name, keys)
        except Exception:  # noqa: BLE001 - the ledger already stops a replay; the next tick retries
            log.exception("could not archive %d command files; will retry next tick", len(keys))

    def tick(self) -> Decision | None:
        """One observe-decide-persist-act round. None while standing by (another
        controller holds the lease) or when earlier actions still fail."""
        try:
            if not self._lead_or_stand_by():
                return None
            return self._tick()
        except LeaseLost as lost:
            self._step_down(lost)
            return None

    def _tick(self) -> Decision | None:
        if self.state.pending_actions and not self._drain():
            return None
        now = self.clock.now()
        assert self.observer is not None
        obs = self.observer.observe(self.state, now)
        decision = decide(self.state, obs, self.cfg, now)
        self.lease.hold()
        self.audit.append(decision.events, key=f"tick-{decision.state.seq:012d}")
        self.state = decision.state
        self._save()
        self._archive_commands(obs)
        self._drain()
        return decision
