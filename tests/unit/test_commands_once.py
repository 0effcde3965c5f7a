"""Operator commands are applied exactly once, however many there are.

Real :class:`~lifelong_ray.control.controller.Controller`, real storage, registry,
audit log and command files, in-process; the clock is a fake one the test moves.
Every command leaves exactly one audit event naming its id (what it did, or
``command_rejected``), so counting events per id counts applications.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch

from lifelong_ray.config import EstimatorConfig, parse_config
from lifelong_ray.control import controller as ctl
from lifelong_ray.control.commands import commands_prefix, submit_command
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import FeatureTransform, columns_from_table
from lifelong_ray.events import AuditLog, EventKind
from lifelong_ray.control.executor import Executor
from lifelong_ray.policy.model import ControllerState
from lifelong_ray.registry.store import Registry
from lifelong_ray import storage as storage_module
from lifelong_ray.storage import Storage
from lifelong_ray.training.estimators import build_module


class Killed(BaseException):
    """A crash: not an Exception, so the loop's error handling does not catch it."""


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def _cfg(root: str, **controller):
    return parse_config({
        "model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
        "training": {"runner": "local"},
        "rollout": {"retire_grace_seconds": 10**9},
        "storage": {"root": root},
        "controller": controller,
    })


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A champion v0002 with a previous champion v0001 to roll back to. Deploying needs
    Ray: here a version is taken as deployed (the other actions are storage writes)."""
    monkeypatch.setattr(Executor, "_deploy", lambda self, action: None)
    # durability to the device is not what is tested here: skip the fsyncs (a 10x faster test)
    real_write = Storage.write_bytes
    monkeypatch.setattr(Storage, "write_bytes", lambda self, rel, data, fsync=True: real_write(self, rel, data,
                                                                                               fsync=False))
    monkeypatch.setattr(storage_module, "_fsync_dir", lambda path: None)
    cfg = _cfg(str(tmp_path))
    storage = Storage(cfg.storage.root)
    reg = Registry(storage, "m")
    ref = pa.table({"x": np.linspace(-1, 1, 64)})
    transform = FeatureTransform.fit(columns_from_table(ref, Schema(cfg.model)), Schema(cfg.model))
    est = EstimatorConfig(kind="logistic")
    for job in ("j1", "j2"):
        torch.manual_seed(0)
        reg.register(state_dict=build_module(est, transform.n_out, 2).state_dict(), transform=transform,
                     estimator=est, n_in=transform.n_out, classes=[0, 1], reference=ref, metadata={"job_id": job})
    reg.set_alias("champion", "v0002")
    state = ControllerState(model="m", seq=1, champion="v0002", previous_champion="v0001",
                            champion_reference_accuracy=0.9, previous_reference_accuracy=0.9,
                            weights={"v0002": 100.0}, routing_generation=1)
    storage.write_json(ctl.state_path("m"), state.model_dump(mode="json"))
    return cfg, storage


def _controller(cfg, clock) -> ctl.Controller:
    return ctl.Controller(cfg, clock=clock)


def _events_by_command(storage) -> Counter:
    return Counter(e.data["command_id"] for e in AuditLog(storage, "m").read() if "command_id" in e.data)


def test_5000_commands_are_each_applied_exactly_once_across_a_restart(world):
    cfg, storage = world
    clock = FakeClock(1000.0)
    c = _controller(cfg, clock)
    kinds = ["pause", "resume", "rollback", "pause", "pause", "resume", "approve"]
    submitted = []
    per_tick, total = 25, 5000
    for i in range(total):
        submitted.append(submit_command(storage, "m", kinds[i % len(kinds)], who="ops", why=f"#{i}",
                                        now=clock.now()))
        clock.t += 0.01 if i % 3 else 0.0  # some commands share a millisecond (taken in by id then)
        if (i + 1) % per_tick == 0:
            c.tick()
            clock.t += 1.0
            if i + 1 == total // 2:
                c = _controller(cfg, clock)  # a restart in the middle
    for _ in range(3):  # a few more ticks: nothing is taken in again
        clock.t += 1.0
        c.tick()
    expected, paused, rolled_back = Counter(), False, False
    for cmd in sorted(submitted, key=lambda x: (x.t, x.id)):  # the order they are taken in
        kind = cmd.kind.value
        if kind in ("pause", "resume"):
            expected[("paused" if kind == "pause" else "resumed") if paused != (kind == "pause")
                     else "command_rejected"] += 1
            paused = kind == "pause"
        elif kind == "rollback":
            expected["command_rejected" if rolled_back else "rolled_back"] += 1
            rolled_back = True
        else:
            expected["command_rejected"] += 1
    per_id = _events_by_command(storage)
    assert set(per_id) == {x.id for x in submitted}
    assert max(per_id.values()) == 1, [i for i, n in per_id.items() if n > 1][:5]
    kinds_seen = Counter(e.kind.value for e in AuditLog(storage, "m").read() if "command_id" in e.data)
    assert kinds_seen == expected
    assert c.state.champion == "v0001" and c.state.paused is paused
    assert storage.list(commands_prefix("m"), suffix=".json", recursive=False) == []  # all archived
    led = c.state.command_ledger  # bounded: only the keys within the skew window of the mark are kept
    floor = int(led.mark[:15]) - int(cfg.controller.command_skew_seconds * 1000)
    assert led.taken == total and led.mark == max(x.key for x in submitted)
    assert sorted(led.recent) == sorted(x.key for x in submitted if int(x.key[:15]) >= floor)
    assert len(led.recent) < total / 2


def test_a_late_command_within_the_skew_window_is_applied_once(world):
    cfg, storage = world
    clock = FakeClock(1000.0)
    c = _controller(cfg, clock)
    submit_command(storage, "m", "pause", who="a", why="first", now=1000.0)
    c.tick()
    clock.t = 1010.0
    late = submit_command(storage, "m", "resume", who="b", why="clock 5 s behind", now=1005.0)
    c.tick()
    c.tick()
    assert _events_by_command(storage)[late.id] == 1
    assert [e.kind for e in AuditLog(storage, "m").read() if e.data.get("command_id") == late.id] == \
        [EventKind.RESUMED]
    assert c.state.paused is False


def test_a_command_older_than_the_skew_window_is_refused_once_never_applied(world):
    cfg, storage = world
    cfg = cfg.with_overrides(controller={"command_skew_seconds": 60})
    clock = FakeClock(1000.0)
    c = _controller(cfg, clock)
    submit_command(storage, "m", "pause", who="a", why="first", now=1000.0)
    c.tick()
    clock.t = 1200.0
    stale = submit_command(storage, "m", "rollback", who="b", why="clock far behind", now=900.0)
    for _ in range(3):
        c.tick()
    (ev,) = [e for e in AuditLog(storage, "m").read() if e.data.get("command_id") == stale.id]
    assert ev.kind == EventKind.COMMAND_REJECTED and "command_skew_seconds=60" in ev.reason
    assert c.state.champion == "v0002"  # not rolled back
    assert storage.list(commands_prefix("m"), suffix=".json", recursive=False) == []


def test_killed_after_saving_before_archiving_takes_nothing_in_twice(world, monkeypatch):
    cfg, storage = world
    clock = FakeClock(1000.0)
    c = _controller(cfg, clock)
    cmd = submit_command(storage, "m", "rollback", who="a", why="bad champion", now=1000.0)
    real_archive = ctl.archive_commands
    monkeypatch.setattr(ctl, "archive_commands", lambda *a, **k: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        c.tick()
    monkeypatch.setattr(ctl, "archive_commands", real_archive)
    assert ctl.load_state(storage, "m").champion == "v0001"  # saved, the file still waits
    assert len(storage.list(commands_prefix("m"), suffix=".json", recursive=False)) == 1
    clock.t = 5000.0  # long after: the mark moved on by then
    submit_command(storage, "m", "pause", who="a", why="later", now=clock.t)
    c = _controller(cfg, clock)
    for _ in range(3):
        clock.t += 1
        c.tick()
    assert _events_by_command(storage)[cmd.id] == 1
    assert c.state.champion == "v0001" and c.state.paused
    assert storage.list(commands_prefix("m"), suffix=".json", recursive=False) == []


def test_a_state_from_before_the_ledger_does_not_replay_its_commands(world):
    cfg, storage = world
    old = [submit_command(storage, "m", "pause" if i % 2 == 0 else "resume", who="a", why=str(i), now=100.0 + i)
           for i in range(1500)]
    state = ctl.load_state(storage, "m")
    state.commands_done = [c.id for c in old[-1000:]]  # what the old code remembered
    storage.write_json(ctl.state_path("m"), state.model_dump(mode="json"))
    new = submit_command(storage, "m", "pause", who="a", why="new", now=5000.0)
    clock = FakeClock(5001.0)
    c = _controller(cfg, clock)
    c.tick()
    c.tick()
    assert dict(_events_by_command(storage)) == {new.id: 1}
    assert c.state.paused and c.state.commands_done == []


def test_a_file_that_is_not_a_command_is_moved_aside_and_the_loop_goes_on(world):
    cfg, storage = world
    clock = FakeClock(1000.0)
    c = _controller(cfg, clock)
    storage.write_bytes(f"{commands_prefix('m')}/000000000999000-bad.json", b"{not json")
    storage.write_bytes(f"{commands_prefix('m')}/notes.json", b"{}")
    ok = submit_command(storage, "m", "pause", who="a", why="x", now=1000.0)
    assert c.tick() is not None
    assert _events_by_command(storage) == Counter({ok.id: 1})
    assert storage.list(commands_prefix("m"), suffix=".json", recursive=False) == []
    assert len(storage.list(f"{commands_prefix('m')}/invalid")) == 2
