"""Safe rollout on real Ray: approval, bad canaries, quotas, probation, error budgets.

One model, one champion trained once (the controller's bootstrap retrain, local
runner), real Serve over HTTP and the controller actor; the tests run in order and
share the running app. Twice the controller is restarted with the next phase's
config (how an operator changes policy): its state, queue included, is reloaded
from storage. Waits are generous (the box is shared); seconds measured are printed
(``-s``), never asserted.

1. approval gate: an operator retrain's candidate waits in ``approval`` with the
   champion at 100% until it is approved through the admin HTTP endpoint (a wrong
   token gets 401 and changes nothing); then its canary starts at 10%;
2. bad canaries (100% errors, NaN answers, 10x latency), each rolled back on the
   first analysis that holds the minimum evidence (one request of 20 rows), with
   the champion untouched and every client request answered;
3. a quota (retrains per hour) defers an operator retrain with its reason and retry
   time; lifting it (a restart with a new config) runs the queued request;
4. that candidate is canaried and promoted onto probation, the previous champion
   kept deployed; its late labels go bad and it is rolled back to the previous one;
5. the champion failing 30% of its calls spends a short error budget
   (``budget_frozen``): an operator retrain (urgent) still runs, a feature-drift
   retrain (refresh only) waits with a budget reason, and runs once the faults stop
   and the budget recovers (``budget_unfrozen``).
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import ray
import requests

from lifelong_ray.config import Config, load_config
from lifelong_ray.control.actor import get_controller, start_controller, stop_controller
from lifelong_ray.control.commands import commands_prefix, submit_command
from lifelong_ray.control.controller import load_state
from lifelong_ray.data.ingest import ingest_table
from lifelong_ray.events import AuditLog, Event
from lifelong_ray.registry.store import Registry
from lifelong_ray.serving.deploy import INGRESS_APP, deploy_ingress, version_app_name
from lifelong_ray.serving.faults import clear_faults, write_faults
from lifelong_ray.serving.routing import RoutingTable, choose_version, read_routing
from lifelong_ray.sim.streams import stationary
from lifelong_ray.storage import Storage

pytestmark = pytest.mark.integration

MODEL = "rollout"
TOKEN_ENV, TOKEN = "ROLLOUT_TEST_ADMIN_TOKEN", "tok-" + uuid.uuid4().hex
BOOT = 600   # labeled rows ingested before traffic: the champion's training data
BATCH = 20   # instances per predict request (= MIN_SERVED_FOR_RATES: one request is enough evidence)
QUOTA = 4    # retrains per hour
WAIT = 180.0  # generous: training and Serve deployments share 2 cores with other work


def _base_config(root: str, port: int) -> Config:
    return load_config("configs/demo.yaml").with_overrides(
        model={"name": MODEL},
        storage={"root": root},
        serving={"port": port, "admin_token_env": TOKEN_ENV, "routing_poll_seconds": 0.1},
        estimator={"epochs": 10},
        training={"runner": "local", "min_rows": 300, "window_recent": 600, "window_replay": 0},
        drift={"cooldown_seconds": 0},
        rollout={"require_approval": ["canary"], "canary_steps": [10, 100], "min_labeled_per_step": 1000,
                 "min_seconds_per_step": 600, "retire_grace_seconds": 1, "gate_margin": 0.1,
                 "forgetting_margin": 0.1},
        # the bootstrap and the three bad canaries' candidates use the hour's quota: the fifth waits
        quota={"max_retrains_per_hour": QUOTA},
        controller={"tick_seconds": 0.5},
    )


class World:
    """The running app of this module and what the tests need to poke it."""

    def __init__(self, cfg: Config, storage: Storage, base_url: str) -> None:
        self.cfg, self.storage = cfg, storage
        self.url = f"{base_url}/v1/models/{MODEL}"
        self.audit = AuditLog(storage, MODEL)
        self.registry = Registry(storage, MODEL)
        self.stream = stationary(40_000, seed=5)
        self.i = BOOT  # next stream row to send
        self.http = requests.Session()
        self.champion = ""
        self.shift = 0.0  # added to x0 (a covariate shift), clipped to the schema's range

    # -- traffic ------------------------------------------------------------------------
    def _rows(self) -> tuple[list[dict], np.ndarray]:
        if self.i + BATCH > len(self.stream):  # a slow machine sends more while it waits: wrap
            self.i = BOOT
        lo, self.i = self.i, self.i + BATCH
        rows = self.stream.rows(lo, self.i)
        if self.shift:
            for r in rows:
                r["x0"] = float(np.clip(r["x0"] + self.shift, -10, 10))
        return rows, self.stream.labels[lo:self.i]

    def post_predict(self, key: str | None = None) -> tuple[requests.Response, np.ndarray]:
        rows, y = self._rows()
        body = {"instances": rows, **({"key": key} if key else {})}
        return self.http.post(f"{self.url}:predict", json=body, timeout=60), y

    def send(self, key: str | None = None, wrong_for: str | None = None) -> dict:
        """One predict request that must be answered, then its labels (flipped when
        ``wrong_for`` answered it): the world's truth as the labelers report it."""
        r, y = self.post_predict(key)
        assert r.status_code == 200, r.text
        body = r.json()
        self.label(body, y if body["model_version"] != wrong_for else 1 - y)
        return body

    def label(self, body: dict, y: np.ndarray) -> None:
        items = [{"request_id": rid, "label": int(v)} for rid, v in zip(body["request_ids"], y)]
        r = self.http.post(f"{self.url}:feedback", json={"labels": items}, timeout=60)
        assert r.status_code == 200 and r.json()["accepted"] == len(items), r.text

    # -- what the controller did ----------------------------------------------------------
    def events(self, kind: str | tuple[str, ...] | None = None, since: float = 0.0,
               version: str | None = None) -> list[Event]:
        kinds = (kind,) if isinstance(kind, str) else kind
        return [e for e in self.audit.read(since=since)
                if (kinds is None or e.kind.value in kinds) and (version is None or e.version == version)]

    def mark(self) -> float:
        """A time before every event that a change made from now on can cause: just after the
        last saved tick. (A tick stamps its events with the time it started, which may be
        earlier than a command it reads or a request it sees.)"""
        state = load_state(self.storage, MODEL)
        return (state.last_tick_t or 0.0) + 1e-6 if state else 0.0

    def wait_event(self, kind: str | tuple[str, ...], since: float, version: str | None = None, step=None,
                   timeout: float = WAIT) -> Event:
        """The first event of ``kind`` (or of any of several kinds) since ``since``."""
        return _until(lambda: next(iter(self.events(kind, since, version)), None), timeout,
                      f"{kind} {version or ''} since {since:.0f}", step)

    def routed(self, weights: dict[str, float], timeout: float = 30.0) -> RoutingTable:
        """The routing table once the controller has written ``weights`` (events are persisted
        before the actions run) and the ingress routes by it."""
        table = _until(lambda: (t := read_routing(self.storage, MODEL)).weights == weights and t, timeout,
                       f"the routing table to say {weights}")
        _until(lambda: self.http.get(self.url, timeout=10).json()["routing"]["generation"] == table.generation,
               30, f"the ingress to load routing generation {table.generation}")
        return table

    def restart_controller(self, cfg: Config) -> None:
        """Stop the controller and start it with ``cfg``; it reloads its state from storage."""
        stop_controller(MODEL)
        _until(_controller_gone, 30, "the old controller to be gone")
        self.cfg = cfg
        start_controller(cfg)
        _until(lambda: _ticks() > 0, WAIT, "the restarted controller to tick")

    def admin(self, action: str, body: dict, token: str | None = TOKEN) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.post(f"{self.url}:{action}", json=body, headers=headers, timeout=30)


