"""Helpers shared by the HTTP integration tests (imported by basename; not a test module)."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import requests


def eventually(pred: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll ``pred`` until it is truthy or ``timeout`` passes; its last value (an HTTP error counts as None)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = pred()
        except requests.RequestException:
            value = None
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def wait_for_generation(base: str, model: str, generation: int, timeout: float = 30.0) -> None:
    """Wait until the ingress at ``base`` routes ``model`` by routing-table ``generation``.

    The ingress re-reads ``faults.json`` right after the table, in the same poll: write faults
    before the table and they are in force too, after a short grace for that second read."""
    ok = eventually(lambda: requests.get(f"{base}/v1/models/{model}", timeout=5)
                    .json()["routing"]["generation"] >= generation, timeout)
    assert ok, f"the ingress did not load routing generation {generation} of {model} within {timeout:.0f}s"
    time.sleep(0.3)


def wait_for_sealed(storage, model: str, timeout: float = 15.0) -> None:
    """Wait until the ingress has sealed every prediction it answered into the parquet log
    (``data.log_segments``: rows sit in a replica's segment for up to ``log_seal_seconds``)."""
    from lifelong_ray.data.segments import segment_paths

    prefix = f"models/{model}/predictions"
    sealed = eventually(lambda: not segment_paths(storage, prefix), timeout, every=0.05)
    assert sealed, f"prediction segments of {model} not sealed in {timeout:.0f}s"


def register_untrained(cfg, cols: dict[str, np.ndarray], seed: int = 0, metadata: dict | None = None) -> str:
    """Register a randomly initialised ``cfg.estimator`` whose transform is fitted on ``cols``."""
    import torch

    from lifelong_ray.data.schema import Schema
    from lifelong_ray.data.transform import FeatureTransform
    from lifelong_ray.registry.store import Registry
    from lifelong_ray.storage import Storage
    from lifelong_ray.training.estimators import build_module

    transform = FeatureTransform.fit(cols, Schema(cfg.model))
    torch.manual_seed(seed)
    module = build_module(cfg.estimator, transform.n_out, len(cfg.model.label.classes))
    reference = pa.table({k: (list(v) if v.dtype == object else v) for k, v in cols.items()})
    return Registry(Storage(cfg.storage.root), cfg.model.name).register(
        state_dict=module.state_dict(), transform=transform, estimator=cfg.estimator, n_in=transform.n_out,
        classes=[int(c) for c in cfg.model.label.classes], reference=reference,
        metadata=metadata if metadata is not None else {"seed": seed})
