"""The segment log (SegmentLog): appends durable on return, sealed into the parquet log
exactly once, across crashes (orphans, torn tails, a seal that died before its unlink)
and failed writes or syncs. Every row is read back by the real LogTail."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import Counter

import pyarrow as pa
import pytest

import numpy as np

from lifelong_ray.data.logs import LogTail, ModelLogs, feature_arrays, feature_values, feedback_rows
from lifelong_ray.data.privacy import PiiHasher
from lifelong_ray.data.records import LogRecord, decode_line, records_table
from lifelong_ray.data.segments import (
    DAMAGED_DIR,
    STALE_TMP_SECONDS,
    SegmentLog,
    read_segment,
    remove_stale_tmp,
    seal_orphans,
    segment_paths,
)
from lifelong_ray.serving.feedback import FeedbackBook, search_segments
from lifelong_ray.storage import Storage

T0 = 1.7e9  # 2023-11-14 22:13:20 UTC
MIDNIGHT = 1_700_006_400.0  # 2023-11-15 00:00:00 UTC


class StepClock:
    def __init__(self, t: float = T0, step: float = 1.0) -> None:
        self.t, self.step = t, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def _log(tmp_path, **kw) -> tuple[ModelLogs, SegmentLog]:
    logs = ModelLogs(Storage(str(tmp_path)), "m", fsync=kw.pop("fsync", True))
    kw.setdefault("clock", StepClock())
    return logs, SegmentLog(logs, logs.predictions_prefix, replica=kw.pop("replica", "r1"), seal_s=None, **kw)


def _rows(ids: list[str], label: int = 1):
    return lambda t: feedback_rows(ids, [label] * len(ids), t)


def _prediction(logs: ModelLogs, rid: str, **kw):
    """The record of one served (or, with ``shadow``/``error``, not served) prediction, as the ingress
    writes it."""
    feats = feature_values({"f": [0.1]}, ["f"], set())
    return lambda t: logs.prediction_record(request_ids=[rid], t=t, version="v0001", features=feats,
                                            categorical=set(), predictions=[1], confidence=[0.9], latency_ms=1.0,
                                            **kw)


def _segments(logs: ModelLogs) -> list[str]:
    return [os.path.basename(p) for p in segment_paths(logs.storage, logs.predictions_prefix)]


def _ids(logs: ModelLogs) -> Counter:
    table = LogTail(logs.storage, logs.predictions_prefix).read_new()
    return Counter() if table is None else Counter(table.column("request_id").to_pylist())


async def _append_all(seg: SegmentLog, batches: list[list[str]]):
    return await asyncio.gather(*(seg.append(_rows(ids), len(ids)) for ids in batches))


@pytest.mark.parametrize("fsync", [True, False])
def test_concurrent_appends_go_to_one_segment_and_seal_into_the_log_once(tmp_path, fsync):
    logs, seg = _log(tmp_path, fsync=fsync)
    batches = [[f"r{i}-{j}" for j in range(1 + i % 3)] for i in range(40)]
    done = asyncio.run(_append_all(seg, batches))

    assert len({p for p, _ in done}) == 1 and len(_segments(logs)) == 1
    assert _ids(logs) == Counter()  # readers never see an unsealed segment
    files = seg.seal_now()
    assert sum(rows for *_, rows in files) == sum(map(len, batches))
    assert _segments(logs) == []
    assert _ids(logs) == Counter(rid for ids in batches for rid in ids)
    # the sealed file holds the append times: its name is its first row's, its span the rows'
    (path, lo, hi, _), = files
    assert path.endswith("-r1-000001.parquet") and lo == T0 + 1 and hi == T0 + 40


def test_a_lone_caller_syncs_in_line_and_concurrent_callers_share_syncs(tmp_path):
    logs, seg = _log(tmp_path, inline_idle_s=0.002)

    async def sequential_then_concurrent():
        for i in range(5):
            await asyncio.sleep(0.01)  # idle for longer than inline_idle_s
            await seg.append(_rows([f"s{i}"]), 1)
        await asyncio.sleep(0.01)
        inline = seg.inline_syncs
        await _append_all(seg, [[f"c{i}"] for i in range(20)])
        return inline

    assert asyncio.run(sequential_then_concurrent()) == 5
    assert seg.inline_syncs == 6  # the first concurrent caller only; 19 share the flusher's syncs
    seg.seal_now()
    assert sum(_ids(logs).values()) == 25


def test_a_caller_that_is_not_alone_syncs_in_a_thread_and_its_rows_are_durable(tmp_path):
    """With other requests in flight (``alone=False``) the sync leaves the event loop:
    a sync on the loop would hold those requests up for its whole duration."""
    logs, seg = _log(tmp_path, inline_idle_s=0.002)

    async def go(alone: bool):
        for i in range(3):
            await asyncio.sleep(0.01)
            await seg.append(_rows([f"{alone}{i}"]), 1, alone=alone)

    asyncio.run(go(False))
    assert seg.inline_syncs == 0 and seg._current.synced == seg._current.written
    asyncio.run(go(True))
    assert seg.inline_syncs == 3
    seg.seal_now()
    assert sum(_ids(logs).values()) == 6


def test_rows_across_midnight_are_sealed_into_their_own_day_partitions(tmp_path):
    logs, seg = _log(tmp_path, clock=StepClock(MIDNIGHT - 2.5))
    asyncio.run(_append_all(seg, [[f"r{i}"] for i in range(5)]))
    files = seg.seal_now()
    assert sorted(p.split("/")[-2] for p, *_ in files) == ["date=2023-11-14", "date=2023-11-15"]
    assert sorted(rows for *_, rows in files) == [2, 3]
    assert sum(_ids(logs).values()) == 5


def test_sealing_a_segment_again_after_a_crash_before_its_unlink_adds_no_row(tmp_path):
    logs, seg = _log(tmp_path)
    asyncio.run(_append_all(seg, [["a", "b"], ["c"]]))
    (name,) = _segments(logs)
    full = f"{seg.directory}/{name}"
    shutil.copy(full, tmp_path / "copy")
    seg.seal_now()
    shutil.copy(tmp_path / "copy", full)  # the seal wrote the parquet and "died" before the unlink

    again = seal_orphans(logs, logs.predictions_prefix, fsync=True)
    assert [rows for *_, rows in again] == [3] and _segments(logs) == []
    assert _ids(logs) == Counter({"a": 1, "b": 1, "c": 1})


def test_a_dead_replicas_torn_segment_is_sealed_with_its_complete_records_only(tmp_path):
    logs, seg = _log(tmp_path)
    asyncio.run(_append_all(seg, [["a"], ["b"], ["c"]]))
    (name,) = _segments(logs)
    full = f"{seg.directory}/{name}"
    whole = LogRecord.from_table(feedback_rows(["d"], [1], T0)).encode()
    with open(full, "ab") as fh:  # the process died inside the write of request "d" (never answered)
        fh.write(whole[: len(whole) // 2])
    assert read_segment(full).num_rows == 3
    os.close(seg._current.fd)  # the replica dies: its lock goes with its fd
    seg._current = None

    sealed = seal_orphans(logs, logs.predictions_prefix, fsync=True)
    assert [rows for *_, rows in sealed] == [3]
    assert _ids(logs) == Counter({"a": 1, "b": 1, "c": 1})
    assert os.listdir(f"{seg.directory}/{DAMAGED_DIR}") == [name]  # the bytes are kept for review


def test_a_live_replicas_segment_is_never_taken_as_an_orphan(tmp_path):
    logs, seg = _log(tmp_path)
    asyncio.run(_append_all(seg, [["a"]]))
    assert seal_orphans(logs, logs.predictions_prefix, fsync=True) == []
    assert len(_segments(logs)) == 1 and _ids(logs) == Counter()
    # a segment being created (temporary name, not locked yet by a scanner's reckoning) is not listed
    open(f"{seg.directory}/.r9-000001.tmp", "wb").close()
    assert seal_orphans(logs, logs.predictions_prefix, fsync=True) == []
    seg.seal_now()
    assert _ids(logs) == Counter({"a": 1})


def test_a_creation_that_died_before_its_rename_leaves_a_tmp_file_the_next_scan_removes(tmp_path):
    """A ``.tmp`` file older than STALE_TMP_SECONDS that nobody locks is a dead creator's
    (it holds at most the header): removed. A fresh one, or one still locked, stays."""
    import fcntl

    logs, seg = _log(tmp_path)
    asyncio.run(_append_all(seg, [["a"]]))
    d = seg.directory
    old = time_now = os.stat(f"{d}/{_segments(logs)[0]}").st_mtime
    for name in (".dead-000001.tmp", ".held-000001.tmp", ".fresh-000001.tmp"):
        open(f"{d}/{name}", "wb").close()
    for name in (".dead-000001.tmp", ".held-000001.tmp"):
        os.utime(f"{d}/{name}", (old - STALE_TMP_SECONDS - 1, old - STALE_TMP_SECONDS - 1))
    held = os.open(f"{d}/.held-000001.tmp", os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # its creator is still alive
    try:
        assert remove_stale_tmp(logs.storage, logs.predictions_prefix, now=time_now) == [".dead-000001.tmp"]
        assert sorted(n for n in os.listdir(d) if n.endswith(".tmp")) == [".fresh-000001.tmp", ".held-000001.tmp"]
    finally:
        os.close(held)
    os.utime(f"{d}/.held-000001.tmp", (old - STALE_TMP_SECONDS - 1, old - STALE_TMP_SECONDS - 1))
    assert seal_orphans(logs, logs.predictions_prefix, fsync=True) == []  # the live segment stays too
    assert sorted(n for n in os.listdir(d) if n.endswith(".tmp")) == [".fresh-000001.tmp"]
    seg.seal_now()
    assert _ids(logs) == Counter({"a": 1})


def test_a_new_schema_starts_a_new_segment_and_both_are_sealed(tmp_path):
    logs, seg = _log(tmp_path)

    def wide(ids):
        return lambda t: feedback_rows(ids, [1] * len(ids), t).append_column("x", pa.array([0.5] * len(ids)))

    async def go():
        await seg.append(_rows(["a"]), 1)
        await seg.append(wide(["b"]), 1)
        await seg.append(wide(["c"]), 1)

    asyncio.run(go())
    assert len(seg._retired) == 1
    assert [rows for *_, rows in seg.seal_now()] == [1, 2]
    assert _ids(logs) == Counter({"a": 1, "b": 1, "c": 1})


def test_a_caller_whose_rows_cannot_be_built_fails_alone(tmp_path):
    logs, seg = _log(tmp_path)

    def broken(t):
        raise ValueError("no rows")

    async def go():
        return await asyncio.gather(seg.append(_rows(["a"]), 1), seg.append(broken, 1),
                                    seg.append(_rows(["b"]), 1), return_exceptions=True)

    out = asyncio.run(go())
    assert isinstance(out[1], ValueError) and not isinstance(out[0], Exception) and not isinstance(out[2], Exception)
    seg.seal_now()
    assert _ids(logs) == Counter({"a": 1, "b": 1})


async def _ok_failed_ok(seg: SegmentLog, state: dict) -> None:
    """Append "a", then "lost" while ``state["fail"]`` makes the disk fail (its caller must
    get the OSError), then "b" once the disk works again."""
    await seg.append(_rows(["a"]), 1)
    state["fail"] = True
    with pytest.raises(OSError):
        await seg.append(_rows(["lost"]), 1)
    state["fail"] = False
    await seg.append(_rows(["b"]), 1)


def test_a_failed_write_fails_its_caller_and_the_next_append_uses_a_fresh_segment(tmp_path, monkeypatch):
    logs, seg = _log(tmp_path)
    real_write = os.write
    state = {"fail": False}

    def write(fd, data):
        if state["fail"]:
            real_write(fd, bytes(data)[:7])  # a partial record, then the disk is full
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)

    asyncio.run(_ok_failed_ok(seg, state))
    assert len(_segments(logs)) == 2
    seg.seal_now()
    assert _ids(logs) == Counter({"a": 1, "b": 1})  # the torn record after "a" is dropped


def test_a_failed_sync_drops_the_unsynced_rows_and_fails_their_callers(tmp_path, monkeypatch):
    logs, seg = _log(tmp_path, inline_idle_s=0.0)
    real = os.fdatasync
    state = {"fail": False}

    def fdatasync(fd):
        if state["fail"]:
            raise OSError(5, "Input/output error")
        return real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)

    asyncio.run(_ok_failed_ok(seg, state))
    seg.seal_now()
    assert _ids(logs) == Counter({"a": 1, "b": 1})


def test_the_seal_loop_seals_on_its_own_and_reports_the_files(tmp_path):
    logs = ModelLogs(Storage(str(tmp_path)), "m")
    reported: list = []
    seg = SegmentLog(logs, logs.predictions_prefix, replica="r1", seal_s=0.05, on_sealed=reported.extend)

    async def go():
        await seg.append(_rows(["a"]), 1)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if reported:
                break
        seg.close()

    asyncio.run(go())
    assert [p for p, *_ in reported] == logs.storage.list(logs.predictions_prefix, suffix=".parquet")
    assert _ids(logs) == Counter({"a": 1}) and _segments(logs) == []


def test_close_seals_what_is_left(tmp_path):
    logs, seg = _log(tmp_path)
    asyncio.run(_append_all(seg, [["a"], ["b"]]))
    seg.close()
    assert _segments(logs) == [] and sum(_ids(logs).values()) == 2


def test_feedback_finds_a_prediction_another_replica_has_not_sealed_yet(tmp_path):
    """Replica r2 answered ``x`` (and failed/shadowed others); replica r1's feedback check
    must find ``x`` before r2 seals, and only the served row counts."""
    logs = ModelLogs(Storage(str(tmp_path)), "m")
    r2 = SegmentLog(logs, logs.predictions_prefix, replica="r2", seal_s=None, clock=lambda: T0)

    def pred(rid, **kw):
        return _prediction(logs, rid, **kw)

    async def go():
        await r2.append(pred("a" * 32), 1)
        await r2.append(pred("b" * 32, shadow=True), 1)
        await r2.append(pred("c" * 32, error="timeout: slow"), 1)
        book = FeedbackBook(logs, horizon_s=3600)
        return await book.served.find({"a" * 32, "b" * 32, "c" * 32}, since=T0 - 10, max_age_s=0.0, now=T0 + 1)

    assert asyncio.run(go()) == {"a" * 32: T0}
    assert search_segments(logs.storage, logs.predictions_prefix, {"c" * 32}, served_only=False) == {"c" * 32: T0}
    r2.seal_now()
    assert search_segments(logs.storage, logs.predictions_prefix, {"a" * 32}, served_only=True) == {}


def test_a_segment_log_needs_a_local_root():
    logs = ModelLogs(Storage("mock://bucket/root"), "m")
    with pytest.raises(ValueError, match="local storage root"):
        SegmentLog(logs, logs.predictions_prefix)


def test_a_segment_that_fails_to_seal_stays_locked_and_is_sealed_on_the_next_pass(tmp_path, monkeypatch):
    logs, seg = _log(tmp_path)
    asyncio.run(_append_all(seg, [["a"], ["b"]]))
    real = logs.storage.write_bytes
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        return real(*args, **kw)

    monkeypatch.setattr(logs.storage, "write_bytes", flaky)
    assert asyncio.run(seg.seal()) == []
    (kept,) = seg._retired
    assert kept.fd >= 0 and _segments(logs) and seal_orphans(logs, logs.predictions_prefix, fsync=True) == []
    assert [n for *_, n in seg.seal_now()] == [2] and kept.fd == -1
    assert _ids(logs) == Counter({"a": 1, "b": 1}) and _segments(logs) == []


def test_retiring_twice_keeps_one_entry_and_a_failed_sync_of_a_retired_segment_closes_nothing(tmp_path,
                                                                                                  monkeypatch):
    logs, seg = _log(tmp_path, inline_idle_s=0.0)
    asyncio.run(_append_all(seg, [["a"]]))
    first = seg._current
    seg._retire(first)
    seg._retire(first)
    seg._fail_sync(first)  # e.g. the flusher's fdatasync failed while a seal waited for it
    assert seg._retired == [first]
    asyncio.run(_append_all(seg, [["b"]]))  # a new segment, its own fd
    assert seg._current is not first and seg._current.fd != first.fd
    seg.seal_now()
    assert _ids(logs) == Counter({"a": 1, "b": 1})


def test_orphans_a_replica_seals_are_read_back_by_its_feedback_book(tmp_path):
    """Only this replica's own sealed files skip the read-back: their ids are in its memory,
    a dead replica's are not."""
    logs = ModelLogs(Storage(str(tmp_path)), "m")

    def pred(rid):
        return _prediction(logs, rid)

    dead = SegmentLog(logs, logs.predictions_prefix, replica="dead", seal_s=None, clock=lambda: T0)
    asyncio.run(dead.append(pred("d" * 32), 1))
    dead._current.close()  # the process died holding it
    dead._current = None

    async def go():
        book = FeedbackBook(logs, horizon_s=3600)
        live = SegmentLog(logs, logs.predictions_prefix, replica="live", seal_s=None, clock=lambda: T0,
                          on_sealed=book.served_sealed)
        await live.append(pred("e" * 32), 1)
        book.served_now(None, ["e" * 32], T0)
        sealed = await live.seal()  # its own segment and, on this first pass, the orphan
        assert len(sealed) == 2 and len(book.served.spans) == 1
        return await book.served.find({"d" * 32, "e" * 32}, since=T0 - 10, max_age_s=0.0, now=T0 + 1)

    assert asyncio.run(go()) == {"d" * 32: T0, "e" * 32: T0}


