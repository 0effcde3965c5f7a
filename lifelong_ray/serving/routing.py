"""Pure request routing: weighted versions, sticky keys and shadow sampling.

A :class:`RoutingTable` says which versions of one model take what share of the
traffic. :func:`choose_version` maps a request onto a version with a stable hash
(``hashlib.blake2b``, identical in every process and run, unlike ``hash()``), so
the live HTTP router and the backtest make the same choice for the same request:

* with a routing ``key`` the request is *sticky*: the same key always lands on
  the same version while the weights are unchanged, and the generation number
  plays no part in the hash;
* without a key the request id is hashed instead.

The hash gives a point ``u`` in ``[0, 1)``; versions are laid out on ``[0, 100)``
in sorted version order, each taking a slice as wide as its weight. Versions are
named ``vNNNN`` so a newer version sorts last and owns the top of the interval;
raising its share from 10 to 50 therefore keeps every key it already had.

    >>> t = RoutingTable(model="m", weights={"v0001": 90, "v0002": 10}, champion="v0001")
    >>> choose_version(t, key="user-7", request_id="ignored")
    'v0001'
    >>> choose_version(t.next(weights={"v0001": 90, "v0002": 10}), "user-7", "x")  # generation bump
    'v0001'
    >>> choose_version(RoutingTable(model="m"), None, "abc") is None
    True

No Ray and no I/O here except :func:`read_routing`/:func:`write_routing`, which
go through the :class:`~lifelong_ray.storage.Storage` passed in.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:  # pragma: no cover
    from lifelong_ray.storage import Storage

_WEIGHT_TOLERANCE = 1e-6
_SHADOW_SALT = b"lifelong-shadow:"


class RoutingTable(BaseModel):
    """Traffic split of one model. ``weights`` maps version -> percent (sum 100, or empty).

    ``champion`` is the version requests fall back to when another version fails;
    ``shadow`` (optional) gets a copy of ``shadow_fraction`` of the requests whose
    answers are logged but never returned. ``generation`` increases with every
    table the controller writes, so readers can tell a new table from an old one.

    >>> from pydantic import ValidationError
    >>> try:
    ...     RoutingTable(model="m", weights={"v1": 60, "v2": 30})
    ... except ValidationError as e:
    ...     print(e.errors()[0]["msg"])
    Value error, weights must sum to 100 (got 90)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    generation: int = Field(default=0, ge=0)
    weights: dict[str, float] = Field(default_factory=dict)
    champion: str | None = None
    shadow: str | None = None
    shadow_fraction: float = Field(default=0.0, ge=0.0, le=1.0)

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, v: dict[str, float]) -> dict[str, float]:
        for version, w in v.items():
            if not version:
                raise ValueError("version names must be non-empty")
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"weight of {version} must be a finite number >= 0 (got {w})")
        if v:
            total = sum(v.values())
            if abs(total - 100.0) > _WEIGHT_TOLERANCE:
                raise ValueError(f"weights must sum to 100 (got {total:g})")
        return v

    @model_validator(mode="after")
    def _check_shadow(self) -> "RoutingTable":
        if self.shadow is None and self.shadow_fraction > 0:
            raise ValueError("shadow_fraction > 0 needs a shadow version")
        return self

    # -- helpers ---------------------------------------------------------------
    def serving(self) -> list[str]:
        """Versions with a positive weight, in routing (sorted) order."""
        return [v for v in sorted(self.weights) if self.weights[v] > 0]

    def next(self, **changes: Any) -> "RoutingTable":
        """A validated copy with ``changes`` applied and the generation bumped.

        >>> RoutingTable(model="m").next(weights={"v0001": 100}, champion="v0001").generation
        1
        """
        data = self.model_dump()
        data.update(changes)
        data["generation"] = self.generation + 1
        return RoutingTable.model_validate(data)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _unit(data: bytes) -> float:
    """A stable uniform number in [0, 1) from ``data``."""
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def route_point(key: str | None, request_id: str) -> float:
    """The point in [0, 1) a request maps to: hash of ``key`` if given, else of ``request_id``."""
    basis = key if key is not None else request_id
    return _unit(basis.encode("utf-8"))


def choose_version(table: RoutingTable, key: str | None, request_id: str) -> str | None:
    """The version that serves this request, or None when the table has no weights.

    >>> t = RoutingTable(model="m", weights={"a": 50, "b": 50})
    >>> choose_version(t, "k", "r1") == choose_version(t, "k", "r2")
    True
    """
    versions = table.serving()
    if not versions:
        return None
    point = route_point(key, request_id) * 100.0
    acc = 0.0
    for version in versions:
        acc += table.weights[version]
        if point < acc:
            return version
    return versions[-1]  # rounding at the very top of the interval


def should_shadow(table: RoutingTable, request_id: str) -> bool:
    """Whether this request also goes to ``table.shadow`` (independent of routing).

    >>> should_shadow(RoutingTable(model="m", weights={"a": 100}), "r")
    False
    """
    if table.shadow is None or table.shadow_fraction <= 0:
        return False
    if table.shadow_fraction >= 1:
        return True
    return _unit(_SHADOW_SALT + request_id.encode("utf-8")) < table.shadow_fraction


# -- storage -------------------------------------------------------------------
def routing_path(model: str) -> str:
    """Where the routing table of ``model`` lives in Storage.

    >>> routing_path("iris")
    'models/iris/routing.json'
    """
    return f"models/{model}/routing.json"


def read_routing(storage: "Storage", model: str) -> RoutingTable:
    """The stored table of ``model``, or an empty one (no weights) if none was written."""
    path = routing_path(model)
    if not storage.exists(path):
        return RoutingTable(model=model)
    return RoutingTable.model_validate(storage.read_json(path))


def write_routing(storage: "Storage", table: RoutingTable) -> None:
    """Write ``table`` atomically (readers see the old or the new table, never half)."""
    storage.write_json(routing_path(table.model), table.to_json())
