"""A failing action is retried with backoff, then abandoned; the loop goes on and the
policy reacts (candidate rolled back, champion kept, retrain freed). No Ray: the
real Controller on real storage, with an executor whose deploys of one version throw."""

from __future__ import annotations

import pytest

from lifelong_ray.clock import Clock
from lifelong_ray.config import parse_config
from lifelong_ray.control import controller as ctl
from lifelong_ray.control.commands import submit_command
from lifelong_ray.control.retry import Retries
from lifelong_ray.events import AuditLog, EventKind
from lifelong_ray.policy.decide import decide
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage
from lifelong_ray.policy.model import Action, ActionKind, ControllerState, FailedAction, Observations
from lifelong_ray.storage import Storage
from lifelong_ray.training.retrain import job_path


class ManualClock(Clock):
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


class FakeExecutor:
    """Records what ran; deploying ``broken`` raises, as a constructor failing its integrity check does."""

    def __init__(self, broken: str | None) -> None:
        self.broken, self.ran, self.tries = broken, [], 0

    def execute(self, a: Action) -> None:
        if a.kind == ActionKind.DEPLOY_VERSION and a.version == self.broken:
            self.tries += 1
            raise RuntimeError(f"artifact of {a.version}: weights.safetensors fails its sha256 check")
        self.ran.append(a)

    def retrain_failure(self, job_id: str):
        return None


def _cfg(root: str, **controller):
    return parse_config({
        "model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
        "training": {"runner": "local"},
        "rollout": {"canary_steps": [10, 100], "min_labeled_per_step": 20, "retire_grace_seconds": 1000},
        "controller": {"action_retries": 3, "action_backoff_seconds": 2.0, **controller},
        "storage": {"root": root},
    })


@pytest.fixture
def world(tmp_path):
    """Champion v0001 serving; retrain job j1 finished with a gated candidate v0002 whose deploy throws."""
    cfg = _cfg(str(tmp_path))
    storage = Storage(cfg.storage.root)
    state = ControllerState(model="m", seq=3, champion="v0001", champion_reference_accuracy=0.9,
                            weights={"v0001": 100.0}, routing_generation=1, retrain=RetrainStage.RUNNING,
                            retrain_job_id="j1", retrain_count=1)
    storage.write_json(ctl.state_path("m"), state.model_dump(mode="json"))
    storage.write_json(job_path("m", "j1"), {"job_id": "j1", "status": "ok", "version": "v0002",
                                            "candidate_accuracy": 0.95, "champion_accuracy": 0.9,
                                            "holdout_rows": 200, "train_rows": 800})
    clock = ManualClock(100.0)
    c = ctl.Controller(cfg, clock=clock)
    c.executor = FakeExecutor(broken="v0002")
    return c, clock, storage


def _kinds(storage, since=0.0):
    return [e.kind for e in AuditLog(storage, "m").read() if e.t >= since]


def test_a_deploy_that_keeps_failing_is_retried_with_backoff_then_the_candidate_is_rolled_back(world):
    c, clock, storage = world
    seqs = []
    for t in (100.0, 101.0, 102.0, 105.0, 106.0, 113.0, 114.0, 115.0):
        clock.t = t
        d = c.tick()
        assert d is not None  # observe and decide ran
        seqs.append(d.state.seq)
    assert seqs == list(range(4, 12))
    assert c.executor.tries == 4  # at 100, then after 2, 4 and 8 s: 102, 106, 114
    kinds = _kinds(storage)
    assert kinds.count(EventKind.ACTION_FAILED) == 1 and kinds.count(EventKind.ROLLED_BACK) == 1
    (failed,) = [e for e in AuditLog(storage, "m").read() if e.kind == EventKind.ACTION_FAILED]
    assert failed.t == 114.0 and "deploy_version v0002 failed 4 times" in failed.reason
    assert "sha256" in failed.reason and "set_routing" in failed.reason  # the routing skipped with it
    (rb,) = [e for e in AuditLog(storage, "m").read() if e.kind == EventKind.ROLLED_BACK]
    assert "v0002 could not be deployed after 4 attempts" in rb.reason and "v0001 back to 100%" in rb.reason
    assert c.state.rollout == RolloutStage.STABLE and c.state.candidate is None
    assert c.state.champion == "v0001" and c.state.weights == {"v0001": 100.0}
    assert c.state.pending_actions == []
    # no routing table ever sent traffic to the version that could not be deployed
    routes = [a for a in c.executor.ran if a.kind == ActionKind.SET_ROUTING]
    assert routes and all("v0002" not in a.weights and a.shadow is None for a in routes)
    assert routes[-1].weights == {"v0001": 100.0}


