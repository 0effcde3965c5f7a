"""Fuzz the running ingress from its own OpenAPI document (schemathesis) over real HTTP.

Schemathesis' engine (what ``st run`` drives) sends every operation of ``/openapi.json``
its documented examples, its coverage cases (boundaries, missing and extra fields,
wrong types, undecodable bodies, unsupported methods) and a bounded number of random
cases, three times: as generated (the ``{model}`` path parameter is mostly an unknown
name), aimed at the served model (so bodies reach the real validation, routing,
logging and admin code), and for the admin operations with the valid bearer token.
No answer may be a 5xx (``not_a_server_error``; the readiness probe's documented 503
"not ready" excepted), and every answer must have a
documented status, content type and body schema (the OpenAPI document is real).
A control run against a model with no version checks that a 5xx would be caught.

The model's features (``x0`` float, ``color`` category) match the example documented
on ``PredictRequest``, so the examples phase sends valid predictions too.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pyarrow as pa
import pytest
import requests
import schemathesis

from itest_helpers import eventually as _eventually
from itest_helpers import register_untrained

pytestmark = pytest.mark.integration

MODEL = "fuzz"
IDLE = "fuzzidle"  # served, but no version: predict answers 503 (the control that the check bites)
TOKEN = "fuzz-" + uuid.uuid4().hex
#: random cases per operation (on top of the examples and coverage phases)
MAX_EXAMPLES = 12
SCHEMATHESIS_CONFIG = f"""
[checks]
enabled = false
not_a_server_error.enabled = true
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_schema_conformance.enabled = true

[generation]
max-examples = {MAX_EXAMPLES}
deterministic = true  # the same cases on every run (a failure names its curl command)
database = "none"

