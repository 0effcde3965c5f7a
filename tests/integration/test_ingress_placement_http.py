"""``serving.version_placement: ingress`` over real HTTP: versions loaded in the ingress.

No Serve app per version: the ingress loads the versions its routing table names
and calls them in-line. The canary split, the champion fallback for a version that
cannot be loaded (a corrupt artifact) and a rollback behave as with one app per
version. v0001 learns ``y = x0 > 0`` and v0002 the opposite, so the answer for
``x0 = 5`` tells which version spoke.
"""

from __future__ import annotations

import time

import pytest
import requests

from itest_helpers import wait_for_generation, wait_for_sealed
from test_serving_http import _train_and_register, _wait_for, _wait_http

pytestmark = pytest.mark.integration

MODEL = "inproc"


@pytest.fixture(scope="module")
def served(serve_port, tmp_path_factory):
    from ray import serve

    from lifelong_ray.config import parse_config
    from lifelong_ray.serving import deploy
    from lifelong_ray.serving.routing import RoutingTable, write_routing
    from lifelong_ray.storage import Storage

    cfg = parse_config({
        "model": {"name": MODEL,
                  "features": [{"name": "x0", "min": -10, "max": 10}, {"name": "x1"},
                               {"name": "c", "dtype": "category", "categories": ["a", "b", "c"]}],
                  "label": {"name": "y", "classes": [0, 1]}},
        "estimator": {"kind": "logistic", "epochs": 60, "lr": 0.1},
        "storage": {"root": str(tmp_path_factory.mktemp("inproc-store"))},
        "serving": {"routing_poll_seconds": 0.1, "version_placement": "ingress"},
    })
    v1 = _train_and_register(cfg, invert=False, job="job-1")
    v2 = _train_and_register(cfg, invert=True, job="job-2")
    storage = Storage(cfg.storage.root)
    for v in (v1, v2):
        deploy.deploy_version(cfg, v)   # a load check only: no Serve app
    write_routing(storage, RoutingTable(model=MODEL, generation=1, weights={v1: 100}, champion=v1))
    deploy.deploy_ingress([cfg])
    base = f"http://127.0.0.1:{serve_port}"
    _wait_http(base)
    yield {"cfg": cfg, "base": base, "storage": storage}
    serve.delete(deploy.INGRESS_APP)


def _predict(served, n=1):
    r = requests.post(f"{served['base']}/v1/models/{MODEL}:predict",
                      json={"instances": [{"x0": 5.0, "x1": 0.0, "c": "a"}] * n}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _route(served, weights, champion="v0001"):
    from lifelong_ray.serving.routing import read_routing, write_routing

    table = read_routing(served["storage"], MODEL).next(weights=weights, champion=champion)
    write_routing(served["storage"], table)
    wait_for_generation(served["base"], MODEL, table.generation)


def _answers(served, n=60) -> dict[str, int]:
    out: dict[str, int] = {}
    for _ in range(n):
        body = _predict(served)
        out[body["model_version"]] = out.get(body["model_version"], 0) + 1
        assert body["predictions"] == [1 if body["model_version"] == "v0001" else 0]
    return out


def test_no_serve_app_per_version_and_the_canary_split_is_served_in_the_ingress(served):
    from ray import serve

    from lifelong_ray.serving.deploy import version_app_name

    apps = set(serve.status().applications)
    assert not {version_app_name(MODEL, v) for v in ("v0001", "v0002")} & apps
    assert _answers(served, 10) == {"v0001": 10}
    _route(served, {"v0001": 50, "v0002": 50})
    assert _wait_for(lambda: "v0002" in _answers(served, 20), timeout=15)
    split = _answers(served, 100)
    assert set(split) == {"v0001", "v0002"} and 25 <= split["v0002"] <= 75, split


def test_a_version_that_cannot_be_loaded_falls_back_to_the_champion_and_logs_the_error(served):
    from lifelong_ray.registry.store import WEIGHTS, IntegrityError
    from lifelong_ray.serving import deploy

    cfg = served["cfg"]
    v3 = _train_and_register(cfg, invert=True, job="job-3")
    served["storage"].write_bytes(f"models/{MODEL}/versions/{v3}/{WEIGHTS}", b"tampered")
    with pytest.raises(IntegrityError, match="does not match"):
        deploy.deploy_version(cfg, v3)   # the controller's deploy step fails before routing
    since = time.time()
    _route(served, {"v0001": 50, v3: 50})   # a table naming it anyway: calls to it must fail over
    time.sleep(1.0)
    answers = _answers(served, 40)
    assert answers == {"v0001": 40}
    wait_for_sealed(served["storage"], MODEL)
    log = served["storage"].list(f"models/{MODEL}/predictions", suffix=".parquet")
    import pyarrow.parquet as pq

    rows = [r for f in log for r in pq.read_table(served["storage"].path(f)).to_pylist()
            if r["version"] == v3 and r["t"] >= since]
    assert rows and all(r["error"].startswith("unavailable") and "could not be loaded" in r["error"] for r in rows)


def test_rollback_to_the_champion_is_immediate(served):
    _route(served, {"v0001": 100})
    assert _wait_for(lambda: _answers(served, 20) == {"v0001": 20}, timeout=10)
    status = requests.get(f"{served['base']}/v1/models/{MODEL}", timeout=10).json()
    assert status["weights"] == {"v0001": 100.0}