def test_operator_commands_apply_while_an_action_fails_and_after(world):
    c, clock, storage = world
    c.tick()  # the deploy fails; retry at 102
    submit_command(storage, "m", "pause", who="ana", why="look", now=100.5)
    clock.t = 101.0
    c.tick()
    assert c.state.paused and EventKind.PAUSED in _kinds(storage)
    for t in (102.0, 106.0, 114.0, 115.0):
        clock.t = t
        c.tick()
    assert c.state.candidate is None and c.state.pending_actions == []
    submit_command(storage, "m", "resume", who="ana", why="done", now=115.5)
    clock.t = 116.0
    c.tick()
    assert not c.state.paused and EventKind.RESUMED in _kinds(storage, since=116.0)


def test_a_restart_retries_a_failing_action_afresh(world, tmp_path):
    c, clock, storage = world
    c.tick()
    assert ctl.load_state(storage, "m").pending_actions[0].kind == ActionKind.DEPLOY_VERSION
    c2 = ctl.Controller(c.cfg, clock=clock)  # the real executor's deploy would need Ray: replace at once
    assert c2.state.pending_actions  # the init drain could not run it either (no Ray in unit tests)


def test_zero_retries_abandons_on_the_first_failure(tmp_path):
    r = Retries(retries=0, backoff_seconds=5.0)
    a = Action(kind=ActionKind.SET_ALIAS, alias="canary", version="v2")
    assert r.failed(a, RuntimeError("x"), now=1.0, queue=[a])
    (f,) = r.take_abandoned()
    assert f.attempts == 1 and f.error == "RuntimeError: x" and f.t == 1.0
    assert r.take_abandoned() == []


def test_the_backoff_doubles_per_retry():
    r = Retries(retries=3, backoff_seconds=2.0)
    a = Action(kind=ActionKind.RETIRE_VERSION, version="v1")
    nxt = []
    for now in (0.0, 2.0, 6.0):
        assert not r.failed(a, "e", now=now, queue=[a])
        nxt.append(r.waiting(a)[1])
    assert nxt == [2.0, 6.0, 14.0]
    assert r.failed(a, "e", now=14.0, queue=[a])


def test_only_actions_naming_the_abandoned_version_are_skipped():
    r = Retries(retries=0, backoff_seconds=1.0)
    deploy = Action(kind=ActionKind.DEPLOY_VERSION, version="v2")
    alias = Action(kind=ActionKind.SET_ALIAS, alias="canary", version="v2")
    route = Action(kind=ActionKind.SET_ROUTING, weights={"v1": 90.0, "v2": 10.0})
    unrelated = Action(kind=ActionKind.RETIRE_VERSION, version="v0")
    queue = [deploy, alias, route, unrelated]
    assert r.failed(deploy, "e", now=0.0, queue=queue)
    assert [r.dropped(a) for a in queue] == [True, True, True, False]
    assert r.forget_dropped(queue) == [unrelated]


# -- the policy's reactions (pure) ------------------------------------------------------

CFG = _cfg("/nonexistent")


def _failed(kind=ActionKind.DEPLOY_VERSION, **kw) -> FailedAction:
    return FailedAction(action=Action(kind=kind, **kw), error="RuntimeError: boom", attempts=4)


def test_a_champion_that_cannot_be_redeployed_leaves_the_serving_version_in_place():
    # an operator's rollback moved the champion back to v0001, whose redeploy fails; v0002 still serves
    st = ControllerState(model="m", champion="v0001", weights={"v0001": 100.0}, routing_generation=5,
                         retiring={"v0002": 40.0})
    obs = Observations(failed_actions=[_failed(version="v0001")], serving_weights={"v0002": 100.0})
    d = decide(st, obs, CFG, 50.0)
    assert [e.kind for e in d.events] == [EventKind.ACTION_FAILED, EventKind.CHAMPION_UNAVAILABLE]
    assert "v0002, the version still serving, stays champion" in d.events[-1].reason
    assert d.state.champion == "v0002" and d.state.weights == {"v0002": 100.0}
    assert "v0002" not in d.state.retiring and "v0001" in d.state.retiring
    assert [(a.kind, a.version) for a in d.actions][:1] == [(ActionKind.SET_ALIAS, "v0002")]
    assert d.actions[-1].kind == ActionKind.SET_ROUTING and d.actions[-1].weights == {"v0002": 100.0}


