"""LocalVersions: the versions an ingress loads for ``serving.version_placement: ingress``."""

from __future__ import annotations

import pytest

from lifelong_ray.registry import IntegrityError
from lifelong_ray.registry.store import WEIGHTS
from lifelong_ray.serving.local import LocalVersions
from lifelong_ray.serving.routing import RoutingTable
from test_registry import _register, parts, reg, schema, table  # noqa: F401 - fixtures


def _table(weights, champion=None, shadow=None, gen=1):
    return RoutingTable(model="m", generation=gen, weights=weights, champion=champion or next(iter(weights)),
                        shadow=shadow)


@pytest.fixture
def versions(reg, parts, table):
    return [_register(reg, parts, table, job_id=f"j{i}") for i in range(5)]


def test_loads_every_version_the_table_names_and_they_predict(reg, parts, versions):
    local = LocalVersions(reg.load)
    assert local.sync(_table({"v0001": 90, "v0002": 10}, shadow="v0003")) == []
    assert sorted(local.loaded) == ["v0001", "v0002", "v0003"]
    labels, conf = local.get("v0002").predict(parts["cols"])
    assert len(labels) == len(parts["cols"]["x"]) and ((conf > 0) & (conf <= 1)).all()
    assert local.get("v0004") is None and "not named by its routing table" in local.why_missing("v0004")


def test_a_version_that_fails_to_load_is_reported_and_not_retried_at_once(reg, versions):
    reg.storage.write_bytes(f"models/m/versions/v0002/{WEIGHTS}", b"tampered")
    calls = []

    def load(v):
        calls.append(v)
        return reg.load(v)

    local = LocalVersions(load, retry_s=3600)
    table = _table({"v0001": 50, "v0002": 50})
    assert local.sync(table) == ["v0002"]
    assert local.sync(table) == ["v0002"] and calls.count("v0002") == 1   # within retry_s: no reload
    assert "could not be loaded" in local.why_missing("v0002") and "IntegrityError" in local.why_missing("v0002")
    assert local.get("v0001") is not None
    with pytest.raises(IntegrityError):
        reg.load("v0002")
    local.retry_s = 0.0
    local.sync(table)
    assert calls.count("v0002") == 2


def test_keeps_recent_versions_for_an_instant_rollback_and_evicts_beyond_keep(reg, versions):
    local = LocalVersions(reg.load, keep=3)
    local.sync(_table({"v0001": 100}))
    local.sync(_table({"v0001": 90, "v0002": 10}))
    local.sync(_table({"v0002": 100}))
    assert sorted(local.loaded) == ["v0001", "v0002"]        # the old champion stays loaded
    local.sync(_table({"v0003": 100}))
    local.sync(_table({"v0004": 100}))
    assert sorted(local.loaded) == ["v0002", "v0003", "v0004"]
    local.sync(_table({"v0001": 50, "v0002": 25, "v0005": 25}))
    assert {"v0001", "v0002", "v0005"} <= set(local.loaded) and len(local.loaded) == 3


def test_needs_sync_retries_a_failed_load_only_after_retry_s(reg, versions):
    now = [100.0]   # a freshly booted machine: the clock is small, 0.0 is not "long ago"
    local = LocalVersions(reg.load, retry_s=3600, clock=lambda: now[0])
    table = _table({"v0001": 100})
    assert local.needs_sync(table)
    local.failed["v0001"] = (now[0], "OSError: storage blip")
    assert not local.needs_sync(table)                        # within retry_s
    now[0] += 3600
    assert local.needs_sync(table)                            # due again
    local.sync(table)
    assert not local.needs_sync(table) and "v0001" in local.loaded and "v0001" not in local.failed


def test_the_versions_of_the_table_still_in_use_are_not_evicted_before_the_new_one_is_adopted(reg, versions):
    local = LocalVersions(reg.load, keep=2)
    old = _table({"v0001": 50, "v0002": 50})
    local.sync(old)
    new = _table({"v0003": 50, "v0004": 50})
    local.sync(new, current=old)
    assert {"v0001", "v0002", "v0003", "v0004"} <= set(local.loaded)   # old still routable
    local.sync(new, current=new)
    assert sorted(local.loaded) == ["v0003", "v0004"]