def _ticks() -> int:
    """The controller's tick count; 0 while it is starting (a fresh actor on busy cores)."""
    try:
        return ray.get(get_controller(MODEL).status.remote(), timeout=10)["ticks"]
    except (ray.exceptions.GetTimeoutError, ValueError):
        return 0


def _controller_gone() -> bool:
    try:
        get_controller(MODEL)
    except ValueError:
        return True
    return False


def _until(pred, timeout: float, what: str, step=None):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        step() if step is not None else time.sleep(0.2)


def _key_for(table: RoutingTable, version: str) -> str:
    """A sticky routing key that the table sends to ``version`` (same hash as the ingress)."""
    return next(k for k in (f"user-{n}" for n in range(100_000)) if choose_version(table, k, "-") == version)


def _app_running(version: str) -> bool:
    from ray import serve

    app = serve.status().applications.get(version_app_name(MODEL, version))
    return app is not None and str(getattr(app.status, "value", app.status)) == "RUNNING"


@pytest.fixture(scope="module")
def world(serve_port, tmp_path_factory):
    from ray import serve

    root = str(tmp_path_factory.mktemp("rollout-store"))
    cfg = _base_config(root, serve_port)
    storage = Storage(root)
    with pytest.MonkeyPatch.context() as mp:  # the ingress replica reads the token at deploy time
        mp.setenv(TOKEN_ENV, TOKEN)
        deploy_ingress([cfg])
    w = World(cfg, storage, f"http://127.0.0.1:{serve_port}")
    ingest_table(storage, cfg, w.stream.slice(0, BOOT).to_table(label="y"), time.time())
    start_controller(cfg)
    try:
        first = w.wait_event("promoted", 0.0)
        w.champion = first.version
        w.routed({w.champion: 100.0}, timeout=WAIT)  # the first route waits for its deploy
        yield w
    finally:
        stop_controller(MODEL)
        clear_faults(storage, MODEL)
        serve.delete(INGRESS_APP)
        for v in Registry(storage, MODEL).list_versions():
            if version_app_name(MODEL, v) in serve.status().applications:
                serve.delete(version_app_name(MODEL, v), _blocking=False)


