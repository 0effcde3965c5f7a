"""Durable, append-only parquet logs of one model.

Layout under the storage root (one parquet file per append, written atomically)::

    models/<model>/predictions/date=YYYY-MM-DD/<t_ns>-<rand>.parquet
    models/<model>/feedback/date=YYYY-MM-DD/<t_ns>-<rand>.parquet
    models/<model>/labeled/date=YYYY-MM-DD/<t_ns>-<rand>.parquet

``predictions``: request_id, t, version, key, shadow, prediction, confidence,
latency_ms, error, then one column per feature.
``feedback``: request_id, t, label.
``labeled``: the join of the two (features + label + the version that served it
and what it predicted; both null for batch-ingested rows), written by the
controller and by batch ingest; training windows read it.

A writer call returns only after the file is in place, so an HTTP handler that
awaits it answers 2xx only for durable records. On a local root the ingress writes
its prediction rows through a segment log instead (:mod:`lifelong_ray.data.segments`:
durable on return, sealed into files of this layout every ``data.log_seal_seconds``). :class:`LogTail` reads each row
exactly once, tolerating files that appear out of name order and files that
compaction merges (see below). Configured PII fields (``data.pii_fields``: the
routing ``key``) are hashed before a row is written (:mod:`lifelong_ray.data.privacy`);
build the writers with :meth:`ModelLogs.from_config` to get that.

**Compaction** (:func:`lifelong_ray.data.retention.compact_day`) merges a past day's
small files into one ``compacted-*.parquet`` in the same partition; its footer
lists the source files and their row counts, in order. It is written *before* the
sources are deleted, so at every instant each row is in a listed file. Readers
that list files (:meth:`ModelLogs.live_files`) skip sources a listed compacted
file covers; a :class:`LogTail` reads from a compacted file only the rows of
sources it has not read yet, so a tail running across a compaction neither reads
a row twice nor loses one.

    >>> import tempfile
    >>> from lifelong_ray.storage import Storage
    >>> st = Storage(tempfile.mkdtemp())
    >>> log = ModelLogs(st, "m")
    >>> _ = log.append_feedback(["r1"], [1], t=10.0)
    >>> tail = LogTail(st, log.feedback_prefix)
    >>> tail.read_new().num_rows, tail.read_new()
    (1, None)
"""

from __future__ import annotations

import datetime as dt
import io
import json
import asyncio
import logging
import math
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lifelong_ray.data.flush import GroupFlusher, file_and_directory
from lifelong_ray.data.privacy import PiiHasher
from lifelong_ray.data.records import LogRecord
from lifelong_ray.storage import Storage

if TYPE_CHECKING:  # pragma: no cover
    from lifelong_ray.config import Config, Durability

log = logging.getLogger(__name__)

PREDICTION_META = ["request_id", "t", "version", "key", "shadow", "prediction", "confidence",
                   "latency_ms", "error"]
#: the types of PREDICTION_META (as :meth:`ModelLogs.prediction_rows` writes them)
PREDICTION_SCHEMA = [("request_id", pa.string()), ("t", pa.float64()), ("version", pa.string()),
                     ("key", pa.string()), ("shadow", pa.bool_()), ("prediction", pa.int64()),
                     ("confidence", pa.float64()), ("latency_ms", pa.float64()), ("error", pa.string())]
FEEDBACK_COLUMNS = ["request_id", "t", "label"]
LABELED_META = ["request_id", "t", "t_label", "version", "prediction", "label"]


#: Footer key of a compacted file: JSON ``[[source file, rows], ...]`` in row order.
COMPACTED_FROM = b"lifelong.compacted_from"
COMPACTED_PREFIX = "compacted-"


def day_of(t: float) -> str:
    """The ``YYYY-MM-DD`` (UTC) partition of time ``t``; sample clocks (t < 1e8) use 1970-01-01.

    >>> day_of(1.7e9), day_of(5.0)
    ('2023-11-14', '1970-01-01')
    """
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d") if t > 1e8 else "1970-01-01"


def _file_name(prefix: str, t: float, file_id: str | None = None) -> str:
    return f"{prefix}/date={day_of(t)}/{int(t * 1e9):020d}-{file_id or uuid.uuid4().hex[:10]}.parquet"


