"""Fault injection for chaos tests and the rollback benchmark (Istio HTTPFaultInjection style).

**A test and chaos feature, off unless the file exists.** Writing
``models/<model>/faults.json`` makes the ingress misbehave on purpose when it calls
the named versions, so tests and ``benchmarks/rollback_time.py`` can produce a bad
canary on demand without a bad model:

* ``abort_fraction``: that share of calls fails as a version error
  (``injected_abort``), exactly like a replica that raised;
* ``delay_ms``: every call waits this long before the version is asked;
* ``nan_fraction``: that share of calls comes back with NaN confidences, which the
  ingress treats as a failed call (``non_finite_output``).

The ingress re-reads the file with the routing table (every
``serving.routing_poll_seconds``); a file that does not validate is logged and the
last good one kept, like the routing table. Injected faults are counted in
``lifelong_faults_injected_total{model,version,kind}``. Remove the file with
:func:`clear_faults` to stop.

    >>> import random, tempfile
    >>> from lifelong_ray.storage import Storage
    >>> s = Storage(tempfile.mkdtemp())
    >>> spec = write_faults(s, "m", {"v0002": {"abort_fraction": 1.0, "delay_ms": 5}})
    >>> read_faults(s, "m").versions["v0002"].delay_ms
    5.0
    >>> draw_fault(spec.versions["v0002"], random.Random(0))
    FaultDraw(abort=True, delay_s=0.005, nan=False)
    >>> clear_faults(s, "m"); read_faults(s, "m") is None
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field

from lifelong_ray.storage import Storage

#: the longest delay a fault may add (a longer one is surely a typo)
MAX_DELAY_MS = 60_000.0


class VersionFaults(BaseModel):
    """Faults applied when the ingress calls one version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    abort_fraction: float = Field(default=0.0, ge=0, le=1, description="share of calls that fail")
    delay_ms: float = Field(default=0.0, ge=0, le=MAX_DELAY_MS, description="added before every call")
    nan_fraction: float = Field(default=0.0, ge=0, le=1, description="share of calls answering NaN")


class FaultSpec(BaseModel):
    """The content of ``models/<model>/faults.json``: faults per version name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    versions: dict[str, VersionFaults] = Field(default_factory=dict)


@dataclass(frozen=True)
class FaultDraw:
    """What to do to one call."""

    abort: bool = False
    delay_s: float = 0.0
    nan: bool = False


NO_FAULT = FaultDraw()


def faults_path(model: str) -> str:
    """
    >>> faults_path("iris")
    'models/iris/faults.json'
    """
    return f"models/{model}/faults.json"


def write_faults(storage: Storage, model: str,
                 versions: Mapping[str, VersionFaults | Mapping[str, Any]]) -> FaultSpec:
    """Validate and write the faults of ``model`` atomically; returns what was written."""
    spec = FaultSpec.model_validate({"model": model, "versions": {
        v: f.model_dump() if isinstance(f, VersionFaults) else dict(f) for v, f in versions.items()}})
    storage.write_json(faults_path(model), spec.model_dump(mode="json"))
    return spec


def read_faults(storage: Storage, model: str) -> FaultSpec | None:
    """The faults of ``model``, or None when no file exists (raises if it does not validate)."""
    path = faults_path(model)
    if not storage.exists(path):
        return None
    return FaultSpec.model_validate(storage.read_json(path))


def clear_faults(storage: Storage, model: str) -> None:
    """Remove the faults file of ``model`` (no-op when there is none)."""
    path = faults_path(model)
    if storage.exists(path):
        storage.fs.delete_file(storage.path(path))


def draw_fault(faults: VersionFaults | None, rng: random.Random) -> FaultDraw:
    """Decide the faults of one call (independent draws for abort and NaN)."""
    if faults is None:
        return NO_FAULT
    abort = faults.abort_fraction > 0 and rng.random() < faults.abort_fraction
    nan = faults.nan_fraction > 0 and rng.random() < faults.nan_fraction
    return FaultDraw(abort=abort, delay_s=faults.delay_ms / 1000.0, nan=nan)