# -- 1. approval gate ---------------------------------------------------------------------

def test_approval_gate_holds_the_candidate_until_approved_over_http(world):
    champ, t0 = world.champion, world.mark()
    submit_command(world.storage, MODEL, "retrain", who="ana", why="new labels arrived", now=time.time())
    asked = world.wait_event("approval_requested", t0)
    cand = asked.version
    assert cand != champ and asked.data["approval_for"] == "canary" and ":approve" in asked.reason
    requested = world.wait_event("retrain_requested", t0)
    assert requested.data["who"] == "ana" and requested.data["urgent"] is True

    # Held: ticks go by, traffic flows, the champion keeps all of it.
    ticks = ray.get(get_controller(MODEL).status.remote())["ticks"]
    _until(lambda: ray.get(get_controller(MODEL).status.remote())["ticks"] >= ticks + 6, 60, "six more ticks",
           step=world.send)
    assert read_routing(world.storage, MODEL).weights == {champ: 100.0}
    assert {world.send()["model_version"] for _ in range(5)} == {champ}
    state = load_state(world.storage, MODEL)
    assert state.rollout.value == "approval" and state.candidate == cand
    assert not world.events("canary_started", t0)

    # A wrong or missing token: 401 with a challenge, and no command is written.
    commands = world.storage.list(commands_prefix(MODEL))
    for token in ("not-the-token", None):
        r = world.admin("approve", {"version": cand, "why": "sneaky"}, token=token)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer"), r.text
    assert world.storage.list(commands_prefix(MODEL)) == commands

    t1 = world.mark()
    r = world.admin("approve", {"version": cand, "why": "gate numbers reviewed", "who": "alice"})
    assert r.status_code == 202 and r.json()["who"] == "alice", r.text
    approved = world.wait_event("approved", t1, cand)
    assert approved.data["who"] == "alice" and approved.data["why"] == "gate numbers reviewed"
    assert "alice approved" in approved.reason
    started = world.wait_event("canary_started", t1, cand)
    assert started.t >= approved.t and started.data["weight"] == 10
    world.routed({champ: 90.0, cand: 10.0})
    assert [e.kind.value for e in world.events(since=t0) if e.kind.value in ("approval_requested", "approved")] \
        == ["approval_requested", "approved"]


