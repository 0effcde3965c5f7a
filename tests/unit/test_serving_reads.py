"""The ingress's unauthenticated reads cost the same however long the history: status,
UI data, label requests and feedback for unknown ids read a bounded number of files
(counted with a wrapper around the storage's filesystem)."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pyarrow as pa
import pytest

from lifelong_ray.config import parse_config
from lifelong_ray.data.logs import ModelLogs, day_of
from lifelong_ray.data.schema import Schema
from lifelong_ray.events import AuditLog, Event, EventKind
from lifelong_ray.serving.active import load_label_pool
from lifelong_ray.serving.feedback import Candidate, FeedbackBook, RejectCode
from lifelong_ray.serving.reads import TTLCache, event_tail, files_in_window, shown_versions
from lifelong_ray.storage import Storage

DAY = 86400.0
NOW = 1.75e9
HORIZON = 2 * DAY


class CountingFS:
    """A pyarrow filesystem proxy that records every file opened for reading."""

    def __init__(self, fs):
        self._fs = fs
        self.opened: list[str] = []

    def open_input_file(self, path):
        self.opened.append(path)
        return self._fs.open_input_file(path)

    def open_input_stream(self, path):
        self.opened.append(path)
        return self._fs.open_input_stream(path)

    def __getattr__(self, name):
        return getattr(self._fs, name)


def _counting(root: str) -> tuple[Storage, CountingFS]:
    st = Storage(root)
    st.fs = CountingFS(st.fs)
    return st, st.fs


def _cfg(root: str):
    return parse_config({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
                         "data": {"label_horizon_seconds": HORIZON}, "storage": {"root": root}})


def _history(root: str, days: int, files_per_day: int = 3) -> list[str]:
    """``days`` days of prediction and feedback files before the horizon, plus two recent days."""
    logs = ModelLogs(Storage(root), "m")
    recent = []
    for d in list(range(days + 2, 2, -1)) + [1, 0]:
        for k in range(files_per_day):
            t = NOW - d * DAY - k * 60.0 - 10.0
            ids = [uuid.uuid4().hex for _ in range(5)]
            logs.append_predictions(request_ids=ids, t=t, version="v0001", features={"x": pa.array(np.zeros(5))},
                                    predictions=[1] * 5, confidence=[0.6] * 5, latency_ms=1.0)
            logs.append_feedback(ids[:1], [1], t + 1.0)
            if d <= 1:
                recent += ids
    return recent


@pytest.mark.parametrize("days", [3, 30])
def test_label_pool_reads_only_the_horizon(tmp_path, days):
    recent = _history(str(tmp_path), days)
    st, fs = _counting(str(tmp_path))
    pool = load_label_pool(st, Schema(_cfg(str(tmp_path)).model), now=NOW, horizon_s=HORIZON)
    assert set(pool.request_ids) <= set(recent) and len(pool) == len(recent) - 6  # one of 5 labeled per file
    parquet = [p for p in fs.opened if p.endswith(".parquet")]
    assert len(parquet) <= 2 * 3 * 4, parquet   # predictions + feedback of the window's partitions only


def test_label_pool_cost_does_not_grow_with_history(tmp_path):
    counts = []
    for days in (3, 40):
        root = str(tmp_path / f"h{days}")
        _history(root, days)
        st, fs = _counting(root)
        load_label_pool(st, Schema(_cfg(root).model), now=NOW, horizon_s=HORIZON)
        counts.append(len(fs.opened))
    assert counts[0] == counts[1], counts


def _review(book: FeedbackBook, rid: str) -> RejectCode | None:
    async def go():
        ok, bad = await book.review([Candidate(0, rid, 1)], NOW)
        return bad[0].code if bad else None
    return asyncio.run(go())


def test_feedback_for_unknown_ids_reads_a_bounded_number_of_files(tmp_path):
    counts = []
    for days in (3, 40):
        root = str(tmp_path / f"h{days}")
        _history(root, days)
        st, fs = _counting(root)
        book = FeedbackBook(ModelLogs(st, "m"), horizon_s=HORIZON, capacity=1000)
        assert _review(book, uuid.uuid4().hex) == RejectCode.UNKNOWN_REQUEST
        first = len(fs.opened)
        assert _review(book, uuid.uuid4().hex) == RejectCode.UNKNOWN_REQUEST
        counts.append((first, len(fs.opened) - first))
    assert counts[0] == counts[1], counts
    assert counts[1][1] <= counts[1][0]                    # a second unknown id reads no more than the first
    assert counts[1][0] <= 2 * 3 * 6, counts              # the 2-horizon window's partitions, not 40 days


def test_expired_ids_within_two_horizons_are_still_reported_expired(tmp_path):
    logs = ModelLogs(Storage(str(tmp_path)), "m")
    rid = uuid.uuid4().hex
    logs.append_predictions(request_ids=[rid], t=NOW - 1.5 * HORIZON, version="v0001",
                            features={"x": pa.array([0.0])}, predictions=[1], confidence=[0.6], latency_ms=1.0)
    book = FeedbackBook(ModelLogs(Storage(str(tmp_path)), "m"), horizon_s=HORIZON, capacity=1000)
    assert _review(book, rid) == RejectCode.EXPIRED


def _events(root: str, n: int) -> None:
    log = AuditLog(Storage(root), "m")
    for i in range(n):
        log.append([Event(t=NOW + i, kind=EventKind.CANARY_STEP, model="m", reason=f"step {i}")])
        if i % 3 == 0:
            log.append([Event(t=NOW + i + 0.5, kind=EventKind.PAUSED, model="m", reason=f"tick {i}")],
                       key=f"tick-{i:012d}")


@pytest.mark.parametrize("n", [30, 400])
def test_event_tail_reads_the_newest_files_only(tmp_path, n):
    _events(str(tmp_path), n)
    st, fs = _counting(str(tmp_path))
    tail = event_tail(st, "m", 10)
    assert [e.reason for e in tail] == [e.reason for e in AuditLog(Storage(str(tmp_path)), "m").read()[-10:]]
    assert len(fs.opened) <= 2 * 10


def register_untrained(cfg, cols: dict, seed: int) -> str:
    import torch

    from lifelong_ray.data.transform import FeatureTransform
    from lifelong_ray.registry.store import Registry
    from lifelong_ray.training.estimators import build_module

    transform = FeatureTransform.fit(cols, Schema(cfg.model))
    torch.manual_seed(seed)
    module = build_module(cfg.estimator, transform.n_out, len(cfg.model.label.classes))
    return Registry(Storage(cfg.storage.root), cfg.model.name).register(
        state_dict=module.state_dict(), transform=transform, estimator=cfg.estimator, n_in=transform.n_out,
        classes=[0, 1], reference=pa.table(cols), metadata={"seed": seed})


def test_status_reads_are_bounded_as_versions_and_events_grow(tmp_path):
    """GET /v1/models/{m}'s document (the ingress's _status) reads the newest versions
    plus the routed ones and the audit log's tail, however many there are."""
    from lifelong_ray.serving.app import Ingress, _Model
    from lifelong_ray.serving.routing import RoutingTable

    cfg = _cfg(str(tmp_path)).with_overrides(estimator={"kind": "logistic"})
    cols = {"x": np.linspace(-1, 1, 50)}
    versions = [register_untrained(cfg, cols, seed=i) for i in range(26)]
    _events(str(tmp_path), 200)
    m = _Model(cfg, 1000)
    m.table = RoutingTable(model="m", weights={versions[0]: 100}, champion=versions[0])
    m.storage, fs = _counting(str(tmp_path))
    status = Ingress.func_or_class._status(None, m)
    shown = [v["version"] for v in status["versions"]]
    assert shown[0] == versions[0] and len(shown) == 21 and status["versions_total"] == 26
    assert len(status["last_events"]) == 10
    first = len(fs.opened)
    assert first <= 21 * 3 + 2 * 10 + 5, fs.opened
    Ingress.func_or_class._status(None, m)
    assert len(fs.opened) - first <= 2 * 10 + 5          # version metadata is cached: events and state only
    m.answers.close()

    from lifelong_ray.serving import ui

    st, fs = _counting(str(tmp_path))
    reg = m.registry()
    reg.storage = st
    view = ui.gather(st, cfg, m.table, registry=reg, max_events=50)
    assert not view.errors, view.errors
    assert len(view.versions) == 21 and len(view.events) == 50
    assert len(fs.opened) <= 2 * 50 + 5, len(fs.opened)  # the events' tail; metadata came from the cache


