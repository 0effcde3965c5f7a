"""Versions hosted inside the ingress replica (``serving.version_placement: ingress``).

With the default placement (``deployment``) every version is its own Serve app and
the ingress calls it through a deployment handle: a second hop (proxy → ingress →
version replica) that costs more than a small CPU model's own work. With
``ingress`` placement the ingress loads the versions its routing table names into
its own process and calls them in-line, so the router's extra cost is validation,
the routing decision and the prediction log only. Use it for small CPU models;
keep ``deployment`` for GPU models, large models, or models that need replicas of
their own.

The versions are loaded *before* the ingress adopts a routing table that names them
(:meth:`LocalVersions.sync`, run off the event loop), so no request ever waits on a
load. A version that fails to load (an artifact that fails the integrity check) is
not retried for ``retry_s`` seconds; calls to it fail like calls to a version with
no Serve app, which the canary analysis counts as errors and rolls back.

>>> from lifelong_ray.serving.routing import RoutingTable
>>> LocalVersions.wanted(RoutingTable(model="m", weights={"v2": 90, "v3": 10}, champion="v2", shadow="v4"))
['v2', 'v3', 'v4']
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from lifelong_ray.registry.model import LoadedModel
from lifelong_ray.serving.routing import RoutingTable

logger = logging.getLogger(__name__)

__all__ = ["LocalVersions"]


class LocalVersions:
    """The loaded versions of one model, swapped atomically (readers never lock).

    ``load`` is ``Registry(storage, model).load`` in production. ``keep`` bounds how
    many versions stay loaded: the ones the table names always do, and the most
    recently named others (a rolled-back or previous champion) while room is left, so
    that a rollback to them needs no load.
    """

    def __init__(self, load: Callable[[str], LoadedModel], keep: int = 4, retry_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load
        self._clock = clock
        self.keep = keep
        self.retry_s = retry_s
        self.loaded: dict[str, LoadedModel] = {}
        self.failed: dict[str, tuple[float, str]] = {}   # version -> (clock time, error)
        self._order: list[str] = []                     # most recently wanted last
        self._lock = threading.Lock()                    # one sync at a time

    @staticmethod
    def wanted(table: RoutingTable) -> list[str]:
        """Every version ``table`` may send a request to, sorted."""
        names = set(table.weights)
        names.update(v for v in (table.champion, table.shadow) if v)
        return sorted(names)

    def needs_sync(self, table: RoutingTable) -> bool:
        """Whether ``table`` names a version not loaded whose (failed) load may be tried now."""
        now = self._clock()
        return any(v not in self.loaded and (v not in self.failed or now - self.failed[v][0] >= self.retry_s)
                   for v in self.wanted(table))

    def sync(self, table: RoutingTable, current: RoutingTable | None = None) -> list[str]:
        """Load what ``table`` names and is not loaded yet; evict beyond ``keep``. Blocking.

        ``current`` is the table requests are still routed by until ``table`` is adopted:
        its versions are never evicted here. Returns the versions that are wanted but
        could not be loaded."""
        with self._lock:
            want = self.wanted(table)
            pinned = set(want) | (set(self.wanted(current)) if current is not None else set())
            now = self._clock()
            new = dict(self.loaded)
            missing = []
            for v in want:
                if v in new:
                    continue
                failed = self.failed.get(v)
                if failed is not None and now - failed[0] < self.retry_s:
                    missing.append(v)
                    continue
                try:
                    new[v] = self._load(v)
                    self.failed.pop(v, None)
                    logger.info("loaded version %s into the ingress", v)
                except Exception as err:  # noqa: BLE001 - calls to it fail and count as errors
                    self.failed[v] = (now, f"{type(err).__name__}: {err}"[:300])
                    logger.error("could not load version %s into the ingress: %s", v, err)
                    missing.append(v)
            self._order = [v for v in self._order if v not in want] + want
            room = max(self.keep, len(pinned))
            evict = [v for v in self._order[:-room] if v not in pinned] if len(self._order) > room else []
            for v in evict:
                new.pop(v, None)
            self._order = [v for v in self._order if v not in evict]
            self.loaded = new   # one atomic swap: the event loop reads self.loaded without a lock
            return missing

    def get(self, version: str) -> LoadedModel | None:
        return self.loaded.get(version)

    def why_missing(self, version: str) -> str:
        failed = self.failed.get(version)
        if failed is not None:
            return f"version {version} could not be loaded into the ingress: {failed[1]}"
        return f"version {version} is not loaded in the ingress (not named by its routing table)"