# -- 2. bad canaries ------------------------------------------------------------------------

def _candidate_in_canary(world: World) -> str:
    """The candidate now in canary, or a new one: operator retrain, approved by command (CLI path)."""
    state = load_state(world.storage, MODEL)
    if state.rollout.value == "canary":
        return state.candidate
    t0 = world.mark()
    submit_command(world.storage, MODEL, "retrain", who="ci", why="next bad canary", now=time.time())
    cand = world.wait_event("approval_requested", t0).version
    submit_command(world.storage, MODEL, "approve", version=cand, who="ci", why="chaos test", now=time.time())
    world.wait_event("canary_started", t0, cand)
    return cand


BAD_CANARIES = [
    ("errors", {"abort_fraction": 1.0}, "canary answered none of its 20 requests"),
    ("nan", {"nan_fraction": 1.0}, "canary answered none of its 20 requests"),
    ("latency", {"delay_ms": 3000.0}, "canary p95 latency"),
]


@pytest.mark.parametrize("kind, fault, expect", BAD_CANARIES, ids=[c[0] for c in BAD_CANARIES])
def test_bad_canary_is_rolled_back_on_its_first_evidence_with_the_champion_untouched(world, kind, fault, expect):
    champ = world.champion
    cand = _candidate_in_canary(world)
    table = world.routed({champ: 90.0, cand: 10.0})
    assert table.champion == champ
    write_faults(world.storage, MODEL, {cand: fault})
    time.sleep(3.0)  # the ingress re-reads faults.json with the routing table, every 0.1 s (busy cores: margin)
    try:
        # The minimum evidence for a verdict on each side (sticky keys): 20 served rows for the
        # error checks, which one request of 20 rows gives; 20 timed *requests* for latency
        # (the rows of one request share its latency), sent concurrently.
        requests_per_side = 20 if kind == "latency" else 1
        with ThreadPoolExecutor(requests_per_side) as pool:
            champ_key, cand_key = _key_for(table, champ), _key_for(table, cand)
            assert {b["model_version"] for b in pool.map(lambda _: world.send(key=champ_key),
                                                          range(requests_per_side))} == {champ}
            since, t_bad = world.mark(), time.time()
            bodies = list(pool.map(lambda _: world.send(key=cand_key), range(requests_per_side)))
        # A failed canary call is retried on the champion; a slow one is slow, not failed.
        assert {b["model_version"] for b in bodies} == {cand if kind == "latency" else champ}
        rolled = world.wait_event("rolled_back", since, cand)
        seconds = time.time() - t_bad
    finally:
        clear_faults(world.storage, MODEL)
    print(f"\n[{kind}] canary request sent -> rolled_back seen: {seconds:.2f}s ({rolled.reason})")
    assert expect in rolled.reason and f"{champ} back to 100%" in rolled.reason
    if kind == "latency":
        assert re.search(r"\((\d+) vs (\d+) requests at 10%\)", rolled.reason), rolled.reason
    # Never more than the canary's 10% away from the champion, which stayed champion throughout.
    steps = world.events(version=cand)
    assert not [e for e in steps if e.kind.value in ("canary_step", "promoted")]
    world.routed({champ: 100.0})
    _until(lambda: "canary" not in world.registry.aliases(), 30, "the canary alias to go")  # set after the route
    assert world.registry.aliases()["champion"] == champ
    assert _app_running(champ)
    state = load_state(world.storage, MODEL)
    assert state.champion == champ and state.rollout.value == "stable" and state.candidate is None
    assert {world.send()["model_version"] for _ in range(3)} == {champ}


# -- 3. quota ---------------------------------------------------------------------------------

