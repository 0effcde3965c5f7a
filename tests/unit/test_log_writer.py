"""The log write path: group commit (GroupCommit), the append encoding, fsync levels.

Every file a writer produces is read back by the real LogTail (and by compaction),
and every row must come back exactly once.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifelong_ray.config import load_config
from lifelong_ray.data.logs import GroupCommit, LogTail, ModelLogs, append_to_bytes, feedback_rows, partition_of
from lifelong_ray.data.retention import compact_day
from lifelong_ray.storage import Storage

T0 = 1.7e9


class StepClock:
    """A clock that moves one second per reading (each flush gets its own ``t``)."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def _writer(tmp_path, **kw) -> tuple[ModelLogs, GroupCommit]:
    """A writer that always goes through the queue (the in-line path has tests of its own)."""
    kw.setdefault("inline_idle_s", None)
    logs = ModelLogs(Storage(str(tmp_path)), "m")
    return logs, GroupCommit(logs, logs.feedback_prefix, clock=StepClock(), **kw)


def _rows(ids: list[str], label: int = 1):
    return lambda t: feedback_rows(ids, [label] * len(ids), t)


async def _append_all(writer: GroupCommit, batches: list[list[str]]) -> list[tuple[str, float]]:
    return await asyncio.gather(*(writer.append(_rows(ids), len(ids)) for ids in batches))


def test_concurrent_appends_share_a_file_and_logtail_reads_every_row_once(tmp_path):
    logs, writer = _writer(tmp_path)
    batches = [[f"r{i}-{j}" for j in range(1 + i % 3)] for i in range(40)]
    done = asyncio.run(_append_all(writer, batches))

    files = logs.storage.list(logs.feedback_prefix, suffix=".parquet")
    assert len(files) == 1 and {p for p, _ in done} == set(files)
    table = LogTail(logs.storage, logs.feedback_prefix).read_new()
    sent = [rid for ids in batches for rid in ids]
    assert Counter(table.column("request_id").to_pylist()) == Counter(sent)
    # every row carries the flush time that named the file
    (path, t), = set(done)
    assert set(table.column("t").to_pylist()) == {t} and path.split("/")[-1].startswith(f"{int(t * 1e9):020d}-")


def test_sequential_appends_write_one_file_each_and_tail_reads_each_once(tmp_path):
    logs, writer = _writer(tmp_path)
    tail = LogTail(logs.storage, logs.feedback_prefix)

    async def one_by_one() -> list[int]:
        seen = []
        for i in range(5):
            path, t = await writer.append(_rows([f"s{i}"]), 1)
            assert logs.storage.exists(path)  # in place when append returns
            seen.append(tail.read_new().num_rows)
        return seen

    assert asyncio.run(one_by_one()) == [1] * 5
    assert tail.read_new() is None
    assert len(logs.storage.list(logs.feedback_prefix, suffix=".parquet")) == 5


def test_max_rows_splits_between_callers_never_inside_one(tmp_path):
    logs, writer = _writer(tmp_path, max_rows=10)
    batches = [[f"a{j}" for j in range(4)], [f"b{j}" for j in range(4)], [f"c{j}" for j in range(4)],
               [f"d{j}" for j in range(25)], [f"e{j}" for j in range(3)]]
    done = asyncio.run(_append_all(writer, batches))

    by_file = Counter(p for p, _ in done)
    # a+b (8 rows), c alone (c+d would pass 10), d alone (25 > 10, but never split), e
    assert sorted(by_file.values()) == [1, 1, 1, 2]
    assert done[0][0] == done[1][0] and len({done[2][0], done[3][0], done[4][0]}) == 3
    for (path, _), ids in zip(done, batches):
        assert set(ids) <= set(pq.read_table(logs.storage.path(path)).column("request_id").to_pylist())
    table = LogTail(logs.storage, logs.feedback_prefix).read_new()
    assert Counter(table.column("request_id").to_pylist()) == Counter(r for ids in batches for r in ids)


def test_a_caller_whose_rows_cannot_be_built_fails_alone(tmp_path):
    logs, writer = _writer(tmp_path)

    async def run() -> list:
        bad = writer.append(lambda t: feedback_rows(["x"], ["not a class id"], t), 1)
        return await asyncio.gather(writer.append(_rows(["ok1"]), 1), bad, writer.append(_rows(["ok2"]), 1),
                                    return_exceptions=True)

    ok1, bad, ok2 = asyncio.run(run())
    assert isinstance(bad, ValueError)
    assert ok1 == ok2
    table = LogTail(logs.storage, logs.feedback_prefix).read_new()
    assert sorted(table.column("request_id").to_pylist()) == ["ok1", "ok2"]


def test_a_failed_write_fails_every_caller_of_that_file_and_the_next_file_is_tried_afresh(tmp_path):
    logs, writer = _writer(tmp_path)
    # the day's partition directory cannot be created: a plain file sits at its path
    blocked = partition_of(f"{logs.feedback_prefix}/date=2023-11-14/x.parquet")
    logs.storage.write_bytes(blocked, b"in the way")

    async def run() -> list:
        return await asyncio.gather(writer.append(_rows(["a"]), 1), writer.append(_rows(["b"]), 1),
                                    return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, OSError) for r in results), results
    assert LogTail(logs.storage, logs.feedback_prefix).read_new() is None

    logs.storage.fs.delete_file(logs.storage.path(blocked))
    path, _ = asyncio.run(writer.append(_rows(["c"]), 1))
    assert pq.read_table(logs.storage.path(path)).column("request_id").to_pylist() == ["c"]


