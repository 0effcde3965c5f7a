"""The executor: carries out the policy's actions, each one idempotent.

Running an action twice (a controller that died after acting but before it
recorded so) leaves the world as running it once did: deployments are checked
before they are created, aliases and routing tables are overwritten with the
same content, a retrain job with a known id is never started twice by this
process and is itself idempotent (its result file and registry lookup by job id).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from lifelong_ray.config import Config
from lifelong_ray.policy.model import Action, ActionKind
from lifelong_ray.registry.store import Registry
from lifelong_ray.serving.routing import RoutingTable, write_routing
from lifelong_ray.storage import Storage

log = logging.getLogger(__name__)


class Executor:
    def __init__(self, cfg: Config, storage: Storage, registry: Registry) -> None:
        self.cfg = cfg
        self.storage = storage
        self.registry = registry
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
