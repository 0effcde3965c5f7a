"""The controller loop: observe -> decide -> persist -> act, one tick at a time.

Plain Python so it can run in a Ray actor (:mod:`lifelong_ray.control.actor`) or
in-process. The decision is written (events, then state with its pending
actions) before any action runs; a restart reloads the state and re-applies the
pending actions, which are idempotent, so each step happens exactly once. A
failing action is logged and retried on the next tick: the loop never dies
and the last good version keeps serving.
"""

from __future__ import annotations

import logging
import os

from lifelong_ray.clock import Clock, WallClock
from lifelong_ray.config import Config
from lifelong_ray.control.executor import Executor
from lifelong_ray.control.housekeeping import Housekeeper
from lifelong_ray.control.observe import Observer
from lifelong_ray.events import AuditLog
from lifelong_ray.policy.decide import Decision, decide, recover
from lifelong_ray.policy.model import STATE_SCHEMA_VERSION, Action, ControllerState
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
    def __init__(self, cfg: Config, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or WallClock()
        self.storage = Storage(cfg.storage.root)
        self.registry = Registry(self.storage, cfg.model.name)
        self.audit = AuditLog(self.storage, cfg.model.name)
        self.observer = Observer(cfg, self.storage, self.registry)
        self.executor = Executor(cfg, self.storage, self.registry)
        self.housekeeper = Housekeeper(cfg, self.storage, self.registry, self.audit)
        self.state = load_state(self.storage, cfg.model.name) or ControllerState(model=cfg.model.name)
        self.restored = self.state.seq > 0
        self.state.pending_actions = recover(self.state, cfg)
        self._drain()

    def _save(self) -> None:
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

    def tick(self) -> Decision | None:
        """One observe-decide-persist-act round. None when earlier actions still fail."""
        if self.state.pending_actions and not self._drain():
            return None
        now = self.clock.now()
        obs = self.observer.observe(self.state, now)
        decision = decide(self.state, obs, self.cfg, now)
        self.audit.append(decision.events, key=f"tick-{decision.state.seq:012d}")
        self.state = decision.state
        self._save()
        self._drain()
        self.housekeeper.maybe_run(self.state, now)  # retention + compaction when due; never raises
        return decision
