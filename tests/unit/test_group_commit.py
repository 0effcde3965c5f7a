"""Durability ``group`` (data.durability): the request path writes to the OS and only marks
what it wrote; one flusher per log syncs it within data.flush_interval_ms, never on the
request path. And under every mode a writer killed mid-stream loses no acknowledged
record and duplicates none."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest

from lifelong_ray.data.flush import GroupFlusher, PathSync
from lifelong_ray.data.logs import GroupCommit, LogTail, ModelLogs, feedback_rows
from lifelong_ray.data.segments import SegmentLog, read_segment, seal_orphans, segment_paths
from lifelong_ray.storage import Storage

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 0.1


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class RecordingFile:
    """A file whose syncs are recorded: the clock time and the thread of each."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.written = 0
        self.syncs: list[tuple[float, str]] = []

    def write(self, n: int) -> None:
        self.written += n

    def flush_to_device(self) -> None:
        self.syncs.append((self.clock(), threading.current_thread().name))


class SyncRecorder:
    """Stands in for os.fdatasync / os.fsync: records the thread of each call and the
    fake-clock time, then does the real sync."""

    def __init__(self, monkeypatch, clock=None) -> None:
        self.calls: list[tuple[str, str, float | None]] = []
        self.clock = clock
        self.synced = threading.Event()
        real = {"fdatasync": os.fdatasync, "fsync": os.fsync}
        for name, fn in real.items():
            def record(fd, _name=name, _fn=fn):
                self.calls.append((_name, threading.current_thread().name, self.clock() if self.clock else None))
                self.synced.set()
                return _fn(fd)
            monkeypatch.setattr(os, name, record)


def test_marks_are_flushed_once_within_the_interval_and_never_on_the_marking_call():
    clock = FakeClock()
    flusher = GroupFlusher("m/predictions", INTERVAL, clock=clock, start=False)
    a, b = RecordingFile(clock), RecordingFile(clock)
    first = clock.t
    for k in range(5):  # five "requests" within the interval, to two files
        (a if k % 2 else b).write(10)
        flusher.mark(a if k % 2 else b)
        assert a.syncs == b.syncs == []  # the request path syncs nothing
        clock.t += INTERVAL / 10
    assert flusher.unflushed_seconds() == pytest.approx(clock.t - first)
    wait = flusher.step()  # not due yet: it says how long to wait, and syncs nothing
    assert wait == pytest.approx(first + INTERVAL - clock.t) and a.syncs == b.syncs == []
    clock.t += wait
    assert flusher.step() is None  # due: everything marked synced, nothing left to wait for
    assert [t for t, _ in a.syncs] == [t for t, _ in b.syncs] == [first + INTERVAL]  # once each, in time
    assert flusher.unflushed_seconds() == 0.0 and flusher.flushes == 1
    assert flusher.step() is None and len(a.syncs) == 1  # nothing marked: nothing synced again


def test_the_flusher_thread_syncs_off_the_callers_thread_and_close_syncs_the_rest():
    flusher = GroupFlusher("m/feedback", 0.01)
    f = RecordingFile(FakeClock())
    synced = threading.Event()
    f.flush_to_device = lambda: (f.syncs.append((0.0, threading.current_thread().name)), synced.set())
    flusher.mark(f)
    assert synced.wait(30)
    assert f.syncs and all(name == "log-flusher-m/feedback" for _, name in f.syncs)
    assert threading.current_thread().name not in {name for _, name in f.syncs}
    flusher.close()
    g = RecordingFile(FakeClock())
    flusher.mark(g)  # after close: no thread; the owner's close/flush syncs it
    assert flusher.flush() == 1 and len(g.syncs) == 1


def test_a_failed_sync_is_counted_and_the_other_targets_are_still_synced():
    clock = FakeClock()
    flusher = GroupFlusher("m/predictions", INTERVAL, clock=clock, start=False)
    good = RecordingFile(clock)

    class Broken:
        def flush_to_device(self):
            raise OSError(5, "EIO")

    flusher.mark(Broken(), good)
    assert flusher.flush() == 2 and flusher.failures == 1 and len(good.syncs) == 1


def _segment_log(tmp_path, clock):
    logs = ModelLogs(Storage(str(tmp_path)), "m")
    seg = SegmentLog(logs, logs.predictions_prefix, replica="r1", seal_s=None, durability="group")
    seg.flusher = GroupFlusher("m/predictions", INTERVAL, clock=clock, start=False)
    return logs, seg


