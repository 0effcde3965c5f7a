"""Failures the loop survives, on real Ray and Serve over HTTP.

The real :class:`~lifelong_ray.control.controller.Controller` runs in-process (so the
test holds its clock: backoffs and deadlines pass by moving it, not by sleeping) with
the real executor, Serve deployments, retrain tasks and storage. The tests run in order
and share the app; v0001 is the champion throughout.

1. a candidate (v0002) whose artifact was tampered with: its Serve constructor fails the
   integrity check on every try, the deploy is retried, abandoned (``action_failed``) and
   the candidate rolled back; the champion answers every request meanwhile, and operator
   commands still apply afterwards;
2. a retrain task killed mid-run (its worker force-killed from outside) ends as
   ``retrain_failed`` with the task's error, and a later retrain starts;
3. that retrain, hung, is cancelled at ``training.timeout_seconds`` (``retrain_failed``
   naming the timeout), and the next one is accepted;
4. a canary (v0003) that gets no labels is rolled back at ``rollout.step_timeout_seconds``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
import requests

from itest_helpers import eventually, register_untrained, wait_for_generation
from lifelong_ray.clock import Clock
from lifelong_ray.config import load_config
from lifelong_ray.control import controller as ctl
from lifelong_ray.control.commands import submit_command
from lifelong_ray.data.ingest import ingest_table
from lifelong_ray.events import AuditLog, Event, EventKind
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage
from lifelong_ray.policy.model import ControllerState
from lifelong_ray.registry.store import Registry
from lifelong_ray.serving.deploy import INGRESS_APP, deploy_ingress, deploy_version, version_app_name
from lifelong_ray.serving.routing import RoutingTable, read_routing, write_routing
from lifelong_ray.sim.streams import stationary
from lifelong_ray.storage import Storage
from lifelong_ray.training.retrain import job_path

pytestmark = pytest.mark.integration

MODEL = "failpaths"
WAIT = 180.0  # generous: Serve deployments share 2 cores with other work


class SkipClock(Clock):
    """Wall time plus whatever the test skipped ahead."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def now(self) -> float:
        return time.time() + self.skipped

    def skip(self, seconds: float) -> None:
        self.skipped += seconds