def name_time(path: str) -> float | None:
    """The time in a log file's name (``<t_ns>-...parquet``), or None (a compacted file).

    >>> name_time("models/m/feedback/date=1970-01-01/00000000010000000000-ab12.parquet")
    10.0
    """
    stem = path.rsplit("/", 1)[-1].split("-", 1)[0]
    return int(stem) / 1e9 if stem.isdigit() else None


def partition_of(path: str) -> str:
    """The directory (``<prefix>/date=YYYY-MM-DD``) a log file lives in."""
    return path.rsplit("/", 1)[0]


def is_compacted(path: str) -> bool:
    return path.rsplit("/", 1)[-1].startswith(COMPACTED_PREFIX)


def compacted_sources(storage: Storage, path: str) -> list[tuple[str, int]]:
    """``[(source file, rows), ...]`` merged into the compacted file ``path`` (from its footer)."""
    with storage.fs.open_input_file(storage.path(path)) as fh:
        meta = pq.read_metadata(fh).metadata or {}
    return [(str(name), int(rows)) for name, rows in json.loads(meta[COMPACTED_FROM])]


def read_parquet_file(storage: Storage, path: str, columns: Sequence[str] | None) -> pa.Table | None:
    """The table at ``path``, or None when it vanished since it was listed (compacted or expired)."""
    try:
        with storage.fs.open_input_file(storage.path(path)) as fh:
            return pq.read_table(fh, columns=list(columns) if columns else None)
    except FileNotFoundError:
        return None
    except OSError:
        if storage.exists(path):
            raise
        return None


