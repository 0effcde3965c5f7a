"""The live label guard: a rolling window of labels vs served predictions, pure and in
the ingress's glue (quarantine store, release into the feedback log), without Ray."""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
import pytest

from lifelong_ray.config import DataConfig, parse_config
from lifelong_ray.data.guard import RollingLabelGuard, StreamState
from lifelong_ray.data.logs import LogTail, ModelLogs
from lifelong_ray.data.quarantine import QuarantineStore
from lifelong_ray.events import AuditLog, EventKind
from lifelong_ray.serving.feedback import Candidate
from lifelong_ray.serving.feedback_guard import LIVE_FEEDBACK_SOURCE, LiveLabelGuard, ServedPredictions
from lifelong_ray.storage import Storage

CFG = DataConfig()  # the defaults: guard_min_rows 50, window 200, margin 0.1, p 0.001


def _stream(n: int, flip: float, seed: int, base_error: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < base_error, 1 - truth, truth)
    labels = np.where(rng.random(n) < flip, 1 - truth, truth)
    return labels, pred


def _feed(guard: RollingLabelGuard, labels, pred, size: int):
    return [guard.judge(labels[i:i + size], pred[i:i + size]) for i in range(0, len(labels), size)]


def _warm(guard: RollingLabelGuard, seed: int = 0) -> None:
    labels, pred = _stream(1000, 0.0, seed)
    assert all(v.accept for v in _feed(guard, labels, pred, 7))
    assert len(guard.baseline) == 800 and guard.state == StreamState.OPEN


@pytest.mark.parametrize("size", [1, 10, 49])
def test_small_requests_accumulate_and_a_flipped_stream_is_quarantined(size):
    """No size bypass: requests of 1, 10 or 49 labels each are judged on the window."""
    guard = RollingLabelGuard(CFG, window_rows=CFG.guard_live_window_rows, baseline_rows=2000)
    _warm(guard)
    labels, pred = _stream(1000, 0.4, seed=1)
    verdicts = _feed(guard, labels, pred, size)
    first = next(i for i, v in enumerate(verdicts) if not v.accept)
    assert verdicts[first].changed and verdicts[first].state == StreamState.QUARANTINED
    assert verdicts[first].finding.reason.value == "label_disagreement"
    assert verdicts[first].finding.data["p_value"] < CFG.guard_pvalue
    assert not any(v.accept for v in verdicts[first:])   # quarantined while the flips go on
    assert first * size <= 200                           # caught within one window of flipped labels


def test_a_clean_stream_is_never_quarantined_and_memory_is_bounded():
    guard = RollingLabelGuard(CFG, window_rows=200, baseline_rows=500)
    for seed in range(10):
        labels, pred = _stream(1000, 0.0, seed)
        assert all(v.accept for v in _feed(guard, labels, pred, 13))
    assert len(guard.window) == 200 and len(guard.baseline) == 500


def test_the_stream_reopens_once_the_newest_labels_agree_again():
    guard = RollingLabelGuard(CFG, window_rows=200, baseline_rows=2000)
    _warm(guard)
    labels, pred = _stream(300, 0.5, seed=2)
    assert not _feed(guard, labels, pred, 10)[-1].accept
    labels, pred = _stream(400, 0.0, seed=3)
    verdicts = _feed(guard, labels, pred, 10)
    reopened = next(i for i, v in enumerate(verdicts) if v.changed)
    assert verdicts[reopened].state == StreamState.OPEN and not verdicts[reopened].accept
    assert all(v.accept for v in verdicts[reopened + 1:])
    # the quarantined labels never entered the baseline
    assert guard._base_errors / len(guard.baseline) < 0.1


def test_without_a_baseline_or_prior_nothing_is_judged_and_a_prior_stands_in():
    labels, pred = _stream(100, 1.0, seed=4)
    blind = RollingLabelGuard(CFG, window_rows=200, baseline_rows=2000)
    assert all(v.accept for v in _feed(blind, labels, pred, 10))
    primed = RollingLabelGuard(CFG, window_rows=200, baseline_rows=2000, prior=(30, 600))
    assert not all(v.accept for v in _feed(primed, labels, pred, 10))


def test_served_predictions_are_bounded():
    s = ServedPredictions(capacity=3)
    s.add(["a", "b", "c", "d"], [1, 0, 1, 0])
    assert len(s) == 3 and s.get("a") is None and s.get("d") == 0


def _cfg(root: str):
    return parse_config({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
                         "storage": {"root": root}})


def test_ingress_glue_quarantines_flipped_labels_and_release_feeds_them_back(tmp_path):
    from lifelong_ray.data.ingest import release_quarantined

    cfg, st = _cfg(str(tmp_path)), Storage(str(tmp_path))
    g = LiveLabelGuard(cfg, st, capacity=10_000)
    labels, pred = _stream(2000, 0.0, seed=5)
    ids = [f"{i:032x}" for i in range(2000)]
    g.served_now(ids, pred.tolist())
    for k in range(0, 1000, 20):
        ok, held, _ = g.judge([Candidate(j, ids[k + j], int(labels[k + j])) for j in range(20)])
        assert len(ok) == 20 and not held
    flipped = 1 - labels
    held_all = []
    for k in range(1000, 1200, 20):
        ok, held, verdict = g.judge([Candidate(j, ids[k + j], int(flipped[k + j])) for j in range(20)])
        if held:
            held_all.append(g.quarantine(held, verdict, t=1000.0 + k))
    assert held_all, "a fully flipped stream was never quarantined"
    store = QuarantineStore(st, "m")
    entry = store.get(held_all[0].id)
    assert entry.source == LIVE_FEEDBACK_SOURCE and entry.reason == "label_disagreement"
    assert entry.data["stream"] == "quarantined" and "p_value" in entry.data["finding"]
    assert "disagree" in entry.message
    rows = store.rows(entry.id)
    assert rows.column_names == ["request_id", "label", "prediction", "t"] and rows.num_rows == entry.rows
    events = AuditLog(st, "m").read({EventKind.QUARANTINED})
    assert len(events) == len(held_all)
    # nothing quarantined reached the feedback log; a release appends the labels there, once
    tail = LogTail(st, ModelLogs(st, "m").feedback_prefix)
    assert tail.read_new() is None
    released = release_quarantined(st, cfg, entry.id, who="ana", why="reviewed: a real change", now=5000.0)
    assert released.status.value == "released"
    fb = tail.read_new()
    assert sorted(fb.column("request_id").to_pylist()) == sorted(rows.column("request_id").to_pylist())
    assert fb.column("label").to_pylist() == rows.column("label").to_pylist()


def test_ingress_glue_takes_the_champions_holdout_error_as_prior(tmp_path, monkeypatch):
    from lifelong_ray.serving import feedback_guard

    cfg, st = _cfg(str(tmp_path)), Storage(str(tmp_path))
    g = LiveLabelGuard(cfg, st, capacity=100)
    calls = []
    monkeypatch.setattr(feedback_guard, "holdout_errors", lambda s, m, v: calls.append(v) or (10, 200))
    asyncio.run(g.ensure_prior("v0001"))
    asyncio.run(g.ensure_prior("v0001"))
    assert g.guard.prior == (10, 200) and calls == ["v0001"]
