"""Two controller actors on one storage root: only the lease holder acts; the other
stands by and takes over when the first is killed (real Ray, real actors, real storage)."""

from __future__ import annotations

import time

import pytest

from lifelong_ray.config import parse_config
from lifelong_ray.control.actor import NAMESPACE, ControllerActor, get_controller, start_controller, stop_controller
from lifelong_ray.control.commands import submit_command
from lifelong_ray.control.lease import read_lease
from lifelong_ray.events import AuditLog, EventKind
from lifelong_ray.storage import Storage

pytestmark = pytest.mark.integration

MODEL = "leader"


def _until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = pred()
        if out:
            return out
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _events(storage, kind=None):
    return [e for e in AuditLog(storage, MODEL).read() if kind is None or e.kind == kind]


def test_only_the_lease_holder_acts_and_the_standby_takes_over_when_it_is_killed(ray_session, tmp_path):
    import ray

    cfg = parse_config({
        "model": {"name": MODEL, "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
        "storage": {"root": str(tmp_path)},
        "controller": {"tick_seconds": 0.25, "lease_seconds": 2.0},
    })
    storage = Storage(cfg.storage.root)
    first = start_controller(cfg)
    _until(lambda: ray.get(first.status.remote())["role"] == "leader", 60, "the first controller to lead")
    # a second controller on the same storage (as from a second cluster): another name, another actor
    second = ControllerActor.options(name=f"{MODEL}-second", namespace=NAMESPACE).remote(cfg.model_dump(mode="json"))
    try:
        st = ray.get(second.status.remote())
        assert st["role"] == "standby" and st["lease_generation"] is None
        holder_a = ray.get(first.status.remote())["lease_holder"]

        pause = submit_command(storage, MODEL, "pause", who="ops", why="one", now=time.time())
        _until(lambda: _events(storage, EventKind.PAUSED), 30, "the pause")
        ticks = ray.get(second.status.remote())["ticks"]
        _until(lambda: ray.get(second.status.remote())["ticks"] >= ticks + 8, 30, "the standby to tick on")
        assert ray.get(second.status.remote())["role"] == "standby"
        assert len([e for e in _events(storage) if e.data.get("command_id") == pause.id]) == 1
        assert [e.data["holder"] for e in _events(storage, EventKind.LEADER_ACQUIRED)] == [holder_a]
        assert read_lease(storage, MODEL).holder == holder_a and read_lease(storage, MODEL).generation == 1

        ray.kill(first, no_restart=True)  # no clean stop: the lease just stops being renewed
        _until(lambda: ray.get(second.status.remote())["role"] == "leader", 60, "the standby to take over")
        _until(lambda: len(_events(storage, EventKind.LEADER_ACQUIRED)) == 2, 30, "its leader_acquired event")
        took = _events(storage, EventKind.LEADER_ACQUIRED)[-1]
        assert took.data["previous_holder"] == holder_a and took.data["generation"] == 2
        assert "stopped renewing generation 1" in took.reason

        resume = submit_command(storage, MODEL, "resume", who="ops", why="two", now=time.time())
        _until(lambda: _events(storage, EventKind.RESUMED), 30, "the resume, by the new leader")
        status = ray.get(second.status.remote())
        assert status["paused"] is False and status["restored"] is True
        for cmd in (pause, resume):
            assert len([e for e in _events(storage) if e.data.get("command_id") == cmd.id]) == 1
    finally:
        ray.get(second.stop.remote(), timeout=30)
        ray.kill(second, no_restart=True)
        stop_controller(MODEL)  # gone already; returns False
    with pytest.raises(ValueError):
        get_controller(MODEL)
    assert read_lease(storage, MODEL).released  # a clean stop hands over at once
