"""The whole loop on real Ray: Serve over HTTP, the controller actor, Ray Train.

One scenario, in order (the tests share the running app):
1. the first version is trained with Ray Train from an ingested batch and promoted;
2. an abrupt concept drift over HTTP is detected, a candidate retrained, gated and
   canaried; the controller actor is killed mid-canary, restarts from its
   persisted state and finishes the rollout exactly once;
3. a second drift's candidate whose labels go bad during the canary is rolled
   back, and the champion keeps serving.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
import requests

from lifelong_ray.config import load_config
from lifelong_ray.control.actor import controller_name, get_controller, start_controller, stop_controller
from lifelong_ray.control.controller import load_state
from lifelong_ray.events import AuditLog
from lifelong_ray.registry.store import Registry
from lifelong_ray.serving.deploy import INGRESS_APP, deploy_ingress, version_app_name
from lifelong_ray.serving.routing import read_routing
from lifelong_ray.data.ingest import ingest_table
from lifelong_ray.sim.demo import DemoSettings, TrafficDriver
from lifelong_ray.sim.streams import abrupt_concept_drift
from lifelong_ray.storage import Storage

pytestmark = pytest.mark.integration

BOOT = 800
DRIFT1 = BOOT + 1200
DRIFT2 = DRIFT1 + 120_000  # far: the pump keeps sending while it waits (a slow machine sends more)


@pytest.fixture(scope="module")
def app(ray_session, serve_port, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("loop-store")
    cfg = load_config("configs/demo.yaml").with_overrides(
        model={"name": "loop"},
        storage={"root": str(root)},
        serving={"port": serve_port},
        estimator={"epochs": 25},
        # no follow-up (settle) retrain after v0002: its canary could straddle the second drift,
        # and the story below needs v0003 to be that drift's candidate
        training={"min_rows": 300, "window_recent": 800, "window_replay": 50, "settle_retrains": 0},
        drift={"window_size": 200, "label_window": 100, "consecutive_windows": 2, "cooldown_seconds": 0},
        rollout={"min_labeled_per_step": 40, "min_seconds_per_step": 5, "retire_grace_seconds": 1},
        controller={"tick_seconds": 0.5},
    )
    stream = abrupt_concept_drift(DRIFT2 + 120_000, drift_at=[DRIFT1, DRIFT2], seed=3)
    storage = Storage(cfg.storage.root)
    deploy_ingress([cfg])
    ingest_table(storage, cfg, stream.slice(0, BOOT).to_table(label="y"), time.time())
    start_controller(cfg)
    settings = DemoSettings(batch=20, label_delay=40)
    driver = TrafficDriver(f"http://127.0.0.1:{serve_port}", "loop", stream, BOOT, settings)
    yield cfg, storage, driver
    stop_controller("loop")
    serve.delete(INGRESS_APP)
    for v in Registry(storage, "loop").list_versions():
        serve.delete(version_app_name("loop", v))


def _kinds(storage, since=0.0):
    return [(e.kind.value, e.version) for e in AuditLog(storage, "loop").read(since=since)]


def _until(pred, timeout, what, driver=None, step=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        if driver is not None:
            step()
        else:
            time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Pump:
    """Drive traffic at RATE samples/s; labels come back `label_delay` samples later."""

    RATE = 300.0

    def __init__(self, driver: TrafficDriver, start: int = 0):
        self.d, self.i = driver, start
        self.flip_for: str | None = None
        self.t0 = time.time() - start / self.RATE

    def step(self):
        if (wait := self.t0 + self.i / self.RATE - time.time()) > 0:
            time.sleep(wait)
        self.d.predict(self.i)
        self.i += self.d.s.batch
        if self.flip_for and self.d.served.version[-1] == self.flip_for:
            # Every label of a batch the canary served contradicts what it predicted. (Flipping the
            # true labels is not enough: a candidate trained before the drift is about as wrong
            # as the champion after it, and the flipped labels of a coin toss are a coin toss.)
            due, ids, ys = self.d.pending[-1]
            self.d.pending[-1] = (due, ids, [1 - int(p) for p in self.d.served.prediction[-len(ys):]])
        self.d.flush_labels(self.i)


def test_first_version_trained_with_ray_train_and_promoted(app):
    cfg, storage, driver = app
    _until(lambda: read_routing(storage, "loop").weights, 180, "the first version")
    assert driver.wait_until_serving(30) == {"v0001": 100.0}
    reg = Registry(storage, "loop")
    assert reg.aliases()["champion"] == "v0001"
    meta = reg.metadata("v0001")
    assert meta["runner"] == "ray" and meta["job_id"] == "loop-retrain-0001"
    assert meta["config_hash"] == cfg.config_hash() and "seed" in meta
    assert ("promoted", "v0001") in _kinds(storage)


def test_drift_retrain_canary_survives_controller_kill_and_promotes_once(app):
    cfg, storage, driver = app
    pump = Pump(driver)
    for _ in range((DRIFT1 - BOOT) // driver.s.batch):  # pre-drift traffic
        pump.step()
    pre = np.mean(np.asarray(driver.served.prediction) == driver.stream.labels[BOOT:BOOT + pump.i])
    assert pre > 0.85
    _until(lambda: any(k == "canary_started" for k, _ in _kinds(storage)), 240, "canary_started",
           driver, pump.step)
    # Kill the controller mid-canary; Ray restarts it (max_restarts=-1) from its persisted state.
    # The tick appends its events before it saves its state: wait for the save, not just the event.
    _until(lambda: getattr(load_state(storage, "loop"), "rollout", None) is not None
           and load_state(storage, "loop").rollout.value == "canary", 15, "the canary in the saved state")
    before = load_state(storage, "loop")
    assert before.rollout.value == "canary" and before.candidate == "v0002"
    ray.kill(get_controller("loop"), no_restart=False)
    _until(lambda: any(k == "promoted" and v == "v0002" for k, v in _kinds(storage)), 240, "promotion",
           driver, pump.step)
    status = ray.get(get_controller("loop").status.remote(), timeout=30)
    assert status["restored"] is True and status["champion"] == "v0002"
    kinds = [k for k, _ in _kinds(storage)]
    after_boot = kinds[kinds.index("promoted") + 1:]
    expected = ["drift_detected", "retrain_started", "candidate_registered", "canary_started", "promoted"]
    it = iter(after_boot)
    assert all(k in it for k in expected), after_boot
    assert after_boot.count("canary_started") == 1 and after_boot.count("promoted") == 1
    _until(lambda: read_routing(storage, "loop").weights == {"v0002": 100.0}, 10, "v0002 at 100%")
    assert Registry(storage, "loop").aliases()["champion"] == "v0002"
    # The new champion serves the new concept well (once the ingress routes all traffic to it).
    _until(lambda: requests.get(f"http://127.0.0.1:{cfg.serving.port}/v1/models/loop", timeout=10)
           .json()["weights"] == {"v0002": 100.0}, 30, "the ingress to route to v0002 only")
    lo = pump.i
    for _ in range(50):
        pump.step()
    served = np.asarray(driver.served.prediction[lo:pump.i])
    assert np.mean(served == driver.stream.labels[BOOT + lo:BOOT + pump.i]) > 0.8


def test_bad_canary_is_rolled_back_and_champion_keeps_serving(app):
    cfg, storage, driver = app
    # Jump ahead in the stream to just before the second drift (skipped rows are never sent).
    pump = Pump(driver, start=DRIFT2 - BOOT - 400)
    driver.served.prediction.extend([-1] * (pump.i - len(driver.served.prediction)))
    driver.served.version.extend([""] * (pump.i - len(driver.served.version)))
    t3 = (load_state(storage, "loop").last_tick_t or 0.0) + 1e-6  # events from here on
    _until(lambda: any(k == "canary_started" for k, _ in _kinds(storage, since=t3)), 240,
           "the second canary", driver, pump.step)
    # v0003 (the second drift's candidate) unless a false alarm's retrain got a number first
    cand = next(v for k, v in _kinds(storage, since=t3) if k == "canary_started")
    pump.flip_for = cand  # the world disagrees with the canary: its labels say it is wrong
    _until(lambda: any(k == "rolled_back" for k, _ in _kinds(storage, since=t3)), 120, "rollback",
           driver, pump.step)
    events = AuditLog(storage, "loop").read(since=t3)
    story = "\n".join(f"{e.kind.value} {e.version}: {e.reason}" for e in events)
    rolled = [e for e in events if e.kind.value == "rolled_back"][0]
    assert rolled.version == cand and "canary accuracy" in rolled.reason, story
    # Events are persisted before the actions run: the routing follows within a tick.
    _until(lambda: read_routing(storage, "loop").weights == {"v0002": 100.0}, 30, "champion back at 100%")
    _until(lambda: requests.get(f"http://127.0.0.1:{cfg.serving.port}/v1/models/loop", timeout=10)
           .json()["weights"] == {"v0002": 100.0}, 30, "the ingress to route to the champion only")
    r = requests.post(f"http://127.0.0.1:{cfg.serving.port}/v1/models/loop:predict",
                      json={"instances": driver.stream.rows(0, 3)}, timeout=30)
    assert r.status_code == 200 and r.json()["model_version"] == "v0002"
    assert controller_name("loop") == "lifelong-controller-loop"