def table_to_bytes(table: pa.Table) -> bytes:
    """zstd parquet, for files that stay large (compaction, replay, quarantine)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def append_to_bytes(table: pa.Table) -> bytes:
    """Parquet for one log append (a few rows): no compression, dictionary or statistics.

    For a handful of rows those cost more than they save (2.5x the encoding time of
    zstd's 0.7 ms, and the file is smaller without them); compaction rewrites the
    day's files as zstd (:func:`table_to_bytes`). Every reader sees the same table.

    >>> t = pa.table({"request_id": ["r1"], "t": [1.0]})
    >>> pq.read_table(pa.BufferReader(append_to_bytes(t))).equals(t)
    True
    """
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, compression="none", use_dictionary=False,
                          write_statistics=False) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def feature_arrays(columns: dict[str, Any], names: Sequence[str], categorical: set[str]) -> dict[str, pa.Array]:
    """Arrow arrays of the feature columns (floats, or strings for categories)."""
    out: dict[str, pa.Array] = {}
    for name in names:
        values = columns[name]
        if name in categorical:
            out[name] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
        else:
            arr = np.asarray(values, dtype=np.float64)
            out[name] = pa.array(arr, type=pa.float64(), from_pandas=True)
    return out


def feature_values(columns: dict[str, Any], names: Sequence[str], categorical: set[str]) -> dict[str, list[Any]]:
    """The feature columns as plain values for a :class:`~lifelong_ray.data.records.LogRecord`:
    what :func:`feature_arrays` holds (floats with NaN as null, or strings), without Arrow.

    >>> feature_values({"x": np.array([1.5, np.nan]), "c": np.array(["a", None], dtype=object)}, ["x", "c"], {"c"})
    {'x': [1.5, None], 'c': ['a', None]}
    """
    out: dict[str, list[Any]] = {}
    for name in names:
        values = columns[name]
        if name in categorical:
            out[name] = [None if v is None else str(v) for v in values]
        else:
            out[name] = [None if v != v else v for v in np.asarray(values, dtype=np.float64).tolist()]
    return out


def feedback_rows(request_ids: Sequence[str], labels: Sequence[int], t: float) -> pa.Table:
    """Rows of the feedback log: one label per request id, all at time ``t``."""
    return pa.table({
        "request_id": pa.array(list(request_ids), pa.string()),
        "t": pa.array(np.full(len(request_ids), t), pa.float64()),
        "label": pa.array(np.asarray(labels, dtype=np.int64), pa.int64()),
    })


class ModelLogs:
    """Writers for the three logs of one model.

    ``pii`` hashes configured PII fields before a row is written; without it
    nothing is hashed. :meth:`from_config` builds it from ``cfg.data``."""

    def __init__(self, storage: Storage, model: str, *, pii: PiiHasher | None = None, fsync: bool = True) -> None:
        self.storage = storage
        self.model = model
        self.pii = pii
        self.fsync = fsync
        base = f"models/{model}"
        self.predictions_prefix = f"{base}/predictions"
        self.feedback_prefix = f"{base}/feedback"
        self.labeled_prefix = f"{base}/labeled"
        self._record_schemas: dict[tuple[tuple[str, ...], frozenset[str]], pa.Schema] = {}

    @classmethod
    def from_config(cls, storage: Storage, cfg: "Config") -> "ModelLogs":
        """The writers of ``cfg.model``, hashing ``cfg.data.pii_fields`` (needs the salt env var
        set). Direct writes are fsynced; the ingress's writers (:class:`GroupCommit`, the
        segment log) sync as ``cfg.data.durability`` says for their log."""
        return cls(storage, cfg.model.name, pii=PiiHasher.from_config(cfg.data))

    @property
    def prefixes(self) -> tuple[str, str, str]:
        return self.predictions_prefix, self.feedback_prefix, self.labeled_prefix

    def write(self, prefix: str, table: pa.Table, t: float, file_id: str | None = None, *,
              fsync: bool | None = None) -> str:
        """Write ``table`` as one new file of the log at ``prefix``, named and partitioned by ``t``
        (synced to the device if ``fsync``; default: :attr:`fsync`)."""
        name = _file_name(prefix, t, file_id)
        self.storage.write_bytes(name, append_to_bytes(table), fsync=self.fsync if fsync is None else fsync)
        return name

    def append_predictions(self, **rows: Any) -> str:
        """Write :meth:`prediction_rows` as one file (keyword arguments as there)."""
        return self.write(self.predictions_prefix, self.prediction_rows(**rows), rows["t"])

    def prediction_rows(self, *, features: dict[str, pa.Array], **rows: Any) -> pa.Table:
        """Rows of the prediction log, one per request id (the routing key hashed if
        configured): the table of :meth:`prediction_record` (keyword arguments as there),
        with ``features`` as Arrow arrays, e.g. from :func:`feature_arrays` (string arrays
        are the categorical features). One definition of the log's rows for both writers."""
        arrays = {n: a if isinstance(a, pa.Array) else pa.array(a) for n, a in features.items()}
        return self.prediction_record(features={n: a.to_pylist() for n, a in arrays.items()},
                                      categorical={n for n, a in arrays.items() if pa.types.is_string(a.type)},
                                      **rows).to_table()

    def prediction_record(
        self,
        *,
        request_ids: Sequence[str],
        t: float,
        version: str,
        features: dict[str, list[Any]],
        categorical: set[str],
        predictions: Sequence[int],
        confidence: Sequence[float],
        latency_ms: float,
        key: str | None = None,
        shadow: bool = False,
        error: str | None = None,
    ) -> LogRecord:
        """The rows of one answer as a :class:`~lifelong_ray.data.records.LogRecord` (what the
        segment log writes; :meth:`prediction_rows` is its table): ``features`` from
        :func:`feature_values`, ``categorical`` the names of its string columns. Features
        are float64 (NaN and None: null) or, when categorical, strings."""
        names = tuple(features)
        sig = (names, frozenset(categorical))
        schema = self._record_schemas.get(sig)
        if schema is None:
            schema = self._record_schemas[sig] = pa.schema(
                [*PREDICTION_SCHEMA, *((n, pa.string() if n in categorical else pa.float64()) for n in names)])
        return LogRecord(schema, len(request_ids), rows={
            "request_id": list(request_ids),
            "prediction": [int(p) for p in predictions],
            "confidence": [float(c) for c in confidence],
            **features,
        }, same={
            "t": float(t), "version": version, "key": self.pii.hash_key(key) if self.pii else key,
            "shadow": bool(shadow), "latency_ms": float(latency_ms), "error": error,
        })

    def append_feedback(self, request_ids: Sequence[str], labels: Sequence[int], t: float) -> str:
        return self.write(self.feedback_prefix, feedback_rows(request_ids, labels, t), t)

    def append_labeled(self, table: pa.Table, t: float, file_id: str | None = None) -> str:
        """Append joined (or batch-ingested) labeled rows: LABELED_META + features.

        With ``file_id`` the file name is deterministic for a given ``t``, so a
        retried append (a quarantine release) replaces its file instead of adding one."""
        missing = [c for c in LABELED_META if c not in table.column_names]
        if missing:
            raise ValueError(f"labeled rows need columns {missing}")
        return self.write(self.labeled_prefix, table, t, file_id)

    def live_files(self, prefix: str) -> list[str]:
        """Files under ``prefix`` holding each row once: sources already merged into a
        listed compacted file are left out (compaction deletes them right after)."""
        listed = self.storage.list(prefix, suffix=".parquet")
        covered = {src for p in listed if is_compacted(p) for src, _ in compacted_sources(self.storage, p)}
        return [p for p in listed if p not in covered]

    def labeled_files(self) -> list[str]:
        """Full paths of the labeled log's files (for pyarrow/Ray Data readers)."""
        return [self.storage.path(p) for p in self.live_files(self.labeled_prefix)]