def test_a_group_segment_log_answers_without_a_sync_and_its_flusher_syncs_within_the_interval(tmp_path, monkeypatch):
    clock = FakeClock()
    logs, seg = _segment_log(tmp_path, clock)
    rec = SyncRecorder(monkeypatch, clock)
    first_write = clock.t

    async def appends():
        for i in range(3):
            await seg.append(lambda t, i=i: feedback_rows([f"r{i}"], [1], t), 1)
            clock.t += INTERVAL / 4

    asyncio.run(appends())
    assert rec.calls == []  # answered: nothing synced on the request path
    (full,) = segment_paths(logs.storage, logs.predictions_prefix)
    assert read_segment(full).column("request_id").to_pylist() == ["r0", "r1", "r2"]  # in the OS: readable
    assert seg.flusher.unflushed_seconds() == pytest.approx(3 * INTERVAL / 4)
    clock.t = first_write + INTERVAL
    assert seg.flusher.step() is None
    assert {name for name, *_ in rec.calls} == {"fdatasync", "fsync"}  # the segment's data, its directory's name
    assert all(t == first_write + INTERVAL for *_, t in rec.calls)
    cur = seg._current
    assert cur.synced == cur.written and seg.flusher.unflushed_seconds() == 0.0
    seg.close()
    assert sorted(LogTail(logs.storage, logs.predictions_prefix).read_new().column("request_id").to_pylist()) \
        == ["r0", "r1", "r2"]


def test_a_group_segment_log_syncs_on_its_flusher_thread_only(tmp_path, monkeypatch):
    logs = ModelLogs(Storage(str(tmp_path)), "m")
    seg = SegmentLog(logs, logs.predictions_prefix, replica="r1", seal_s=None, durability="group",
                     flush_interval_s=0.01)
    rec = SyncRecorder(monkeypatch)
    loop_thread = threading.current_thread().name

    async def appends():
        for i in range(20):
            await seg.append(lambda t, i=i: feedback_rows([f"r{i}"], [1], t), 1)

    asyncio.run(appends())
    assert rec.synced.wait(30)
    synced = list(rec.calls)  # close() below syncs what is left on its caller's thread: a shutdown, not a request
    assert synced and {thread for _, thread, _ in synced} == {f"log-flusher-{logs.predictions_prefix}"}
    assert loop_thread not in {thread for _, thread, _ in synced}
    seg.close()


def test_a_group_file_writer_renames_in_place_and_its_flusher_syncs_file_and_directory(tmp_path, monkeypatch):
    clock = FakeClock()
    logs = ModelLogs(Storage(str(tmp_path)), "m")
    writer = GroupCommit(logs, logs.feedback_prefix, durability="group", inline_idle_s=0.0)
    writer.flusher = GroupFlusher("m/feedback", INTERVAL, clock=clock, start=False)
    rec = SyncRecorder(monkeypatch, clock)
    path, _ = asyncio.run(writer.append(lambda t: feedback_rows(["a"], [1], t), 1))
    assert rec.calls == [] and LogTail(logs.storage, logs.feedback_prefix).read_new().num_rows == 1
    full = logs.storage.path(path)
    assert set(writer.flusher._pending) == {PathSync(full), PathSync(os.path.dirname(full), directory=True)}
    clock.t += INTERVAL
    writer.flusher.step()
    assert [name for name, *_ in rec.calls] == ["fdatasync", "fsync"]


def test_the_ingress_exports_the_lag_of_each_group_log(tmp_path):
    from lifelong_ray.config import load_config
    from lifelong_ray.serving import metrics as M
    from lifelong_ray.serving.app import _Model

    cfg = load_config(ROOT / "configs" / "demo.yaml").with_overrides(
        storage={"root": str(tmp_path)}, data={"durability": {"feedback": "group", "commands": "none"}})
    m = _Model(cfg, 1000)
    try:
        text = M.exposition()[0].decode()
        name = cfg.model.name
        assert f'lifelong_log_unflushed_seconds{{log="predictions",model="{name}"}} 0.0' in text
        assert f'lifelong_log_unflushed_seconds{{log="feedback",model="{name}"}} 0.0' in text
        assert f'log="commands",model="{name}"' not in text  # durability none: no group commit, no lag
        assert "lifelong_log_unflushed_seconds" in M.metric_names()
    finally:
        m.answers.close()
        m.feedback_log.close()