def test_the_ingress_record_builds_the_same_rows_as_the_arrow_path():
    """No skew between the two writers of the prediction log: the JSON record the segment
    log writes becomes, once sealed, exactly the table the per-request parquet path writes
    (NaN feature -> null, missing category -> null, NaN confidence kept, key hashed)."""
    logs = ModelLogs(Storage("/tmp/unused"), "m", pii=PiiHasher(("key",), b"salt"))
    cols = {"x": np.array([1.5, np.nan, np.inf]), "c": np.array(["a", None, "b"], dtype=object)}
    common = dict(request_ids=["r1", "r2", "r3"], t=T0, version="v0002", predictions=[1, 0, np.int64(1)],
                  confidence=[0.9, float("nan"), np.float64(0.7)], latency_ms=2.5, key="user-7", shadow=True,
                  error=None)
    arrow = logs.prediction_rows(features=feature_arrays(cols, ["x", "c"], {"c"}), **common)
    record = logs.prediction_record(features=feature_values(cols, ["x", "c"], {"c"}), categorical={"c"}, **common)
    sealed = records_table(record.schema, [decode_line(record.encode())])
    assert sealed.schema.equals(arrow.schema)
    assert repr(sealed.to_pydict()) == repr(arrow.to_pydict())  # repr: nan == nan
    assert record.to_table().column("key").to_pylist() == [PiiHasher(("key",), b"salt").hash_key("user-7")] * 3


