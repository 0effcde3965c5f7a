"""Batch ingest of labeled rows (parquet or CSV) into a model's labeled log.

A batch whose columns do not match the schema (a feature missing, retyped, or an
unknown column) is refused whole with rule ``schema_changed``; otherwise each
row is checked against the contract and only valid rows are appended, with the
count of rejected rows per ``field:rule`` reported back. This is how a model
gets its first version: ingest a labeled batch, and the controller trains once
``training.min_rows`` rows are there.

    >>> import tempfile, pyarrow as pa
    >>> from lifelong_ray.config import parse_config
    >>> from lifelong_ray.storage import Storage
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x", "max": 1}],
    ...                     "label": {"name": "y", "classes": [0, 1]}}})
    >>> rep = ingest_table(Storage(tempfile.mkdtemp()), cfg, pa.table({"x": [0.5, 7.0], "y": [1, 0]}), t=1.0)
    >>> rep.accepted, rep.rejected, rep.reasons
    (1, 1, {'x:above_max': 1})
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lifelong_ray.config import Config
from lifelong_ray.data.logs import ModelLogs
from lifelong_ray.data.schema import Rule, Schema
from lifelong_ray.storage import Storage


class BatchRefused(ValueError):
    """The batch as a whole breaks the contract; nothing was written."""


@dataclass
class IngestReport:
    received: int
    accepted: int
    rejected: int
    reasons: dict[str, int] = field(default_factory=dict)
    path: str | None = None


def read_batch(path: str | Path) -> pa.Table:
    p = Path(path)
    if p.suffix.lower() == ".csv":
        return pacsv.read_csv(p)
    return pq.read_table(p)


def ingest_table(storage: Storage, cfg: Config, table: pa.Table, t: float,
                 label: str | None = None) -> IngestReport:
    schema = Schema(cfg.model)
    label = label or cfg.model.label.name
    if label not in table.column_names:
        raise BatchRefused(f"{Rule.SCHEMA_CHANGED.value}: label column {label!r} is missing")
    problems = schema.check_columns(table.schema, extra_ok=[label, "request_id", "t"])
    if problems:
        raise BatchRefused(f"{Rule.SCHEMA_CHANGED.value}: " + "; ".join(v.message for v in problems))
    mask, violations = schema.row_mask(table)
    labels = table.column(label)
    label_ok = pc.is_in(labels, value_set=pa.array(cfg.model.label.classes, labels.type)) \
        if pa.types.is_integer(labels.type) else pa.array([schema.label_ok(v) for v in labels.to_pylist()])
    label_ok = np.asarray(label_ok.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    reasons = Counter(f"{v.field}:{v.rule.value}" for v in violations)
    reasons.update({f"{label}:{Rule.LABEL_DOMAIN.value}": int((~label_ok).sum())} if (~label_ok).any() else {})
    keep = mask & label_ok
    n = int(keep.sum())
    report = IngestReport(received=table.num_rows, accepted=n, rejected=table.num_rows - n,
                          reasons=dict(reasons))
    if n == 0:
        return report
    good = table.filter(pa.array(keep))
    ids = good.column("request_id") if "request_id" in good.column_names else \
        pa.array([f"batch-{uuid.uuid4().hex}" for _ in range(n)], pa.string())
    times = good.column("t").cast(pa.float64()) if "t" in good.column_names else pa.array(np.full(n, t))
    cols = {
        "request_id": ids, "t": times, "t_label": pa.array(np.full(n, t)),
        "version": pa.nulls(n, pa.string()), "prediction": pa.nulls(n, pa.int64()),
        "label": good.column(label).cast(pa.int64()),
    }
    for f, arrow_field in zip(schema.features, schema.arrow_fields()):
        cols[f.name] = good.column(f.name).cast(arrow_field.type)
    report.path = ModelLogs(storage, cfg.model.name).append_labeled(pa.table(cols), t)
    return report
