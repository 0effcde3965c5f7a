"""Batch ingest of labeled rows (parquet or CSV) into a model's labeled log.

Every received row ends up either in the labeled log or in the quarantine
(:mod:`lifelong_ray.data.quarantine`), never nowhere: ``received = accepted +
quarantined``, and the :class:`IngestReport` says so. In order:

1. **columns** — a batch whose columns changed (a feature missing or retyped, an
   unknown column, no label column) is quarantined whole with reason
   ``schema_changed``: nothing of it is trained on;
2. **rows** — each row is checked against the contract (the schema rules of
   :meth:`Schema.row_mask`, and a label among the configured classes); failing
   rows are quarantined, one entry per broken rule, each row with its reason;
3. **guard** — the valid rows, as a batch, are compared with history
   (:mod:`lifelong_ray.data.guard`: labels disagreeing with the champion, a label
   distribution shift, values far outside the training range); a batch that trips
   it is quarantined whole with the guard's reason and numbers;
4. the rest is appended to the labeled log, where training windows read it.

Quarantined entries are listed and released with ``lifelong quarantine``;
:func:`release_quarantined` re-validates the rows against the *current* config
(the guard is not run again: the operator's review is the override).

    >>> import tempfile, pyarrow as pa
    >>> from lifelong_ray.config import parse_config
    >>> from lifelong_ray.storage import Storage
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x", "max": 1}],
    ...                     "label": {"name": "y", "classes": [0, 1]}}})
    >>> st = Storage(tempfile.mkdtemp())
    >>> rep = ingest_table(st, cfg, pa.table({"x": [0.5, 7.0], "y": [1, 0]}), t=1.0)
    >>> rep.received, rep.accepted, rep.quarantined, rep.reasons
    (2, 1, 1, {'x:above_max': 1})
    >>> rep = ingest_table(st, cfg, pa.table({"x": ["0.5"], "y": [1]}), t=2.0)
    >>> rep.accepted, rep.quarantined, rep.batch_reason
    (0, 1, 'schema_changed')
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lifelong_ray.config import Config, ModelSpec
from lifelong_ray.data.guard import LIVE_FEEDBACK_SOURCE, GuardFinding, History, check_batch
from lifelong_ray.data.logs import ModelLogs, feedback_rows, read_parquet_file
from lifelong_ray.data.quarantine import ROW_INDEX, ROW_REASON, NotReleasable, QuarantineEntry, QuarantineStore
from lifelong_ray.data.schema import Rule, Schema
from lifelong_ray.storage import Storage

log = logging.getLogger(__name__)

#: Most recent labeled rows the guard compares a batch with.
HISTORY_ROWS = 2000
#: Columns a batch may carry besides the features and the label.
BATCH_META = ("request_id", "t")


@dataclass
class IngestReport:
    """What happened to one batch. ``reasons`` counts quarantined rows per
    ``"<field>:<rule>"`` (row rules) or per batch reason (``schema_changed``, guard reasons)."""

    received: int
    accepted: int
    quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    quarantine_ids: list[str] = field(default_factory=list)
    batch_reason: str | None = None
    message: str | None = None
    path: str | None = None

    @property
    def balanced(self) -> bool:
        return self.received == self.accepted + self.quarantined

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "balanced": self.balanced}


def read_batch(path: str | Path) -> pa.Table:
    p = Path(path)
    if p.suffix.lower() == ".csv":
        return pacsv.read_csv(p)
    return pq.read_table(p)


# ---------------------------------------------------------------------------
# the contract (pure)
# ---------------------------------------------------------------------------
def schema_problems(table_schema: pa.Schema, spec: ModelSpec, label: str) -> list[str]:
    """Why a batch's columns break the contract (empty when they match)."""
    out = [] if label in table_schema.names else [f"label column {label!r} is missing"]
    if label in table_schema.names:
        typ = table_schema.field(label).type
        if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
            out.append(f"label column {label!r} has type {typ}, expected an integer class id")
    out += [v.message for v in Schema(spec).check_columns(table_schema, extra_ok=[label, *BATCH_META])]
    return out