def test_shown_versions_and_the_ttl_cache():
    assert shown_versions(["v1", "v2", "v3"], keep={"v9"}, limit=5) == ["v1", "v2", "v3"]
    clock = [0.0]
    cache = TTLCache(ttl_s=1.0, clock=lambda: clock[0])
    calls = []

    async def compute():
        calls.append(1)
        await asyncio.sleep(0)
        return len(calls)

    async def burst():
        return await asyncio.gather(*(cache.get_or_compute("k", compute) for _ in range(5)))

    assert asyncio.run(burst()) == [1] * 5 and len(calls) == 1   # one read for a burst
    clock[0] = 0.9
    assert asyncio.run(cache.get_or_compute("k", compute)) == 1
    clock[0] = 1.0
    assert asyncio.run(cache.get_or_compute("k", compute)) == 2  # expired: read again


def test_files_in_window_lists_only_partitions_from_its_day(tmp_path):
    _history(str(tmp_path), 10)
    st, _ = _counting(str(tmp_path))
    prefix = ModelLogs(st, "m").predictions_prefix
    assert len(st.list(prefix, suffix=".parquet")) == 3 * 12
    since = NOW - HORIZON
    expected = [p for p in st.list(prefix, suffix=".parquet") if p.split("date=")[1][:10] >= day_of(since)]
    assert files_in_window(st, prefix, since) == expected and 0 < len(expected) <= 3 * 4
