"""Segment log: the ingress's durable prediction log at the cost of one ``write`` + ``fdatasync``.

Writing one parquet file per request (:class:`~lifelong_ray.data.logs.GroupCommit`)
costs a parquet encode, a new file, its fsync and its directory's fsync: about 1 ms
per lone request, most of the logging overhead of a predict. A :class:`SegmentLog`
instead appends each caller's rows as one JSON line (a
:class:`~lifelong_ray.data.records.LogRecord`: building Arrow arrays for a request's
few rows would cost more than the write) to one open *segment* file per ingress
replica and answers once they are as durable as ``data.durability.predictions`` says:
with ``fsync``, on disk (one ``fdatasync``, shared by the callers that arrive while one
is running); with ``group``, written to the OS, and synced by the log's
:class:`~lifelong_ray.data.flush.GroupFlusher` within ``data.flush_interval_ms``; with
``none``, written to the OS. A seal writes its parquet files synced (unless ``none``)
before it deletes the segment. The segment's first line is its header: the Arrow
schema of its rows, which are built as Arrow columns when it is read. Every
``seal_s`` seconds the replica *seals* the segment: its rows become ordinary zstd
parquet files of the log, one per UTC day, and the segment is deleted. Readers of the
log never see segments; they see a prediction at most ``seal_s`` (plus the seal's
own few milliseconds) after it was answered.

Layout (segments live beside the log, never under its prefix, so no reader,
retention or compaction pass lists them)::

    models/<model>/segments/predictions/<replica>-<seq>.jsonl       (open or orphaned)
    models/<model>/predictions/date=D/<t_ns>-<replica>-<seq>.parquet  (sealed)

**Crash safety.** The owner holds an exclusive ``flock`` on its open segment; a
segment is created under a temporary name and renamed once locked, so a scanner never
takes a segment that is being created. :func:`seal_orphans` (run by every ingress
replica at start and every few seconds, and by the controller before it reads the
log) seals the segments nobody holds: those of a crashed replica. A torn last record
(the process died inside a ``write``) belongs to a request that was never answered,
and :func:`read_segment` drops it. A sealed file's name is a function of the segment
and the day, and an existing one is not rewritten, so sealing the same segment twice
(crash after the parquet write, before the unlink) adds no row. A creator that died
between creating the temporary file and renaming it leaves a ``.tmp`` file with at most
the header: the scan deletes it once it is a minute old and unlocked. A line that cannot be
read (damage, not a crash: only the last line can be cut off) is skipped and the
records after it are sealed; the segment's bytes are then kept for review.

Only on a local disk: on an object store every append would be a network PUT, and
the ingress keeps the per-request :class:`GroupCommit` files there.

    >>> import asyncio, tempfile
    >>> from lifelong_ray.storage import Storage
    >>> from lifelong_ray.data.logs import ModelLogs, LogTail, feedback_rows
    >>> logs = ModelLogs(Storage(tempfile.mkdtemp()), "m")
    >>> seg = SegmentLog(logs, logs.predictions_prefix, replica="r1", seal_s=None)
    >>> async def two():
    ...     return await asyncio.gather(*(seg.append(lambda t, i=i: feedback_rows([f"r{i}"], [1], t), 1)
    ...                                   for i in range(2)))
    >>> _ = asyncio.run(two())
    >>> LogTail(logs.storage, logs.predictions_prefix).read_new() is None  # not sealed yet
    True
    >>> [rows for *_, rows in seg.seal_now()], LogTail(logs.storage, logs.predictions_prefix).read_new().num_rows
    ([2], 2)
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import pyarrow as pa

from lifelong_ray.data.flush import GroupFlusher, PathSync
from lifelong_ray.data.logs import GroupCommit, ModelLogs, RowsAt, _file_name, table_to_bytes
from lifelong_ray.data.records import LogRecord, decode_line, records_table
from lifelong_ray.storage import Storage, _fsync_dir

if TYPE_CHECKING:  # pragma: no cover
    from lifelong_ray.config import Durability

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"
#: the ``format`` of a segment's header line
SEGMENT_FORMAT = "lifelong-segment/1"
#: where a sealed segment whose end could not be read is kept for review (under its segment dir)
DAMAGED_DIR = "damaged"
#: how often a replica looks for orphaned segments of dead replicas
ORPHAN_SCAN_S = 5.0
#: a segment is sealed early once it holds this many rows
MAX_SEGMENT_ROWS = 100_000

#: ``(sealed parquet path, t_min, t_max)`` per file a seal wrote (``seal_now`` adds the rows, fourth)
Sealed = tuple[str, float, float]


def segment_dir(prefix: str) -> str:
    """Where the segments of the log at ``prefix`` live: ``models/m/predictions`` ->
    ``models/m/segments/predictions`` (outside the log's prefix)."""
    base, name = prefix.rsplit("/", 1)
    return f"{base}/segments/{name}"


def _header(schema: pa.Schema) -> bytes:
    """A segment's first line: its format and the Arrow schema of its rows (base64)."""
    return (json.dumps({"format": SEGMENT_FORMAT,
                        "schema": base64.b64encode(schema.serialize().to_pybytes()).decode()}) + "\n").encode()


def _schema_of(line: bytes) -> pa.Schema:
    head = json.loads(line)
    if not isinstance(head, dict) or head.get("format") != SEGMENT_FORMAT:
        raise ValueError(f"not a {SEGMENT_FORMAT} header")
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(head["schema"])))