def _write_lines(full: str, *lines: bytes) -> None:
    with open(full, "ab") as fh:
        fh.write(b"".join(lines))


@pytest.mark.parametrize("bad", [b"not json\n", b'{"n": 1, "rows": {"request_id": ["x"]}, "same": {}}\n',
                                 b'{"n": 1, "rows": {"request_id": ["x"], "label": ["one"]}, "same": {"t": 1.0}}\n',
                                 b"[" * 100_000 + b"\n"],
                         ids=["garbage", "missing-columns", "wrong-type", "nested"])
def test_a_damaged_record_is_skipped_and_the_records_around_it_are_sealed(tmp_path, bad):
    """Each line is a record of its own: damage in one (not a crash: only the last line
    can be cut off) loses no other answered row; the bytes are kept for review."""
    logs, seg = _log(tmp_path)
    asyncio.run(_append_all(seg, [["a"], ["b"]]))
    (name,) = _segments(logs)
    full = f"{seg.directory}/{name}"
    _write_lines(full, bad, LogRecord.from_table(feedback_rows(["c"], [1], T0)).encode())
    assert read_segment(full).column("request_id").to_pylist() == ["a", "b", "c"]
    os.close(seg._current.fd)
    seg._current = None
    assert [rows for *_, rows in seal_orphans(logs, logs.predictions_prefix, fsync=False)] == [3]
    assert _ids(logs) == Counter({"a": 1, "b": 1, "c": 1})
    assert os.listdir(f"{seg.directory}/{DAMAGED_DIR}") == [name]


def test_text_that_is_not_unicode_fails_its_own_append_and_nothing_else(tmp_path):
    logs, seg = _log(tmp_path)

    async def go():
        return await asyncio.gather(seg.append(_prediction(logs, "a"), 1),
                                    seg.append(_prediction(logs, "bad", error="cut \ud800 here"), 1),
                                    seg.append(_prediction(logs, "c"), 1), return_exceptions=True)

    out = asyncio.run(go())
    assert isinstance(out[1], UnicodeEncodeError) and not isinstance(out[0], Exception)
    seg.seal_now()
    assert _ids(logs) == Counter({"a": 1, "c": 1})
    assert not os.path.exists(f"{seg.directory}/{DAMAGED_DIR}")
