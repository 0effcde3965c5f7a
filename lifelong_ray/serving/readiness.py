"""Whether the ingress can answer a model's predictions now (``GET /v1/models/{m}/ready``).

Ready means: the ingress has a routing table with at least one weighted version,
and every version with weight can be called (its Serve app runs, or, with
``serving.version_placement: ingress``, it is loaded in this replica). ``lifelong
up`` waits on it, so predictions answer 200 from the moment ``up`` returns.

>>> from lifelong_ray.serving.routing import RoutingTable
>>> t = RoutingTable(model="m", generation=4, weights={"v0002": 90.0, "v0003": 10.0}, champion="v0002")
>>> readiness(t, available=lambda v: v == "v0002")
(False, 'v0003 (10% of traffic) cannot be called yet')
>>> readiness(t, available=lambda v: True)
(True, 'v0002 90%, v0003 10% can be called (routing generation 4)')
>>> readiness(RoutingTable(model="m"), available=lambda v: True)
(False, 'no version of m is serving yet (empty routing table)')
"""

from __future__ import annotations

from collections.abc import Callable

from lifelong_ray.serving.routing import RoutingTable


def readiness(table: RoutingTable, available: Callable[[str], bool]) -> tuple[bool, str]:
    """``(ready, reason)`` for ``table``; ``available(version)`` says whether a call can reach it."""
    weighted = {v: w for v, w in sorted(table.weights.items()) if w > 0}
    if not weighted:
        return False, f"no version of {table.model} is serving yet (empty routing table)"
    missing = [f"{v} ({w:g}% of traffic)" for v, w in weighted.items() if not available(v)]
    if missing:
        return False, f"{', '.join(missing)} cannot be called yet"
    return True, (f"{', '.join(f'{v} {w:g}%' for v, w in weighted.items())} can be called"
                  f" (routing generation {table.generation})")
