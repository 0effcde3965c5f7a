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
awaits it answers 2xx only for durable records. :class:`LogTail` reads each file
exactly once, tolerating files that appear out of name order.

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
import uuid
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lifelong_ray.storage import Storage

PREDICTION_META = ["request_id", "t", "version", "key", "shadow", "prediction", "confidence",
                   "latency_ms", "error"]
FEEDBACK_COLUMNS = ["request_id", "t", "label"]
LABELED_META = ["request_id", "t", "t_label", "version", "prediction", "label"]


def _file_name(prefix: str, t: float) -> str:
    day = dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d") if t > 1e8 else "1970-01-01"
    return f"{prefix}/date={day}/{int(t * 1e9):020d}-{uuid.uuid4().hex[:10]}.parquet"


def table_to_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


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


class ModelLogs:
    """Writers for the three logs of one model."""

    def __init__(self, storage: Storage, model: str) -> None:
        self.storage = storage
        self.model = model
        base = f"models/{model}"
        self.predictions_prefix = f"{base}/predictions"
        self.feedback_prefix = f"{base}/feedback"
        self.labeled_prefix = f"{base}/labeled"

    def _write(self, prefix: str, table: pa.Table, t: float) -> str:
        name = _file_name(prefix, t)
        self.storage.write_bytes(name, table_to_bytes(table))
        return name

    def append_predictions(
        self,
        *,
        request_ids: Sequence[str],
        t: float,
        version: str,
        features: dict[str, pa.Array],
        predictions: Sequence[int],
        confidence: Sequence[float],
        latency_ms: float,
        key: str | None = None,
        shadow: bool = False,
        error: str | None = None,
    ) -> str:
        n = len(request_ids)
        cols: dict[str, Any] = {
            "request_id": pa.array(list(request_ids), pa.string()),
            "t": pa.array(np.full(n, t), pa.float64()),
            "version": pa.array([version] * n, pa.string()),
            "key": pa.array([key] * n, pa.string()),
            "shadow": pa.array([shadow] * n, pa.bool_()),
            "prediction": pa.array(np.asarray(predictions, dtype=np.int64), pa.int64()),
            "confidence": pa.array(np.asarray(confidence, dtype=np.float64), pa.float64()),
            "latency_ms": pa.array(np.full(n, latency_ms), pa.float64()),
            "error": pa.array([error] * n, pa.string()),
        }
        cols.update(features)
        return self._write(self.predictions_prefix, pa.table(cols), t)

    def append_feedback(self, request_ids: Sequence[str], labels: Sequence[int], t: float) -> str:
        table = pa.table({
            "request_id": pa.array(list(request_ids), pa.string()),
            "t": pa.array(np.full(len(request_ids), t), pa.float64()),
            "label": pa.array(np.asarray(labels, dtype=np.int64), pa.int64()),
        })
        return self._write(self.feedback_prefix, table, t)

    def append_labeled(self, table: pa.Table, t: float) -> str:
        """Append joined (or batch-ingested) labeled rows: LABELED_META + features."""
        missing = [c for c in LABELED_META if c not in table.column_names]
        if missing:
            raise ValueError(f"labeled rows need columns {missing}")
        return self._write(self.labeled_prefix, table, t)

    def labeled_files(self) -> list[str]:
        return [self.storage.path(p) for p in self.storage.list(self.labeled_prefix, suffix=".parquet")]


class LogTail:
    """Reads each new file under a prefix exactly once (per process).

    Tracks the set of file names seen rather than a cursor, because a slow writer
    can land a file whose name sorts before one already read."""

    def __init__(self, storage: Storage, prefix: str) -> None:
        self.storage = storage
        self.prefix = prefix
        self.seen: set[str] = set()

    def read_new(self, columns: Sequence[str] | None = None) -> pa.Table | None:
        new = [p for p in self.storage.list(self.prefix, suffix=".parquet") if p not in self.seen]
        if not new:
            return None
        tables = []
        for p in new:
            with self.storage.fs.open_input_file(self.storage.path(p)) as fh:
                tables.append(pq.read_table(fh, columns=list(columns) if columns else None))
        self.seen.update(new)
        return pa.concat_tables(tables, promote_options="permissive")