def _table(schema: pa.Schema, records: list[dict]) -> tuple[pa.Table | None, str | None]:
    """The records' table; records that do not fit the schema are left out, and said."""
    try:
        return (records_table(schema, records) if records else None), None
    except ValueError:
        pass
    good, bad = [], []  # rare: check record by record
    for k, rec in enumerate(records):
        try:
            records_table(schema, [rec])
            good.append(rec)
        except ValueError as err:
            bad.append(f"record {k + 1}: {err}")
    return (records_table(schema, good) if good else None), f"{len(bad)} records do not fit the schema ({bad[0]})"


def _read(path: str) -> tuple[pa.Table | None, str | None]:
    """The readable records of the segment at ``path`` and, when some could not be
    read, why (a last record cut off by a crash, or damage). Each line is a record of
    its own: one that cannot be read is skipped, and the records after it are kept."""
    with open(path, "rb") as fh:
        data = fh.read()
    if not data:
        return None, None
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a whole line; else a record cut off mid-write
    try:
        if not lines:
            raise ValueError("the header line was cut off")
        schema = _schema_of(lines[0])
    except (ValueError, KeyError, TypeError, pa.ArrowInvalid) as err:
        return None, f"no readable schema ({err})"
    records, unreadable = [], []
    for k, line in enumerate(lines[1:]):
        try:
            records.append(decode_line(line))
        except ValueError as err:
            unreadable.append(f"line {k + 2}: {err}")
    damage = [f"{len(unreadable)} unreadable lines ({unreadable[0]})"] if unreadable else []
    if torn:
        damage.append(f"a last record cut off ({len(torn)} bytes)")
    table, misfit = _table(schema, records)
    if misfit:
        damage.append(misfit)
    return table, "; ".join(damage) or None


def read_segment(path: str) -> pa.Table | None:
    """Every complete record of the segment file at ``path`` (a full local path), or
    None when it holds none. A record still being written (a live segment) or torn by
    a crash is left out."""
    return _read(path)[0]


def segment_paths(storage: Storage, prefix: str) -> list[str]:
    """Full paths of the segments (open or orphaned) of the log at ``prefix``, by name."""
    if not storage.is_local:
        return []
    directory = storage.path(segment_dir(prefix))
    try:
        return [f"{directory}/{n}" for n in sorted(os.listdir(directory)) if n.endswith(SEGMENT_SUFFIX)]
    except FileNotFoundError:
        return []


#: A segment still under its temporary name this long after its last change was left by
#: a creator that died between ``open`` and ``rename`` (creation takes microseconds).
STALE_TMP_SECONDS = 60.0


