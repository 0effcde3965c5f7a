"""The long-lived controller as a named, detached Ray actor.

One per model, named ``lifelong-controller-<model>`` in the ``lifelong``
namespace, restarted by Ray if it dies (``max_restarts=-1``). It acts only while
it holds the model's lease on storage (:mod:`lifelong_ray.control.lease`); a
controller of another Ray cluster on the same storage stands by. A background
thread ticks every ``controller.tick_seconds``; methods answer status queries
meanwhile (threaded actor).

    handle = start_controller(cfg)          # idempotent: gets the running one
    ray.get(handle.status.remote())["champion"]
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

from lifelong_ray.config import Config, parse_config
from lifelong_ray.control.controller import Controller, load_state
from lifelong_ray.control.reconcile import ServeBackend

NAMESPACE = "lifelong"
log = logging.getLogger(__name__)


def controller_name(model: str) -> str:
    return f"lifelong-controller-{model}"


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=4)
class ControllerActor:
    def __init__(self, cfg: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        self.cfg = parse_config(cfg)
        self._lock = threading.Lock()
        backend = ServeBackend(self.cfg) if self.cfg.serving.version_placement == "deployment" else None
        # the lease holder is the actor id, which a restart of this actor keeps: it leads again at once
        holder = f"actor-{ray.get_runtime_context().get_actor_id()}"
        self.ctrl = Controller(self.cfg, serving=backend, holder=holder)
        self.ticks = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lifelong-tick", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        period = self.cfg.controller.tick_seconds
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with self._lock:
                    self.ctrl.tick()
                    self.ticks += 1
            except Exception:  # noqa: BLE001 - the control loop never dies
                self.errors += 1
                log.exception("controller tick failed; serving continues with the last good version")
            self._stop.wait(max(0.0, period - (time.monotonic() - started)))

    def status(self) -> dict[str, Any]:
        ctrl = self.ctrl
        current = ctrl.state if ctrl.role == "leader" else load_state(ctrl.storage, self.cfg.model.name)
        state = (current or ctrl.state).model_dump(mode="json")
        state["ticks"] = self.ticks
        state["tick_errors"] = self.errors
        state["restored"] = ctrl.restored
        state["serving"] = ctrl.reconciler.status() if ctrl.reconciler is not None else None
        state["role"] = ctrl.role  # "standby": another controller holds the lease and acts
        state["lease_holder"] = ctrl.lease.holder
        state["lease_generation"] = ctrl.lease.generation
        return state

    def config(self) -> dict[str, Any]:
        return self.cfg.model_dump(mode="json")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            self.ctrl.release()  # a standby (or the next `lifelong up`) leads at once


def start_controller(cfg: Config) -> Any:
    """Start (or get) the model's controller actor."""
    return ControllerActor.options(
        name=controller_name(cfg.model.name), namespace=NAMESPACE, lifetime="detached",
        get_if_exists=True,
    ).remote(cfg.model_dump(mode="json"))


def get_controller(model: str) -> Any:
    return ray.get_actor(controller_name(model), namespace=NAMESPACE)


def stop_controller(model: str) -> bool:
    try:
        handle = get_controller(model)
    except ValueError:
        return False
    try:
        ray.get(handle.stop.remote(), timeout=15)
    except Exception:  # noqa: BLE001 - kill it anyway
        pass
    ray.kill(handle, no_restart=True)
    return True
