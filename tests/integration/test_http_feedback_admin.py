"""Feedback exactly once, label requests, admin commands, body limits, NaN answers and
injected faults, over real HTTP through Ray Serve.

Two models share one ingress: ``fbtest`` (two deployed versions, an admin token
forwarded from this process, a 2 KiB body limit, a one-hour label horizon) and
``fbnoadmin`` (no token: its admin API is disabled, no versions). The versions are
untrained seeded modules: only where an answer came from matters here.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import requests

from itest_helpers import eventually as _eventually
from itest_helpers import register_untrained, wait_for_generation, wait_for_sealed

pytestmark = pytest.mark.integration

MODEL, OTHER, GUARDED = "fbtest", "fbnoadmin", "fbguard"
TOKEN_ENV, TOKEN = "FBTEST_ADMIN_TOKEN", "s3cret-" + uuid.uuid4().hex
NO_TOKEN_ENV = "FBTEST_UNSET_ADMIN_TOKEN"
HORIZON = 3600.0
BODY_LIMIT = 2048


def _config(name: str, root: str, token_env: str, **sections):
    from lifelong_ray.config import parse_config

    return parse_config({**sections,
        "model": {"name": name, "features": [{"name": "x", "min": -10, "max": 10},
                                             {"name": "c", "dtype": "category", "categories": ["a", "b"]}],
                  "label": {"name": "y", "classes": [0, 1]}},
        "estimator": {"kind": "logistic"},
        "data": {"label_horizon_seconds": HORIZON, **sections.get("data", {})},
        "storage": {"root": root},
        "serving": {"routing_poll_seconds": 0.1, "max_instances_per_request": 50, "max_body_bytes": BODY_LIMIT,
                    "admin_token_env": token_env, **sections.get("serving", {})},
    })


def _register_untrained(cfg, seed: int) -> str:
    rng = np.random.default_rng(seed)
    cols = {"x": rng.uniform(-5, 5, 400), "c": rng.choice(np.array(["a", "b"], dtype=object), 400)}
    return register_untrained(cfg, cols, seed)



@pytest.fixture(scope="module")
def app(serve_port, tmp_path_factory):
    from ray import serve

    from lifelong_ray.serving import deploy
    from lifelong_ray.serving.routing import RoutingTable, write_routing
    from lifelong_ray.storage import Storage

    root = str(tmp_path_factory.mktemp("fb-store"))
    cfg, other = _config(MODEL, root, TOKEN_ENV), _config(OTHER, root, NO_TOKEN_ENV)
    guarded = _config(GUARDED, root, NO_TOKEN_ENV, serving={"version_placement": "ingress"},
                      data={"guard_live": "quarantine"})
    v1, v2 = _register_untrained(cfg, 1), _register_untrained(cfg, 2)
    g1 = _register_untrained(guarded, 3)
    storage = Storage(root)
    write_routing(storage, RoutingTable(model=MODEL, generation=1, weights={v1: 100}, champion=v1))
    write_routing(storage, RoutingTable(model=GUARDED, generation=1, weights={g1: 100}, champion=g1))
    deploy.deploy_version(cfg, v1)
    deploy.deploy_version(cfg, v2)
    os.environ[TOKEN_ENV] = TOKEN
    os.environ.pop(NO_TOKEN_ENV, None)
    try:
        deploy.deploy_ingress([cfg, other, guarded])
    finally:
        os.environ.pop(TOKEN_ENV, None)  # the replica got it at deploy time
    base = f"http://127.0.0.1:{serve_port}"
    assert _eventually(lambda: requests.get(f"{base}/healthz", timeout=2).status_code == 200, 60)
    yield {"base": base, "storage": storage, "cfg": cfg, "v1": v1, "v2": v2}
    ours = [deploy.INGRESS_APP, deploy.version_app_name(MODEL, v1), deploy.version_app_name(MODEL, v2)]
    for name in ours:
        if name in serve.status().applications:
            serve.delete(name, _blocking=False)
    _eventually(lambda: not set(ours) & set(serve.status().applications), 60, 0.2)


def _url(app, suffix: str, model: str = MODEL) -> str:
    return f"{app['base']}/v1/models/{model}{suffix}"


def _predict(app, n: int = 1, x: float = 1.0) -> dict:
    r = requests.post(_url(app, ":predict"), json={"instances": [{"x": x, "c": "a"}] * n}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _feedback(app, labels: list[dict], timeout: float = 30) -> requests.Response:
    return requests.post(_url(app, ":feedback"), json={"labels": labels}, timeout=timeout)


def _table(app, kind: str) -> pa.Table:
    st = app["storage"]
    if kind == "predictions":  # answered rows reach the parquet log when the ingress seals its segment
        wait_for_sealed(st, MODEL)
    files = st.list(f"models/{MODEL}/{kind}", suffix=".parquet")
    return pa.concat_tables([pq.read_table(st.path(f)) for f in files], promote_options="permissive")


def _route(app, weights: dict, champion: str) -> None:
    from lifelong_ray.serving.routing import read_routing, write_routing

    table = read_routing(app["storage"], MODEL).next(weights=weights, champion=champion)
    write_routing(app["storage"], table)
    wait_for_generation(app["base"], MODEL, table.generation)


def _metric(app, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{app['base']}/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


# --------------------------------------------------------------------------------------
# feedback
# --------------------------------------------------------------------------------------
def test_feedback_rejects_unknown_expired_out_of_domain_and_duplicates(app):
    from lifelong_ray.data.logs import ModelLogs

    ids = _predict(app, 3)["request_ids"]
    old_id = uuid.uuid4().hex  # served two horizons ago (e.g. before a restart): read from the log
    ModelLogs(app["storage"], MODEL).append_predictions(
        request_ids=[old_id], t=time.time() - 2 * HORIZON, version=app["v1"],
        features={"x": pa.array([1.0]), "c": pa.array(["a"])}, predictions=[1], confidence=[0.9], latency_ms=1.0)
    unknown = uuid.uuid4().hex
    r = _feedback(app, [{"request_id": ids[0], "label": 1}, {"request_id": unknown, "label": 1},
                        {"request_id": old_id, "label": 0}, {"request_id": ids[1], "label": 2},
                        {"request_id": ids[0], "label": 0}, {"request_id": ids[2], "label": 0}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 2
    got = [(x["request_id"], x["code"]) for x in body["rejected"]]
    assert got == [(unknown, "unknown_request_id"), (old_id, "expired"), (ids[1], "label_domain"),
                   (ids[0], "duplicate")]
    reasons = {x["code"]: x["reason"] for x in body["rejected"]}
    assert reasons["expired"].startswith("labels[2].request_id: expired") and "3600s" in reasons["expired"]
    assert "label_horizon_seconds" in reasons["unknown_request_id"]
    # later: a second label for an already labeled request counts once
    r2 = _feedback(app, [{"request_id": ids[2], "label": 1}, {"request_id": ids[1], "label": 1}])
    assert r2.json()["accepted"] == 1 and [x["code"] for x in r2.json()["rejected"]] == ["duplicate"]
    fb = _table(app, "feedback").to_pylist()
    assert sorted(row["request_id"] for row in fb if row["request_id"] in ids) == sorted(ids)
    assert {row["request_id"]: row["label"] for row in fb if row["request_id"] in ids} == {
        ids[0]: 1, ids[1]: 1, ids[2]: 0}
    assert _metric(app, "lifelong_feedback_total", model=MODEL, outcome="rejected", reason="duplicate") >= 2


def _replica_actor_names() -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::lifelong#Ingress"))


def test_killing_the_ingress_mid_stream_loses_and_duplicates_nothing(app):
    import ray

    ids = [rid for _ in range(8) for rid in _predict(app, 50)["request_ids"]]
    batches: queue.Queue = queue.Queue()
    for k in range(0, len(ids), 5):
        batches.put([{"request_id": rid, "label": k % 2} for rid in ids[k:k + 5]])
    acked: list[str] = []      # accepted in a 2xx answer
    settled: list[str] = []    # rejected as duplicate: stored by an earlier, unanswered call
    failed: list[list[dict]] = []
    spans: list[tuple[float, float]] = []  # (sent, answered) of every call
    lock = threading.Lock()

    def client() -> None:
        while True:
            try:
                batch = batches.get_nowait()
            except queue.Empty:
                return
            t0 = time.monotonic()
            try:
                r = _feedback(app, batch, timeout=60)
            except requests.RequestException:
                r = None
            with lock:
                spans.append((t0, time.monotonic()))
                if r is None or r.status_code != 200:
                    failed.append(batch)
                    continue
                rejected = {x["request_id"]: x["code"] for x in r.json()["rejected"]}
                assert set(rejected.values()) <= {"duplicate"}, r.text
                acked.extend(x["request_id"] for x in batch if x["request_id"] not in rejected)
                settled.extend(rejected)

    before = _replica_actor_names()
    assert len(before) == 1
    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for th in threads:
        th.start()
    assert _eventually(lambda: len(acked) >= 40, 60, 0.01)
    ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
    t_kill, killed_after = time.monotonic(), len(acked)
    for th in threads:
        th.join(timeout=180)
    assert _eventually(lambda: (names := _replica_actor_names()) and names != before and requests.get(
        f"{app['base']}/healthz", timeout=2).status_code == 200, 120, 0.5)
    in_flight = sum(1 for a, b in spans if a < t_kill < b)
    print(f"\nkilled after {killed_after} acked labels with {in_flight} calls in flight; {len(failed)} batches "
          f"failed and are resent; {len(settled)} ids came back duplicate (stored by a call whose answer was lost)")
    assert in_flight > 0
    assert killed_after < len(ids)
    # resend everything not acknowledged, plus some acknowledged
    resend = [x for batch in failed for x in batch] + [{"request_id": rid, "label": 1} for rid in acked[:20]]
    outcome: dict[str, str] = {}
    for k in range(0, len(resend), 25):
        r = _feedback(app, resend[k:k + 25])
        assert r.status_code == 200, r.text
        rejected = {x["request_id"]: x["code"] for x in r.json()["rejected"]}
        for x in resend[k:k + 25]:
            outcome[x["request_id"]] = rejected.get(x["request_id"], "accepted")
    assert {outcome[rid] for rid in acked[:20]} == {"duplicate"}
    assert set(outcome.values()) <= {"accepted", "duplicate"}
    # reconcile: every id is in the feedback log exactly once, acknowledged ones included
    counts: dict[str, int] = {}
    for rid in _table(app, "feedback").column("request_id").to_pylist():
        counts[rid] = counts.get(rid, 0) + 1
    mine = {rid: counts.get(rid, 0) for rid in ids}
    assert all(mine[rid] == 1 for rid in acked), [rid for rid in acked if mine[rid] != 1][:5]
    assert set(mine.values()) == {1}, {c: sum(1 for v in mine.values() if v == c) for c in set(mine.values())}
    assert len(set(acked)) == len(acked)


def test_killing_the_ingress_mid_predicts_loses_no_answered_prediction_and_duplicates_none(app):
    """Answered predictions sit in the replica's open segment for up to data.log_seal_seconds;
    a replica killed then leaves an orphaned segment that the next replica seals: every
    answered request id is in the parquet log exactly once, and nothing is lost."""
    import ray

    acked: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    r = session.post(_url(app, ":predict"), json={"instances": [{"x": 0.5, "c": "b"}] * 2},
                                     timeout=60)
                except requests.RequestException:
                    continue
                if r.status_code == 200:
                    with lock:
                        acked.extend(r.json()["request_ids"])

    before = _replica_actor_names()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for th in threads:
        th.start()
    assert _eventually(lambda: len(acked) >= 100, 60, 0.01)
    ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
    killed_after = len(acked)
    orphaned = _segment_ids(app)  # what the dead replica had answered but not sealed
    assert _eventually(lambda: (names := _replica_actor_names()) and names != before and requests.get(
        f"{app['base']}/healthz", timeout=2).status_code == 200, 120, 0.5)
    time.sleep(1.0)
    stop.set()
    for th in threads:
        th.join(timeout=120)
    assert len(acked) > killed_after  # the new replica answered too
    table = _table(app, "predictions")  # waits until no segment is left unsealed
    served = table.filter(pc.and_(pc.is_null(table.column("error")), pc.invert(table.column("shadow"))))
    counts = Counter(rid for rid in served.column("request_id").to_pylist())
    assert [rid for rid in acked if counts[rid] != 1] == []
    assert all(counts[rid] == 1 for rid in orphaned)
    print(f"\nkilled after {killed_after} answered ids, {len(orphaned)} of them in the dead replica's open "
          f"segment; {len(acked)} answered in all, each logged once")


def _segment_ids(app) -> set[str]:
    from lifelong_ray.data.segments import open_segment_tables

    tables = open_segment_tables(app["storage"], f"models/{MODEL}/predictions")
    return {rid for t in tables for rid in t.column("request_id").to_pylist()}

# --------------------------------------------------------------------------------------
# label requests
# --------------------------------------------------------------------------------------
def test_label_requests_returns_served_unlabeled_ids_with_scores(app):
    ids = _predict(app, 20, x=0.0)["request_ids"] + _predict(app, 20, x=7.5)["request_ids"]
    assert _feedback(app, [{"request_id": rid, "label": 1} for rid in ids[:10]]).json()["accepted"] == 10
    r = requests.get(_url(app, "/label-requests"), params={"budget": 15}, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == MODEL and out["budget"] == 15 and out["reference_version"] == app["v1"]
    items = out["items"]
    assert len(items) == 15 and out["candidates"] >= 30
    assert not {i["request_id"] for i in items} & set(ids[:10])
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    assert all(0 <= i["uncertainty"] <= 1 and "uncertainty" in i["why"] for i in items)
    assert _metric(app, "lifelong_label_requests_total", model=MODEL) >= 15


@pytest.mark.parametrize("budget", ["0", "-3", "abc", "100000"])
def test_label_requests_budget_is_validated(app, budget):
    r = requests.get(_url(app, "/label-requests"), params={"budget": budget}, timeout=10)
    assert r.status_code == 422, r.text
    assert any(v["field"].endswith("budget") for v in r.json()["violations"])


# --------------------------------------------------------------------------------------
# NaN answers and injected faults
# --------------------------------------------------------------------------------------
def test_nan_answer_is_a_version_error_and_the_champion_answers(app):
    from lifelong_ray.serving.faults import clear_faults, write_faults

    v1, v2 = app["v1"], app["v2"]
    write_faults(app["storage"], MODEL, {v2: {"nan_fraction": 1.0}})
    _route(app, {v1: 50, v2: 50}, champion=v1)
    try:
        time.sleep(0.6)
        answers = [requests.post(_url(app, ":predict"), json={"instances": [{"x": 1.0, "c": "a"}], "key": f"k{i}"},
                                 timeout=30) for i in range(16)]
        assert all(a.status_code == 200 for a in answers)
        assert {a.json()["model_version"] for a in answers} == {v1}
        rid = {a.json()["request_ids"][0] for a in answers}
        rows = [r for r in _table(app, "predictions").to_pylist() if r["request_id"] in rid]
        errors = [r for r in rows if r["error"] is not None]
        assert errors and {r["version"] for r in errors} == {v2}
        assert all(r["error"].startswith("non_finite_output: ") for r in errors)
        assert _metric(app, "lifelong_version_errors_total", model=MODEL, version=v2, kind="non_finite_output") >= len(
            errors)
        assert _metric(app, "lifelong_faults_injected_total", model=MODEL, version=v2, kind="nan") >= len(errors)
    finally:
        clear_faults(app["storage"], MODEL)
        _route(app, {v1: 100}, champion=v1)


def test_injected_abort_and_delay(app):
    from lifelong_ray.serving.faults import clear_faults, write_faults

    v1, v2 = app["v1"], app["v2"]
    write_faults(app["storage"], MODEL, {v2: {"abort_fraction": 1.0}, v1: {"delay_ms": 300}})
    _route(app, {v2: 100}, champion=v1)  # after the faults: the ingress reads them with this table
    try:
        time.sleep(0.6)
        t0 = time.perf_counter()
        r = _predict(app)
        elapsed = time.perf_counter() - t0
        assert r["model_version"] == v1 and elapsed >= 0.3  # v2 aborted, the champion answered late
        rows = [x for x in _table(app, "predictions").to_pylist() if x["request_id"] == r["request_ids"][0]]
        assert [x["error"].split(":")[0] for x in rows if x["error"]] == ["injected_abort"]
        assert [x["latency_ms"] >= 300 for x in rows if not x["error"]] == [True]
        assert _metric(app, "lifelong_version_errors_total", model=MODEL, version=v2, kind="injected_abort") >= 1
        assert _metric(app, "lifelong_faults_injected_total", model=MODEL, version=v1, kind="delay") >= 1
    finally:
        clear_faults(app["storage"], MODEL)
        _route(app, {v1: 100}, champion=v1)
    time.sleep(0.6)
    t0 = time.perf_counter()
    assert _predict(app)["model_version"] == v1 and time.perf_counter() - t0 < 5  # faults off again


# --------------------------------------------------------------------------------------
# admin
# --------------------------------------------------------------------------------------
def _admin(app, kind: str, body: dict | None = None, token: str | None = TOKEN, model: str = MODEL):
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return requests.post(_url(app, f":{kind}", model), json=body, headers=headers, timeout=30)


def _commands(app, model: str = MODEL):
    from lifelong_ray.control.commands import read_commands

    return read_commands(app["storage"], model)


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", ""])
def test_admin_without_the_right_token_is_401_and_changes_nothing(app, token):
    before = len(_commands(app))
    r = _admin(app, "pause", {"why": "x"}, token=token)
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "bearer token" in r.json()["error"]
    r = _admin(app, "pause", {"nonsense": 1}, token=token)  # auth comes before body checks
    assert r.status_code == 401
    assert len(_commands(app)) == before


def test_admin_disabled_without_a_token_is_403(app):
    r = _admin(app, "rollback", {"why": "x"}, model=OTHER)
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error.startswith(f"admin API disabled: no admin token is configured for model {OTHER!r}"), error
    assert f"${NO_TOKEN_ENV}" in error and "serving.admin_token_file" in error  # says how to configure one
    assert _commands(app, OTHER) == []


@pytest.mark.parametrize("body, field", [(None, "why"), ({}, "why"), ({"why": "   "}, "why"),
                                         ({"why": 3}, "why"), ({"why": "ok", "extra": 1}, "extra")])
def test_admin_needs_a_reason(app, body, field):
    before = len(_commands(app))
    r = _admin(app, "retrain", body)
    assert r.status_code == 422, r.text
    assert any(v["field"] == field for v in r.json()["violations"])
    assert len(_commands(app)) == before


def test_admin_commands_are_written_for_the_controller(app):
    before = {c.id for c in _commands(app)}
    answers = {}
    for kind in ("pause", "resume", "retrain", "rollback"):
        r = _admin(app, kind, {"why": f"test {kind}", "who": "ana"})
        assert r.status_code == 202, r.text
        answers[kind] = r.json()
    r = _admin(app, "approve", {"version": app["v2"], "why": "reviewed"})
    assert r.status_code == 202, r.text
    answers["approve"] = r.json()
    assert answers["approve"]["who"] == "http" and answers["approve"]["version"] == app["v2"]
    new = {c.id: c for c in _commands(app) if c.id not in before}
    assert {a["command_id"] for a in answers.values()} == set(new)
    for kind, a in answers.items():
        c = new[a["command_id"]]
        assert c.kind.value == kind and c.why == a["why"] and c.who == a["who"] and c.model == MODEL
    assert new[answers["pause"]["command_id"]].who == "ana"
    assert _metric(app, "lifelong_admin_commands_total", model=MODEL, kind="pause", result="accepted") >= 1
    assert _metric(app, "lifelong_admin_commands_total", model=MODEL, kind="pause", result="unauthorized") >= 1


@pytest.mark.parametrize("body, rule", [({"why": "x"}, "missing"), ({"why": "x", "version": "v0099"}, "unknown_version")])
def test_approve_needs_a_registered_version(app, body, rule):
    r = _admin(app, "approve", body)
    assert r.status_code == 422, r.text
    assert [(v["field"], v["rule"]) for v in r.json()["violations"]] == [("version", rule)]


@pytest.mark.parametrize("field, value, setting", [("who", "w" * 129, "serving.max_who_chars"),
                                                   ("why", "y" * 2001, "serving.max_why_chars")])
def test_admin_who_and_why_are_bounded(app, field, value, setting):
    before = len(_commands(app))
    body = {"why": "a reason", field: value}
    r = _admin(app, "pause", body)
    assert r.status_code == 422, r.text
    (v,) = r.json()["violations"]
    assert (v["field"], v["rule"]) == (field, "max_length") and setting in v["message"]
    assert len(_commands(app)) == before


# --------------------------------------------------------------------------------------
# bounded inputs, the live label guard
# --------------------------------------------------------------------------------------
def test_a_routing_key_over_max_key_chars_is_422(app):
    r = requests.post(_url(app, ":predict"), json={"instances": [{"x": 1.0, "c": "a"}], "key": "k" * 257},
                      timeout=30)
    assert r.status_code == 422, r.text
    (v,) = r.json()["violations"]
    assert (v["field"], v["rule"]) == ("key", "max_length") and "serving.max_key_chars" in v["message"]
    ok = requests.post(_url(app, ":predict"), json={"instances": [{"x": 1.0, "c": "a"}], "key": "k" * 256},
                       timeout=30)
    assert ok.status_code == 200, ok.text


def test_a_flipped_live_label_stream_is_quarantined_before_it_reaches_the_feedback_log(app):
    """Labels that agree with the served predictions pass; a stream of flipped ones is
    diverted to the quarantine store (answered as rejected, code quarantined), never
    written to the feedback log, and a release puts them there."""
    from lifelong_ray.data.ingest import release_quarantined
    from lifelong_ray.data.quarantine import QuarantineStore

    def predict(n: int) -> list[tuple[str, int]]:
        rng = np.random.default_rng(n)
        r = requests.post(_url(app, ":predict", GUARDED), timeout=30, json={"instances": [
            {"x": float(x), "c": "a"} for x in rng.uniform(-5, 5, n)]})
        assert r.status_code == 200, r.text
        return list(zip(r.json()["request_ids"], r.json()["predictions"]))

    def label(pairs, flip: bool) -> dict:
        r = requests.post(_url(app, ":feedback", GUARDED), timeout=30, json={"labels": [
            {"request_id": rid, "label": (1 - p) if flip else p} for rid, p in pairs]})
        assert r.status_code == 200, r.text
        return r.json()

    clean = [pair for _ in range(7) for pair in predict(45)]
    for k in range(0, len(clean), 25):  # 315 labels agreeing with the predictions: window + baseline
        assert label(clean[k:k + 25], flip=False)["accepted"] == len(clean[k:k + 25])
    flipped = predict(40)
    outcomes = [label(flipped[k:k + 10], flip=True) for k in range(0, 40, 10)]
    held = [x for out in outcomes for x in out["rejected"] if x["code"] == "quarantined"]
    assert held, outcomes
    assert "disagree" in held[0]["reason"] and "quarantined as q" in held[0]["reason"]
    held_ids = {x["request_id"] for x in held}
    fb = set(pa.concat_tables([pq.read_table(app["storage"].path(f)) for f in app["storage"].list(
        f"models/{GUARDED}/feedback", suffix=".parquet")]).column("request_id").to_pylist())
    assert not held_ids & fb and {rid for rid, _ in clean} <= fb
    store = QuarantineStore(app["storage"], GUARDED)
    entries = [e for e in store.list() if e.source == "live_feedback"]
    assert {rid for e in entries for rid in store.rows(e.id).column("request_id").to_pylist()} == held_ids
    assert all(e.reason == "label_disagreement" for e in entries)
    assert _metric(app, "lifelong_feedback_total", model=GUARDED, outcome="rejected", reason="quarantined") >= 1
    guarded_cfg = _config(GUARDED, app["storage"].uri, NO_TOKEN_ENV)
    release_quarantined(app["storage"], guarded_cfg, entries[0].id, who="test", why="reviewed", now=time.time())
    fb_after = set(pa.concat_tables([pq.read_table(app["storage"].path(f)) for f in app["storage"].list(
        f"models/{GUARDED}/feedback", suffix=".parquet")]).column("request_id").to_pylist())
    assert set(store.rows(entries[0].id).column("request_id").to_pylist()) <= fb_after


# --------------------------------------------------------------------------------------
# body limit, OpenAPI
# --------------------------------------------------------------------------------------
def test_bodies_over_the_limit_get_413(app):
    big = json.dumps({"instances": [{"x": 1.0, "c": "a"}] * 200}).encode()
    assert len(big) > BODY_LIMIT
    r = requests.post(_url(app, ":predict"), data=big, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413, r.text
    v = r.json()["violations"][0]
    assert v["rule"] == "max_body_bytes" and str(BODY_LIMIT) in v["message"]

    def chunks():  # no Content-Length: chunked transfer encoding
        for k in range(0, len(big), 512):
            yield big[k:k + 512]

    r = requests.post(_url(app, ":feedback"), data=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413, r.text
    assert "more than" in r.json()["violations"][0]["message"]
    assert _metric(app, "lifelong_rejected_requests_total", model=MODEL, rule="max_body_bytes") >= 2
    assert _predict(app)["model_version"] == app["v1"]  # small bodies still pass


def test_openapi_documents_the_new_endpoints(app):
    spec = requests.get(f"{app['base']}/openapi.json", timeout=10).json()
    for path in ("/v1/models/{model}/label-requests", "/v1/models/{model}:rollback", "/v1/models/{model}:approve",
                 "/v1/models/{model}:retrain", "/v1/models/{model}:pause", "/v1/models/{model}:resume"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    for name in ("LabelRequests", "LabelRequest", "CommandAccepted", "AdminRequest", "ApproveRequest", "Rejection"):
        assert name in schemas, name
    approve = spec["paths"]["/v1/models/{model}:approve"]["post"]
    assert "202" in approve["responses"] and "401" in approve["responses"]
    assert any(p["name"].lower() == "authorization" for p in approve["parameters"])