def remove_stale_tmp(storage: Storage, prefix: str, now: float | None = None) -> list[str]:
    """Delete the temporary files of segment creations that never finished: older than
    :data:`STALE_TMP_SECONDS` and locked by nobody. Such a file holds at most the
    segment header, never an acknowledged row. Returns the names removed."""
    if not storage.is_local:
        return []
    directory = storage.path(segment_dir(prefix))
    try:
        names = [n for n in os.listdir(directory) if n.startswith(".") and n.endswith(".tmp")]
    except FileNotFoundError:
        return []
    now = time.time() if now is None else now
    removed = []
    for name in names:
        full = f"{directory}/{name}"
        try:
            fd = os.open(full, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            if now - os.fstat(fd).st_mtime < STALE_TMP_SECONDS:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its creator is alive
            os.unlink(full)
            removed.append(name)
            log.info("removed %s, left by a segment creation that did not finish", name)
        except FileNotFoundError:
            continue
        finally:
            os.close(fd)
    return removed


def open_segment_tables(storage: Storage, prefix: str) -> list[pa.Table]:
    """The rows of every segment of the log at ``prefix`` not sealed yet (all replicas'):
    for readers that must also see the last ``log_seal_seconds`` of answers. A row can
    be in a segment and, once sealed, in the log: such readers dedupe by ``request_id``."""
    out = []
    for full in segment_paths(storage, prefix):
        try:
            table = read_segment(full)
        except FileNotFoundError:
            continue  # sealed meanwhile: its rows are in the log
        if table is not None:
            out.append(table)
    return out


def seal_file(logs: ModelLogs, prefix: str, full: str, *, fsync: bool) -> list[tuple[str, float, float, int]]:
    """Write the rows of the segment at ``full`` into ``prefix`` as one parquet file per
    UTC day, then delete the segment. Returns ``(path, t_min, t_max, rows)`` per file.

    Idempotent: the files are named by the segment and the day, and one that exists
    already (an earlier seal that died before the unlink) is kept as it is."""
    table, damage = _read(full)
    stem = os.path.basename(full)[: -len(SEGMENT_SUFFIX)]
    out: list[tuple[str, float, float, int]] = []
    if table is not None and table.num_rows:
        t = table.column("t").to_numpy(zero_copy_only=False).astype(np.float64)
        days = np.where(t > 1e8, np.floor(t / 86400.0), 0.0).astype(np.int64).astype("datetime64[D]").astype(str)
        for day in sorted(set(days.tolist())):
            mask = days == day
            part = table.filter(pa.array(mask)) if not mask.all() else table
            t_day = t[mask]
            name = _file_name(prefix, float(t_day.min()), stem)
            if not logs.storage.exists(name):
                logs.storage.write_bytes(name, table_to_bytes(part), fsync=fsync)
            out.append((name, float(t_day.min()), float(t_day.max()), part.num_rows))
    if damage is None:
        os.unlink(full)
    else:  # its readable records are sealed; the bytes are kept for review, never deleted
        keep = f"{os.path.dirname(full)}/{DAMAGED_DIR}"
        os.makedirs(keep, exist_ok=True)
        os.replace(full, f"{keep}/{os.path.basename(full)}")
        log.warning("segment %s: %s; %d readable rows sealed, the file kept in %s/ for review (a last "
                    "record cut off by a crash was never answered)", full, damage, sum(r for *_, r in out),
                    DAMAGED_DIR)
    if fsync:
        _fsync_dir(os.path.dirname(full))
    return out


def seal_orphans(logs: ModelLogs, prefix: str, *, fsync: bool,
                 skip: frozenset[str] = frozenset()) -> list[tuple[str, float, float, int]]:
    """Seal every segment of ``prefix`` that no live writer holds (a dead replica's).

    A segment is sealed only under its exclusive lock, and only if the name still
    points at the locked file (its owner may have sealed and deleted it meanwhile).
    Stale temporary files of unfinished creations are removed (:func:`remove_stale_tmp`)."""
    remove_stale_tmp(logs.storage, prefix)
    out = []
    for full in segment_paths(logs.storage, prefix):
        name = os.path.basename(full)
        if full in skip:
            continue
        try:
            fd = os.open(full, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer holds it
            try:
                if os.fstat(fd).st_ino != os.stat(full).st_ino:
                    continue
            except FileNotFoundError:
                continue
            try:
                out.extend(seal_file(logs, prefix, full, fsync=fsync))
            except Exception:  # noqa: BLE001 - the next scan retries; the other orphans go on
                log.exception("could not seal orphaned segment %s", name)
                continue
            log.info("sealed orphaned segment %s", name)
        finally:
            os.close(fd)
    return out


def prediction_writer(logs: ModelLogs, *, segments: bool, seal_s: float, prefix: str | None = None,
                      on_sealed: Callable[[list[Sealed]], None] | None = None,
                      durability: "Durability | None" = None,
                      flush_interval_s: float = 0.1) -> "GroupCommit | SegmentLog":
    """The writer the ingress uses for its prediction log (``data.log_segments``,
    ``data.log_seal_seconds``, ``data.durability.predictions``, ``data.flush_interval_ms``):
    a :class:`SegmentLog` of its own on a local root, else a
    :class:`~lifelong_ray.data.logs.GroupCommit` (one parquet file per lone request)."""
    prefix = prefix or logs.predictions_prefix
    if segments and logs.storage.is_local:
        return SegmentLog(logs, prefix, replica=f"{os.getpid()}-{uuid.uuid4().hex[:8]}", seal_s=seal_s,
                          on_sealed=on_sealed, durability=durability, flush_interval_s=flush_interval_s)
    return GroupCommit(logs, prefix, durability=durability, flush_interval_s=flush_interval_s)


@dataclass(eq=False)  # one object per open file: hashed by identity (a group flusher marks it)
class _Segment:
    """One open segment: its fd (locked), schema, and what was written and synced.
    ``lock`` keeps a group flusher's sync and :meth:`close` apart (the fd is not
    closed, and its number reused, under a sync)."""

    full: str
    fd: int
    schema: pa.Schema
    rows: int = 0
    written: int = 0   # bytes handed to the kernel
    synced: int = 0    # bytes known durable
    broken: bool = False
    retired: bool = False  # no longer appended to; on the retired list until sealed
    flusher: asyncio.Task[None] | None = None
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, directory: str, stem: str, schema: pa.Schema, *, fsync: bool) -> "_Segment":
        os.makedirs(directory, exist_ok=True)
        tmp = f"{directory}/.{stem}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seg = cls(f"{directory}/{stem}{SEGMENT_SUFFIX}", fd, schema)
            seg.write(_header(schema))
            os.rename(tmp, seg.full)  # locked before any scanner can see it
            if fsync:  # the name too must survive a power loss before the first 2xx
                _fsync_dir(directory)
        except BaseException:
            os.close(fd)
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return seg

    def close(self) -> None:
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def flush_to_device(self) -> None:
        """The group commit's sync (durability ``group``): what was written so far. A
        failed sync stops appends to this segment (they go to a new one)."""
        with self.lock:
            end = self.written
            if self.fd < 0 or self.synced >= end:
                return
            try:
                os.fdatasync(self.fd)
            except OSError:
                self.broken = True
                raise
            self.synced = max(self.synced, end)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except BaseException:
            self.broken = True  # a partial record: nothing may follow it
            raise
        self.written += len(data)


class SegmentLog:
    """Appends of one log from the coroutines of one event loop, durable on return as
    ``durability`` says: ``fsync``, synced before :meth:`append` returns; ``group``,
    written to the OS before it returns and synced by the log's
    :class:`~lifelong_ray.data.flush.GroupFlusher` (its own thread) within
    ``flush_interval_s``; ``none``, written to the OS (default: ``fsync`` if
    ``logs.fsync``, else ``none``).

    The same interface as :class:`~lifelong_ray.data.logs.GroupCommit`: :meth:`append`
    takes a function of the write time and the row count and returns ``(segment path,
    t)`` once the rows are on disk. ``on_sealed`` is called (on the event loop, or in
    :meth:`close`) with the parquet files each seal wrote. A caller whose rows cannot
    be built gets its own error; a failed write or sync fails its callers (they must
    not answer 2xx) and the log moves on to a new segment, truncating the failed one
    to what was synced."""

    def __init__(self, logs: ModelLogs, prefix: str, *, replica: str | None = None, seal_s: float | None = 0.25,
                 clock: Callable[[], float] = time.time, inline_idle_s: float = 0.002,
                 on_sealed: Callable[[list[Sealed]], None] | None = None,
                 durability: "Durability | None" = None, flush_interval_s: float = 0.1) -> None:
        if not logs.storage.is_local:
            raise ValueError("a segment log needs a local storage root")
        self.logs = logs
        self.prefix = prefix
        self.durability: Durability = durability or ("fsync" if logs.fsync else "none")
        #: the group commit of this log (durability ``group``), else None
        self.flusher = GroupFlusher(prefix, flush_interval_s) if self.durability == "group" else None
        #: whether sealed files are synced: a seal deletes the segment, so unless nothing is ever
        #: synced (``none``) its rows must be on the device first
        self.seal_fsync = self.durability != "none"
        self.replica = replica or uuid.uuid4().hex[:12]
        self.seal_s = seal_s
        self.clock = clock
        self.inline_idle_s = inline_idle_s
        self.on_sealed = on_sealed
        self.directory = logs.storage.path(segment_dir(prefix))
        self.inline_syncs = 0
        self._seq = 0
        self._current: _Segment | None = None
        self._retired: list[_Segment] = []  # no longer appended to, not sealed yet
        self._idle_since = -float("inf")  # monotonic time the last sync of any segment ended
        self._sealer: asyncio.Task[None] | None = None
        self._scanned_at = -float("inf")

    # -- appends ----------------------------------------------------------------------
    async def append(self, rows_at: RowsAt, n_rows: int, *, alone: bool = True) -> tuple[str, float]:
        """Write ``rows_at(t)`` durably; the segment's path (relative) and ``t``.

        The ``fdatasync`` runs on the event loop when nobody can share it (no sync
        running or ended within ``inline_idle_s``) and the caller says it is ``alone``
        (no other request of its process in flight: a sync on the loop would hold them
        up); otherwise in a worker thread, shared by the callers that arrive meanwhile."""
        t = self.clock()
        rows = rows_at(t)
        record = rows if isinstance(rows, LogRecord) else LogRecord.from_table(rows)
        data = record.encode()
        seg = self._segment_for(record.schema)
        try:
            seg.write(data)
        except OSError:
            self._retire(seg)
            raise
        seg.rows += record.n
        if self._sealer is None and self.seal_s is not None:
            self._sealer = asyncio.get_running_loop().create_task(self._seal_loop())
        if self.durability == "fsync":
            await self._sync(seg, seg.written, alone)
        elif self.flusher is not None:
            self.flusher.mark(seg)
        if seg.rows >= MAX_SEGMENT_ROWS and seg is self._current:
            self._retire(seg)
        return self.logs.storage.rel(seg.full), t

    def _segment_for(self, schema: pa.Schema) -> _Segment:
        seg = self._current
        if seg is not None and not seg.broken and (seg.schema is schema or seg.schema.equals(schema)):
            return seg
        if seg is not None:
            self._retire(seg)
        self._seq += 1
        self._current = _Segment.create(self.directory, f"{self.replica}-{self._seq:06d}", schema,
                                        fsync=self.durability == "fsync")
        if self.flusher is not None:  # its name, too, is synced by the next group commit
            self.flusher.mark(PathSync(self.directory, directory=True))
        return self._current

    async def _sync(self, seg: _Segment, target: int, alone: bool = True) -> None:
        if seg.synced >= target:
            return
        if alone and seg.flusher is None and time.monotonic() - self._idle_since >= self.inline_idle_s:
            end = seg.written  # nobody to share an fdatasync with: do it here, no thread hop
            try:
                os.fdatasync(seg.fd)
            except OSError:
                self._fail_sync(seg)
                raise
            finally:
                self._idle_since = time.monotonic()
            seg.synced = max(seg.synced, end)
            self.inline_syncs += 1
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        seg.waiters.append((target, done))
        if seg.flusher is None:
            seg.flusher = asyncio.get_running_loop().create_task(self._flush(seg))
        await asyncio.shield(done)

    async def _flush(self, seg: _Segment) -> None:
        try:
            while seg.waiters:
                end = seg.written
                try:
                    await asyncio.to_thread(os.fdatasync, seg.fd)
                except OSError as err:
                    self._fail_sync(seg)
                    for _, done in seg.waiters:
                        if not done.done():
                            done.set_exception(err)
                    seg.waiters = []
                    return
                seg.synced = max(seg.synced, end)
                keep = []
                for target, done in seg.waiters:
                    if target <= end:
                        if not done.done():
                            done.set_result(None)
                    else:
                        keep.append((target, done))
                seg.waiters = keep
        finally:
            self._idle_since = time.monotonic()
            for _, done in seg.waiters:  # cancelled: nobody may wait forever
                if not done.done():
                    done.set_exception(RuntimeError("the log writer stopped before syncing these rows"))
            seg.waiters = []
            seg.flusher = None

    def _fail_sync(self, seg: _Segment) -> None:
        """A failed fdatasync: drop what was not known durable (its callers get the error)."""
        seg.broken = True
        if seg.fd >= 0:
            try:
                os.ftruncate(seg.fd, seg.synced)
                seg.written = seg.synced
            except OSError:
                log.exception("could not truncate segment %s after a failed sync", seg.full)
        self._retire(seg)

    # -- sealing ----------------------------------------------------------------------
    def _retire(self, seg: _Segment) -> None:
        """Stop appending to ``seg``; it is sealed by the next seal pass (or :meth:`close`).
        Once only: a segment is never on the retired list twice."""
        if seg is self._current:
            self._current = None
        if not seg.retired:
            seg.retired = True
            self._retired.append(seg)

    async def _seal_loop(self) -> None:
        assert self.seal_s is not None
        while True:
            await asyncio.sleep(self.seal_s)
            try:
                await self.seal()
            except Exception:  # noqa: BLE001 - retried next pass; rows stay in their segment
                log.exception("sealing segments of %s failed; retrying", self.prefix)

    async def seal(self) -> list[Sealed]:
        """Seal the current segment (if it has rows) and any retired ones; every
        ``ORPHAN_SCAN_S`` also the orphans of dead replicas."""
        if self._current is not None and self._current.rows:
            self._retire(self._current)
        # segments with a sync in flight wait for the next pass: their callers are answered first
        ready = [seg for seg in self._retired if seg.flusher is None]
        self._retired = [seg for seg in self._retired if seg.flusher is not None]
        scan = time.monotonic() - self._scanned_at >= ORPHAN_SCAN_S
        if scan:
            self._scanned_at = time.monotonic()
        # cancelling this await does not stop the thread: it still seals ``ready`` (or puts a
        # segment that failed back on the retired list), so nothing is re-queued here
        own, orphans = await asyncio.to_thread(self._seal_sync, ready, scan)
        sealed = [(p, a, b) for p, a, b, _ in own]
        if sealed and self.on_sealed is not None:
            self.on_sealed(sealed)
        return sealed + [(p, a, b) for p, a, b, _ in orphans]

    def _seal_sync(self, segs: list[_Segment],
                   scan: bool) -> tuple[list[tuple[str, float, float, int]], list[tuple[str, float, float, int]]]:
        """Seal ``segs`` (this log's own; one that fails stays retired, locked, and is
        retried next pass) and, if ``scan``, the orphans of dead replicas.
        ``(own files, orphan files)``: only the own files' ids are in this replica's memory."""
        own: list[tuple[str, float, float, int]] = []
        for seg in segs:
            try:
                own.extend(seal_file(self.logs, self.prefix, seg.full, fsync=self.seal_fsync))
            except Exception:  # noqa: BLE001 - keep it (and its lock) for the next pass
                log.exception("could not seal segment %s; retrying next pass", seg.full)
                self._retired.append(seg)
                continue
            seg.close()
        orphans: list[tuple[str, float, float, int]] = []
        if scan:
            mine = frozenset({s.full for s in (self._current, *self._retired) if s is not None})
            orphans = seal_orphans(self.logs, self.prefix, fsync=self.seal_fsync, skip=mine)
        return own, orphans

    def seal_now(self) -> list[tuple[str, float, float, int]]:
        """Seal, synchronously, every segment of this log with no sync in flight (tests,
        and :meth:`close` at shutdown: a segment still syncing is left locked, and sealed
        as an orphan once this process is gone). ``(path, t_min, t_max, rows)`` per file."""
        if self._current is not None:
            self._retire(self._current)
        ready = [seg for seg in self._retired if seg.flusher is None]
        self._retired = [seg for seg in self._retired if seg.flusher is not None]
        own, _ = self._seal_sync(ready, scan=False)
        if own and self.on_sealed is not None:
            self.on_sealed([(p, a, b) for p, a, b, _ in own])
        return own

    def close(self) -> None:
        """Stop the seal loop and seal what is left (a replica shutting down). Never raises."""
        try:
            if self._sealer is not None:
                self._sealer.cancel()
        except Exception:  # noqa: BLE001 - the loop may be closed already (garbage collection)
            pass
        self._sealer = None
        try:
            self.seal_now()
        except Exception:  # noqa: BLE001 - the next replica seals it as an orphan
            log.exception("could not seal the segments of %s at shutdown", self.prefix)
        if self.flusher is not None:  # what a segment left unsealed (still syncing) holds
            try:
                self.flusher.close()
            except Exception:  # noqa: BLE001
                log.exception("could not flush the segments of %s at shutdown", self.prefix)
