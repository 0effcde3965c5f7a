"""The serving layer over real HTTP: Ray Serve ingress + one Serve app per version.

Versions are trained in-process (a tiny torch logistic model) and registered in a
temporary storage root; no Ray Train is involved. v0001 learns ``y = x0 > 0`` and
v0002 the opposite, so for ``x0 = ±5`` the answer itself tells which version spoke.
"""

from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from itest_helpers import eventually, wait_for_generation, wait_for_sealed

pytestmark = pytest.mark.integration

MODEL = "srvtest"
HEX32 = re.compile(r"^[0-9a-f]{32}$")


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    from lifelong_ray.config import parse_config

    root = tmp_path_factory.mktemp("serving-store")
    return parse_config({
        "model": {"name": MODEL,
                  "features": [{"name": "x0", "min": -10, "max": 10},
                               {"name": "x1"},
                               {"name": "c", "dtype": "category", "categories": ["a", "b", "c"]}],
                  "label": {"name": "y", "classes": [0, 1]}},
        "estimator": {"kind": "logistic", "epochs": 60, "lr": 0.1},
        "storage": {"root": str(root)},
        "serving": {"routing_poll_seconds": 0.1, "max_instances_per_request": 50},
    })


def _train_and_register(cfg, invert: bool, job: str) -> str:
    from lifelong_ray.data.schema import Schema
    from lifelong_ray.data.transform import FeatureTransform
    from lifelong_ray.registry.store import Registry
    from lifelong_ray.storage import Storage
    from lifelong_ray.training.loop import fit_numpy

    rng = np.random.default_rng(0)
    n = 300
    cols = {"x0": rng.uniform(-6, 6, n), "x1": rng.normal(size=n),
            "c": rng.choice(["a", "b", "c"], n).astype(object)}
    y = (cols["x0"] > 0).astype(np.int64)
    if invert:
        y = 1 - y
    schema = Schema(cfg.model)
    transform = FeatureTransform.fit(cols, schema)
    state, _ = fit_numpy(transform.apply(cols), y, cfg.estimator, n_classes=2, seed=0)
    reg = Registry(Storage(cfg.storage.root), cfg.model.name)
    return reg.register(state_dict=state, transform=transform, estimator=cfg.estimator,
                        n_in=transform.n_out, classes=[0, 1],
                        reference=pa.table({"x0": cols["x0"], "x1": cols["x1"], "c": list(cols["c"])}),
                        metadata={"job_id": job, "note": "serving test"})


@pytest.fixture(scope="module")
def served(cfg, serve_port):
    """v0001 + v0002 deployed as their own apps, the ingress on '/', 100% to v0001."""
    from ray import serve

    from lifelong_ray.serving import deploy
    from lifelong_ray.serving.routing import RoutingTable, write_routing
    from lifelong_ray.storage import Storage

    v1 = _train_and_register(cfg, invert=False, job="job-1")
    v2 = _train_and_register(cfg, invert=True, job="job-2")
    v3 = _train_and_register(cfg, invert=False, job="job-3")  # registered, never deployed
    assert (v1, v2, v3) == ("v0001", "v0002", "v0003")
    storage = Storage(cfg.storage.root)
    write_routing(storage, RoutingTable(model=MODEL, generation=1, weights={v1: 100}, champion=v1))
    deploy.deploy_version(cfg, v1)
    deploy.deploy_version(cfg, v2)
    deploy.deploy_ingress([cfg])
    base = f"http://127.0.0.1:{serve_port}"
    _wait_http(base)
    yield {"base": base, "storage": storage, "versions": (v1, v2, v3)}
    # other modules share this Serve instance: delete our apps (in parallel) and wait
    ours = [deploy.INGRESS_APP] + [deploy.version_app_name(MODEL, v) for v in (v1, v2, v3)]
    for name in ours:
        if name in serve.status().applications:
            serve.delete(name, _blocking=False)
    _wait_for(lambda: not set(ours) & set(serve.status().applications), timeout=60, every=0.2)


