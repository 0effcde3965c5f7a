"""Level-triggered reconcile of Serve with the controller state (no Ray: a fake Serve)."""

from __future__ import annotations

import pytest

from lifelong_ray.config import parse_config
from lifelong_ray.control import controller as ctl
from lifelong_ray.control.reconcile import ALERT_AFTER, RETRY_BASE_S, Reconciler
from lifelong_ray.events import AuditLog, EventKind
from lifelong_ray.policy.lifecycle import RolloutStage
from lifelong_ray.policy.model import ControllerState
from lifelong_ray.policy.serving_target import plan_serving, required_versions
from lifelong_ray.serving.readiness import readiness
from lifelong_ray.serving.routing import RoutingTable
from lifelong_ray.serving.wait import wait_ready
from lifelong_ray.storage import Storage


class FakeServe:
    def __init__(self, apps=(), broken=()) -> None:
        self.apps, self.broken, self.calls = set(apps), set(broken), []

    def running(self) -> set[str]:
        return set(self.apps)

    def deploy(self, v: str) -> None:
        self.calls.append(("deploy", v))
        if v in self.broken:
            raise RuntimeError(f"Serve application lifelong-m-{v} is DEPLOY_FAILED: constructor raised")
        self.apps.add(v)

    def retire(self, v: str) -> None:
        self.calls.append(("retire", v))
        self.apps.discard(v)


def test_required_versions_follow_the_rollout():
    canary = ControllerState(model="m", champion="v1", candidate="v2", rollout=RolloutStage.CANARY,
                             weights={"v1": 90.0, "v2": 10.0})
    assert required_versions(canary) == {"v1", "v2"}
    shadow = ControllerState(model="m", champion="v1", candidate="v2", rollout=RolloutStage.SHADOW,
                             weights={"v1": 100.0})
    assert required_versions(shadow) == {"v1", "v2"}                 # mirrored requests reach it
    probation = ControllerState(model="m", champion="v2", previous_champion="v1", rollout=RolloutStage.PROBATION,
                                weights={"v2": 100.0})
    assert required_versions(probation) == {"v1", "v2"}              # kept ready for an instant rollback
    stable = ControllerState(model="m", champion="v2", previous_champion="v1", weights={"v2": 100.0})
    assert required_versions(stable) == {"v2"}
    assert required_versions(ControllerState(model="m")) == set()


def test_plan_leaves_versions_in_their_retire_grace_alone():
    s = ControllerState(model="m", champion="v2", weights={"v2": 100.0}, retiring={"v1": 10.0})
    assert plan_serving(s, {"v1", "v2"}).in_sync
    assert plan_serving(s, {"v2"}).in_sync                           # not redeployed either
    assert plan_serving(s, {"v0", "v2"}).retire == ("v0",)


def test_a_restart_with_no_serve_apps_redeploys_the_champion_on_the_first_tick(tmp_path):
    cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
                        "storage": {"root": str(tmp_path)}})
    storage = Storage(str(tmp_path))
    state = ControllerState(model="m", seq=9, champion="v0002", weights={"v0002": 100.0}, routing_generation=3)
    storage.write_json(ctl.state_path("m"), state.model_dump(mode="json"))
    serve = FakeServe(apps={"v0001"})                                 # a stray from before
    c = ctl.Controller(cfg, serving=serve)
    c.tick()
    assert serve.apps == {"v0002"}
    assert c.reconciler.status()["in_sync"] and c.reconciler.status()["missing"] == []
    kinds = [(e.kind, e.version) for e in AuditLog(storage, "m").read()]
    assert (EventKind.SERVING_RECONCILED, "v0002") in kinds and (EventKind.SERVING_RECONCILED, "v0001") in kinds
    c.tick()
    assert serve.calls == [("deploy", "v0002"), ("retire", "v0001")]  # in sync: nothing more


def test_a_champion_that_cannot_be_deployed_backs_off_alerts_once_and_keeps_the_rest_serving():
    serve = FakeServe(apps={"v1"}, broken={"v2"})
    r = Reconciler("m", serve)
    s = ControllerState(model="m", champion="v1", candidate="v2", rollout=RolloutStage.CANARY,
                        weights={"v1": 90.0, "v2": 10.0})
    events, t = [], 0.0
    for _ in range(40):
        events += r.reconcile(s, now=t)
        t += 1.0
    attempts = [c for c in serve.calls if c == ("deploy", "v2")]
    # 5 s, 10 s, 20 s backoff: 4 attempts in 40 s, not 40
    assert len(attempts) == 4 and RETRY_BASE_S == 5.0
    failed = [e for e in events if e.kind == EventKind.ACTION_FAILED]
    assert len(failed) == 1 and failed[0].data["attempts"] == ALERT_AFTER
    assert "could not deploy candidate v2" in failed[0].reason and "v1 keeps serving" in failed[0].reason
    assert "DEPLOY_FAILED" in failed[0].reason
    assert serve.apps == {"v1"}                                        # nothing required was retired
    st = r.status()
    assert st["missing"] == ["v2"] and "constructor raised" in st["errors"]["v2"]
    serve.broken.clear()
    r.reconcile(s, now=t + 1000)
    assert serve.apps == {"v1", "v2"} and r.status()["errors"] == {} and r.status()["in_sync"]


def test_failures_of_versions_no_longer_required_are_forgotten():
    serve = FakeServe(broken={"v2"})
    r = Reconciler("m", serve)
    r.reconcile(ControllerState(model="m", champion="v2", weights={"v2": 100.0}), now=0.0)
    assert r.status()["errors"]
    r.reconcile(ControllerState(model="m"), now=1.0)
    assert r.status()["errors"] == {} and r.status()["in_sync"]


def test_readiness_names_the_version_that_cannot_be_called():
    t = RoutingTable(model="m", generation=2, weights={"v1": 100.0}, champion="v1")
    assert readiness(t, lambda v: False) == (False, "v1 (100% of traffic) cannot be called yet")
    ok, reason = readiness(t, lambda v: True)
    assert ok and "v1 100%" in reason


@pytest.mark.parametrize("ready_after", [0, 3, None])
def test_wait_ready_polls_until_ready_or_timeout(ready_after):
    t, calls = [0.0], []

    def probe():
        calls.append(t[0])
        ok = ready_after is not None and len(calls) > ready_after
        return ok, "ready" if ok else "v1 (100% of traffic) cannot be called yet"

    ok, reason, waited = wait_ready(probe, timeout_s=10, clock=lambda: t[0],
                                    sleep=lambda s: t.__setitem__(0, t[0] + s))
    if ready_after is None:
        assert not ok and waited >= 10 and "cannot be called" in reason
    else:
        assert ok and len(calls) == ready_after + 1
