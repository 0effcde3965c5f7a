"""Retention and compaction of a model's logs (predictions, feedback, labeled).

Logs are partitioned by UTC day (``<log>/date=YYYY-MM-DD/``).
:func:`apply_retention` is the operator's entry point (``lifelong compact CONFIG``):

1. feeds the replay reservoir with every labeled row it has not seen, so the
   past survives in the reservoir before any partition goes;
2. with ``data.retention_days`` set, deletes whole partitions whose day ended
   more than that many days before ``now``;
3. compacts each remaining *past* day (ended at least ``COMPACT_GRACE_SECONDS``
   before ``now``, so no writer is still landing files there) that holds more than
   ``data.compact_min_files`` files into one file (:func:`compact_day`).

The quarantine, the audit log, the registry and the reservoir are never expired
here: they are small and an operator may still need them.

    >>> import tempfile
    >>> from lifelong_ray.config import parse_config
    >>> from lifelong_ray.storage import Storage
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}],
    ...                     "label": {"name": "y", "classes": [0, 1]}},
    ...                     "data": {"retention_days": 7, "compact_min_files": 2}})
    >>> st = Storage(tempfile.mkdtemp())
    >>> logs = ModelLogs(st, "m")
    >>> day = 86400.0
    >>> for t in (1.7e9, 1.7e9 + 1, 1.7e9 + 2, 1.7e9 + 20 * day):
    ...     _ = logs.append_feedback([f"r{t}"], [1], t=t)
    >>> rep = apply_retention(st, cfg, now=1.7e9 + 20 * day)
    >>> rep.deleted, [(p.split("/")[-1], n) for p, n in rep.compacted]
    (['models/m/feedback/date=2023-11-14'], [])
    >>> rep = apply_retention(st, cfg.with_overrides(data={"retention_days": 30}), now=1.7e9 + 20 * day)
    >>> rep.deleted
    []
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from lifelong_ray.data.logs import (COMPACTED_FROM, COMPACTED_PREFIX, ModelLogs, compacted_sources, is_compacted,
                                    read_parquet_file, table_to_bytes)
from lifelong_ray.storage import Storage

if TYPE_CHECKING:  # pragma: no cover
    from lifelong_ray.config import Config

#: A day is compacted only once it ended this long ago (late writers of that day are done).
COMPACT_GRACE_SECONDS = 3600.0
_DAY = 86400.0


@dataclass
class RetentionReport:
    """What :func:`apply_retention` did: partitions deleted, ``(compacted file, files merged)``."""

    deleted: list[str] = field(default_factory=list)
    compacted: list[tuple[str, int]] = field(default_factory=list)
    replay_rows_fed: int = 0

    def to_json(self) -> dict:
        return {"deleted": self.deleted, "compacted": [{"file": f, "merged": n} for f, n in self.compacted],
                "replay_rows_fed": self.replay_rows_fed}


def day_end(partition: str) -> float | None:
    """The end (UTC, epoch seconds) of a ``.../date=YYYY-MM-DD`` partition; None if not one.

    >>> day_end("models/m/feedback/date=1970-01-02")
    172800.0
    """
    name = partition.rstrip("/").rsplit("/", 1)[-1]
    if not name.startswith("date="):
        return None
    try:
        start = dt.datetime.strptime(name[5:], "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    return start.timestamp() + _DAY


def compact_day(storage: Storage, partition: str) -> tuple[str, int] | None:
    """Merge the files of one partition into ``compacted-<id>.parquet``; returns
    ``(its path, files merged)``, or None when there is at most one file.

    The footer lists every original source with its rows, in order (an earlier
    compacted file is flattened into its sources and listed itself with 0 rows),
    so a :class:`~lifelong_ray.data.logs.LogTail` reads exactly the rows it has not
    read. The new file is in place before any source is deleted."""
    files = storage.list(partition, suffix=".parquet", recursive=False)
    if len(files) <= 1:
        return None
    sources: list[tuple[str, int]] = []
    tables: list[pa.Table] = []
    for path in files:
        table = read_parquet_file(storage, path, None)
        if table is None:  # another compaction or retention got there first
            return None
        if is_compacted(path):
            sources.append((path, 0))
            sources.extend(compacted_sources(storage, path))
        else:
            sources.append((path, table.num_rows))
        tables.append(table.replace_schema_metadata(None))
    merged = pa.concat_tables(tables, promote_options="permissive")
    merged = merged.replace_schema_metadata({COMPACTED_FROM: json.dumps(sources).encode()})
    out = f"{partition}/{COMPACTED_PREFIX}{uuid.uuid4().hex[:12]}.parquet"
    storage.write_bytes(out, table_to_bytes(merged))
    for path in files:
        storage.fs.delete_file(storage.path(path))
    return out, len(files)


def apply_retention(storage: Storage, cfg: "Config", now: float) -> RetentionReport:
    """Feed the replay reservoir, expire old partitions, compact past days (see the module doc)."""
    from lifelong_ray.data.replay import ReplayReservoir

    report = RetentionReport()
    if cfg.data.replay_capacity > 0:
        res = ReplayReservoir.load(storage, cfg)
        report.replay_rows_fed = res.update(storage)
        res.save(storage)
    data = cfg.data
    for prefix in ModelLogs(storage, cfg.model.name).prefixes:
        for name in storage.list_dirs(prefix):
            partition = f"{prefix}/{name}"
            end = day_end(partition)
            if end is None:
                continue
            if data.retention_days is not None and end <= now - data.retention_days * _DAY:
                storage.delete_dir(partition)
                report.deleted.append(partition)
            elif end + COMPACT_GRACE_SECONDS <= now and \
                    len(storage.list(partition, suffix=".parquet", recursive=False)) > data.compact_min_files:
                done = compact_day(storage, partition)
                if done is not None:
                    report.compacted.append(done)
    return report
