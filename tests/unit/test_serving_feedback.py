"""Feedback exactly once, without Ray: item checks, the bounded index, and the
FeedbackBook against real parquet logs in a temporary storage root."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifelong_ray.data.logs import ModelLogs
from lifelong_ray.serving.feedback import (
    Candidate,
    FeedbackBook,
    IdTimes,
    RejectCode,
    check_items,
)
from lifelong_ray.storage import Storage

HORIZON = 100.0


def _rid() -> str:
    return uuid.uuid4().hex


def _serve(logs: ModelLogs, n: int, t: float, *, shadow: bool = False, error: str | None = None) -> list[str]:
    ids = [_rid() for _ in range(n)]
    logs.append_predictions(request_ids=ids, t=t, version="v0001",
                            features={"x": pa.array(np.zeros(n))}, predictions=[1] * n,
                            confidence=[0.9] * n, latency_ms=1.0, shadow=shadow, error=error)
    return ids


@pytest.fixture
def logs(tmp_path) -> ModelLogs:
    return ModelLogs(Storage(str(tmp_path)), "m")


def _review(book: FeedbackBook, ids_labels: list[tuple[str, int]], now: float):
    async def go():
        cands = [Candidate(i, rid, label) for i, (rid, label) in enumerate(ids_labels)]
        ok, bad = await book.review(cands, now)
        if ok:
            written = ModelLogs(book.labeled.storage, book.model).append_feedback(
                [c.request_id for c in ok], [c.label for c in ok], now)
            book.settle(ok, written, now)
        return ok, bad
    return asyncio.run(go())


# -- check_items ----------------------------------------------------------------------
@pytest.mark.parametrize("item, code, field", [
    ({"request_id": "a" * 32, "label": 1, "x": 1}, RejectCode.UNEXPECTED, "x"),
    ({"label": 1}, RejectCode.MISSING, "request_id"),
    ({"request_id": "A" * 32, "label": 1}, RejectCode.FORMAT, "request_id"),
    ({"request_id": 12, "label": 1}, RejectCode.FORMAT, "request_id"),
    ({"request_id": "a" * 32}, RejectCode.MISSING, "label"),
    ({"request_id": "a" * 32, "label": 7}, RejectCode.LABEL_DOMAIN, "label"),
    ({"request_id": "a" * 32, "label": 0.5}, RejectCode.LABEL_DOMAIN, "label"),
    ({"request_id": "a" * 32, "label": True}, RejectCode.LABEL_DOMAIN, "label"),
    ({"request_id": "a" * 32, "label": "1"}, RejectCode.LABEL_DOMAIN, "label"),
])
def test_check_items_rejects_with_code_and_field(item, code, field):
    cands, bad = check_items([item], classes=[0, 1])
    assert cands == [] and len(bad) == 1
    assert bad[0].code == code and bad[0].index == 0
    assert bad[0].message.startswith(f"labels[0].{field}: {code.value}")
    assert bad[0].to_json()["code"] == code.value


def test_check_items_keeps_first_valid_of_a_repeated_id():
    rid = "b" * 32
    cands, bad = check_items([{"request_id": rid, "label": 9}, {"request_id": rid, "label": 1},
                              {"request_id": rid, "label": 0}, {"request_id": rid, "label": 1.0}], classes=[0, 1])
    assert [(c.index, c.label) for c in cands] == [(1, 1)]
    assert [(r.index, r.code) for r in bad] == [(0, RejectCode.LABEL_DOMAIN), (2, RejectCode.DUPLICATE),
                                               (3, RejectCode.DUPLICATE)]
    assert "labels[1]" in bad[1].message


# -- IdTimes ---------------------------------------------------------------------------
def test_id_times_evicts_oldest_by_time_and_remembers_the_newest_evicted():
    ix = IdTimes(capacity=3, keep_seconds=1000.0)
    ix.add(["late"], [50.0], now=60.0)
    ix.add(["a", "b", "c"], [10.0, 30.0, 20.0], now=60.0)  # out of time order
    assert len(ix) == 3 and "a" not in ix and ix.evicted_max_t == 10.0
    ix.add(["d"], 40.0, now=60.0)
    assert sorted(k for k in ("late", "b", "c", "d") if k in ix) == ["b", "d", "late"]
    assert ix.evicted_max_t == 20.0
    ix.add(["b"], 99.0, now=60.0)  # the first t of an id is kept
    assert ix.get("b") == 30.0


def test_id_times_expiry_is_not_an_eviction():
    ix = IdTimes(capacity=10, keep_seconds=5.0)
    ix.add(["a", "b"], [1.0, 9.0], now=10.0)
    assert "a" not in ix and ix.get("b") == 9.0 and ix.evicted_max_t == -np.inf


@pytest.mark.parametrize("capacity, keep", [(0, 1.0), (1, 0.0)])
def test_id_times_rejects_bad_parameters(capacity, keep):
    with pytest.raises(ValueError):
        IdTimes(capacity=capacity, keep_seconds=keep)


# -- FeedbackBook ------------------------------------------------------------------------
def test_book_accepts_once_and_rejects_unknown_expired_duplicate(logs):
    now = 1_000_000.0
    fresh = _serve(logs, 3, now - 10)
    old = _serve(logs, 1, now - HORIZON - 5)
    shadow = _serve(logs, 1, now - 10, shadow=True)
    failed = _serve(logs, 1, now - 10, error="boom")
    book = FeedbackBook(logs, horizon_s=HORIZON)  # a fresh replica: everything comes from the logs
    unknown = _rid()
    ok, bad = _review(book, [(fresh[0], 1), (unknown, 0), (old[0], 1), (shadow[0], 1), (failed[0], 0),
                             (fresh[1], 0)], now)
    assert [c.request_id for c in ok] == [fresh[0], fresh[1]]
    assert [(r.request_id, r.code) for r in bad] == [
        (unknown, RejectCode.UNKNOWN_REQUEST), (old[0], RejectCode.EXPIRED),
        (shadow[0], RejectCode.UNKNOWN_REQUEST), (failed[0], RejectCode.UNKNOWN_REQUEST)]
    assert "served 105s ago" in bad[1].message and "data.label_horizon_seconds" in bad[1].message
    ok2, bad2 = _review(book, [(fresh[0], 0), (fresh[2], 1)], now + 1)
    assert [c.request_id for c in ok2] == [fresh[2]]
    assert [(r.request_id, r.code) for r in bad2] == [(fresh[0], RejectCode.DUPLICATE)]
    # another replica (a new book on the same logs) sees the labels in the feedback log
    other = FeedbackBook(logs, horizon_s=HORIZON)
    ok3, bad3 = _review(other, [(i, 1) for i in fresh], now + 2)
    assert ok3 == [] and {r.code for r in bad3} == {RejectCode.DUPLICATE}
    fb = pa.concat_tables([pq.read_table(logs.storage.path(p))
                           for p in logs.storage.list(logs.feedback_prefix, suffix=".parquet")])
    assert sorted(fb.column("request_id").to_pylist()) == sorted(fresh)


def test_book_finds_ids_evicted_from_a_tiny_memory(logs):
    now = 2_000_000.0
    book = FeedbackBook(logs, horizon_s=HORIZON, capacity=4)
    ids = []
    for k in range(5):  # written by "this replica": recorded without being read back
        batch = _serve(logs, 3, now - 50 + k)
        book.served_now(logs.storage.list(logs.predictions_prefix, suffix=".parquet")[-1], batch, now - 50 + k)
        ids += batch
    assert len(book.served.ids) == 4 and book.served.ids.evicted_max_t >= now - HORIZON
    ok, bad = _review(book, [(i, 1) for i in ids], now)
    assert bad == [] and len(ok) == 15
    assert len(book.served.ids) <= 4 and len(book.labeled.ids) <= 4
    ok, bad = _review(book, [(i, 0) for i in ids], now + 1)
    assert ok == [] and [r.code for r in bad] == [RejectCode.DUPLICATE] * 15


def test_concurrent_reviews_of_one_id_accept_it_once(logs):
    now = 3_000_000.0
    ids = _serve(logs, 5, now - 1)
    book = FeedbackBook(logs, horizon_s=HORIZON)
    writer = ModelLogs(logs.storage, "m")

    async def one(rid: str, delay: float) -> int:
        ok, _ = await book.review([Candidate(0, rid, 1)], now)
        if ok:
            await asyncio.sleep(delay)  # a slow write: the others must wait, not accept
            book.settle(ok, writer.append_feedback([rid], [1], now), now)
        return len(ok)

    async def go():
        return await asyncio.gather(*[one(rid, 0.01) for rid in ids for _ in range(4)])

    assert sum(asyncio.run(go())) == 5


def test_a_failed_write_lets_the_waiting_request_take_the_id(logs):
    now = 4_000_000.0
    rid = _serve(logs, 1, now - 1)[0]
    book = FeedbackBook(logs, horizon_s=HORIZON)

    async def go():
        first, _ = await book.review([Candidate(0, rid, 1)], now)
        second = asyncio.ensure_future(book.review([Candidate(0, rid, 0)], now))
        await asyncio.sleep(0.01)
        assert not second.done()  # waits for the first write
        book.settle(first, None, now)  # ... which failed
        ok, bad = await second
        return ok, bad

    ok, bad = asyncio.run(go())
    assert [c.label for c in ok] == [0] and bad == []


def test_concurrent_reviews_with_a_tiny_memory_still_accept_each_id_once(logs):
    """Writes that land while another review waits on the logs are seen even when
    memory evicted them at once (capacity 2, batches of 10)."""
    now = 5_000_000.0
    ids = _serve(logs, 10, now - 1)
    book = FeedbackBook(logs, horizon_s=HORIZON, capacity=2)
    writer = ModelLogs(logs.storage, "m")

    async def one(k: int) -> list[str]:
        ok, bad = await book.review([Candidate(i, rid, 1) for i, rid in enumerate(ids)], now)
        assert {r.code for r in bad} <= {RejectCode.DUPLICATE}
        if ok:
            await asyncio.sleep(0.05)  # the others are waiting on these ids meanwhile
            path = await asyncio.to_thread(writer.append_feedback, [c.request_id for c in ok], [1] * len(ok), now)
            book.settle(ok, path, now)
        return [c.request_id for c in ok]

    async def go():
        return await asyncio.gather(*[one(k) for k in range(6)])

    accepted = [rid for batch in asyncio.run(go()) for rid in batch]
    assert sorted(accepted) == sorted(ids)
    stored = pa.concat_tables([pq.read_table(logs.storage.path(p))
                               for p in logs.storage.list(logs.feedback_prefix, suffix=".parquet")])
    assert sorted(stored.column("request_id").to_pylist()) == sorted(ids)