def _recent_starts(world: World) -> list[float]:
    state = load_state(world.storage, MODEL)
    return sorted(r.start_t for r in state.retrain_history if time.time() - r.start_t < 3600)


def test_quota_defers_an_operator_retrain_with_reason_and_retry_time(world):
    starts = _recent_starts(world)
    n = len(starts)
    assert n == QUOTA, f"expected the bootstrap and three bad canaries' retrains in the last hour, got {n}"
    t0 = world.mark()
    submit_command(world.storage, MODEL, "retrain", who="bob", why="weekly refresh", now=time.time())
    deferred = world.wait_event("retrain_deferred", t0)
    assert f"quota: {n}/{n} retrains in the last hour; next slot in" in deferred.reason
    assert "it runs when allowed" in deferred.reason
    assert deferred.data["retry_at"] == pytest.approx(starts[0] + 3600, abs=1.0)
    assert deferred.data["queued"] == ["operator"]
    # It waits: more ticks, no retrain starts, the request stays queued.
    ticks = ray.get(get_controller(MODEL).status.remote())["ticks"]
    _until(lambda: ray.get(get_controller(MODEL).status.remote())["ticks"] >= ticks + 4, 60, "four more ticks")
    assert not world.events("retrain_started", t0)
    assert len(world.events("retrain_deferred", t0)) == 1  # said once, not every tick
    state = load_state(world.storage, MODEL)
    assert state.retrain.value == "pending" and [r.kind for r in state.retrain_queue] == ["operator"]
    assert read_routing(world.storage, MODEL).weights == {world.champion: 100.0}


def test_deferred_retrain_runs_once_the_quota_is_lifted_after_a_restart(world):
    t0 = world.mark()
    world.restart_controller(world.cfg.with_overrides(
        quota={"max_retrains_per_hour": QUOTA + 1},
        # the next phase (probation): no approval, two quick canary steps, 100 late labels
        rollout={"require_approval": [], "canary_steps": [50, 100], "min_labeled_per_step": 30,
                 "min_seconds_per_step": 0, "quality_margin": 0.3, "probation_labels": 100,
                 # the canary's first request or two meet a cold replica: a p95 over so few requests
                 # can exceed 3x the warm champion's (not what this phase is about)
                 "max_latency_ratio": 100}))
    started = world.wait_event("retrain_started", t0)
    assert started.data["purpose"] == "operator" and "requested by bob: weekly refresh" in started.reason
    assert ray.get(get_controller(MODEL).status.remote())["restored"] is True
    # the event is appended before the state that drained the queue is saved
    _until(lambda: not load_state(world.storage, MODEL).retrain_queue, 10, "the queue drained in the saved state")


# -- 4. probation -------------------------------------------------------------------------------

def test_probation_rolls_back_a_champion_whose_late_labels_go_bad(world):
    champ, t0 = world.champion, world.mark()
    cand = _until(lambda: (s := load_state(world.storage, MODEL)).rollout.value == "canary" and s.candidate,
                  WAIT, "the operator retrain's canary")
    promoted = world.wait_event(("promoted", "rolled_back"), t0, cand, step=world.send)  # true labels
    assert promoted.kind.value == "promoted", promoted.reason
    assert promoted.data["probation"] is True and "on probation for 100 late labels" in promoted.reason
    # A tick appends its events, saves its state, then runs its actions (alias, then route):
    # once the route is written, the state and the alias are too.
    world.routed({cand: 100.0})
    state = load_state(world.storage, MODEL)
    assert state.rollout.value == "probation" and state.champion == cand and state.previous_champion == champ
    assert world.registry.aliases()["champion"] == cand
    assert _app_running(champ)  # the previous champion is kept deployed, ready to take traffic

    rolled = world.wait_event("rolled_back", promoted.t, cand, step=lambda: world.send(wrong_for=cand))
    assert rolled.reason.startswith(f"probation: {cand} realized accuracy")
    assert f"< {champ}" in rolled.reason and f"{champ} back to 100%" in rolled.reason
    world.routed({champ: 100.0})
    assert world.registry.aliases()["champion"] == champ
    state = load_state(world.storage, MODEL)
    assert state.champion == champ and state.rollout.value == "stable" and state.previous_champion is None
    assert not world.events("probation_passed", promoted.t)
    assert world.send()["model_version"] == champ


