"""The controller killed at each step boundary recovers exactly once.

Real :class:`~lifelong_ray.control.controller.Controller`, real storage, registry,
logs, audit log and routing table, in-process (the promotion's actions are
alias and routing writes: no Ray needed). A crash is a ``BaseException`` raised
at the boundary, which the loop does not catch (like a SIGKILL, nothing after it
runs); the "restart" is a new Controller on the same storage.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from lifelong_ray.clock import Clock
from lifelong_ray.config import EstimatorConfig, parse_config
from lifelong_ray.control import controller as ctl
from lifelong_ray.data.logs import ModelLogs, feature_arrays
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import FeatureTransform, columns_from_table
from lifelong_ray.events import AuditLog, EventKind
from lifelong_ray.policy.lifecycle import RolloutStage
from lifelong_ray.policy.model import ControllerState
from lifelong_ray.registry.store import Registry
from lifelong_ray.serving.routing import read_routing
from lifelong_ray.storage import Storage
from lifelong_ray.training.estimators import build_module


class Killed(BaseException):
    """A crash: not an Exception, so the loop's error handling does not catch it."""


class StepClock(Clock):
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        self.t += 1.0
        return self.t


def _cfg(root: str):
    return parse_config({
        "model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
        "training": {"runner": "local"},
        "rollout": {"canary_steps": [50, 100], "min_labeled_per_step": 20, "retire_grace_seconds": 1000},
        "storage": {"root": root},
    })


def _register_two(reg: Registry, cfg) -> None:
    schema = Schema(cfg.model)
    ref = pa.table({"x": np.linspace(-1, 1, 64)})
    transform = FeatureTransform.fit(columns_from_table(ref, schema), schema)
    est = EstimatorConfig(kind="logistic")
    for job in ("j1", "j2"):
        torch.manual_seed(0)
        module = build_module(est, transform.n_out, 2)
        reg.register(state_dict=module.state_dict(), transform=transform, estimator=est, n_in=transform.n_out,
                     classes=[0, 1], reference=ref, metadata={"job_id": job})


@pytest.fixture
def canary_at_last_step(tmp_path):
    """A canary of v0002 at 50% whose labeled step makes decide() promote it."""
    cfg = _cfg(str(tmp_path))
    storage = Storage(cfg.storage.root)
    reg = Registry(storage, "m")
    _register_two(reg, cfg)
    reg.set_alias("champion", "v0001")
    reg.set_alias("canary", "v0002")
    state = ControllerState(model="m", seq=7, champion="v0001", champion_reference_accuracy=0.9,
                            rollout=RolloutStage.CANARY, candidate="v0002", step_index=0, step_started_t=100.0,
                            weights={"v0001": 50.0, "v0002": 50.0}, routing_generation=3,
                            gate={"candidate_accuracy": 0.95, "champion_accuracy": 0.5, "holdout_rows": 300})
    storage.write_json(ctl.state_path("m"), state.model_dump(mode="json"))
    logs = ModelLogs(storage, "m")
    for version, correct in (("v0002", 40), ("v0001", 20)):  # 100% vs 50% on 40 labels each
        ids = [f"{version}-{i}" for i in range(40)]
        x = np.linspace(-1, 1, 40)
        logs.append_predictions(request_ids=ids, t=110.0, version=version,
                                features=feature_arrays({"x": x}, ["x"], set()),
                                predictions=[1] * 40, confidence=[0.9] * 40, latency_ms=5.0)
        logs.append_feedback(ids, [1] * correct + [0] * (40 - correct), t=120.0)
    return cfg, storage, reg


def _events(storage, kind):
    return [e for e in AuditLog(storage, "m").read() if e.kind == kind]


def _assert_promoted_once(cfg, storage, reg):
    c = ctl.Controller(cfg, clock=StepClock(200.0))  # restart
    for _ in range(3):
        c.tick()
    assert len(_events(storage, EventKind.PROMOTED)) == 1
    assert c.state.champion == "v0002" and c.state.rollout == RolloutStage.STABLE
    assert c.state.pending_actions == []
    table = read_routing(storage, "m")
    assert table.weights == {"v0002": 100.0} and table.generation == 4  # written once, re-applied idempotently
    assert reg.aliases() == {"champion": "v0002"}  # router and registry agree


def test_a_clean_tick_promotes_once(canary_at_last_step):
    cfg, storage, reg = canary_at_last_step
    _assert_promoted_once(cfg, storage, reg)


def test_killed_after_persisting_events_before_persisting_state(canary_at_last_step, monkeypatch):
    cfg, storage, reg = canary_at_last_step
    c = ctl.Controller(cfg, clock=StepClock(150.0))
    monkeypatch.setattr(c, "_save", lambda: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        c.tick()
    assert len(_events(storage, EventKind.PROMOTED)) == 1  # written, but the state still says canary
    monkeypatch.undo()
    _assert_promoted_once(cfg, storage, reg)  # re-decided under the same tick key: no duplicate event


@pytest.mark.parametrize("crash_at_action", [0, 1, 2])  # before acting, mid-actions, before the last one
def test_killed_between_actions(canary_at_last_step, monkeypatch, crash_at_action):
    cfg, storage, reg = canary_at_last_step
    c = ctl.Controller(cfg, clock=StepClock(150.0))
    real, calls = c.executor.execute, []

    def execute(action):
        if len(calls) == crash_at_action:
            raise Killed()
        calls.append(action.kind.value)
        real(action)

    monkeypatch.setattr(c.executor, "execute", execute)
    with pytest.raises(Killed):
        c.tick()
    persisted = ctl.load_state(storage, "m")
    assert persisted.champion == "v0002" and len(persisted.pending_actions) == 3  # persisted before acting
    monkeypatch.undo()
    _assert_promoted_once(cfg, storage, reg)


def test_killed_after_acting_before_clearing_pending(canary_at_last_step, monkeypatch):
    cfg, storage, reg = canary_at_last_step
    c = ctl.Controller(cfg, clock=StepClock(150.0))
    real_save, saves = c._save, []

    def save():
        saves.append(1)
        if len(saves) == 2:  # the save after the actions ran
            raise Killed()
        real_save()

    monkeypatch.setattr(c, "_save", save)
    with pytest.raises(Killed):
        c.tick()
    assert read_routing(storage, "m").weights == {"v0002": 100.0}  # the actions ran
    monkeypatch.undo()
    _assert_promoted_once(cfg, storage, reg)