[phases.stateful]
enabled = false
"""


def _config(root: str, token_file: str, name: str = MODEL):
    from lifelong_ray.config import parse_config

    return parse_config({
        "model": {"name": name, "features": [{"name": "x0", "min": -10, "max": 10},
                                              {"name": "color", "dtype": "category", "categories": ["red", "blue"]}],
                  "label": {"name": "y", "classes": [0, 1]}},
        "estimator": {"kind": "logistic"},
        "storage": {"root": root},
        "serving": {"routing_poll_seconds": 0.2, "max_instances_per_request": 20, "admin_token_file": token_file},
    })


def _register_untrained(cfg) -> str:
    rng = np.random.default_rng(0)
    cols = {"x0": rng.uniform(-5, 5, 200), "color": rng.choice(np.array(["red", "blue"], dtype=object), 200)}
    return register_untrained(cfg, cols, 0, metadata={"job_id": "fuzz-1"})



@pytest.fixture(scope="module")
def app(serve_port, tmp_path_factory):
    from ray import serve

    from lifelong_ray.serving import deploy
    from lifelong_ray.serving.routing import RoutingTable, write_routing
    from lifelong_ray.storage import Storage

    tmp = tmp_path_factory.mktemp("fuzz-store")
    token_file = tmp / "admin-token"
    token_file.write_text(TOKEN + "\n")
    cfg = _config(str(tmp / "root"), str(token_file))
    v1 = _register_untrained(cfg)
    storage = Storage(cfg.storage.root)
    write_routing(storage, RoutingTable(model=MODEL, generation=1, weights={v1: 100.0}, champion=v1))
    deploy.deploy_version(cfg, v1)
    deploy.deploy_ingress([cfg, _config(cfg.storage.root, str(token_file), IDLE)])
    base = f"http://127.0.0.1:{serve_port}"
    assert _eventually(lambda: requests.get(f"{base}/healthz", timeout=2).status_code == 200)
    ok = _eventually(lambda: requests.post(f"{base}/v1/models/{MODEL}:predict", timeout=10, json={
        "instances": [{"x0": 0.3, "color": "red"}]}).status_code == 200)
    assert ok, "the served version never answered"
    yield {"base": base, "storage": storage}
    ours = [deploy.INGRESS_APP, deploy.version_app_name(MODEL, v1)]
    for name in ours:
        if name in serve.status().applications:
            serve.delete(name, _blocking=False)
    _eventually(lambda: not set(ours) & set(serve.status().applications), 60)


def _run(base: str, *, model: str | None = None, token: str | None = None,
         only: str | None = None) -> tuple[dict[tuple[str, int], int], list[str]]:
    """One schemathesis run (its engine, as ``st run`` drives it): answers per (operation,
    status) and the failures (a failed check, or a request that got no answer). The 503s
    that are answers by design are not failures: readiness saying "not ready", and a
    prediction for the idle model (no version yet) unless the run aims at it (the control)."""
    from schemathesis.engine import Status, events, from_schema

    toml = SCHEMATHESIS_CONFIG
    if token is not None:
        toml = f'headers = {{ Authorization = "Bearer {token}" }}\n' + toml
    if model is not None:
        toml += f'\n[parameters]\n"path.model" = "{model}"\n'
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", config=schemathesis.Config.from_str(toml))
    if only is not None:
        schema = schema.include(path_regex=only)
    seen: dict[tuple[str, int], int] = {}
    failures: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for inter in event.recorder.interactions.values():
                if inter.response is None:
                    failures.append(f"{event.label}: no answer to {inter.request.method} {inter.request.uri}")
                    continue
                key = (event.recorder.label, inter.response.status_code)
                seen[key] = seen.get(key, 0) + 1
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    req = event.recorder.interactions.get(case_id)
                    if (check.name == "not_a_server_error" and req is not None and req.response is not None
                            and req.response.status_code == 503
                            and (event.recorder.label == READY_OP
                                 or (model != IDLE and f"/v1/models/{IDLE}:" in req.request.uri))):
                        continue  # a 503 by design (its body's schema is still checked)
                    if check.status == Status.FAILURE:
                        where = f"{req.request.method} {req.request.uri}" if req else case_id
                        failures.append(f"{event.label}: {check.name} failed on {where}: {check.failure_info}")
            if event.status == Status.ERROR:
                failures.append(f"{event.label}: scenario error")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"engine error: {getattr(event, 'value', event)!r}")
    return seen, failures


ADMIN_PATHS = r":(rollback|approve|retrain|pause|resume)$"
#: readiness answers 503 while a routed version cannot be called (a load balancer's probe reads it)
READY_OP = "GET /v1/models/{model}/ready"


def test_no_operation_answers_5xx(app):
    t0 = time.monotonic()
    runs = {
        "as generated": _run(app["base"]),
        "served model": _run(app["base"], model=MODEL),
        "admin with token": _run(app["base"], model=MODEL, token=TOKEN, only=ADMIN_PATHS),
    }
    elapsed = time.monotonic() - t0
    failures = [f"[{name}] {f}" for name, (_, fs) in runs.items() for f in fs]
    assert not failures, "\n".join(failures[:20])
    seen = {name: set(s) for name, (s, _) in runs.items()}
    total = sum(sum(s.values()) for s, _ in runs.values())
    print(f"schemathesis: {total} requests in {elapsed:.1f}s; statuses {sorted(set().union(*seen.values()))}")

    generated, served, admin = seen["as generated"], seen["served model"], seen["admin with token"]
    # the cases reached the real code paths: successes, validation errors, unknown models, auth
    assert ("POST /v1/models/{model}:predict", 404) in generated
    assert ("POST /v1/models/{model}:predict", 200) in served
    assert ("POST /v1/models/{model}:predict", 422) in served
    assert ("POST /v1/models/{model}:feedback", 200) in served
    assert ("GET /v1/models/{model}/label-requests", 200) in served
    assert ("GET /v1/models/{model}", 200) in served and ("GET /ui", 200) in generated
    assert (READY_OP, 200) in served
    for kind in ("rollback", "retrain", "pause", "resume", "approve"):
        label = f"POST /v1/models/{{model}}:{kind}"
        assert (label, 401) in served, label                     # no token, or a wrong one
        assert {(label, 202), (label, 422)} & admin, label       # the token: accepted, or an invalid body
        assert (label, 401) not in admin, label
    assert any(status == 202 for (_, status) in admin), "no admin command was ever accepted"


def test_the_check_catches_a_server_error(app):
    """Control: predict on a model with an empty routing table answers 503, and the run says so."""
    seen, failures = _run(app["base"], model=IDLE, only=r":predict$")
    assert ("POST /v1/models/{model}:predict", 503) in seen
    assert failures and all("not_a_server_error failed" in f for f in failures), failures[:3]