# -- a writer killed mid-stream -----------------------------------------------------------
WRITER = textwrap.dedent("""
    import asyncio, itertools, os, sys
    from lifelong_ray.config import parse_config
    from lifelong_ray.data.answers import AnswerLog
    from lifelong_ray.data.logs import GroupCommit, ModelLogs, feedback_rows
    from lifelong_ray.storage import Storage

    root, log, mode = sys.argv[1:4]
    cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
                        "storage": {"root": root},
                        "data": {"durability": {"predictions": mode, "feedback": mode}, "flush_interval_ms": 5,
                                 "log_segments": log == "segments", "log_seal_seconds": 0.05}})

    async def main():
        if log == "feedback":
            logs = ModelLogs.from_config(Storage(root), cfg)
            writer = GroupCommit(logs, logs.feedback_prefix, durability=mode, flush_interval_s=0.005)
            append = lambda rid: writer.append(lambda t: feedback_rows([rid], [1], t), 1)
        else:
            answers = AnswerLog.from_config(cfg)
            append = lambda rid: answers.append(request_ids=[rid], version="v1", features={"x": [0.5]},
                                                labels=[1], confidence=[0.9], latency_ms=1.0)

        async def client(k):
            for i in itertools.count():
                rid = f"c{k}-{i}"
                await append(rid)
                os.write(1, (rid + "\\n").encode())  # the acknowledgement: after the append returned

        await asyncio.gather(*(client(k) for k in range(4)))

    asyncio.run(main())
""")


@pytest.mark.parametrize("mode", ["fsync", "group", "none"])
@pytest.mark.parametrize("log", ["segments", "feedback"])
def test_a_writer_killed_mid_stream_loses_no_acknowledged_record_and_duplicates_none(tmp_path, mode, log):
    """SIGKILL while four clients append: every acknowledged id is in the log exactly once
    (after the next replica seals the dead one's segment), and no id is there twice."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    errors = tmp_path / "writer.err"
    with open(errors, "wb") as err:  # a file, not a pipe: a full pipe would stall the writer
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "store"), log, mode],
                                stdout=subprocess.PIPE, stderr=err, env=env)
    acked: list[str] = []
    try:
        while len(acked) < 150:
            line = proc.stdout.readline()
            assert line, f"the writer stopped: {errors.read_text()[-2000:]}"
            acked.append(line.decode().strip())
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()  # from the reader's buffer on (communicate() would skip what it holds)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    acked += [x for x in rest.decode().split("\n") if x]  # acknowledged before the kill
    logs = ModelLogs(Storage(str(tmp_path / "store")), "m")
    prefix = logs.feedback_prefix if log == "feedback" else logs.predictions_prefix
    if log == "segments":
        seal_orphans(logs, prefix, fsync=False)  # as the next replica does at start
        assert segment_paths(logs.storage, prefix) == []
    table = LogTail(logs.storage, prefix).read_new()
    written = Counter(table.column("request_id").to_pylist())
    assert [rid for rid in acked if written[rid] != 1] == []  # every acknowledged record, once
    assert [rid for rid, n in written.items() if n > 1] == []  # and no record twice


@pytest.mark.parametrize("mode", ["fsync", "group", "none"])
def test_the_controller_seals_a_dead_replicas_segment_under_each_mode(tmp_path, mode):
    from lifelong_ray.config import load_config
    from lifelong_ray.control.observe import Observer
    from lifelong_ray.registry.store import Registry

    cfg = load_config(ROOT / "configs" / "demo.yaml").with_overrides(
        storage={"root": str(tmp_path)}, data={"durability": {"predictions": mode}})
    from lifelong_ray.data.answers import AnswerLog

    storage = Storage(str(tmp_path))
    logs = ModelLogs(storage, cfg.model.name)
    answers = AnswerLog.from_config(cfg)
    features = {**{f"x{i}": [0.5, 1.5] for i in range(5)}, "segment": ["a", "b"]}
    asyncio.run(answers.append(request_ids=["r1", "r2"], version="v0001", features=features, labels=[1, 0],
                               confidence=[0.9, 0.8], latency_ms=1.0))
    seg = answers.writer
    seg._current.close()  # the replica dies: its lock goes, its segment stays
    if seg.flusher is not None:
        seg.flusher.close()
    assert len(segment_paths(storage, logs.predictions_prefix)) == 1
    Observer(cfg, storage, Registry(storage, cfg.model.name))._read_predictions()
    assert segment_paths(storage, logs.predictions_prefix) == []
    assert sorted(LogTail(storage, logs.predictions_prefix).read_new().column("request_id").to_pylist()) == ["r1", "r2"]