def test_a_serving_champion_whose_redeploy_fails_keeps_its_routing():
    st = ControllerState(model="m", champion="v0001", weights={"v0001": 100.0}, routing_generation=5)
    obs = Observations(failed_actions=[_failed(version="v0001")], serving_weights={"v0001": 100.0})
    d = decide(st, obs, CFG, 50.0)
    assert [e.kind for e in d.events] == [EventKind.ACTION_FAILED, EventKind.CHAMPION_UNAVAILABLE]
    assert "left as it is" in d.events[-1].reason
    assert d.state.champion == "v0001" and d.state.weights == {"v0001": 100.0} and d.actions == []


def test_a_first_version_that_cannot_be_deployed_is_given_up():
    st = ControllerState(model="m", champion="v0001", weights={"v0001": 100.0}, routing_generation=1)
    d = decide(st, Observations(failed_actions=[_failed(version="v0001")], serving_weights={}), CFG, 50.0)
    assert d.events[-1].kind == EventKind.CHAMPION_UNAVAILABLE and "no version serves" in d.events[-1].reason
    assert d.state.champion is None


def test_a_retrain_that_cannot_start_fails_and_frees_the_next_one():
    st = ControllerState(model="m", champion="v0001", weights={"v0001": 100.0}, retrain=RetrainStage.RUNNING,
                         retrain_job_id="m-retrain-0001", retrain_count=1)
    obs = Observations(failed_actions=[_failed(ActionKind.START_RETRAIN, job_id="m-retrain-0001")])
    d = decide(st, obs, CFG, 50.0)
    assert [e.kind for e in d.events] == [EventKind.ACTION_FAILED, EventKind.RETRAIN_FAILED]
    assert "could not be started" in d.events[-1].reason and d.state.retrain == RetrainStage.IDLE


def test_other_abandoned_actions_are_reported_only():
    st = ControllerState(model="m", champion="v0001", weights={"v0001": 100.0})
    d = decide(st, Observations(failed_actions=[_failed(ActionKind.RETIRE_VERSION, version="v0000")]), CFG, 50.0)
    assert [e.kind for e in d.events] == [EventKind.ACTION_FAILED] and d.actions == []
    assert d.state.champion == "v0001"


def test_an_operator_rollback_to_a_champion_that_cannot_be_redeployed_keeps_the_serving_one(tmp_path):
    from lifelong_ray.serving.routing import RoutingTable, read_routing, write_routing

    cfg = _cfg(str(tmp_path), action_retries=0)
    storage = Storage(cfg.storage.root)
    write_routing(storage, RoutingTable(model="m", generation=4, weights={"v0002": 100.0}, champion="v0002"))
    state = ControllerState(model="m", seq=9, champion="v0002", previous_champion="v0001",
                            weights={"v0002": 100.0}, routing_generation=4)
    storage.write_json(ctl.state_path("m"), state.model_dump(mode="json"))
    clock = ManualClock(100.0)
    c = ctl.Controller(cfg, clock=clock)
    c.executor = FakeExecutor(broken="v0001")  # the old champion's artifact no longer loads
    submit_command(storage, "m", "rollback", who="ana", why="v0002 looks off", now=99.0)
    c.tick()  # the rollback: deploy v0001 fails once and is abandoned (no retries configured)
    assert read_routing(storage, "m").weights == {"v0002": 100.0}  # never routed to v0001
    clock.t = 101.0
    c.tick()
    kinds = _kinds(storage)
    assert EventKind.ROLLED_BACK in kinds and EventKind.ACTION_FAILED in kinds
    (alert,) = [e for e in AuditLog(storage, "m").read() if e.kind == EventKind.CHAMPION_UNAVAILABLE]
    assert alert.version == "v0001" and "v0002, the version still serving, stays champion" in alert.reason
    assert c.state.champion == "v0002" and c.state.weights == {"v0002": 100.0}
    table = read_routing(storage, "m")
    assert table.weights == {"v0002": 100.0} and table.champion == "v0002"