# -- 5. error budget -------------------------------------------------------------------------------

def _answered(world: World, statuses: list[int]) -> None:
    """One predict that may fail (the champion itself fails: no fallback); labels for answers."""
    r, y = world.post_predict()
    statuses.append(r.status_code)
    if r.status_code == 200:
        world.label(r.json(), y)
    else:
        assert r.status_code == 503 and "injected_abort" in r.text, r.text


def test_spent_error_budget_freezes_refresh_retrains_but_not_urgent_ones(world):
    champ = world.champion
    short = {"long_seconds": 20, "short_seconds": 5, "burn_rate": 14.4}
    world.restart_controller(world.cfg.with_overrides(
        slo={"period_seconds": 20, "fast": short, "slow": {**short, "short_seconds": 10, "burn_rate": 6},
             "max_error_rate": 0.01, "p95_latency_ms": 60_000, "min_accuracy": 0.0},
        drift={"retrain_on_feature_drift": True, "consecutive_windows": 1, "accuracy_drop": 0.99,
               "sequential": "none"},
        rollout={"probation_labels": 0, "min_labeled_per_step": 1000},  # the urgent canary holds at 50%
        quota={"max_retrains_per_hour": 100}))
    t0 = world.mark()
    statuses: list[int] = []
    traffic = functools.partial(_answered, world, statuses)
    write_faults(world.storage, MODEL, {champ: {"abort_fraction": 0.3}})
    try:
        frozen = world.wait_event("budget_frozen", t0, step=traffic)
        assert frozen.reason.startswith("error-rate budget exhausted:") and "> 1.0% allowed" in frozen.reason
        assert 503 in statuses and 200 in statuses
        _until(lambda: load_state(world.storage, MODEL).budget_frozen, 10, "budget_frozen in the saved state")

        # An operator retrain is urgent: it runs, and its rollout starts, while frozen (the
        # failing traffic goes on meanwhile, so the budget stays spent).
        t1 = world.mark()
        submit_command(world.storage, MODEL, "retrain", who="carol", why="urgent fix", now=time.time())
        cand = world.wait_event("canary_started", t1, step=traffic).version
        assert world.events("retrain_started", t1) and not world.events("budget_unfrozen", t0)
        submit_command(world.storage, MODEL, "rollback", who="carol", why="not this one", now=time.time())
        assert "rollback by carol" in world.wait_event("rolled_back", t1, cand).reason

        # A covariate shift: the feature-drift retrain only refreshes a healthy model, so it waits.
        t2, world.shift = world.mark(), 4.0
        deferred = world.wait_event("retrain_deferred", t2, step=traffic)
        assert deferred.reason.startswith("budget: error-rate budget exhausted")
        assert "a retrain that only refreshes a healthy model waits" in deferred.reason
        assert deferred.data["queued"] == ["feature_drift"]
        assert world.events("drift_detected", t2) and not world.events("retrain_started", t2)
        assert read_routing(world.storage, MODEL).weights == {champ: 100.0}
    finally:
        clear_faults(world.storage, MODEL)

    # The faults stop; once the failed calls leave the 20 s budget period, the retrain runs.
    t3 = world.mark()
    unfrozen = world.wait_event("budget_unfrozen", t3, step=traffic, timeout=90)
    print(f"\nbudget frozen at +{frozen.t - t0:.1f}s, unfrozen {unfrozen.t - t3:.1f}s after the faults stopped")
    started = world.wait_event("retrain_started", t3, step=traffic)
    assert started.t >= unfrozen.t and "feature drift" in started.reason
    assert started.data["purpose"] == "drift"
    assert world.registry.aliases()["champion"] == champ
