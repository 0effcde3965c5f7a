"""The ingress's durable logs under concurrent HTTP load (group commit, DESIGN.md §4).

Concurrent predicts and feedback go through the real Serve ingress; every answered
request id must be in the log exactly once, and durable on disk (a prediction in the
replica's segment or the log, a label in the log) by the time its client has the 2xx.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import requests

pytestmark = pytest.mark.integration

MODEL = "logtest"
CLIENTS = 8
REQUESTS_PER_CLIENT = 12


def _config(root: str):
    from lifelong_ray.config import parse_config

    return parse_config({
        "model": {"name": MODEL, "features": [{"name": "x", "min": -10, "max": 10},
                                              {"name": "c", "dtype": "category", "categories": ["a", "b"]}],
                  "label": {"name": "y", "classes": [0, 1]}},
        "estimator": {"kind": "logistic"},
        "storage": {"root": root},
        "serving": {"routing_poll_seconds": 0.1},
    })


def _register_untrained(cfg) -> str:
    import torch

    from lifelong_ray.data.schema import Schema
    from lifelong_ray.data.transform import FeatureTransform
    from lifelong_ray.registry.store import Registry
    from lifelong_ray.storage import Storage
    from lifelong_ray.training.estimators import build_module

    rng = np.random.default_rng(0)
    cols = {"x": rng.uniform(-5, 5, 200), "c": rng.choice(np.array(["a", "b"], dtype=object), 200)}
    transform = FeatureTransform.fit(cols, Schema(cfg.model))
    torch.manual_seed(0)
    module = build_module(cfg.estimator, transform.n_out, 2)
    return Registry(Storage(cfg.storage.root), MODEL).register(
        state_dict=module.state_dict(), transform=transform, estimator=cfg.estimator, n_in=transform.n_out,
        classes=[0, 1], reference=pa.table({"x": cols["x"], "c": list(cols["c"])}), metadata={"seed": 0})


@pytest.fixture(scope="module")
def app(serve_port, tmp_path_factory):
    from ray import serve

    from lifelong_ray.data.logs import ModelLogs
    from lifelong_ray.serving import deploy
    from lifelong_ray.serving.routing import RoutingTable, write_routing
    from lifelong_ray.storage import Storage

    cfg = _config(str(tmp_path_factory.mktemp("log-store")))
    version = _register_untrained(cfg)
    storage = Storage(cfg.storage.root)
    write_routing(storage, RoutingTable(model=MODEL, generation=1, weights={version: 100}, champion=version))
    deploy.deploy_version(cfg, version)
    deploy.deploy_ingress([cfg])
    base = f"http://127.0.0.1:{serve_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the ingress did not answer /healthz"
        time.sleep(0.2)
    yield {"base": base, "logs": ModelLogs(storage, MODEL)}
    ours = [deploy.INGRESS_APP, deploy.version_app_name(MODEL, version)]
    for name in ours:
        if name in serve.status().applications:
            serve.delete(name, _blocking=False)
    deadline = time.monotonic() + 60
    while set(ours) & set(serve.status().applications) and time.monotonic() < deadline:
        time.sleep(0.2)


def _concurrently(work, clients: int = CLIENTS) -> list:
    """``work(k)`` in ``clients`` threads released together; their results in client order."""
    start = threading.Barrier(clients)

    def run(k: int):
        start.wait()
        return work(k)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(run, range(clients)))


def _ids(table: pa.Table | None) -> list[str]:
    return [] if table is None else table.column("request_id").to_pylist()


def _segment_ids(logs) -> set[str]:
    """Ids in the open prediction segments (durable, not sealed into the parquet log yet)."""
    from lifelong_ray.data.segments import open_segment_tables

    return {rid for table in open_segment_tables(logs.storage, logs.predictions_prefix) for rid in _ids(table)}


def test_concurrent_predicts_are_logged_once_each_and_durable_before_the_answer(app):
    """Durable before the 2xx: in this replica's segment or already sealed into the log
    (``data.log_segments``); once sealed, each id is in the parquet log exactly once."""
    from itest_helpers import wait_for_sealed

    from lifelong_ray.data.logs import LogTail

    logs = app["logs"]

    def client(k: int) -> tuple[list[str], list[str]]:
        tail = LogTail(logs.storage, logs.predictions_prefix)  # this client's own reader
        seen: set[str] = set()
        answered, missing = [], []
        with requests.Session() as session:
            for i in range(REQUESTS_PER_CLIENT):
                n = 1 + (k + i) % 3
                r = session.post(f"{app['base']}/v1/models/{MODEL}:predict", timeout=60,
                                 json={"instances": [{"x": float(i - 6), "c": "ab"[k % 2]}] * n, "key": f"u{k}"})
                assert r.status_code == 200, r.text
                ids = r.json()["request_ids"]
                assert len(ids) == n
                # read right after the 2xx, nothing waited for: the segments first (a seal moves
                # rows from there to the log, never the other way), then the log
                in_segments = _segment_ids(logs)
                seen.update(_ids(tail.read_new()))
                missing += [rid for rid in ids if rid not in seen and rid not in in_segments]
                answered += ids
        return answered, missing

    results = _concurrently(client)
    assert [m for _, m in results] == [[]] * CLIENTS  # every answered id was already durable
    answered = [rid for ids, _ in results for rid in ids]
    expected = sum(1 + (k + i) % 3 for k in range(CLIENTS) for i in range(REQUESTS_PER_CLIENT))
    assert len(answered) == len(set(answered)) == expected
    wait_for_sealed(logs.storage, MODEL)
    table = LogTail(logs.storage, logs.predictions_prefix).read_new()
    served = table.filter(pc.and_(pc.is_null(table.column("error")), pc.invert(table.column("shadow"))))
    assert Counter(_ids(served)) == Counter(answered)  # each once, none extra
    # at most one file per request (concurrent ones may share a file)
    assert len(logs.storage.list(logs.predictions_prefix, suffix=".parquet")) <= CLIENTS * REQUESTS_PER_CLIENT


def test_concurrent_feedback_is_logged_once_each(app):
    from lifelong_ray.data.logs import LogTail

    logs = app["logs"]
    r = requests.post(f"{app['base']}/v1/models/{MODEL}:predict", timeout=60,
                      json={"instances": [{"x": 0.5, "c": "a"}] * (2 * CLIENTS)})
    assert r.status_code == 200, r.text
    ids = r.json()["request_ids"]
    before = set(_ids(LogTail(logs.storage, logs.feedback_prefix).read_new()))

    def client(k: int) -> dict:
        # each client labels its own two ids, and one id of its neighbour (a duplicate race)
        mine = ids[2 * k: 2 * k + 2] + [ids[(2 * k + 2) % len(ids)]]
        resp = requests.post(f"{app['base']}/v1/models/{MODEL}:feedback", timeout=60,
                             json={"labels": [{"request_id": rid, "label": 1} for rid in mine]})
        assert resp.status_code == 200, resp.text
        return resp.json()

    answers = _concurrently(client)
    assert sum(a["accepted"] for a in answers) == len(ids)
    assert all(rej["code"] == "duplicate" for a in answers for rej in a["rejected"])
    written = [rid for rid in _ids(LogTail(logs.storage, logs.feedback_prefix).read_new()) if rid not in before]
    assert Counter(written) == Counter(ids)