#: rows builder handed to :meth:`GroupCommit.append` (and the segment log's): the flush
#: time ``t`` -> the rows, as a table or a :class:`~lifelong_ray.data.records.LogRecord`
RowsAt = Callable[[float], "pa.Table | LogRecord"]


def as_table(rows: "pa.Table | LogRecord") -> pa.Table:
    return rows.to_table() if isinstance(rows, LogRecord) else rows


class GroupCommit:
    """Group commit of one log for the coroutines of one event loop (the ingress).

    :meth:`append` returns once the caller's rows are in a file of the log, as durable
    as ``durability`` says (``fsync``: synced with its directory; ``group``: renamed
    into place and synced by the log's :class:`~lifelong_ray.data.flush.GroupFlusher`
    within ``flush_interval_s``; ``none``: renamed into place; default: ``fsync`` if
    ``logs.fsync``, else ``none``), but callers that arrive while a file is being
    written share the next file: one encode, one write, one fsync for all of them.
    There is no commit delay: a lone caller's file is written at once, so sequential
    latency is that of one write, and a batch grows only while the disk is busy
    (at most ``max_rows`` rows a file; one caller's rows are never split). Each
    caller passes a function of the flush time ``t``, so every row of a file has the
    file's ``t``: the file's name, date partition and rows agree. Encoding and
    writing run in a worker thread. If a write fails, every caller of that file gets
    the error (and must not answer 2xx); a caller whose rows cannot be built gets
    its own error and the others' rows are written; later files are tried afresh.

        >>> import asyncio, tempfile
        >>> from lifelong_ray.storage import Storage
        >>> logs = ModelLogs(Storage(tempfile.mkdtemp()), "m")
        >>> writer = GroupCommit(logs, logs.feedback_prefix, inline_idle_s=None)  # always queue
        >>> async def three():
        ...     return await asyncio.gather(*(writer.append(lambda t, i=i: feedback_rows([f"r{i}"], [1], t), 1)
        ...                                   for i in range(3)))
        >>> done = asyncio.run(three())
        >>> len({path for path, t in done}), LogTail(logs.storage, logs.feedback_prefix).read_new().num_rows
        (1, 3)
    """

    def __init__(self, logs: ModelLogs, prefix: str, *, max_rows: int = 10_000,
                 clock: Callable[[], float] = time.time, inline_idle_s: float | None = 0.002,
                 durability: "Durability | None" = None, flush_interval_s: float = 0.1) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.logs = logs
        self.prefix = prefix
        self.durability: Durability = durability or ("fsync" if logs.fsync else "none")
        #: the group commit of this log (durability ``group`` on a local root), else None
        self.flusher = GroupFlusher(prefix, flush_interval_s) \
            if self.durability == "group" and logs.storage.is_local else None
        self.max_rows = max_rows
        self.clock = clock
        self.inline_idle_s = inline_idle_s
        self.inline_writes = 0
        self._queue: list[tuple[RowsAt, int, asyncio.Future[tuple[str, float]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._idle_since = -float("inf")  # monotonic time the last write ended

    async def append(self, rows_at: RowsAt, n_rows: int, *, alone: bool = True) -> tuple[str, float]:
        """Write ``rows_at(t)`` (``n_rows`` rows) durably; the file's path and ``t``.

        Cancelling the caller does not take its rows back: they are written anyway.

        A caller that finds the writer idle for ``inline_idle_s`` (nothing queued, nothing
        being written) writes its file in-line, on the event loop: with no one to share
        a file with, the hand-off to a worker thread and back is pure latency (about
        half of a small append's cost). Under concurrent load the writer is never idle
        that long, and files are shared as above. Only on a local disk: a write to an
        object store is a network round trip that must not hold the event loop. A caller
        that is not ``alone`` (other requests of its process in flight, which a write on
        the loop would hold up) always hands its rows to the worker thread."""
        if (alone and self.inline_idle_s is not None and self.logs.storage.is_local and self._flusher is None
                and not self._queue and time.monotonic() - self._idle_since >= self.inline_idle_s):
            t = self.clock()
            try:
                path, errors = self._write([rows_at], t)
            finally:
                self._idle_since = time.monotonic()
            if errors[0] is not None:
                raise errors[0]
            self.inline_writes += 1
            return str(path), t
        done: asyncio.Future[tuple[str, float]] = asyncio.get_running_loop().create_future()
        self._queue.append((rows_at, n_rows, done))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_all())
        return await asyncio.shield(done)

    def _take(self) -> list[tuple[RowsAt, int, asyncio.Future[tuple[str, float]]]]:
        rows, k = 0, 0
        while k < len(self._queue) and (k == 0 or rows + self._queue[k][1] <= self.max_rows):
            rows += self._queue[k][1]
            k += 1
        batch, self._queue = self._queue[:k], self._queue[k:]
        return batch

    def _write(self, builders: list[RowsAt], t: float) -> tuple[str | None, list[Exception | None]]:
        """One file of every caller's rows; a caller whose rows cannot be built gets its own error."""
        tables, errors = [], []
        for build in builders:
            try:
                tables.append(as_table(build(t)))
                errors.append(None)
            except Exception as err:  # noqa: BLE001 - handed to that caller only
                errors.append(err)
        if not tables:
            return None, errors
        path = self.logs.write(self.prefix, pa.concat_tables(tables, promote_options="permissive"), t,
                               fsync=self.durability == "fsync")
        if self.flusher is not None:
            self.flusher.mark(*file_and_directory(self.logs.storage.path(path)))
        return path, errors

    def close(self) -> None:
        """Sync what the group commit has not synced yet and stop its flusher (a replica
        shutting down). Never raises."""
        if self.flusher is not None:
            try:
                self.flusher.close()
            except Exception:  # noqa: BLE001
                log.exception("could not flush %s at shutdown", self.prefix)

    async def _flush_all(self) -> None:
        batch: list[tuple[RowsAt, int, asyncio.Future[tuple[str, float]]]] = []
        try:
            while self._queue:
                batch = self._take()
                t = self.clock()
                try:
                    path, errors = await asyncio.to_thread(self._write, [b for b, _, _ in batch], t)
                except Exception as err:  # noqa: BLE001 - the file was not written: each caller answers 5xx
                    path, errors = None, [err] * len(batch)
                for (_, _, done), err in zip(batch, errors):
                    if done.done():
                        continue
                    if err is None:
                        done.set_result((str(path), t))
                    else:
                        done.set_exception(err)
                batch = []
        finally:  # cancelled (the replica is shutting down): nobody may wait forever
            self._idle_since = time.monotonic()
            for _, _, done in [*batch, *self._queue]:
                if not done.done():
                    done.set_exception(RuntimeError("the log writer stopped before writing these rows"))
            self._queue = batch = []
            self._flusher = None


class LogTail:
    """Reads each new row under a prefix exactly once (per process, or across
    processes when the caller persists :meth:`position` and passes it back).

    Tracks the set of file names seen rather than a cursor, because a slow writer
    can land a file whose name sorts before one already read. Plain files are read
    first; then, from each new compacted file, only the rows of sources not seen
    yet. A file that vanished between listing and reading was compacted (its rows
    come with the compacted file) or expired. A file that is not readable parquet
    is skipped once with a warning and listed in :attr:`unreadable` (a reader of the
    log must not die on it; training windows count it as ``file:unreadable``). Names
    of partitions that no longer exist (retention) are forgotten, so :attr:`seen`
    stays as small as the log.

    With ``lag_s`` the tail is bounded by time instead of by the log: a file whose
    name's time is more than ``lag_s`` older than the newest file read (the
    *cutoff*) counts as read, its name is forgotten, and only the date partitions
    from the cutoff's day on are listed. :attr:`seen` then holds the names of
    ``lag_s`` seconds of files and a read lists about a day of them, however long
    the log; the price is that a file landing more than ``lag_s`` behind the newest
    one is never read (writers name files by the time they write them, so only a
    stalled writer lands that late).

        >>> import tempfile
        >>> st = Storage(tempfile.mkdtemp())
        >>> logs = ModelLogs(st, "m")
        >>> tail = LogTail(st, logs.feedback_prefix, lag_s=60.0)
        >>> _ = [logs.append_feedback([f"r{t}"], [1], t=t) for t in (10.0, 100.0, 200.0)]
        >>> tail.read_new().num_rows, sorted(float(name_time(p)) for p in tail.seen)
        (3, [200.0])
        >>> _ = logs.append_feedback(["late"], [1], t=20.0)   # 180 s behind the newest file read
        >>> _ = logs.append_feedback(["r300"], [1], t=300.0)
        >>> tail.read_new().column("request_id").to_pylist()
        ['r300']
    """

    def __init__(self, storage: Storage, prefix: str, seen: set[str] | None = None, *,
                 lag_s: float | None = None, newest: float = -math.inf) -> None:
        self.storage = storage
        self.prefix = prefix
        self.seen: set[str] = set(seen or ())
        self.unreadable: list[str] = []
        self.lag_s = lag_s
        self.newest = newest  # the newest name time of a file read (with lag_s)
        self._sources: dict[str, list[tuple[str, int]]] = {}  # compacted files are immutable

    @property
    def cutoff(self) -> float:
        """Files named before this count as read (``-inf`` without ``lag_s``)."""
        return self.newest - self.lag_s if self.lag_s is not None else -math.inf

    def position(self) -> dict[str, Any]:
        """What a new tail needs to go on where this one is: ``LogTail(..., **position)``."""
        return {"seen": sorted(self.seen), "newest": self.newest}

    def mark_read(self, path: str) -> None:
        """Count ``path`` as read (a file this reader wrote itself)."""
        self.seen.add(path)
        t = name_time(path)
        if self.lag_s is not None and t is not None:
            self.newest = max(self.newest, t)

    def _is_read(self, path: str) -> bool:
        if path in self.seen:
            return True
        t = name_time(path)
        return t is not None and t < self.cutoff

    def _list(self) -> list[str]:
        if not math.isfinite(self.cutoff):
            return self.storage.list(self.prefix, suffix=".parquet")
        first = f"date={day_of(self.cutoff)}"
        parts = [d for d in self.storage.list_dirs(self.prefix) if not d.startswith("date=") or d >= first]
        return sorted(p for d in parts for p in self.storage.list(f"{self.prefix}/{d}", suffix=".parquet"))

    def read_new(self, columns: Sequence[str] | None = None) -> pa.Table | None:
        """The new rows as one table (None when there are none)."""
        tables = self.read_new_tables(columns)
        return pa.concat_tables(tables, promote_options="permissive") if tables else None

    def read_new_tables(self, columns: Sequence[str] | None = None) -> list[pa.Table]:
        """The new rows, one table per file read (a changed upstream schema stays in its file)."""
        return list(self.iter_new_tables(columns))

    def iter_new_tables(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        """:meth:`read_new_tables` one file at a time (a reader holds one file, not all the
        new ones); :attr:`seen` is final once the iterator is exhausted."""
        listed = self._list()
        new = [p for p in listed if not self._is_read(p)]
        for p in (p for p in new if not is_compacted(p)):
            try:
                table = read_parquet_file(self.storage, p, columns)
            except (OSError, pa.ArrowException) as err:
                log.warning("log file %s is unreadable, skipped: %s", p, err)
                self.unreadable.append(p)
                self.seen.add(p)
                continue
            if table is not None:
                self.mark_read(p)
                yield table
        for p in (p for p in new if is_compacted(p)):
            part = self._unseen_rows(p, columns)
            if part is not None and part.num_rows:
                yield part
        live = {partition_of(p) for p in listed}
        self._sources = {p: src for p, src in self._sources.items() if partition_of(p) in live}
        cutoff = self.cutoff
        self.seen = {p for p in self.seen if partition_of(p) in live and not ((t := name_time(p)) is not None
                                                                             and t < cutoff)}

    def _unseen_rows(self, path: str, columns: Sequence[str] | None) -> pa.Table | None:
        if path not in self._sources:
            try:
                self._sources[path] = compacted_sources(self.storage, path)
            except FileNotFoundError:
                return None
        table = read_parquet_file(self.storage, path, columns)
        if table is None:
            return None
        parts, start = [], 0
        for src, rows in self._sources[path]:
            if not self._is_read(src):
                parts.append(table.slice(start, rows))
            start += rows
        self.seen.add(path)
        self.seen.update(src for src, _ in self._sources[path])
        return pa.concat_tables(parts) if parts else None