def _wait_http(base: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("ingress did not answer /healthz")
        time.sleep(0.2)


def _route(served, weights, champion="v0001", **extra) -> None:
    from lifelong_ray.serving.routing import read_routing, write_routing

    table = read_routing(served["storage"], MODEL).next(weights=weights, champion=champion, **extra)
    write_routing(served["storage"], table)
    wait_for_generation(served["base"], MODEL, table.generation)


def _row(x0=5.0, x1=0.0, c="a"):
    return {"x0": x0, "x1": x1, "c": c}


def _predict(served, instances, key=None, **kw):
    body = {"instances": instances}
    if key is not None:
        body["key"] = key
    return requests.post(f"{served['base']}/v1/models/{MODEL}:predict", json=body, timeout=30, **kw)


def _log(served, kind="predictions") -> pa.Table | None:
    st = served["storage"]
    if kind == "predictions":  # answered rows reach the parquet log when the ingress seals its segment
        wait_for_sealed(st, MODEL)
    files = st.list(f"models/{MODEL}/{kind}", suffix=".parquet")
    if not files:
        return None
    return pa.concat_tables([pq.read_table(st.path(f)) for f in files], promote_options="permissive")


def _log_rows(served) -> int:
    t = _log(served)
    return 0 if t is None else t.num_rows


def _wait_for(pred, timeout=10.0, every=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(every)


def _routed_only_to(served, version, timeout=10.0) -> bool:
    return bool(_wait_for(lambda: all(
        _predict(served, [_row()]).json()["model_version"] == version for _ in range(5)), timeout))


# --------------------------------------------------------------------------------------
# predict / feedback round trips
# --------------------------------------------------------------------------------------
def test_healthz_and_models(served):
    assert requests.get(f"{served['base']}/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{served['base']}/v1/models", timeout=5).json() == {"models": [MODEL]}


def test_predict_round_trip(served):
    rows = [_row(x0=5.0 if i % 2 else -5.0, x1=float(i), c="abc"[i % 3]) for i in range(10)]
    r = _predict(served, rows, key="alice")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"predictions", "request_ids", "model_version"}
    assert body["model_version"] == "v0001"
    assert body["predictions"] == [1 if i % 2 else 0 for i in range(10)]
    ids = body["request_ids"]
    assert len(ids) == 10 and len(set(ids)) == 10 and all(HEX32.match(i) for i in ids)
    # durable before the answer: the rows are already in the log
    log = _log(served).to_pylist()
    mine = {row["request_id"]: row for row in log if row["request_id"] in set(ids)}
    assert set(mine) == set(ids)
    first = mine[ids[0]]
    assert first["version"] == "v0001" and first["key"] == "alice" and first["shadow"] is False
    assert first["error"] is None and first["latency_ms"] > 0 and first["c"] == "a"
    assert [mine[i]["prediction"] for i in ids] == body["predictions"]


def test_feedback_round_trip(served):
    ids = _predict(served, [_row(), _row(x0=-5)]).json()["request_ids"]
    url = f"{served['base']}/v1/models/{MODEL}:feedback"
    r = requests.post(url, json={"labels": [
        {"request_id": ids[0], "label": 1},
        {"request_id": ids[1], "label": 7},
        {"request_id": "not-a-request-id", "label": 0},
        {"request_id": ids[1].upper(), "label": 0},
        {"label": 1},
        {"request_id": ids[1]},
    ]}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 1
    reasons = [x["reason"] for x in body["rejected"]]
    assert [x["request_id"] for x in body["rejected"]] == [ids[1], "not-a-request-id", ids[1].upper(), None, ids[1]]
    assert "label" in reasons[0] and "label_domain" in reasons[0] and "[0, 1]" in reasons[0]
    assert "request_id" in reasons[1] and "format" in reasons[1]
    assert "request_id" in reasons[2] and "format" in reasons[2]
    assert "request_id" in reasons[3] and "missing" in reasons[3]
    assert "label" in reasons[4] and "missing" in reasons[4]
    fb = _log(served, "feedback").to_pylist()
    assert {"request_id": ids[0], "label": 1} in [{k: row[k] for k in ("request_id", "label")} for row in fb]
    assert ids[1] not in {row["request_id"] for row in fb}


@pytest.mark.parametrize("body", [{}, {"labels": "x"}, {"labels": [1, 2]}, {"labels": [], "extra": 1}])
def test_feedback_envelope_errors(served, body):
    r = requests.post(f"{served['base']}/v1/models/{MODEL}:feedback", json=body, timeout=10)
    assert r.status_code == 422, r.text
    assert any("labels" in v["field"] or v["field"] == "extra" for v in r.json()["violations"])


# --------------------------------------------------------------------------------------
# bad input: 4xx naming the field and the rule, nothing logged
# --------------------------------------------------------------------------------------
_BAD = {
    "missing_field": ({"instances": [{"x0": 1.0, "c": "a"}]}, 422, "x1", "missing"),
    "extra_field": ({"instances": [{**_row(), "zz": 1}]}, 422, "zz", "unexpected"),
    "wrong_type": ({"instances": [_row(x0="abc")]}, 422, "x0", "type"),
    "bool_is_not_a_number": ({"instances": [_row(x1=True)]}, 422, "x1", "type"),
    "null_not_nullable": ({"instances": [_row(x1=None)]}, 422, "x1", "null"),
    "above_max": ({"instances": [_row(), _row(x0=50.0)]}, 422, "x0", "above_max"),
    "below_min": ({"instances": [_row(x0=-11)]}, 422, "x0", "below_min"),
    "unknown_category": ({"instances": [_row(c="zebra")]}, 422, "c", "unknown_category"),
    "category_not_string": ({"instances": [_row(c=3)]}, 422, "c", "type"),
    "empty_instances": ({"instances": []}, 422, "instances", "min_items"),
    "too_many_instances": ({"instances": [_row()] * 51}, 422, "instances", "max_items"),
    "instances_not_a_list": ({"instances": {"x0": 1}}, 422, "instances", None),
    "row_not_an_object": ({"instances": [[1, 2, 3]]}, 422, "instances[0]", "not_an_object"),
    "no_instances": ({"key": "k"}, 422, "instances", "missing"),
    "unknown_envelope_key": ({"instances": [_row()], "inputs": []}, 422, "inputs", "unexpected"),
    "key_not_a_string": ({"instances": [_row()], "key": 12}, 422, "key", "type"),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_bad_predict_input(served, case):
    body, status, field, rule = _BAD[case]
    before = _log_rows(served)
    r = requests.post(f"{served['base']}/v1/models/{MODEL}:predict", json=body, timeout=10)
    assert r.status_code == status, r.text
    out = r.json()
    assert out["error"] in ("invalid instances", "invalid request")
    fields = [v["field"] for v in out["violations"]]
    assert any(f == field or f.startswith(field) for f in fields), out
    if rule is not None:
        assert rule in [v["rule"] for v in out["violations"]], out
    assert all(v["field"] in v["message"] for v in out["violations"])  # the message names the field
    if case == "missing_field":
        assert [v["rule"] for v in out["violations"]] == ["missing"]  # not also "null"
    assert _log_rows(served) == before


@pytest.mark.parametrize("raw, rule", [
    ('{"instances": [{"x0": NaN, "x1": 0, "c": "a"}]}', "not_finite"),
    ('{"instances": [{"x0": 1, "x1": Infinity, "c": "a"}]}', "not_finite"),
    ('{"instances": [{"x0": 1, "x1": 1e400, "c": "a"}]}', "not_finite"),
    ('{"instances": [{"x0": 1, "x1": -1e400, "c": "a"}]}', "not_finite"),
])
def test_non_finite_numbers(served, raw, rule):
    before = _log_rows(served)
    r = requests.post(f"{served['base']}/v1/models/{MODEL}:predict", data=raw,
                      headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 422, r.text
    v = r.json()["violations"][0]
    assert v["rule"] == rule and v["field"] in ("x0", "x1") and v["index"] == 0
    assert _log_rows(served) == before


@pytest.mark.parametrize("raw", ['{"instances": [', "not json", '{"instances": [{"x0": 1,}]}'])
def test_malformed_json_is_400(served, raw):
    before = _log_rows(served)
    r = requests.post(f"{served['base']}/v1/models/{MODEL}:predict", data=raw,
                      headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 400, r.text
    out = r.json()
    assert out["error"] == "malformed JSON" and out["violations"][0]["field"] == "body"
    assert _log_rows(served) == before


def test_unknown_model_is_404(served):
    r = requests.post(f"{served['base']}/v1/models/nosuch:predict", json={"instances": [_row()]}, timeout=10)
    assert r.status_code == 404 and "nosuch" in r.json()["error"]
    assert requests.get(f"{served['base']}/v1/models/nosuch", timeout=10).status_code == 404
    r = requests.post(f"{served['base']}/v1/models/nosuch:feedback", json={"labels": []}, timeout=10)
    assert r.status_code == 404


# --------------------------------------------------------------------------------------
# routing: weights, sticky keys, live switch, fallback, shadow
# --------------------------------------------------------------------------------------
def test_weighted_split_and_sticky_key(served):
    _route(served, {"v0001": 50, "v0002": 50})
    seen = _wait_for(lambda: {_predict(served, [_row()]).json()["model_version"] for _ in range(30)} == {
        "v0001", "v0002"}, timeout=10)
    assert seen, "50/50 never served both versions"
    for key in ("alice", "bob", "carol"):
        answers = [_predict(served, [_row()], key=key).json() for _ in range(8)]
        assert len({a["model_version"] for a in answers}) == 1
        # the answer itself matches the version that claims it (v0002 is the inverse model)
        expect = 1 if answers[0]["model_version"] == "v0001" else 0
        assert all(a["predictions"] == [expect] for a in answers)
    _route(served, {"v0001": 100})
    assert _routed_only_to(served, "v0001")


def test_routing_switch_without_redeploy_or_failures(served):
    from ray import serve

    from lifelong_ray.serving import deploy

    before = serve.status().applications[deploy.INGRESS_APP].last_deployed_time_s
    assert _routed_only_to(served, "v0001")
    results: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            r = _predict(served, [_row()])
            results.append((time.monotonic(), r.status_code,
                            r.json().get("model_version") if r.status_code == 200 else r.text))

    th = threading.Thread(target=client, daemon=True)
    th.start()
    time.sleep(0.5)
    t_switch = time.monotonic()
    _route(served, {"v0002": 100}, champion="v0002")
    switched = _wait_for(lambda: any(t > t_switch and v == "v0002" for t, _, v in results[-3:]) and all(
        v == "v0002" for t, _, v in results[-3:]), timeout=10)
    time.sleep(0.3)
    stop.set()
    th.join(timeout=30)
    assert switched, results[-5:]
    assert all(code == 200 for _, code, _ in results), [r for r in results if r[1] != 200][:3]
    first_v2 = min(t for t, _, v in results if v == "v0002")
    print(f"\nrouting switch visible after {first_v2 - t_switch:.2f}s over {len(results)} requests")
    assert serve.status().applications[deploy.INGRESS_APP].last_deployed_time_s == before
    _route(served, {"v0001": 100}, champion="v0001")
    assert _routed_only_to(served, "v0001")


def test_failing_canary_falls_back_to_champion(served):
    """v0003 is registered but not deployed: its share is answered by the champion, and
    an error row for v0003 lands in the log so the controller sees its error rate."""
    _route(served, {"v0001": 50, "v0003": 50}, champion="v0001")
    time.sleep(1.5)  # let the ingress see the table and a fresh list of deployed apps
    answers = [_predict(served, [_row()], key=f"k{i}") for i in range(16)]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    assert {a.json()["model_version"] for a in answers} == {"v0001"}
    ids = {a.json()["request_ids"][0] for a in answers}
    log = [r for r in _log(served).to_pylist() if r["request_id"] in ids]
    errors = [r for r in log if r["error"] is not None]
    assert errors and {r["version"] for r in errors} == {"v0003"}
    assert all(r["prediction"] == -1 and "not deployed" in r["error"] for r in errors)
    served_rows = [r for r in log if r["error"] is None]
    assert {r["request_id"] for r in served_rows} == ids and {r["version"] for r in served_rows} == {"v0001"}
    _route(served, {"v0001": 100}, champion="v0001")
    assert _routed_only_to(served, "v0001")


def test_shadow_is_logged_not_answered(served):
    _route(served, {"v0001": 100}, champion="v0001", shadow="v0002", shadow_fraction=1.0)
    time.sleep(0.5)
    r = _predict(served, [_row(), _row(x0=-5)]).json()
    assert r["model_version"] == "v0001" and r["predictions"] == [1, 0]
    ids = set(r["request_ids"])

    def shadow_rows():
        return [x for x in _log(served).to_pylist() if x["request_id"] in ids and x["shadow"]]

    rows = _wait_for(shadow_rows, timeout=10)
    assert rows and {x["version"] for x in rows} == {"v0002"} and len(rows) == 2
    assert sorted(x["prediction"] for x in rows) == [0, 1]
    _route(served, {"v0001": 100}, champion="v0001", shadow=None, shadow_fraction=0.0)


# --------------------------------------------------------------------------------------
# status, metrics, deploy helpers
# --------------------------------------------------------------------------------------
def test_model_status(served):
    from lifelong_ray.events import AuditLog, Event, EventKind

    st = served["storage"]
    st.write_json(f"models/{MODEL}/controller/state.json", {"stage": "stable", "champion": "v0001"})
    AuditLog(st, MODEL).append([Event(t=time.time(), kind=EventKind.PROMOTED, model=MODEL, version="v0001",
                                      reason="test event")])
    def fresh():  # the status is a snapshot at most serving/reads.SNAPSHOT_TTL_S old
        r = requests.get(f"{served['base']}/v1/models/{MODEL}", timeout=10)
        assert r.status_code == 200, r.text
        return r.json() if (r.json()["last_events"] or [{}])[-1].get("reason") == "test event" else None

    assert eventually(fresh, 10, 0.2)
    s = fresh()
    feats = {f["name"]: f for f in s["schema"]["features"]}
    assert feats["x0"] == {"name": "x0", "dtype": "float", "nullable": False, "min": -10.0, "max": 10.0}
    assert feats["c"]["categories"] == ["a", "b", "c"]
    assert s["schema"]["label"] == {"name": "y", "classes": [0, 1]}
    assert [v["version"] for v in s["versions"]] == ["v0001", "v0002", "v0003"]
    assert s["versions"][0]["note"] == "serving test"
    assert s["weights"] == {"v0001": 100.0} and s["routing"]["champion"] == "v0001"
    assert s["controller"] == {"stage": "stable", "champion": "v0001"}
    assert s["last_events"][-1]["reason"] == "test event"
    assert isinstance(s["aliases"], dict)


def test_metrics_exposition(served):
    from prometheus_client.parser import text_string_to_metric_families

    _predict(served, [_row()])
    text = requests.get(f"{served['base']}/metrics", timeout=10).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert "lifelong_predictions" in fams
    samples = [s for s in fams["lifelong_predictions"].samples if s.name == "lifelong_predictions_total"]
    assert any(s.labels == {"model": MODEL, "version": "v0001"} and s.value > 0 for s in samples)
    assert "lifelong_predict_latency_seconds" in fams
    assert "lifelong_rejected_requests" in fams and "lifelong_feedback" in fams
    weights = {s.labels["version"]: s.value for s in fams["lifelong_route_weight_percent"].samples
               if s.labels["model"] == MODEL}
    assert weights.get("v0001") == 100.0


def test_openapi_documents_the_envelopes(served):
    spec = requests.get(f"{served['base']}/openapi.json", timeout=10).json()
    assert "/v1/models/{model}:predict" in spec["paths"]
    assert "PredictRequest" in json.dumps(spec["components"])


def test_deploy_helpers_are_idempotent(cfg, served):
    from lifelong_ray.serving import deploy

    assert deploy.deployed_versions(cfg) == ["v0001", "v0002"]
    t0 = time.monotonic()
    deploy.deploy_version(cfg, "v0001")  # already RUNNING: nothing to do
    assert time.monotonic() - t0 < 5
    deploy.retire_version(cfg, "v0009")  # not deployed: no-op
    assert deploy.version_app_name(MODEL, "v0002") == f"lifelong-{MODEL}-v0002"
