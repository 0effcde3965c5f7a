"""The executor: carries out the policy's actions, each one idempotent.

Running an action twice (a controller that died after acting but before it
recorded so) leaves the world as running it once did: deployments are checked
before they are created, aliases and routing tables are overwritten with the
same content, a retrain job with a known id is never started twice by this
process and is itself idempotent (its result file and registry lookup by job id).

Every tick the controller asks :meth:`Executor.retrain_failure` whether the running
retrain task has died: a task that raised, or that ended without writing its result
file, is a failed retrain. The Ray calls on task references sit in :class:`RayTasks`,
so unit tests hand in a fake.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from lifelong_ray.config import Config
from lifelong_ray.policy.model import Action, ActionKind, RetrainOutcome
from lifelong_ray.registry.store import Registry
from lifelong_ray.serving.routing import RoutingTable, write_routing
from lifelong_ray.storage import Storage

log = logging.getLogger(__name__)


#: characters of a dead task's error kept in the reason
_MAX_ERROR = 500


class RayTasks:
    """The Ray calls the executor makes on a task's ObjectRef."""

    def done(self, ref: Any) -> bool:
        import ray

        ready, _ = ray.wait([ref], timeout=0)
        return bool(ready)

    def get(self, ref: Any) -> Any:
        import ray

        return ray.get(ref, timeout=0)

    def cancel(self, ref: Any) -> None:
        import ray

        ray.cancel(ref, force=True)


class Executor:
    def __init__(self, cfg: Config, storage: Storage, registry: Registry, tasks: Any = None) -> None:
        self.cfg = cfg
        self.storage = storage
        self.registry = registry
        self.tasks = tasks or RayTasks()
        self._jobs: dict[str, Any] = {}  # job_id -> ObjectRef of the running retrain task
        self.fence: Callable[[], None] = lambda: None  # raises if this controller may no longer write (lease)

    def execute(self, action: Action) -> None:
        self.fence()
        handler = {
            ActionKind.START_RETRAIN: self._start_retrain,
            ActionKind.DEPLOY_VERSION: self._deploy,
            ActionKind.SET_ALIAS: self._set_alias,
            ActionKind.SET_ROUTING: self._set_routing,
            ActionKind.RETIRE_VERSION: self._retire,
            ActionKind.CANCEL_RETRAIN: self._cancel_retrain,
        }[action.kind]
        handler(action)

    def _start_retrain(self, a: Action) -> None:
        from lifelong_ray.training.retrain import job_path, retrain_task

        assert a.job_id is not None
        if self.storage.exists(job_path(self.cfg.model.name, a.job_id)):
            return
        if a.job_id in self._jobs:
            return
        log.info("starting retrain job %s (since_t=%s, seed=%s)", a.job_id, a.since_t, a.seed)
        self._jobs[a.job_id] = retrain_task.remote(
            self.cfg.model_dump(mode="json"), job_id=a.job_id, since_t=a.since_t,
            champion=a.champion, seed=a.seed, kind=a.job_kind, window_rows=a.window_rows)

    def _cancel_retrain(self, a: Action) -> None:
        ref = self._jobs.pop(a.job_id or "", None)
        if ref is not None:
            log.warning("cancelling retrain job %s", a.job_id)
            self.tasks.cancel(ref)

    def retrain_failure(self, job_id: str) -> RetrainOutcome | None:
        """A failed outcome if this process's task for ``job_id`` has ended without its
        result file (it raised, was killed, or could not write the file); None while it
        runs, once its result file exists (the observer reads it), or when this process
        holds no task for it (after a restart the START_RETRAIN re-attaches)."""
        from lifelong_ray.training.retrain import job_path

        ref = self._jobs.get(job_id)
        if ref is None or not self.tasks.done(ref):
            return None
        if self.storage.exists(job_path(self.cfg.model.name, job_id)):
            return None
        del self._jobs[job_id]
        try:
            result = self.tasks.get(ref)
        except Exception as err:  # noqa: BLE001 - a dead task is a failed retrain
            error = f"the retrain task died: {type(err).__name__}: {err}"
        else:
            warnings = "; ".join(result.get("warnings") or []) if isinstance(result, dict) else ""
            error = "the retrain task ended without writing its result file" + (f" ({warnings})" if warnings else "")
        log.error("retrain job %s failed: %s", job_id, error)
        return RetrainOutcome(job_id=job_id, status="failed", error=error[:_MAX_ERROR])

    def _deploy(self, a: Action) -> None:
        from lifelong_ray.serving.deploy import deploy_version

        assert a.version is not None
        deploy_version(self.cfg, a.version)

    def _set_alias(self, a: Action) -> None:
        assert a.alias is not None
        if self.registry.aliases().get(a.alias) != a.version:
            self.registry.set_alias(a.alias, a.version)

    def _set_routing(self, a: Action) -> None:
        table = RoutingTable(model=self.cfg.model.name, generation=a.generation, weights=a.weights,
                             champion=a.champion, shadow=a.shadow, shadow_fraction=a.shadow_fraction)
        write_routing(self.storage, table)

    def _retire(self, a: Action) -> None:
        from lifelong_ray.serving.deploy import retire_version

        assert a.version is not None
        retire_version(self.cfg, a.version)
