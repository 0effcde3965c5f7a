"""Pure routing: weights, sticky keys, shadow sampling, table validation and storage."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter

import pytest
from pydantic import ValidationError

from lifelong_ray.serving.routing import (
    RoutingTable,
    choose_version,
    read_routing,
    route_point,
    routing_path,
    should_shadow,
    write_routing,
)
from lifelong_ray.storage import Storage

N = 10_000


def _ids(n: int = N, seed: int = 0) -> list[str]:
    return [uuid.UUID(int=(seed << 64) + i).hex for i in range(n)]


@pytest.mark.parametrize("weights", [
    {"v0001": 50, "v0002": 50},
    {"v0001": 90, "v0002": 10},
    {"v0001": 70, "v0002": 20, "v0003": 10},
    {"v0002": 33.3, "v0001": 33.3, "v0003": 33.4},
])
def test_distribution_follows_weights(weights):
    table = RoutingTable(model="m", weights=weights)
    counts = Counter(choose_version(table, None, rid) for rid in _ids())
    assert set(counts) <= set(weights)
    for version, w in weights.items():
        assert abs(100.0 * counts[version] / N - w) < 2.0, (version, counts)


def test_zero_weight_versions_get_nothing():
    table = RoutingTable(model="m", weights={"v0001": 100, "v0002": 0}, champion="v0001")
    assert {choose_version(table, None, rid) for rid in _ids(2000)} == {"v0001"}
    assert table.serving() == ["v0001"]


def test_sticky_key_same_version_whatever_the_request_id():
    table = RoutingTable(model="m", weights={"v0001": 50, "v0002": 50})
    for k in range(200):
        key = f"user-{k}"
        got = {choose_version(table, key, rid) for rid in _ids(20, seed=k + 1)}
        assert len(got) == 1


def test_keys_spread_over_versions():
    table = RoutingTable(model="m", weights={"v0001": 50, "v0002": 50})
    counts = Counter(choose_version(table, f"user-{k}", "x") for k in range(N))
    assert abs(counts["v0001"] / N - 0.5) < 0.02


def test_generation_does_not_move_keys():
    t1 = RoutingTable(model="m", generation=3, weights={"v0001": 60, "v0002": 40})
    t2 = t1.next(weights=dict(t1.weights))
    assert t2.generation == 4
    for k in range(2000):
        assert choose_version(t1, f"k{k}", "r") == choose_version(t2, f"k{k}", "r")


def test_growing_canary_keeps_its_keys():
    """The newest version sorts last: raising its share only adds keys to it."""
    small = RoutingTable(model="m", weights={"v0001": 90, "v0002": 10})
    big = RoutingTable(model="m", weights={"v0001": 50, "v0002": 50})
    for k in range(3000):
        if choose_version(small, f"k{k}", "r") == "v0002":
            assert choose_version(big, f"k{k}", "r") == "v0002"


def test_order_of_weights_dict_does_not_matter():
    a = RoutingTable(model="m", weights={"v0001": 30, "v0002": 70})
    b = RoutingTable(model="m", weights={"v0002": 70, "v0001": 30})
    assert all(choose_version(a, None, r) == choose_version(b, None, r) for r in _ids(1000))


def test_hash_is_stable_across_processes():
    """blake2b, not hash(): another interpreter (other PYTHONHASHSEED) agrees."""
    code = ("from lifelong_ray.serving.routing import route_point; "
            "print(repr(route_point('user-1', 'x')), repr(route_point(None, 'abc')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=str(__import__("pathlib").Path(
                             __file__).resolve().parents[2])).stdout.split()
    assert [float(x) for x in out] == [route_point("user-1", "x"), route_point(None, "abc")]
    assert 0.0 <= route_point(None, "abc") < 1.0


def test_empty_table_routes_nowhere():
    table = RoutingTable(model="m")
    assert choose_version(table, None, "r") is None
    assert choose_version(table, "key", "r") is None
    assert not should_shadow(table, "r")


def test_shadow_fraction():
    table = RoutingTable(model="m", weights={"v0001": 100}, shadow="v0002", shadow_fraction=0.25)
    share = sum(should_shadow(table, rid) for rid in _ids()) / N
    assert abs(share - 0.25) < 0.02
    full = table.next(shadow_fraction=1.0)
    assert all(should_shadow(full, rid) for rid in _ids(100))
    off = table.next(shadow_fraction=0.0)
    assert not any(should_shadow(off, rid) for rid in _ids(100))


@pytest.mark.parametrize("kwargs, fragment", [
    ({"weights": {"v0001": 60, "v0002": 30}}, "sum to 100"),
    ({"weights": {"v0001": 110, "v0002": -10}}, ">= 0"),
    ({"weights": {"v0001": float("nan")}}, "finite"),
    ({"weights": {"": 100}}, "non-empty"),
    ({"generation": -1}, "greater than or equal"),
    ({"shadow_fraction": 1.5}, "less than or equal"),
    ({"shadow_fraction": 0.5}, "needs a shadow version"),
    ({"bogus": 1}, "Extra inputs"),
])
def test_invalid_tables(kwargs, fragment):
    with pytest.raises(ValidationError) as info:
        RoutingTable(model="m", **kwargs)
    assert fragment in str(info.value)


def test_weights_within_tolerance_and_frozen():
    table = RoutingTable(model="m", weights={"a": 100 / 3, "b": 100 / 3, "c": 100 / 3})
    assert table.serving() == ["a", "b", "c"]
    with pytest.raises(ValidationError):
        table.generation = 5  # type: ignore[misc]


def test_storage_round_trip(tmp_path):
    st = Storage(str(tmp_path))
    assert read_routing(st, "m") == RoutingTable(model="m")
    table = RoutingTable(model="m", generation=2, weights={"v0001": 80, "v0002": 20},
                         champion="v0001", shadow="v0003", shadow_fraction=0.1)
    write_routing(st, table)
    assert st.exists(routing_path("m"))
    assert routing_path("m") == "models/m/routing.json"
    assert read_routing(st, "m") == table
    assert not [p for p in st.list("models/m") if ".tmp-" in p]