def mark_rows(table: pa.Table, spec: ModelSpec, label: str) -> pa.Table:
    """``table`` plus ``__reason``: the first rule each row breaks (``"<field>:<rule>"``), null
    when the row is valid. The columns must already match (:func:`schema_problems`).
    Pure pyarrow/numpy: it runs inside Ray Data ``map_batches`` too."""
    schema = Schema(spec)
    _, violations = schema.row_mask(table)
    reasons = np.full(table.num_rows, None, dtype=object)
    for v in violations:
        if v.index is not None and reasons[v.index] is None:
            reasons[v.index] = f"{v.field}:{v.rule.value}"
    labels = table.column(label)
    ok = pc.is_in(labels.cast(pa.float64()), value_set=pa.array([float(c) for c in spec.label.classes]))
    ok = np.asarray(ok.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    reasons[~ok & (reasons == None)] = f"{label}:{Rule.LABEL_DOMAIN.value}"  # noqa: E711 - elementwise
    return table.append_column(ROW_REASON, pa.array(reasons, pa.string()))


def mark_rows_udf(batch: pa.Table, spec_json: dict, label: str) -> pa.Table:
    """:func:`mark_rows` as a Ray Data ``map_batches`` UDF (the spec travels as JSON)."""
    return mark_rows(batch, ModelSpec.model_validate(spec_json), label)


def to_labeled(good: pa.Table, spec: ModelSpec, label: str, t: float) -> pa.Table:
    """Valid batch rows as labeled-log rows (no serving version, no prediction)."""
    n = good.num_rows
    if "request_id" in good.column_names:
        ids = good.column("request_id").cast(pa.string())
    else:  # one random batch id + the row's position: unique, and vectorized
        ids = pc.binary_join_element_wise(f"batch-{uuid.uuid4().hex}-",
                                          pa.array(np.arange(n)).cast(pa.string()), "")
    times = good.column("t").cast(pa.float64()) if "t" in good.column_names else pa.array(np.full(n, t))
    cols: dict[str, Any] = {
        "request_id": ids, "t": times, "t_label": pa.array(np.full(n, t)),
        "version": pa.nulls(n, pa.string()), "prediction": pa.nulls(n, pa.int64()),
        "label": good.column(label).cast(pa.int64()),
    }
    schema = Schema(spec)
    for f, arrow_field in zip(schema.features, schema.arrow_fields()):
        cols[f.name] = good.column(f.name).cast(arrow_field.type)
    return pa.table(cols)


def _examples(rows: pa.Table, limit: int = 3) -> str:
    idx = rows.column(ROW_INDEX).to_pylist()
    return ", ".join(f"row {i}" for i in idx[:limit]) + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


# ---------------------------------------------------------------------------
# history for the guard (reads the registry and the labeled log)
# ---------------------------------------------------------------------------
def load_history(storage: Storage, cfg: Config) -> tuple[History, Any]:
    """The guard's :class:`History` and the champion (a ``LoadedModel``, or None).

    Training ranges come from the champion's saved reference sample, else from the
    recent labeled rows; the champion's baseline error from its recent live labeled
    rows, else from its holdout accuracy at training time."""
    from lifelong_ray.registry.store import IntegrityError, Registry, UnknownVersion

    spec = cfg.model
    numeric = [f.name for f in spec.features if f.dtype != "category"]
    recent = _recent_labeled(storage, spec, numeric)
    reg = Registry(storage, spec.name)
    champion_name = reg.aliases().get("champion")
    champion = reference = None
    if champion_name is not None:
        try:
            champion, reference = reg.load(champion_name), reg.reference(champion_name)
        except (IntegrityError, UnknownVersion) as err:
            log.warning("guard of %s: champion %s unusable (%s); judging without it", spec.name, champion_name, err)
    ranged = reference if reference is not None else recent
    ranges = {}
    for name in numeric:
        if ranged.num_rows and name in ranged.column_names:
            lo, hi = pc.min_max(ranged.column(name).cast(pa.float64())).values()
            if lo.is_valid:
                ranges[name] = (lo.as_py(), hi.as_py())
    base_errors, base_rows = None, 0
    if champion is not None:
        live = recent.filter(pc.fill_null(pc.equal(recent.column("version"), champion_name), False))
        live = live.filter(pc.is_valid(live.column("prediction")))
        if live.num_rows >= cfg.data.guard_min_rows:
            base_rows = live.num_rows
            base_errors = int(pc.sum(pc.not_equal(live.column("prediction"), live.column("label"))).as_py() or 0)
        else:
            meta = champion.metadata
            acc = meta.get("metrics", {}).get("holdout_accuracy")
            base_rows = int(meta.get("window", {}).get("holdout_rows", 0))
            if acc is not None and base_rows:
                base_errors = int(round((1 - acc) * base_rows))
    labels = recent.column("label").to_numpy(zero_copy_only=False) if recent.num_rows else np.empty(0, np.int64)
    return History(labels=labels, ranges=ranges, base_errors=base_errors, base_rows=base_rows), champion


def _newest_labeled(storage: Storage, model: str, columns: list[str], what: str) -> Iterator[pa.Table]:
    """The labeled log's files, newest first, read with ``columns``; a file that cannot be
    read (an old file of another schema: not history) is skipped with a warning."""
    logs = ModelLogs(storage, model)
    for path in reversed(logs.live_files(logs.labeled_prefix)):
        try:
            table = read_parquet_file(storage, path, columns)
        except (OSError, pa.ArrowException) as err:
            log.warning("%s: skipping %s (%s)", what, path, err)
            continue
        if table is not None:
            yield table


def _recent_labeled(storage: Storage, spec: ModelSpec, numeric: list[str]) -> pa.Table:
    """The newest ~HISTORY_ROWS labeled rows with a valid label (label, version, prediction, numeric features)."""
    columns = ["label", "version", "prediction", *numeric]
    tables, n = [], 0
    for table in _newest_labeled(storage, spec.name, columns, "guard history"):
        table = table.select(columns).cast(pa.schema(
            [pa.field("label", pa.int64()), pa.field("version", pa.string()), pa.field("prediction", pa.int64())]
            + [pa.field(c, pa.float64()) for c in numeric]))
        table = table.filter(pc.is_in(table.column("label"), value_set=pa.array(spec.label.classes, pa.int64())))
        tables.append(table)
        n += table.num_rows
        if n >= HISTORY_ROWS:
            break
    if not tables:
        return pa.table({c: pa.array([], pa.float64()) for c in columns})
    return pa.concat_tables(tables[::-1]).slice(max(0, n - HISTORY_ROWS))


def recent_ingested(storage: Storage, spec: ModelSpec, rows: int) -> pa.Table:
    """The newest ``rows`` batch-ingested labeled rows (no serving version), label and
    features, found among the newest ~HISTORY_ROWS rows of the labeled log (bounded)."""
    schema = Schema(spec)
    columns = ["version", "label", *schema.names]
    types = pa.schema([pa.field("version", pa.string()), pa.field("label", pa.int64()), *schema.arrow_fields()])
    tables, n, seen = [], 0, 0
    for table in _newest_labeled(storage, spec.name, columns, "guard window"):
        if any(c not in table.column_names for c in columns):
            continue
        seen += table.num_rows
        table = table.select(columns).cast(types).filter(pc.is_null(table.column("version")))
        tables.append(table)
        n += table.num_rows
        if n >= rows or seen >= HISTORY_ROWS:
            break
    if not tables:
        return types.empty_table().drop_columns(["version"])
    out = pa.concat_tables(tables[::-1]).drop_columns(["version"])
    return out.slice(max(0, out.num_rows - rows))


def guard_findings(storage: Storage, cfg: Config, labeled: pa.Table) -> list[GuardFinding]:
    """The guard's findings on valid labeled rows (:func:`to_labeled` output), worst first.

    A batch of fewer than ``data.guard_min_rows`` rows is judged together with the
    newest batch-ingested rows before it (:func:`recent_ingested`), so small batches
    accumulate instead of skipping the guard; only the new batch is quarantined."""
    from lifelong_ray.data.transform import columns_from_table

    schema = Schema(cfg.model)
    if labeled.num_rows < cfg.data.guard_min_rows:
        before = recent_ingested(storage, cfg.model, cfg.data.guard_min_rows)
        if before.num_rows:
            labeled = pa.concat_tables([before, labeled.select(before.column_names).cast(before.schema)])
    if labeled.num_rows < cfg.data.guard_min_rows:
        return []  # the first rows ever ingested: too few to judge anything yet
    history, champion = load_history(storage, cfg)
    columns = columns_from_table(labeled, schema)
    labels = labeled.column("label").to_numpy(zero_copy_only=False)
    pred = champion.predict(columns)[0] if champion is not None else None
    return check_batch(labels, columns, history, classes=cfg.model.label.classes, cfg=cfg.data, champion_pred=pred)


# ---------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------
def quarantine_batch(storage: Storage, cfg: Config, table: pa.Table, *, reason: str, message: str, t: float,
                     source: str, label: str, data: dict[str, Any] | None = None) -> IngestReport:
    """Quarantine a whole batch (schema change, guard) and report it."""
    entry = QuarantineStore(storage, cfg.model.name).put(table, reason=reason, message=message, source=source,
                                                         t=t, label=label, data=data)
    log.warning("%s: batch of %d rows quarantined as %s (%s): %s", cfg.model.name, table.num_rows, entry.id,
                reason, message)
    return IngestReport(received=table.num_rows, accepted=0, quarantined=table.num_rows,
                        reasons={reason: table.num_rows}, quarantine_ids=[entry.id], batch_reason=reason,
                        message=message)


def ingest_marked(storage: Storage, cfg: Config, marked: pa.Table, t: float, *, label: str,
                  source: str) -> IngestReport:
    """Quarantine the failing rows of a :func:`mark_rows` table, guard and append the rest."""
    spec = cfg.model
    marked = marked.append_column(ROW_INDEX, pa.array(np.arange(marked.num_rows), pa.int64()))
    reason_col = marked.column(ROW_REASON)
    store = QuarantineStore(storage, spec.name)
    report = IngestReport(received=marked.num_rows, accepted=0, quarantined=0)
    reasons = Counter(r for r in reason_col.to_pylist() if r is not None)
    report.reasons = dict(sorted(reasons.items()))
    by_rule: dict[str, list[str]] = {}
    for key in reasons:
        by_rule.setdefault(key.rsplit(":", 1)[1], []).append(key)
    for rule, keys in sorted(by_rule.items()):
        rows = marked.filter(pc.is_in(reason_col, value_set=pa.array(keys, pa.string())))
        msg = f"{rows.num_rows} rows break {rule} ({', '.join(f'{k} x{reasons[k]}' for k in keys)}): {_examples(rows)}"
        report.quarantine_ids.append(store.put(rows, reason=rule, message=msg, source=source, t=t, label=label,
                                               data={"fields": {k: reasons[k] for k in keys}}).id)
        report.quarantined += rows.num_rows
    good = marked.filter(pc.is_null(reason_col)).drop_columns([ROW_REASON, ROW_INDEX])
    if good.num_rows == 0:
        return report
    labeled = to_labeled(good, spec, label, t)
    findings = guard_findings(storage, cfg, labeled)
    if findings:
        worst = findings[0]
        message = "; ".join(f.message for f in findings)
        whole = quarantine_batch(storage, cfg, good, reason=worst.reason.value, message=message, t=t, source=source,
                                 label=label, data={f.reason.value: f.data for f in findings})
        report.quarantined += whole.quarantined
        report.reasons[worst.reason.value] = whole.quarantined
        report.quarantine_ids += whole.quarantine_ids
        report.batch_reason, report.message = worst.reason.value, message
        return report
    report.path = ModelLogs(storage, spec.name).append_labeled(labeled, t)
    report.accepted = good.num_rows
    return report


def ingest_table(storage: Storage, cfg: Config, table: pa.Table, t: float, label: str | None = None,
                 source: str = "batch") -> IngestReport:
    """Ingest one labeled batch (see the module doc); ``source`` names it in the quarantine and events."""
    label = label or cfg.model.label.name
    problems = schema_problems(table.schema, cfg.model, label)
    if problems:
        report = quarantine_batch(storage, cfg, table, reason=Rule.SCHEMA_CHANGED.value, message="; ".join(problems),
                                  t=t, source=source, label=label)
    else:
        report = ingest_marked(storage, cfg, mark_rows(table, cfg.model, label), t, label=label, source=source)
    if not report.balanced:  # pragma: no cover - an invariant, not an input error
        raise AssertionError(f"ingest lost rows: {report}")
    return report


def release_quarantined(storage: Storage, cfg: Config, entry_id: str, *, who: str, why: str,
                        now: float) -> QuarantineEntry:
    """Append a quarantined entry's rows to the labeled log after review, and record
    ``quarantine_released`` with ``who`` and ``why``.

    The rows are validated again against the current config (a release after the
    operator widened a range works; rows that still break a rule raise
    :class:`NotReleasable` naming it). A ``schema_changed`` batch cannot be released
    as is. Safe to retry: an interrupted release finishes with the same file."""
    store = QuarantineStore(storage, cfg.model.name)
    entry = store.get(entry_id)
    if entry.reason == Rule.SCHEMA_CHANGED.value:
        raise NotReleasable(
            f"{entry_id} was quarantined because its columns changed ({entry.message}); it cannot be released "
            f"as is: map its columns to the schema (or change the model's features) and ingest the fixed file")
    rows = store.rows(entry_id)
    if entry.source == LIVE_FEEDBACK_SOURCE:  # live :feedback labels: back to the feedback log, joined as usual
        intent = store.begin_release(entry_id, who, why, now)
        logs = ModelLogs(storage, cfg.model.name)
        path = logs.write(logs.feedback_prefix, feedback_rows(rows.column("request_id").to_pylist(),
                                                              rows.column("label").to_pylist(), intent["t"]),
                          intent["t"], file_id=f"release-{entry_id}")
        return store.finish_release(entry_id, intent, rows.num_rows, path)
    rows = rows.drop_columns([c for c in rows.column_names if c.startswith("__")])
    label = entry.label or cfg.model.label.name
    problems = schema_problems(rows.schema, cfg.model, label)
    if problems:
        raise NotReleasable(f"{entry_id} no longer matches the schema: {'; '.join(problems)}")
    reasons = Counter(r for r in mark_rows(rows, cfg.model, label).column(ROW_REASON).to_pylist() if r is not None)
    if reasons:
        raise NotReleasable(f"{sum(reasons.values())} of {rows.num_rows} rows of {entry_id} still break the contract "
                            f"{dict(reasons)}: change the config or leave them quarantined")
    intent = store.begin_release(entry_id, who, why, now)
    path = ModelLogs(storage, cfg.model.name).append_labeled(to_labeled(rows, cfg.model, label, intent["t"]),
                                                            intent["t"], file_id=f"release-{entry_id}")
    return store.finish_release(entry_id, intent, rows.num_rows, path)
