"""Retrain jobs seen across the models that share one storage root.

``quota.max_concurrent_retrains`` limits the retrain jobs running at once on a
storage root (one model runs at most one job at a time, so the limit is about the
models beside it). :func:`running_retrains` counts the other models whose persisted
controller state says a retrain is running; the controller asks only while its own
retrain waits to start.

    >>> import tempfile
    >>> from lifelong_ray.storage import Storage
    >>> s = Storage(tempfile.mkdtemp())
    >>> s.write_json("models/a/controller/state.json", {"model": "a", "retrain": "running"})
    >>> s.write_json("models/b/controller/state.json", {"model": "b", "retrain": "idle"})
    >>> running_retrains(s, exclude="b"), running_retrains(s, exclude="a")
    (1, 0)
"""

from __future__ import annotations

import logging

from lifelong_ray.storage import Storage

log = logging.getLogger(__name__)


def running_retrains(storage: Storage, exclude: str) -> int:
    """Models other than ``exclude`` on ``storage`` whose controller runs a retrain now."""
    n = 0
    for model in storage.list_dirs("models"):
        if model == exclude:
            continue
        try:
            state = storage.read_json(f"models/{model}/controller/state.json")
        except Exception:  # noqa: BLE001 - a state being replaced or unreadable counts as not running
            log.debug("could not read the controller state of %s", model, exc_info=True)
            continue
        if isinstance(state, dict) and state.get("retrain") == "running":
            n += 1
    return n
