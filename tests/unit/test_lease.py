"""One leader per model: the lease, its fencing, and two controllers on one storage root.

Fake clocks only (each controller its own, to show the standby judges expiry on
its own clock); real storage, registry, audit log, command files and
:class:`~lifelong_ray.control.controller.Controller` objects, in-process.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest
import torch

from lifelong_ray.config import ConfigError, EstimatorConfig, parse_config
from lifelong_ray.control import controller as ctl
from lifelong_ray.control.commands import submit_command
from lifelong_ray.control.lease import Lease, LeaseLost, lease_prefix, read_lease
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import FeatureTransform, columns_from_table
from lifelong_ray.events import AuditLog, EventKind
from lifelong_ray.registry.store import CLAIM, Registry
from lifelong_ray.storage import Storage
from lifelong_ray.training.estimators import build_module


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def _lease(storage, holder, clock, seconds=10.0):
    return Lease(storage, "m", holder=holder, clock=clock, seconds=seconds)


# -- the lease alone ---------------------------------------------------------------------

def test_the_first_acquires_a_second_waits_and_renewals_keep_it_waiting(tmp_path):
    s = Storage(str(tmp_path))
    ca, cb = FakeClock(100.0), FakeClock(5000.0)  # clocks far apart: b judges on its own clock
    a, b = _lease(s, "a", ca), _lease(s, "b", cb)
    assert a.acquire() and a.generation == 1
    assert not b.acquire() and not b.held
    for _ in range(10):  # a renews every tick; b keeps seeing renewals, so it never takes over
        ca.t += 3.0
        cb.t += 3.0
        a.hold()
        assert not b.acquire()
    assert read_lease(s, "m").holder == "a" and read_lease(s, "m").renewals > 0


def test_an_unrenewed_lease_is_taken_over_with_the_next_generation_and_the_old_holder_is_fenced(tmp_path):
    s = Storage(str(tmp_path))
    ca, cb = FakeClock(100.0), FakeClock(5000.0)
    a, b = _lease(s, "a", ca), _lease(s, "b", cb)
    a.acquire()
    assert not b.acquire()
    cb.t += 9.9
    assert not b.acquire()  # not yet lease_seconds without a renewal, by b's clock
    cb.t += 0.2
    assert b.acquire() and b.generation == 2 and b.taken_from.holder == "a"
    with pytest.raises(LeaseLost, match="generation 2 held by b") as lost:
        a.hold()  # the deposed leader's next write is refused
    assert lost.value.generation == 1 and not a.held
    assert not a.acquire()  # and it now waits in turn
    b.hold()


def test_a_newcomer_waits_one_lease_period_on_its_own_clock_but_a_released_lease_is_taken_at_once(tmp_path):
    s = Storage(str(tmp_path))
    clock = FakeClock(100.0)
    a = _lease(s, "a", clock)
    a.acquire()
    clock.t = 1000.0  # long expired by a's clock, but b cannot know a's clock agrees with its own
    b = _lease(s, "b", clock)
    assert not b.acquire()
    clock.t += 10.0
    assert b.acquire() and b.generation == 2
    b.release()
    c = _lease(s, "c", clock)
    assert c.acquire() and c.generation == 3 and c.taken_from.released


def test_the_same_holder_restarted_leads_again_at_once(tmp_path):
    s = Storage(str(tmp_path))
    clock = FakeClock(100.0)
    first = _lease(s, "actor-1", clock)
    first.acquire()
    again = _lease(s, "actor-1", clock)  # a restarted actor keeps its id
    assert again.acquire() and again.generation == 2
    with pytest.raises(LeaseLost):
        first.hold()


def test_of_many_racing_for_the_next_generation_exactly_one_wins(tmp_path):
    s = Storage(str(tmp_path))
    clock = FakeClock(100.0)
    _lease(s, "old", clock).acquire()
    leases = [_lease(s, f"s{i}", clock) for i in range(8)]
    assert not any(x.acquire() for x in leases)
    clock.t += 10.0
    won, barrier = [], threading.Barrier(len(leases))

    def race(lease):
        barrier.wait()
        if lease.acquire():
            won.append(lease.holder)

    threads = [threading.Thread(target=race, args=(x,)) for x in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and read_lease(s, "m").holder == won[0] and read_lease(s, "m").generation == 2


def test_old_generations_are_pruned(tmp_path):
    s = Storage(str(tmp_path))
    clock = FakeClock(0.0)
    for i in range(6):
        lease = _lease(s, f"h{i}", clock)
        lease.acquire()
        clock.t += 10.0
        assert lease.acquire()
    assert len(s.list(lease_prefix("m"))) <= 2 and read_lease(s, "m").generation == 6


def test_create_exclusive_never_overwrites(tmp_path):
    s = Storage(str(tmp_path))
    assert s.create_exclusive("x/a", b"1") and not s.create_exclusive("x/a", b"2")
    assert s.read_bytes("x/a") == b"1" and s.list("x") == ["x/a"]  # no temporary left behind


def test_lease_seconds_must_outlast_two_ticks():
    base = {"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}}}
    assert parse_config(base).controller.lease_period == 30.0
    assert parse_config({**base, "controller": {"tick_seconds": 10}}).controller.lease_period == 30.0
    with pytest.raises(ConfigError, match="lease_seconds"):
        parse_config({**base, "controller": {"tick_seconds": 2, "lease_seconds": 3}})


# -- two controllers on one storage root ---------------------------------------------------

def _cfg(root: str):
    return parse_config({
        "model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
        "training": {"runner": "local"},
        "storage": {"root": root},
        "controller": {"lease_seconds": 10},
    })


def _events(storage, kind=None):
    return [e for e in AuditLog(storage, "m").read() if kind is None or e.kind == kind]


def test_two_controllers_only_the_leader_acts_and_the_standby_takes_over(tmp_path):
    cfg = _cfg(str(tmp_path))
    storage = Storage(cfg.storage.root)
    ca, cb = FakeClock(1000.0), FakeClock(77_000.0)
    a = ctl.Controller(cfg, clock=ca, holder="cluster-a")
    b = ctl.Controller(cfg, clock=cb, holder="cluster-b")
    assert (a.role, b.role) == ("leader", "standby") and b.observer is None
    first = submit_command(storage, "m", "pause", who="ops", why="one", now=ca.now())
    for _ in range(5):
        ca.t += 1.0
        cb.t += 1.0
        assert a.tick() is not None
        assert b.tick() is None  # observes nothing, decides nothing, writes nothing
    assert ctl.load_state(storage, "m").seq == 5 and b.state.seq == 0
    assert len([e for e in _events(storage) if e.data.get("command_id") == first.id]) == 1
    (acq,) = _events(storage, EventKind.LEADER_ACQUIRED)
    assert acq.data == {"holder": "cluster-a", "generation": 1, "lease_seconds": 10.0, "previous_holder": None}

    # a dies (stops ticking); b takes over once no renewal was seen for lease_seconds on b's clock
    second = submit_command(storage, "m", "resume", who="ops", why="two", now=ca.now() + 1)
    for _ in range(5):  # within a lease period of a's last renewal
        cb.t += 1.0
        assert b.tick() is None
    for _ in range(10):
        cb.t += 1.0
        if b.tick() is not None:
            break
    assert b.role == "leader" and b.lease.generation == 2
    assert b.restored and b.state.seq == 6  # it went on from the state on storage
    took = _events(storage, EventKind.LEADER_ACQUIRED)[-1]
    assert took.data["previous_holder"] == "cluster-a" and "stopped renewing generation 1" in took.reason
    assert [e.kind for e in _events(storage) if e.data.get("command_id") == second.id] == [EventKind.RESUMED]

    # a comes back (a paused process, a partitioned cluster): its first tick finds the lease taken
    ca.t += 100.0
    assert a.tick() is None and a.role == "standby"
    (lost,) = _events(storage, EventKind.LEADER_LOST)
    assert lost.data == {"holder": "cluster-a", "generation": 1} and "held by cluster-b" in lost.reason
    assert ctl.load_state(storage, "m").seq == 6
    for _ in range(3):
        cb.t += 1.0
        b.tick()
        assert a.tick() is None
    assert ctl.load_state(storage, "m").seq == 9
    assert len([e for e in _events(storage) if e.data.get("command_id") in (first.id, second.id)]) == 2


def test_a_leader_deposed_mid_tick_writes_neither_events_nor_state(tmp_path, monkeypatch):
    cfg = _cfg(str(tmp_path))
    storage = Storage(cfg.storage.root)
    clock = FakeClock(1000.0)
    a = ctl.Controller(cfg, clock=clock, holder="a")
    a.tick()
    submit_command(storage, "m", "pause", who="ops", why="x", now=clock.now())
    b = ctl.Controller(cfg, clock=clock, holder="b")
    real_observe = a.observer.observe

    def observe_then_lose(state, now):  # a stalls mid-tick (GC, partition) long enough for b to take over
        obs = real_observe(state, now)
        clock.t += 1000.0
        assert b.tick() is not None
        return obs

    monkeypatch.setattr(a.observer, "observe", observe_then_lose)
    assert a.tick() is None and a.role == "standby"
    paused = _events(storage, EventKind.PAUSED)
    assert len(paused) == 1 and ctl.load_state(storage, "m").paused  # b's decision, once
    assert ctl.load_state(storage, "m").seq == 2  # a's seq-2 state was never written over b's
    assert len(_events(storage, EventKind.LEADER_LOST)) == 1


def test_a_clean_stop_hands_over_at_once(tmp_path):
    cfg = _cfg(str(tmp_path))
    clock = FakeClock(1000.0)
    a = ctl.Controller(cfg, clock=clock, holder="a")
    b = ctl.Controller(cfg, clock=clock, holder="b")
    assert b.tick() is None
    a.release()
    assert b.tick() is not None and b.role == "leader"
    assert "a released generation 1" in _events(Storage(cfg.storage.root), EventKind.LEADER_ACQUIRED)[-1].reason


def test_two_writers_registering_at_once_get_different_version_numbers(tmp_path):
    cfg = _cfg(str(tmp_path))
    storage = Storage(cfg.storage.root)
    ref = pa.table({"x": np.linspace(-1, 1, 16)})
    transform = FeatureTransform.fit(columns_from_table(ref, Schema(cfg.model)), Schema(cfg.model))
    est = EstimatorConfig(kind="logistic")
    # another writer has just claimed v0001 and not written anything else yet
    assert storage.create_exclusive(f"models/m/versions/v0001/{CLAIM}", b"{}")
    torch.manual_seed(0)
    v = Registry(storage, "m").register(state_dict=build_module(est, transform.n_out, 2).state_dict(),
                                        transform=transform, estimator=est, n_in=transform.n_out, classes=[0, 1],
                                        reference=ref, metadata={"job_id": "j"})
    assert v == "v0002"
