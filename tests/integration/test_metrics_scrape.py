"""``GET /metrics`` of a deployed ingress, scraped over real HTTP.

The ingress (Ray Serve) answers predictions and takes feedback; a real
:class:`~lifelong_ray.control.controller.Controller` ticks in-process on the logs
the ingress wrote and persists its state; ``/metrics`` must then show both the
request counts and the controller's numbers. The text is parsed with
prometheus-client's parser and, when Debian's ``prometheus`` binary is installed
(``apt-get install prometheus``), a real Prometheus server scrapes the ingress and
every dashboard query is run against its HTTP API.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import requests

from itest_helpers import wait_for_sealed

pytestmark = pytest.mark.integration

MODEL = "mscrape"
DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
PROMETHEUS = shutil.which("prometheus")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    from lifelong_ray.config import parse_config

    return parse_config({
        "model": {"name": MODEL,
                  "features": [{"name": "x0", "min": -10, "max": 10}, {"name": "x1"},
                               {"name": "c", "dtype": "category", "categories": ["a", "b", "c"]}],
                  "label": {"name": "y", "classes": [0, 1]}},
        "estimator": {"kind": "logistic", "epochs": 40, "lr": 0.1},
        "drift": {"window_size": 20, "label_window": 20, "consecutive_windows": 1},
        "quota": {"max_retrains_per_hour": 0},  # a drift retrain is requested and deferred, never run
        "storage": {"root": str(tmp_path_factory.mktemp("metrics-store"))},
        "serving": {"routing_poll_seconds": 0.2},
    })


def _register(cfg) -> str:
    from lifelong_ray.data.schema import Schema
    from lifelong_ray.data.transform import FeatureTransform
    from lifelong_ray.registry.store import Registry
    from lifelong_ray.storage import Storage
    from lifelong_ray.training.loop import fit_numpy

    rng = np.random.default_rng(0)
    n = 300
    cols = {"x0": rng.uniform(-6, 6, n), "x1": rng.normal(size=n), "c": rng.choice(["a", "b", "c"], n).astype(object)}
    y = (cols["x0"] > 0).astype(np.int64)
    schema = Schema(cfg.model)
    transform = FeatureTransform.fit(cols, schema)
    state, _ = fit_numpy(transform.apply(cols), y, cfg.estimator, n_classes=2, seed=0)
    return Registry(Storage(cfg.storage.root), MODEL).register(
        state_dict=state, transform=transform, estimator=cfg.estimator, n_in=transform.n_out, classes=[0, 1],
        reference=pa.table({"x0": cols["x0"], "x1": cols["x1"], "c": list(cols["c"])}), metadata={"job_id": "j1"})


def _wait(pred, timeout: float, every: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        out = pred()
        if out:
            return out
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def served(cfg, serve_port):
    from ray import serve

    from lifelong_ray.control.controller import state_path
    from lifelong_ray.policy.model import ControllerState
    from lifelong_ray.serving import deploy
    from lifelong_ray.serving.routing import RoutingTable, write_routing
    from lifelong_ray.storage import Storage

    v1 = _register(cfg)
    storage = Storage(cfg.storage.root)
    write_routing(storage, RoutingTable(model=MODEL, generation=1, weights={v1: 100}, champion=v1))
    storage.write_json(state_path(MODEL), ControllerState(
        model=MODEL, champion=v1, champion_reference_accuracy=0.95).model_dump(mode="json"))
    deploy.deploy_version(cfg, v1)
    deploy.deploy_ingress([cfg])
    base = f"http://127.0.0.1:{serve_port}"

    def healthy() -> bool:
        try:
            return requests.get(f"{base}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    _wait(healthy, 60, what="the ingress")
    yield {"base": base, "storage": storage, "v1": v1, "port": serve_port}
    ours = [deploy.INGRESS_APP, deploy.version_app_name(MODEL, v1)]
    for name in ours:
        if name in serve.status().applications:
            serve.delete(name, _blocking=False)
    _wait(lambda: not set(ours) & set(serve.status().applications), 60, what="app deletion")


def _scrape(served) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    r = requests.get(f"{served['base']}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _value(fams: dict, family: str, sample: str, **labels: str) -> float:
    if family not in fams:
        return 0.0
    return sum(s.value for s in fams[family].samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def _predict(served, rows: list[dict]) -> dict:
    r = requests.post(f"{served['base']}/v1/models/{MODEL}:predict", json={"instances": rows}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _feedback(served, labels: list[dict]) -> dict:
    r = requests.post(f"{served['base']}/v1/models/{MODEL}:feedback", json={"labels": labels}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_counts_match_the_requests_sent(served):
    v1 = served["v1"]
    before = _scrape(served)
    sizes = [1, 2, 3, 4, 5]
    ids: list[str] = []
    for k, n in enumerate(sizes):
        out = _predict(served, [{"x0": 1.0 + k, "x1": 0.0, "c": "a"}] * n)
        assert out["model_version"] == v1
        ids += out["request_ids"]
    labels = [{"request_id": rid, "label": 1} for rid in ids[:10]]
    fb = _feedback(served, labels + labels[:2] + [{"request_id": "0" * 32, "label": 1}])
    assert fb["accepted"] == 10 and len(fb["rejected"]) == 3
    after = _scrape(served)

    def delta(family, sample, **labels):
        return _value(after, family, sample, **labels) - _value(before, family, sample, **labels)

    assert after["lifelong_predictions"].type == "counter"
    assert delta("lifelong_predictions", "lifelong_predictions_total", model=MODEL, version=v1) == sum(sizes)
    assert after["lifelong_predict_latency_seconds"].type == "histogram"
    assert delta("lifelong_predict_latency_seconds", "lifelong_predict_latency_seconds_count",
                 model=MODEL, version=v1) == len(sizes)
    assert delta("lifelong_predict_latency_seconds", "lifelong_predict_latency_seconds_bucket",
                 model=MODEL, version=v1, le="+Inf") == len(sizes)
    assert delta("lifelong_predict_latency_seconds", "lifelong_predict_latency_seconds_sum",
                 model=MODEL, version=v1) > 0
    assert after["lifelong_feedback"].type == "counter"
    assert delta("lifelong_feedback", "lifelong_feedback_total", model=MODEL, outcome="accepted") == 10
    assert delta("lifelong_feedback", "lifelong_feedback_total", model=MODEL, outcome="rejected",
                 reason="duplicate") == 2
    assert delta("lifelong_feedback", "lifelong_feedback_total", model=MODEL, outcome="rejected") == 3
    assert _value(after, "lifelong_route_weight_percent", "lifelong_route_weight_percent",
                  model=MODEL, version=v1) == 100.0
    # the prediction log's group commit (data.durability.predictions: group, the default) exports its lag
    assert after["lifelong_log_unflushed_seconds"].type == "gauge"
    lag = [s.value for s in after["lifelong_log_unflushed_seconds"].samples
           if s.labels == {"model": MODEL, "log": "predictions"}]
    assert len(lag) == 1 and lag[0] >= 0.0
    # scrape-time families are there too, with their declared labels
    assert after["lifelong_rollout_stage"].type == "gauge"
    roles = {(s.labels["version"], s.labels["role"]) for s in after["lifelong_model_info"].samples
             if s.labels["model"] == MODEL}
    assert roles == {(v1, "champion")}
    for fam in after.values():
        assert fam.name.startswith("lifelong_"), fam.name
        for s in fam.samples:
            if "version" in s.labels and s.labels.get("model") == MODEL:
                assert s.labels["version"] in {v1, "none"}  # bounded: live versions only


def test_controller_state_reaches_the_scrape(served, cfg):
    from lifelong_ray.control.controller import Controller, load_state
    from lifelong_ray.events import AuditLog

    rng = np.random.default_rng(3)
    ids, preds = [], []
    for _ in range(4):  # 40 rows far from the reference (x0 in [-6, 6], c uniform)
        out = _predict(served, [{"x0": float(x), "x1": 0.0, "c": "c"} for x in rng.uniform(7, 10, 10)])
        ids += out["request_ids"]
        preds += out["predictions"]
    # every other label wrong: 50% accuracy against a 0.95 reference
    _feedback(served, [{"request_id": rid, "label": int(p if i % 2 else 1 - p)}
                       for i, (rid, p) in enumerate(zip(ids, preds))])
    wait_for_sealed(served["storage"], MODEL)  # the controller reads predictions once the ingress sealed them
    ctrl = Controller(cfg)
    for _ in range(2):
        ctrl.tick()
    state = load_state(served["storage"], MODEL)
    assert state.last_feature_drift is not None and state.last_quality is not None

    def scraped():
        fams = _scrape(served)
        tick = _value(fams, "lifelong_controller_last_tick_timestamp_seconds",
                      "lifelong_controller_last_tick_timestamp_seconds", model=MODEL)
        return fams if tick == state.last_tick_t else None

    fams = _wait(scraped, 10, what="the scrape to show the last tick")  # the collector caches for 1 s
    v1 = served["v1"]
    psi = state.last_feature_drift["psi"]
    assert set(psi) == {"x0", "x1", "c"}
    for feature, value in psi.items():
        assert _value(fams, "lifelong_drift_score", "lifelong_drift_score", model=MODEL, version=v1,
                      feature=feature) == pytest.approx(value)
    assert psi["x0"] > cfg.drift.psi_threshold
    assert _value(fams, "lifelong_drift_detected", "lifelong_drift_detected", model=MODEL, kind="feature") == 1
    assert _value(fams, "lifelong_quality_accuracy_ratio", "lifelong_quality_accuracy_ratio", model=MODEL,
                  version=v1) == pytest.approx(state.last_quality["accuracy"])
    for sli, st in state.budget["slis"].items():
        assert _value(fams, "lifelong_error_budget_remaining_ratio", "lifelong_error_budget_remaining_ratio",
                      model=MODEL, sli=sli) == pytest.approx(st["remaining"])
        assert _value(fams, "lifelong_error_budget_burn_rate", "lifelong_error_budget_burn_rate", model=MODEL,
                      sli=sli, window="3600s") == pytest.approx(st["burn"]["3600s"])
    events = AuditLog(served["storage"], MODEL).read()
    assert events, "the controller recorded its decisions"
    for kind in {e.kind.value for e in events}:
        assert _value(fams, "lifelong_events", "lifelong_events_total", model=MODEL, kind=kind) == \
            sum(1 for e in events if e.kind.value == kind)
    assert _value(fams, "lifelong_retrain_queue_length", "lifelong_retrain_queue_length", model=MODEL) == \
        len(state.retrain_queue)
    assert _value(fams, "lifelong_retrains", "lifelong_retrains_total", model=MODEL, kind="full") == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dashboard_queries() -> list[str]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        out += [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
        out += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    return [q.replace("$model", MODEL).replace("$__rate_interval", "1m") for q in out]


@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary: `apt-get install -y prometheus` (Debian) "
                                                 "to scrape with a real Prometheus server")
def test_real_prometheus_scrapes_the_ingress(served, tmp_path):
    v1 = served["v1"]
    sent = sum(len(_predict(served, [{"x0": 2.0, "x1": 0.0, "c": "b"}] * n)["predictions"]) for n in (3, 4))
    expected = _value(_scrape(served), "lifelong_predictions", "lifelong_predictions_total", model=MODEL,
                      version=v1)
    assert expected >= sent
    port = _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: lifelong\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{served['port']}']\n")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"), env={**os.environ})
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(q: str) -> dict:
        return requests.get(f"{api}/query", params={"query": q}, timeout=10).json()

    try:
        def up() -> bool:
            try:
                targets = requests.get(f"{api}/targets", timeout=2).json()["data"]["activeTargets"]
            except (requests.RequestException, ValueError, KeyError):
                return False
            return any(t["health"] == "up" for t in targets)

        _wait(up, 30, what="Prometheus to scrape the ingress")

        def scraped_value():
            res = query(f'lifelong_predictions_total{{model="{MODEL}",version="{v1}"}}')["data"]["result"]
            return res and float(res[0]["value"][1]) == expected

        _wait(scraped_value, 20, what="Prometheus to hold the predictions count")
        res = query(f'lifelong_rollout_stage{{model="{MODEL}"}} == 1')["data"]["result"]
        assert [r["metric"]["stage"] for r in res] == ["stable"]
        res = query(f'count by (feature) (lifelong_drift_score{{model="{MODEL}"}})')["data"]["result"]
        assert {r["metric"]["feature"] for r in res} == {"x0", "x1", "c"}
        # every dashboard panel and annotation query is valid PromQL on real data
        failed = {}
        for q in _dashboard_queries():
            body = query(q)
            if body.get("status") != "success":
                failed[q] = body.get("error")
        assert not failed, failed
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