@pytest.fixture(scope="module")
def world(ray_session, serve_port, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("failpaths-store")
    cfg = load_config("configs/demo.yaml").with_overrides(
        model={"name": MODEL},
        storage={"root": str(root)},
        serving={"port": serve_port, "routing_poll_seconds": 0.1},
        estimator={"epochs": 1_000_000},  # a retrain here runs until it is killed or times out
        training={"runner": "local", "min_rows": 100, "window_recent": 300, "window_replay": 0,
                  "timeout_seconds": 300},
        drift={"cooldown_seconds": 0},
        rollout={"canary_steps": [10, 100], "min_labeled_per_step": 50, "step_timeout_seconds": 120,
                 "retire_grace_seconds": 1},
        controller={"action_retries": 1, "action_backoff_seconds": 1.0},
    )
    storage = Storage(cfg.storage.root)
    stream = stationary(2000, seed=11)
    table = stream.slice(0, 400).to_table(label="y")
    ingest_table(storage, cfg, table, time.time())
    cols = {n: table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names if n != "y"}
    cols["segment"] = np.asarray(cols["segment"], dtype=object)
    for seed in (1, 2, 3):
        register_untrained(cfg, cols, seed=seed)
    reg = Registry(storage, MODEL)
    deploy_version(cfg, "v0001")
    reg.set_alias("champion", "v0001")
    write_routing(storage, RoutingTable(model=MODEL, generation=1, weights={"v0001": 100.0}, champion="v0001"))
    deploy_ingress([cfg])
    base = f"http://127.0.0.1:{serve_port}"
    wait_for_generation(base, MODEL, 1, timeout=WAIT)
    clock = SkipClock()
    ctx = {"cfg": cfg, "storage": storage, "reg": reg, "clock": clock, "stream": stream, "i": 400,
           "url": f"{base}/v1/models/{MODEL}", "ctrl": None}
    yield ctx
    c = ctx["ctrl"]
    if c is not None:
        for ref in list(c.executor._jobs.values()):
            ray.cancel(ref, force=True)
    serve.delete(INGRESS_APP)
    for v in reg.list_versions():
        serve.delete(version_app_name(MODEL, v))


def _predict(w, n: int = 1) -> dict:
    lo = w["i"]
    w["i"] += n
    r = requests.post(f"{w['url']}:predict", json={"instances": w["stream"].rows(lo, lo + n)}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _events(w, kind: EventKind, since: float = 0.0) -> list[Event]:
    return [e for e in AuditLog(w["storage"], MODEL).read(since=since) if e.kind == kind]


def _tick_until(w, pred, what: str, skip: float = 0.0, timeout: float = WAIT):
    """Tick the controller (moving its clock ``skip`` seconds ahead each time) until ``pred()``."""
    c = w["ctrl"]
    deadline = time.monotonic() + timeout
    while True:
        w["clock"].skip(skip)
        c.tick()
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.2)


def test_a_candidate_whose_constructor_throws_is_rolled_back_and_the_champion_keeps_serving(world):
    w, storage, clock = world, world["storage"], world["clock"]
    weights = storage.path(f"models/{MODEL}/versions/v0002/weights.safetensors")
    with open(weights, "ab") as f:  # tampered after registration: the sha256 check fails on load
        f.write(b"\0")
    job = f"{MODEL}-retrain-0001"
    now = clock.now()
    state = ControllerState(model=MODEL, seq=1, champion="v0001", champion_reference_accuracy=0.5,
                            weights={"v0001": 100.0}, routing_generation=1, retrain=RetrainStage.RUNNING,
                            retrain_job_id=job, retrain_count=1, retrain_started_t=now)
    storage.write_json(ctl.state_path(MODEL), state.model_dump(mode="json"))
    storage.write_json(job_path(MODEL, job), {"job_id": job, "status": "ok", "version": "v0002",
                                              "candidate_accuracy": 0.9, "champion_accuracy": 0.5,
                                              "holdout_rows": 100, "train_rows": 300, "runner": "local"})
    w["ctrl"] = c = ctl.Controller(w["cfg"], clock=clock)
    answered = []

    def rolled_back():
        answered.append(_predict(w)["model_version"])  # the champion answers all along
        return _events(w, EventKind.ROLLED_BACK) or _events(w, EventKind.ROLLOUT_ABORTED)

    (rb,) = _tick_until(w, rolled_back, "the candidate's rollback", skip=2.0)
    (failed,) = _events(w, EventKind.ACTION_FAILED)
    assert failed.version == "v0002" and "deploy_version v0002 failed 2 times" in failed.reason, failed.reason
    assert "sha256" in failed.reason or "integrity" in failed.reason.lower(), failed.reason
    assert rb.version == "v0002" and "v0002 could not be deployed" in rb.reason
    assert set(answered) == {"v0001"}
    assert c.state.champion == "v0001" and c.state.candidate is None and c.state.rollout == RolloutStage.STABLE
    assert read_routing(storage, MODEL).weights == {"v0001": 100.0}
    assert all(_predict(w)["model_version"] == "v0001" for _ in range(5))
    # operator commands still apply
    submit_command(storage, MODEL, "pause", who="ops", why="inspect v0002", now=time.time())
    _tick_until(w, lambda: c.state.paused, "the pause")
    submit_command(storage, MODEL, "resume", who="ops", why="done", now=time.time())
    _tick_until(w, lambda: not c.state.paused, "the resume")
    assert _events(w, EventKind.PAUSED) and _events(w, EventKind.RESUMED)


def _operator_retrain(w) -> str:
    c = w["ctrl"]
    before = c.state.retrain_count
    submit_command(w["storage"], MODEL, "retrain", who="ops", why="again", now=time.time())
    _tick_until(w, lambda: c.state.retrain == RetrainStage.RUNNING and c.state.retrain_count > before,
                "the operator's retrain to start")
    job = c.state.retrain_job_id
    assert any(e.data.get("job_id") == job for e in _events(w, EventKind.RETRAIN_STARTED))
    return job


def test_a_killed_retrain_task_fails_and_a_later_retrain_starts(world):
    w = world
    c = w["ctrl"]
    job = _operator_retrain(w)
    ref = c.executor._jobs[job]
    time.sleep(1.0)
    assert not ray.wait([ref], timeout=0)[0], "the retrain task ended on its own"
    ray.cancel(ref, force=True)  # kills the task's worker process
    (ev,) = _tick_until(w, lambda: [e for e in _events(w, EventKind.RETRAIN_FAILED) if e.data.get("job_id") == job],
                        "retrain_failed of the killed job")
    assert "the retrain task died" in ev.reason, ev.reason
    assert c.state.retrain == RetrainStage.IDLE
    nxt = _operator_retrain(w)
    assert nxt != job


def test_a_hung_retrain_is_cancelled_at_its_timeout(world):
    w = world
    c = w["ctrl"]
    job = c.state.retrain_job_id
    ref = c.executor._jobs[job]
    w["clock"].skip(w["cfg"].training.timeout_seconds + 1)
    (ev,) = _tick_until(w, lambda: [e for e in _events(w, EventKind.RETRAIN_FAILED) if e.data.get("job_id") == job],
                        "retrain_failed of the hung job")
    assert "past training.timeout_seconds 300s: cancelled" in ev.reason, ev.reason
    assert eventually(lambda: ray.wait([ref], timeout=0)[0], timeout=60), "the hung task was not cancelled"
    assert job not in c.executor._jobs
    _operator_retrain(w)  # the next retrain is accepted and starts


def test_a_canary_without_labels_rolls_back_at_its_deadline(world):
    w, storage = world, world["storage"]
    c = w["ctrl"]
    job = c.state.retrain_job_id
    # the running job reports v0003 (then its task is stopped: it would train on and on)
    storage.write_json(job_path(MODEL, job), {"job_id": job, "status": "ok", "version": "v0003",
                                              "candidate_accuracy": 0.9, "champion_accuracy": 0.5,
                                              "holdout_rows": 100, "train_rows": 300, "runner": "local"})
    ray.cancel(c.executor._jobs.pop(job), force=True)
    _tick_until(w, lambda: c.state.rollout == RolloutStage.CANARY and read_routing(storage, MODEL).weights
                == {"v0001": 90.0, "v0003": 10.0}, "the canary of v0003")
    for _ in range(10):
        _predict(w)  # traffic, but no labels ever come back
    c.tick()
    assert c.state.rollout == RolloutStage.CANARY  # holds while it waits for labels
    since = c.state.last_tick_t
    w["clock"].skip(w["cfg"].rollout.step_timeout_seconds)
    (rb,) = _tick_until(w, lambda: _events(w, EventKind.ROLLED_BACK, since=since), "the canary's rollback")
    assert rb.version == "v0003" and rb.data["cause"] == "step_timeout", rb.reason
    assert "canary step 1 (10%) timed out" in rb.reason and "rollout.step_timeout_seconds 120s" in rb.reason
    assert "/50" in rb.reason, rb.reason  # the labels it was missing
    assert read_routing(storage, MODEL).weights == {"v0001": 100.0}
    assert c.state.champion == "v0001" and c.state.rollout == RolloutStage.STABLE
