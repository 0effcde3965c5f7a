"""The observer's memory is bounded by the label horizon and the rollout step, and a
restart loads its checkpoint and reads only the log files written since.

Real logs, storage and observer, no Ray; time is the sample clock of the rows.
"""

from __future__ import annotations

import numpy as np
import pytest

from lifelong_ray.config import parse_config
from lifelong_ray.control import observe as observe_mod
from lifelong_ray.control.observe import Observer
from lifelong_ray.data import logs as logs_mod
from lifelong_ray.data.logs import LogTail, ModelLogs, feature_arrays, name_time
from lifelong_ray.policy.model import ControllerState
from lifelong_ray.registry.store import Registry
from lifelong_ray.storage import Storage

HORIZON = 100.0
PER_TICK = 40


def _cfg(root: str, checkpoint_ticks: int = 1000):
    return parse_config({
        "model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
        "drift": {"window_size": 100, "label_window": 50},
        "data": {"label_horizon_seconds": HORIZON, "log_late_seconds": 30.0},
        "controller": {"checkpoint_ticks": checkpoint_ticks},
        "storage": {"root": root},
    })


class Feed:
    """Each tick (10 s): PER_TICK predictions, labels for half of the ones from 30 s ago
    and for a quarter of the (never labeled) ones from 150 s ago (past the horizon: they
    expire). Every storage given gets the same rows."""

    def __init__(self, *storages: Storage) -> None:
        self.all_logs = [ModelLogs(s, "m", fsync=False) for s in storages]
        self.logs = self.all_logs[0]
        self.rng = np.random.default_rng(0)

    def ids(self, t: float) -> list[str]:
        return [f"r{int(t)}-{i}" for i in range(PER_TICK)]

    def tick(self, t: float) -> None:
        x = self.rng.normal(size=PER_TICK)
        late = self.ids(t - 30)[: PER_TICK // 2] + self.ids(t - 150)[-PER_TICK // 4:]
        for logs in self.all_logs:
            logs.append_predictions(request_ids=self.ids(t), t=t, version="v0001",
                                    features=feature_arrays({"x": x}, ["x"], set()),
                                    predictions=[1] * PER_TICK, confidence=[0.9] * PER_TICK, latency_ms=5.0)
            logs.append_feedback(late, [1] * len(late), t=t)


def _run(obs: Observer, feed: Feed, ticks: range, state: ControllerState) -> list:
    out = []
    for k in ticks:
        t = 1000.0 + 10 * k
        feed.tick(t)
        state = state.model_copy(update={"seq": state.seq + 1})
        o = obs.observe(state, t)
        out.append((o.labeled_total, [w.index for w in o.feature_windows], [w.index for w in o.quality_windows]))
        state = state.model_copy(update={
            "feature_windows_done": max([state.feature_windows_done, *[w.index + 1 for w in o.feature_windows]]),
            "quality_windows_done": max([state.quality_windows_done, *[w.index + 1 for w in o.quality_windows]])})
    return out


def test_what_the_observer_holds_stops_growing_after_a_horizon(tmp_path):
    cfg = _cfg(str(tmp_path))
    storage = Storage(cfg.storage.root)
    obs, feed = Observer(cfg, storage, Registry(storage, "m")), Feed(storage)
    state = ControllerState(model="m")
    _run(obs, feed, range(0, 30), state)  # 300 s: three horizons
    at_30 = obs.held()
    _run(obs, feed, range(30, 120), state)
    at_120 = obs.held()
    for key in ("unjoined", "early_labels", "served_rows", "joined_rows", "tail_names"):
        assert at_120[key] <= at_30[key] + PER_TICK, (key, at_30, at_120)
    # within a horizon: ~10 ticks of predictions, each half labeled after 30 s
    assert at_120["unjoined"] <= 11 * PER_TICK
    assert at_120["early_labels"] <= 11 * PER_TICK // 4
    assert at_120["labeled_ids"] <= 2 * 11 * PER_TICK // 2 + 1000  # pruned to a horizon once it doubled
    assert at_120["tail_names"] <= 3 * 5  # 30 s of names per log (one file per 10 s)
    # predictions nobody labeled within the horizon are forgotten and counted; late labels too
    assert obs.expired_predictions > 0 and obs.expired_labels > 0
    assert obs.labeled_total == (120 - 3) * (PER_TICK // 2)


def test_a_late_label_after_the_horizon_is_not_joined(tmp_path):
    cfg = _cfg(str(tmp_path))
    storage = Storage(cfg.storage.root)
    obs, feed = Observer(cfg, storage, Registry(storage, "m")), Feed(storage)
    _run(obs, feed, range(0, 20), ControllerState(model="m"))
    joined_before = obs.labeled_total
    feed.logs.append_feedback(feed.ids(1000.0)[-4:], [1] * 4, t=1300.0)  # 300 s after those predictions
    obs.observe(ControllerState(model="m", seq=99), 1300.0)
    assert obs.labeled_total == joined_before  # not joined: they wait as unmatched labels
    obs.observe(ControllerState(model="m", seq=100), 1300.0 + HORIZON + 1)
    assert obs.held()["early_labels"] == 0  # and expire after a horizon


def test_the_tracker_keeps_rows_since_the_rollout_step_only():
    import pandas as pd

    from lifelong_ray.control.windows import WindowTracker

    cfg = _cfg("/nonexistent")
    tr = WindowTracker(cfg, lambda v: None)
    for k in range(50):
        tr.add_served(pd.DataFrame({"t": [float(k)] * 10, "version": "v1", "error": None, "x": 0.0}))
        tr.add_joined(pd.DataFrame({"t": [float(k)] * 10, "version": "v1", "prediction": 1, "label": 1}))
    tr.prune(since=40.0, keep_joined=30)
    assert tr.held()["served_rows"] == 100  # t 40..49
    assert tr.held()["joined_rows"] == 100
    assert tr.step_stats(40.0)["v1"].served == 100
    tr.prune(since=60.0, keep_joined=30)
    assert tr.held()["served_rows"] == 0 and tr.held()["joined_rows"] == 30  # the change-point search's rows


def test_a_restart_from_the_checkpoint_sees_what_a_running_observer_sees(tmp_path):
    """Observer A runs on; B is restarted at tick 42 on a copy of the storage; both are fed
    the same rows after that and see the same labeled counts and window indices."""
    import shutil

    cfg = _cfg(str(tmp_path / "a"), checkpoint_ticks=5)
    storage = Storage(cfg.storage.root)
    running = Observer(cfg, storage, Registry(storage, "m"))
    first = _run(running, Feed(storage), range(0, 42), ControllerState(model="m"))  # checkpoints at 5, 10, .., 40
    state = ControllerState(model="m", seq=42, feature_windows_done=max(i + 1 for _, f, _ in first for i in f),
                            quality_windows_done=max(i + 1 for _, _, q in first for i in q))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    cfg_b = cfg.with_overrides(storage={"root": str(tmp_path / "b")})
    storage_b = Storage(cfg_b.storage.root)

    read: list[str] = []
    real = logs_mod.read_parquet_file

    def spy(storage_, path, columns):
        read.append(path)
        return real(storage_, path, columns)

    mp = pytest.MonkeyPatch()
    mp.setattr(logs_mod, "read_parquet_file", spy)
    try:
        restarted = Observer(cfg_b, storage_b, Registry(storage_b, "m"))
        restarted.observe(state, 1000.0 + 10 * 41)
    finally:
        mp.undo()
    assert restarted.restored
    # the checkpoint was written at the start of tick 40: only the files of ticks 39..41 are read
    assert read and min(name_time(p) for p in read) >= 1000.0 + 10 * 39, sorted(read)[:3]
    assert restarted.labeled_total == running.labeled_total

    feed = Feed(storage, storage_b)
    a, b = [], []
    sa = sb = state
    for k in range(42, 70):
        t = 1000.0 + 10 * k
        feed.tick(t)
        for obs, st, out in ((running, sa, a), (restarted, sb, b)):
            out.append(_run_one(obs, st, t))
        sa, sb = _advance(sa, a[-1]), _advance(sb, b[-1])
    assert a == b  # same labeled counts, same window indices, tick by tick
    assert any(f for _, f, _ in a) and any(q for _, _, q in a)


def _run_one(obs: Observer, state: ControllerState, t: float) -> tuple:
    o = obs.observe(state.model_copy(update={"seq": state.seq + 1}), t)
    return o.labeled_total, [w.index for w in o.feature_windows], [w.index for w in o.quality_windows]


def _advance(state: ControllerState, seen: tuple) -> ControllerState:
    _, f, q = seen
    return state.model_copy(update={"seq": state.seq + 1,
                                    "feature_windows_done": max([state.feature_windows_done, *[i + 1 for i in f]]),
                                    "quality_windows_done": max([state.quality_windows_done, *[i + 1 for i in q]])})


def test_a_log_tail_with_a_lag_remembers_only_the_lag_and_reads_every_file_once(tmp_path):
    storage = Storage(str(tmp_path))
    logs = ModelLogs(storage, "m", fsync=False)
    tail = LogTail(storage, logs.feedback_prefix, lag_s=50.0)
    got = []
    for k in range(200):
        logs.append_feedback([f"r{k}"], [1], t=1.7e9 + 1000.0 * k)  # ~2.3 days: three date partitions
        if k % 7 == 3:  # a file landing a little behind the newest one is still read
            logs.append_feedback([f"late{k}"], [1], t=1.7e9 + 1000.0 * k - 20.0)
        table = tail.read_new()
        got += table.column("request_id").to_pylist() if table is not None else []
    assert len(got) == len(set(got)) == 200 + len([k for k in range(200) if k % 7 == 3])
    assert len(tail.seen) <= 2
    again = LogTail(storage, logs.feedback_prefix, lag_s=50.0, **tail.position())
    assert again.read_new() is None


def test_the_checkpoint_is_written_only_after_a_persisted_decision(tmp_path, monkeypatch):
    cfg = _cfg(str(tmp_path), checkpoint_ticks=2)
    storage = Storage(cfg.storage.root)
    obs, feed = Observer(cfg, storage, Registry(storage, "m")), Feed(storage)
    written = []
    monkeypatch.setattr(observe_mod.Observer, "checkpoint", lambda self, seq: written.append(seq))
    state = ControllerState(model="m", seq=5)
    for k in range(6):
        feed.tick(1000.0 + 10 * k)
        obs.observe(state, 1000.0 + 10 * k)  # the same seq: no decision was persisted since
    assert written == []