def test_a_cancelled_caller_still_gets_its_rows_written(tmp_path):
    logs, writer = _writer(tmp_path)

    async def run() -> tuple[str, float]:
        first = asyncio.ensure_future(writer.append(_rows(["gone"]), 1))
        second = asyncio.ensure_future(writer.append(_rows(["stays"]), 1))
        await asyncio.sleep(0)  # both queued
        first.cancel()
        return await second

    path, _ = asyncio.run(run())
    assert sorted(pq.read_table(logs.storage.path(path)).column("request_id").to_pylist()) == ["gone", "stays"]


def test_max_rows_must_be_positive(tmp_path):
    logs = ModelLogs(Storage(str(tmp_path)), "m")
    with pytest.raises(ValueError, match="max_rows must be >= 1, got 0"):
        GroupCommit(logs, logs.feedback_prefix, max_rows=0)


@pytest.mark.parametrize("fsync", [True, False])
def test_appends_read_back_and_compact_with_either_fsync_level(tmp_path, fsync):
    logs = ModelLogs(Storage(str(tmp_path)), "m", fsync=fsync)
    paths = [logs.append_feedback([f"r{i}"], [i % 2], t=T0 + i) for i in range(3)]
    assert not list(tmp_path.rglob(".tmp-*"))
    out = compact_day(logs.storage, partition_of(paths[0]))
    assert out is not None and out[1] == 3
    table = LogTail(logs.storage, logs.feedback_prefix).read_new()
    assert table.column("request_id").to_pylist() == ["r0", "r1", "r2"]
    assert table.column("label").to_pylist() == [0, 1, 0]


def test_append_encoding_is_uncompressed_and_reads_back_the_same_table():
    rows = feedback_rows(["a", "b"], [0, 1], T0)
    data = append_to_bytes(rows)
    assert pq.read_metadata(pa.BufferReader(data)).row_group(0).column(0).compression == "UNCOMPRESSED"
    assert pq.read_table(pa.BufferReader(data)).equals(rows)


def test_each_log_s_durability_comes_from_the_config(tmp_path):
    from lifelong_ray.data.answers import AnswerLog

    base = load_config("configs/demo.yaml").with_overrides(storage={"root": str(tmp_path)})
    assert base.data.durability.model_dump() == {"predictions": "group", "feedback": "fsync", "commands": "fsync"}
    assert base.data.flush_interval_ms == 100.0
    answers = AnswerLog.from_config(base)
    assert answers.writer.durability == "group" and answers.flusher.interval_s == 0.1
    answers.close()
    relaxed = base.with_overrides(data={"durability": {"predictions": "none"}, "flush_interval_ms": 20})
    answers = AnswerLog.from_config(relaxed)
    assert answers.writer.durability == "none" and answers.flusher is None
    answers.close()
    with pytest.raises(Exception, match="data.log_fsync was replaced by data.durability"):
        base.with_overrides(data={"log_fsync": False})


def test_a_lone_caller_on_an_idle_writer_writes_in_line_and_is_durable(tmp_path):
    logs, writer = _writer(tmp_path, inline_idle_s=0.0)

    async def sequential():
        return [await writer.append(_rows([f"s{i}"]), 1) for i in range(3)]

    done = asyncio.run(sequential())
    assert writer.inline_writes == 3 and len({p for p, _ in done}) == 3
    table = LogTail(logs.storage, logs.feedback_prefix).read_new()
    assert sorted(table.column("request_id").to_pylist()) == ["s0", "s1", "s2"]


def test_a_caller_that_is_not_alone_hands_its_rows_to_the_worker_thread(tmp_path):
    logs, writer = _writer(tmp_path, inline_idle_s=0.0)

    async def sequential():
        return [await writer.append(_rows([f"s{i}"]), 1, alone=False) for i in range(3)]

    asyncio.run(sequential())
    assert writer.inline_writes == 0
    table = LogTail(logs.storage, logs.feedback_prefix).read_new()
    assert sorted(table.column("request_id").to_pylist()) == ["s0", "s1", "s2"]


def test_under_concurrency_only_the_first_caller_is_in_line_and_the_rest_share_a_file(tmp_path):
    logs, writer = _writer(tmp_path, inline_idle_s=60.0)
    writer._idle_since = -float("inf")   # idle for ever: the first caller goes in-line
    batches = [[f"c{i}"] for i in range(20)]
    done = asyncio.run(_append_all(writer, batches))
    assert writer.inline_writes == 1
    files = logs.storage.list(logs.feedback_prefix, suffix=".parquet")
    assert len(files) == 2 and {p for p, _ in done} == set(files)
    table = LogTail(logs.storage, logs.feedback_prefix).read_new()
    assert Counter(table.column("request_id").to_pylist()) == Counter(r for b in batches for r in b)


def test_an_in_line_caller_whose_rows_cannot_be_built_gets_the_error_and_the_writer_goes_on(tmp_path):
    logs, writer = _writer(tmp_path, inline_idle_s=0.0)

    def broken(t):
        raise ValueError("bad rows")

    async def run():
        with pytest.raises(ValueError, match="bad rows"):
            await writer.append(broken, 1)
        return await writer.append(_rows(["ok"]), 1)

    path, _ = asyncio.run(run())
    assert logs.storage.list(logs.feedback_prefix, suffix=".parquet") == [path]
