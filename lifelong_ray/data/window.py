"""Training windows: recent labeled rows + replayed past rows, validated.

:func:`build_window` reads the ``labeled`` log of one model with Ray Data, validates
rows against the schema inside ``map_batches`` (invalid rows are dropped and
*counted*, per rule), and selects, on the driver:

* **recent**  — valid rows with ``t >= since_t`` (all rows when ``since_t`` is None),
  the most recent ``training.window_recent`` of them by ``t``;
* **replay**  — up to ``training.window_replay`` past rows (so the new version does
  not forget the old regimes), drawn seeded from the **replay pool**: the replay
  reservoir (:mod:`lifelong_ray.data.replay`, a uniform sample of every labeled row
  ever seen, which outlives retention) when ``data.replay_capacity > 0``, else the
  older valid rows of the log; rows of the recent window are never in the pool;
* **replay holdout** — up to ``REPLAY_HOLDOUT_ROWS`` other rows of the pool, never
  trained on: the gate checks forgetting on them (candidate vs champion);
* **holdout** — a seeded random ``training.holdout_fraction`` of the *recent* rows,
  kept out of training: the gate compares candidate and champion on it;
* **train**   — the rest of recent plus replay, handed to Ray Train as a
  ``ray.data.Dataset`` (feature columns + ``label``), in a seeded shuffled order.

A label corrected later (two labeled rows with the same ``request_id``) counts once,
with its latest label. Fewer than ``training.min_rows`` recent rows raises
:class:`WindowTooSmall`.

The driver's memory is bounded by the window, not the log: a first Ray Data pass
brings only ``request_id, t, t_label`` of every row, the selection runs on those keys,
and a second pass reads and validates only the rows the window needs (see
:func:`build_window`); :func:`window_from_table` builds the same window from a table
of every valid row (the backtest's path).

The selection itself is the pure function :func:`select_window` (numpy only), and the
per-batch validation is the pure function :func:`validate_batch` (pyarrow only), so
both are tested without Ray::

    >>> import numpy as np
    >>> from lifelong_ray.config import TrainingConfig
    >>> t = np.arange(100, dtype=float)
    >>> sel = select_window(t, TrainingConfig(window_recent=50, window_replay=10,
    ...                     min_rows=20, holdout_fraction=0.2), since_t=None, seed=0)
    >>> len(sel.recent), len(sel.holdout), len(sel.replay), float(t[sel.recent].min())
    (50, 10, 10, 50.0)
    >>> bool(t[sel.replay].max() < 50), len(sel.replay_holdout), bool(t[sel.replay_holdout].max() < 50)
    (True, 40, True)
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lifelong_ray.config import Config, ModelSpec, TrainingConfig
from lifelong_ray.data.logs import LABELED_META, ModelLogs
from lifelong_ray.data.schema import Schema
from lifelong_ray.storage import Storage

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

log = logging.getLogger(__name__)

LABEL = "label"
VALID = "__valid"
REASON = "__reason"
#: Most rows kept in a window's drift reference (see :attr:`TrainingWindow.reference`).
REFERENCE_ROWS = 5000
#: Most rows of a window's replay holdout (see :attr:`TrainingWindow.replay_holdout`).
REPLAY_HOLDOUT_ROWS = 2000


class WindowTooSmall(ValueError):
    """Not enough valid recent labeled rows to train a new version."""


# ---------------------------------------------------------------------------
# validation (pure, runs inside Ray Data map_batches)
# ---------------------------------------------------------------------------
def _null_array(typ: pa.DataType, n: int) -> pa.Array:
    return pa.nulls(n, type=typ)


def _as_float(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """float64 numpy of a numeric column, NaN for nulls."""
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    return col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def _as_string(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col.cast(pa.string())


def batch_problem(table_schema: pa.Schema, schema: Schema) -> str | None:
    """The whole-batch contract of a labeled-log batch with columns ``table_schema``:
    features present and typed, ``label`` and ``t`` present and numeric. The first
    broken rule (``"<field>:schema_changed"``), or None."""
    broken = [f"{v.field}:schema_changed"
              for v in schema.check_columns(table_schema, extra_ok=LABELED_META)
              if v.field in schema.by_name]
    for meta in (LABEL, "t"):
        typ = table_schema.field(meta).type if meta in table_schema.names else None
        if typ is None or not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
            broken.append(f"{meta}:schema_changed")
    return broken[0] if broken else None


def key_columns(batch: pa.Table, batch_reason: str | None) -> dict[str, pa.Array]:
    """``request_id`` (string), ``t`` and ``t_label`` (float64; a missing label time is
    ``t``) of a labeled-log batch, normalized as :func:`validate_batch` outputs them;
    ``t`` is NaN throughout when the batch broke its contract (``batch_reason``). Needs
    only those three columns of ``batch``: the bounded window reads just them first."""
    n = batch.num_rows
    names = batch.column_names
    rid = batch.column("request_id") if "request_id" in names else None
    out: dict[str, pa.Array] = {
        "request_id": _as_string(rid) if rid is not None else _null_array(pa.string(), n)}
    t = _as_float(batch.column("t")) if batch_reason is None and "t" in names else np.full(n, np.nan)
    out["t"] = pa.array(t, pa.float64())
    has_tl = (batch_reason is None and "t_label" in names
              and not pa.types.is_string(batch.schema.field("t_label").type))
    t_label = _as_float(batch.column("t_label")) if has_tl else t.copy()
    out["t_label"] = pa.array(np.where(np.isnan(t_label), t, t_label), pa.float64())
    return out


def validate_batch(batch: pa.Table, spec: ModelSpec) -> pa.Table:
    """Normalize one batch of the labeled log and mark each row valid or not.

    Returns a table with ``request_id, t, t_label, label`` + the features (numeric as
    float64, categories as string), ``__valid`` (bool) and ``__reason`` (the first
    broken rule of an invalid row, ``"<field>:<rule>"``; null when valid).

    Rules: every feature present with the right type (else the whole batch is
    ``schema_changed``), the per-row feature rules of :meth:`Schema.row_mask`, a finite
    ``t`` and a label that is one of the configured classes. Columns that are not
    features nor labeled-log metadata are ignored (an upstream addition must not stop
    training on the columns the model knows).

    >>> from lifelong_ray.config import FeatureSpec, LabelSpec
    >>> spec = ModelSpec(name="m", features=[FeatureSpec(name="x", min=0, max=1)],
    ...                  label=LabelSpec(name="y", classes=[0, 1]))
    >>> out = validate_batch(pa.table({"t": [1.0, 2.0, 3.0], "label": [0, 1, 5],
    ...                                "x": [0.5, 9.0, 0.5]}), spec)
    >>> out.column("__valid").to_pylist(), out.column("__reason").to_pylist()
    ([True, False, False], [None, 'x:above_max', 'label:label_domain'])
    """
    schema = Schema(spec)
    n = batch.num_rows
    reasons: list[str | None] = [None] * n

    def mark(i: int, reason: str) -> None:
        if reasons[i] is None:
            reasons[i] = reason

    batch_reason = batch_problem(batch.schema, schema)
    cols = key_columns(batch, batch_reason)
    t = cols["t"].to_numpy(zero_copy_only=False)
    lab = _as_float(batch.column(LABEL)) if batch_reason is None else np.full(n, np.nan)

    feats: dict[str, pa.Array] = {}
    for f in schema.features:
        want = pa.string() if f.dtype == "category" else pa.float64()
        if batch_reason is None:
            col = batch.column(f.name)
            if f.dtype == "category":
                feats[f.name] = _as_string(col) if not pa.types.is_null(col.type) else _null_array(want, n)
            elif pa.types.is_null(col.type):
                feats[f.name] = _null_array(want, n)
            else:  # nulls stay nulls: row_mask tells a null from a non-finite value
                feats[f.name] = col.combine_chunks().cast(pa.float64())
        else:
            feats[f.name] = _null_array(want, n)

    if batch_reason is not None:
        reasons = [batch_reason] * n
    else:
        _, violations = schema.row_mask(pa.table(feats))
        for v in violations:
            if v.index is not None:
                mark(v.index, f"{v.field}:{v.rule.value}")
        bad_t = ~np.isfinite(t)
        for i in np.flatnonzero(bad_t):
            mark(int(i), "t:not_finite")
        with np.errstate(invalid="ignore"):
            ok_label = np.isfinite(lab) & (np.floor(lab) == lab) & np.isin(lab, np.asarray(spec.label.classes, float))
        for i in np.flatnonzero(~ok_label):
            mark(int(i), f"{LABEL}:{'null' if np.isnan(lab[i]) else 'label_domain'}")

    valid = np.array([r is None for r in reasons], dtype=bool)
    label_int = np.where(valid, np.nan_to_num(lab, nan=0.0), 0).astype(np.int64)
    cols[LABEL] = pa.array(label_int, pa.int64())
    cols.update(feats)
    cols[VALID] = pa.array(valid, pa.bool_())
    cols[REASON] = pa.array(reasons, pa.string())
    return pa.table(cols)


def empty_valid(spec: ModelSpec) -> pa.Table:
    """No rows, with the columns of validated labeled rows (``request_id, t, t_label, label`` + features)."""
    return validate_batch(pa.table({}), spec).slice(0, 0).drop_columns([VALID, REASON])


def dedupe_latest_label(table: pa.Table) -> tuple[pa.Table, int]:
    """Keep one row per non-null ``request_id`` (the one labeled last); rows without
    an id are all kept. Returns the table (sorted by ``t``, ties broken
    deterministically) and the number of rows dropped."""
    order, dropped = latest_label_order(table)
    return table.take(pa.array(order)), dropped


def latest_label_order(table: pa.Table) -> tuple[np.ndarray, int]:
    """The row indices :func:`dedupe_latest_label` keeps, in its order, and the number
    dropped. Sorts with pyarrow (no Python string per row) and copies no row, so a
    window over millions of labeled rows takes only the rows it needs."""
    order, dropped, _ = _latest_label(table)
    return order, dropped


def _latest_label(table: pa.Table) -> tuple[np.ndarray, int, np.ndarray]:
    """:func:`latest_label_order`, and the (unordered) indices of every row whose
    ``request_id`` appears more than once (the rows the dedupe chose between)."""
    n = table.num_rows
    if n == 0:
        return np.empty(0, np.int64), 0, np.empty(0, np.int64)
    col = table.column("request_id")
    rid = col.fill_null("") if col.null_count else col  # no id and "" are both "no id": always kept
    # rows grouped by request id (a stable sort: positions ascend inside a group)
    by_id = pc.sort_indices(rid).to_numpy()
    sorted_ids = rid.take(by_id)
    last_of_group = np.ones(n, dtype=bool)
    if n > 1:
        last_of_group[:-1] = pc.not_equal(sorted_ids.slice(0, n - 1), sorted_ids.slice(1)).to_numpy(
            zero_copy_only=False)
    has_id = pc.not_equal(sorted_ids, "").to_numpy(zero_copy_only=False)
    del sorted_ids
    first_of_group = np.ones(n, dtype=bool)
    first_of_group[1:] = last_of_group[:-1]
    in_dup = np.flatnonzero(has_id & ~(first_of_group & last_of_group))  # sorted positions of duplicated ids
    group = np.cumsum(first_of_group)[in_dup] if len(in_dup) else in_dup
    del first_of_group, last_of_group, has_id
    in_dup_group = by_id[in_dup]
    keep = np.ones(n, dtype=bool)
    if len(in_dup):
        # inside each group the row labeled last wins (then the later row)
        t_label = table.column("t_label").take(pa.array(in_dup_group)).to_numpy()
        by_label = np.lexsort((in_dup_group, t_label, group))
        winner = np.ones(len(in_dup), dtype=bool)
        winner[:-1] = group[by_label][1:] != group[by_label][:-1]
        keep[in_dup_group[by_label[~winner]]] = False
    del by_id
    kept = np.flatnonzero(keep)
    dropped = int(n - len(kept))
    del keep
    # deterministic order whatever order the blocks came back in: by t, then id, then t_label
    t = table.column("t").to_numpy()[kept]
    by_t = np.argsort(t, kind="stable")
    t_sorted = t[by_t]
    del t
    if not ((t_sorted[1:] == t_sorted[:-1]).any() or np.isnan(t_sorted).sum() > 1):
        return kept[by_t], dropped, in_dup_group  # distinct times: the order by t is the whole order
    del by_t, t_sorted
    ka = pa.array(kept)
    sub = pa.table({"t": table.column("t").take(ka), "rid": rid.take(ka),
                    "t_label": table.column("t_label").take(ka), "pos": ka})
    final = pc.sort_indices(sub, sort_keys=[("t", "ascending"), ("rid", "ascending"), ("t_label", "ascending"),
                                            ("pos", "ascending")])
    return kept[final.to_numpy()], dropped, in_dup_group


# ---------------------------------------------------------------------------
# selection (pure)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowSelection:
    """Row indices into the (t-sorted) table of valid rows."""

    recent: np.ndarray   # all recent rows (train part + holdout)
    holdout: np.ndarray  # subset of recent
    train_recent: np.ndarray
    replay: np.ndarray   # older rows, sampled
    replay_holdout: np.ndarray  # other older rows, never trained on

    @property
    def train(self) -> np.ndarray:
        return np.concatenate([self.train_recent, self.replay])


def split_replay(pool: int, n_train: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, holdout) row indices into a replay pool of ``pool`` rows: up to
    ``n_train`` rows to train on and up to ``REPLAY_HOLDOUT_ROWS`` others, both sorted.

    >>> tr, ho = split_replay(10, 3, np.random.default_rng(0))
    >>> len(tr), len(ho), set(tr.tolist()) & set(ho.tolist())
    (3, 7, set())
    """
    n_train = min(n_train, pool)
    train = np.sort(rng.choice(pool, size=n_train, replace=False)) if n_train else np.empty(0, np.int64)
    rest = np.setdiff1d(np.arange(pool), train)
    n_hold = min(REPLAY_HOLDOUT_ROWS, len(rest))
    holdout = np.sort(rng.choice(rest, size=n_hold, replace=False)) if n_hold else np.empty(0, np.int64)
    return train, holdout


def select_window(t: np.ndarray, cfg: TrainingConfig, *, since_t: float | None, seed: int) -> WindowSelection:
    """Pick recent / holdout / train / replay / replay-holdout rows from timestamps ``t`` (any order).

    Raises :class:`WindowTooSmall` when fewer than ``cfg.min_rows`` recent rows exist.
    """
    t = np.asarray(t, dtype=np.float64)
    idx = np.arange(len(t))
    eligible = idx if since_t is None else idx[t >= since_t]
    # stable sort by t; the most recent window_recent rows are the window
    by_t = eligible[np.argsort(t[eligible], kind="stable")]
    recent = np.sort(by_t[-cfg.window_recent:]) if len(by_t) else by_t
    if len(recent) < cfg.min_rows:
        since = "all time" if since_t is None else f"t >= {since_t:g}"
        raise WindowTooSmall(
            f"only {len(recent)} valid labeled rows in the window ({since}); "
            f"training needs at least {cfg.min_rows} (training.min_rows)")
    rng = np.random.default_rng(seed)
    n_hold = min(len(recent) - 1, max(1, int(round(cfg.holdout_fraction * len(recent)))))
    perm = rng.permutation(len(recent))
    if cfg.holdout_split == "newest":  # by_t's tail is `recent` in t order
        newest = by_t[-len(recent):]
        holdout, train_recent = np.sort(newest[-n_hold:]), np.sort(newest[:-n_hold])
    else:
        holdout = np.sort(recent[perm[:n_hold]])
        train_recent = np.sort(recent[perm[n_hold:]])
    older_mask = np.ones(len(t), dtype=bool)
    older_mask[recent] = False
    older = idx[older_mask]
    replay, replay_holdout = split_replay(len(older), cfg.window_replay, rng)
    return WindowSelection(recent=recent, holdout=holdout, train_recent=train_recent, replay=older[replay],
                           replay_holdout=older[replay_holdout])


# ---------------------------------------------------------------------------
# the window (Ray Data)
# ---------------------------------------------------------------------------
@dataclass
class TrainingWindow:
    """What one retrain trains and gates on.

    ``rows`` counts training rows (train part of recent + replay); ``holdout_rows`` the
    gate rows; ``replay_holdout`` (features + ``label`` + ``t``) holds past rows from the
    replay pool that were not trained on, for the forgetting gate, and
    ``replay_source`` says where the pool came from (``"reservoir"`` or ``"log"``);
    ``quarantined_rows`` the rows of the log dropped by validation (of the rows
    validated: see :func:`build_window`), with ``quarantine_reasons`` counting them
    per ``"<field>:<rule>"``. ``reference`` is a seeded sample (at most 5000) of the
    recent raw rows (features + ``label``): the distribution the new version was
    trained for, to detect drift against later. :func:`build_window` sets ``train``
    to a Ray Dataset (an arrow table with ``engine="local"``); code that builds a
    window by hand without Ray (tests, backtests) may pass an arrow table with the
    same columns to the ``"local"`` runner. ``read_stats`` says what
    :func:`build_window` read (None for a window built from a table).
    """

    train: "ray.data.Dataset | pa.Table"
    holdout: pa.Table
    rows: int
    holdout_rows: int
    since_t: float | None
    until_t: float
    replay_rows: int
    quarantined_rows: int
    recent_rows: int = 0
    duplicate_rows: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    reference: pa.Table | None = None
    replay_holdout: pa.Table | None = None
    replay_source: str = "log"
    read_stats: WindowReadStats | None = None

    @property
    def replay_holdout_rows(self) -> int:
        return 0 if self.replay_holdout is None else self.replay_holdout.num_rows

    def summary(self) -> dict[str, Any]:
        """The lineage record of the window (goes into the version metadata)."""
        return {"rows": self.rows, "since_t": self.since_t, "until_t": self.until_t,
                "replay_rows": self.replay_rows, "holdout_rows": self.holdout_rows,
                "replay_holdout_rows": self.replay_holdout_rows, "replay_source": self.replay_source,
                "quarantined_rows": self.quarantined_rows, "recent_rows": self.recent_rows,
                "duplicate_rows": self.duplicate_rows,
                "quarantine_reasons": dict(self.quarantine_reasons)}


def dataset_to_arrow(ds: "ray.data.Dataset | pa.Table") -> pa.Table:
    """Materialize a (small) dataset on the driver as one arrow table; an arrow table
    (a window built without Ray, e.g. in a backtest) is returned as is."""
    if isinstance(ds, pa.Table):
        return ds
    import ray

    schema = ds.schema()
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        return schema.base_schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


# ---------------------------------------------------------------------------
# the bounded read: keys first, then only the rows the window needs
# ---------------------------------------------------------------------------
FILE = "__file"
ROW = "__row"
DECODED = "__decoded"
KEY_COLUMNS = ["request_id", "t", "t_label"]
#: labeled-log files per Ray Data batch of the key pass
KEY_FILES_PER_BATCH = 16


@dataclass
class WindowReadStats:
    """What :func:`build_window` read from the labeled log (the instrumentation the
    bounded read is tested and benchmarked on).

    ``key_rows``: rows whose keys (``request_id, t, t_label``) reached the driver (the
    region's and their ids' other rows, or every row); ``feature_rows_decoded``: rows
    decoded with every column, in the Ray Data workers (the whole log when it is the
    replay pool, else only the row groups holding rows the window needs or whose
    validity decides a duplicate); ``rows_fetched``: validated rows the window takes
    from (they stay in the object store with Ray); ``passes``: row passes."""

    files: int = 0
    key_rows: int = 0
    feature_rows_decoded: int = 0
    rows_fetched: int = 0
    passes: int = 0


def _keys_table(cols: dict[str, pa.Array], reason: pa.Array, file_idx: int, start: int) -> pa.Table:
    n = len(reason)
    return pa.table({**{c: cols[c] for c in KEY_COLUMNS}, REASON: reason,
                     FILE: pa.array(np.full(n, file_idx, np.int32)),
                     ROW: pa.array(np.arange(start, start + n, dtype=np.int32))})


def _invalid_keys(n: int, reason: str, file_idx: int, start: int) -> pa.Table:
    cols = {"request_id": _null_array(pa.string(), n), "t": pa.array(np.full(n, np.nan)),
            "t_label": pa.array(np.full(n, np.nan))}
    return _keys_table(cols, pa.array([reason] * n, pa.string()), file_idx, start)


def _file_keys(path: str, file_idx: int, filesystem: Any, spec: ModelSpec, validate: bool) -> list[pa.Table]:
    import pyarrow.parquet as pq

    schema = Schema(spec)
    parts: list[pa.Table] = []
    with filesystem.open_input_file(path) as fh:
        pf = pq.ParquetFile(fh)
        problem = batch_problem(pf.schema_arrow, schema)
        keys = [c for c in KEY_COLUMNS if c in pf.schema_arrow.names]
        start = 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if problem is not None:  # the whole file breaks the contract: nothing to read
                parts.append(_invalid_keys(n, problem, file_idx, start))
            elif validate:
                checked = validate_batch(pf.read_row_group(g), spec)
                parts.append(_keys_table({c: checked.column(c) for c in KEY_COLUMNS}, checked.column(REASON),
                                         file_idx, start))
            else:
                cols = key_columns(pf.read_row_group(g, columns=keys), None)
                parts.append(_keys_table(cols, _null_array(pa.string(), n), file_idx, start))
            start += n
    return parts


def _keys_udf(batch: pa.Table, spec_json: dict, filesystem: Any, validate: bool) -> pa.Table:
    """Ray Data UDF of the key pass: ``request_id, t, t_label, __reason, __file, __row``
    of every row of the listed files, row group by row group. With ``validate`` every
    column is read and each row validated (``__reason`` as :func:`validate_batch`);
    without it only the key columns are read and ``__reason`` is null (not validated
    yet) unless the file's columns broke the contract (then every row has that reason).
    A file that cannot be read gives one row, reason ``file:unreadable``."""
    spec = ModelSpec.model_validate(spec_json)
    out: list[pa.Table] = []
    for path, file_idx in zip(batch.column("path").to_pylist(), batch.column(FILE).to_pylist()):
        try:
            out.extend(_file_keys(path, file_idx, filesystem, spec, validate))
        except (OSError, pa.ArrowException) as err:
            log.warning("labeled log file %s is unreadable: %s", path, err)
            out.append(_invalid_keys(1, "file:unreadable", file_idx, 0))
    return pa.concat_tables(out) if out else _invalid_keys(0, "", 0, 0)


def _rows_udf(batch: pa.Table, spec_json: dict, filesystem: Any) -> pa.Table:
    """Ray Data UDF of the row pass: the listed rows (``rows``: int64 bytes, sorted) of
    each file, validated (:func:`validate_batch` + ``__file, __row``). Only the row
    groups holding them are decoded; ``__decoded`` is a decoded group's row count on its
    first listed row (0 elsewhere). Rows of a file unreadable now get ``file:unreadable``."""
    import pyarrow.parquet as pq

    spec = ModelSpec.model_validate(spec_json)
    out: list[pa.Table] = []

    def tag(checked: pa.Table, file_idx: int, rows: np.ndarray, decoded: int) -> pa.Table:
        dec = np.zeros(len(rows), np.int64)
        if len(rows):
            dec[0] = decoded
        return (checked.append_column(FILE, pa.array(np.full(len(rows), file_idx, np.int32)))
                .append_column(ROW, pa.array(rows)).append_column(DECODED, pa.array(dec)))

    for path, file_idx, raw in zip(batch.column("path").to_pylist(), batch.column(FILE).to_pylist(),
                                   batch.column("rows").to_pylist()):
        rows = np.frombuffer(raw, dtype=np.int64)
        parts: list[pa.Table] = []
        try:
            with filesystem.open_input_file(path) as fh:
                pf = pq.ParquetFile(fh)
                sizes = np.array([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)], np.int64)
                ends = np.cumsum(sizes)
                group = np.searchsorted(ends, rows, side="right")
                for g in np.unique(group):
                    mine = rows[group == g]
                    part = pf.read_row_group(int(g)).take(pa.array(mine - (ends[g] - sizes[g])))
                    parts.append(tag(validate_batch(part, spec), file_idx, mine, int(sizes[g])))
        except (OSError, pa.ArrowException, IndexError) as err:
            log.warning("labeled log file %s is unreadable: %s", path, err)
            marker = validate_batch(pa.table({"t": pa.array(np.full(len(rows), np.nan))}), spec)
            marker = marker.set_column(marker.schema.get_field_index(REASON), REASON,
                                       pa.array(["file:unreadable"] * len(rows), pa.string()))
            parts = [tag(marker, file_idx, rows, 0)]
        out.extend(parts)
    if not out:
        return tag(validate_batch(pa.table({}), spec), 0, np.empty(0, np.int64), 0)
    return pa.concat_tables(out)


def _map_files(items: list[dict[str, Any]], udf: Any, fn_kwargs: dict[str, Any], batch_size: int,
               engine: str, *, keep_refs: bool = False) -> list[pa.Table] | list[tuple[pa.Table, Any]]:
    """``udf`` over batches of ``items`` (one per file): Ray Data ``map_batches`` with
    ``engine="ray"``; ``"local"`` runs the same UDF on the same batches in this process
    (tests, backtests). With ``keep_refs``: ``(table, object ref or None)`` pairs (the
    table is mapped from the object store: only the columns read are paged in)."""
    if engine == "ray":
        import ray
        import ray.data

        ds = ray.data.from_items(items).map_batches(udf, batch_format="pyarrow", batch_size=batch_size,
                                                    fn_kwargs=fn_kwargs)
        refs = ds.to_arrow_refs()
        pairs = [(t, r) for t, r in zip(ray.get(refs), refs) if t.num_rows]
        return pairs if keep_refs else [t for t, _ in pairs]
    out = [udf(pa.Table.from_pylist(items[i:i + batch_size]), **fn_kwargs) for i in range(0, len(items), batch_size)]
    return [(t, None) for t in out if t.num_rows] if keep_refs else [t for t in out if t.num_rows]


def _ordered_keys(blocks: list[pa.Table], contiguous: bool) -> pa.Table:
    """Key blocks as one table in (file, row) order (each block holds whole files, or
    rows of them, in order; blocks may come back in any order)."""
    blocks = [b for b in blocks if b.num_rows]
    if not blocks:
        return _invalid_keys(0, "", 0, 0)
    blocks.sort(key=lambda b: (b.column(FILE)[0].as_py(), b.column(ROW)[0].as_py()))
    keys = pa.concat_tables(blocks)
    f = keys.column(FILE).to_numpy()
    step = np.diff(keys.column(ROW).to_numpy())
    in_order = (f[1:] > f[:-1]) | ((f[1:] == f[:-1]) & ((step == 1) if contiguous else (step > 0)))
    if not in_order.all():
        keys = keys.take(pc.sort_indices(keys, sort_keys=[(FILE, "ascending"), (ROW, "ascending")]))
    return keys


def _read_keys(files: list[str], storage: Storage, spec_json: dict, validate: bool, engine: str) -> pa.Table:
    """The key pass over ``files``, in (file, row) order."""
    blocks = _map_files([{"path": p, FILE: i} for i, p in enumerate(files)], _keys_udf,
                        {"spec_json": spec_json, "filesystem": storage.fs, "validate": validate},
                        KEY_FILES_PER_BATCH, engine)
    return _ordered_keys(blocks, contiguous=True)


def _eligible(t: np.ndarray, since_t: float | None) -> np.ndarray:
    """Rows :func:`select_window` may pick (``t >= since_t``; every row without ``since_t``)."""
    return np.ones(len(t), dtype=bool) if since_t is None else t >= since_t


def _top_keys_udf(batch: pa.Table, spec_json: dict, filesystem: Any, since_t: float | None, m: int) -> pa.Table:
    """Ray Data UDF of the region pass: :func:`_keys_udf` (key columns only), keeping
    the rows that broke the contract (counted on the driver) and the ``m`` latest
    eligible rows by ``t`` (with every row tied with the m-th; a NaN ``t`` is latest,
    as :func:`select_window` sorts it)."""
    keys = _keys_udf(batch, spec_json, filesystem, False)
    ok = keys.column(REASON).is_null().to_numpy(zero_copy_only=False)
    t = keys.column("t").to_numpy()
    elig = ok & _eligible(t, since_t)
    if np.count_nonzero(elig) > m:
        latest = np.where(np.isnan(t), np.inf, t)
        elig &= latest >= np.partition(latest[elig], -m)[-m]
    return keys.filter(pa.array(elig | ~ok))


def _match_keys_udf(batch: pa.Table, spec_json: dict, filesystem: Any, ids: pa.Array) -> pa.Table:
    """Ray Data UDF of the region pass: the keys of every row whose ``request_id`` is in ``ids``."""
    keys = _keys_udf(batch, spec_json, filesystem, False)
    hit = pc.fill_null(pc.is_in(keys.column("request_id"), value_set=ids), False)
    return keys.filter(pc.and_(hit, keys.column(REASON).is_null()))


def _region_keys(files: list[str], storage: Storage, spec_json: dict, since_t: float | None, m: int,
                 engine: str) -> tuple[pa.Table, pa.Table, float | None]:
    """Keys of the latest ``m`` or so eligible rows (the *region*: every eligible row
    with ``t >= region_t``), plus every other row sharing a ``request_id`` with them
    (the dedupe decides between those), in (file, row) order; the rows whose file
    broke the contract; ``region_t`` (None when the region is every eligible row)."""
    items = [{"path": p, FILE: i} for i, p in enumerate(files)]
    common = {"spec_json": spec_json, "filesystem": storage.fs}
    top = _ordered_keys(_map_files(items, _top_keys_udf, {**common, "since_t": since_t, "m": m},
                                   KEY_FILES_PER_BATCH, engine), contiguous=False)
    ok = top.column(REASON).is_null()
    markers = top.filter(pc.invert(ok))
    top = top.filter(ok) if markers.num_rows else top
    t = top.column("t").to_numpy()
    region_t = None
    if top.num_rows >= m:  # each batch kept its m latest: the m-th latest of them all bounds the region
        latest = np.where(np.isnan(t), np.inf, t)
        region_t = float(np.partition(latest, -m)[-m])
        top = top.filter(pa.array(latest >= region_t))
    if region_t is None and since_t is None:
        return top, markers, None  # every row of the log: nothing else shares an id
    ids = pc.unique(top.column("request_id").drop_null())
    ids = ids.filter(pc.not_equal(ids, ""))
    match = _ordered_keys(_map_files(items, _match_keys_udf, {**common, "ids": ids}, KEY_FILES_PER_BATCH, engine),
                          contiguous=False)
    code = _codes(top)
    extra = match.filter(pa.array(~np.isin(_codes(match), code)))
    return _ordered_keys([top, extra], contiguous=False), markers, region_t


def _codes(keys: pa.Table) -> np.ndarray:
    """One increasing int64 per row of (file, row)-ordered keys."""
    return (keys.column(FILE).to_numpy().astype(np.int64) << 32) | keys.column(ROW).to_numpy().astype(np.int64)


def _read_rows(files: list[str], storage: Storage, spec_json: dict, file_of: np.ndarray,
               row_of: np.ndarray, engine: str) -> list[tuple[pa.Table, Any]]:
    """The row pass: validated rows (``file_of[i]``, ``row_of[i]``; sorted by file then
    row), as blocks (and their object refs with Ray: the rows stay in the object store)."""
    bounds = np.flatnonzero(np.diff(file_of)) + 1
    items = [{"path": files[int(fi[0])], FILE: int(fi[0]), "rows": ro.astype(np.int64).tobytes()}
             for fi, ro in zip(np.split(file_of, bounds), np.split(row_of, bounds))]
    return _map_files(items, _rows_udf, {"spec_json": spec_json, "filesystem": storage.fs}, 4, engine,
                      keep_refs=True)  # type: ignore[return-value]


def _take_rows(cols: list[str], idx: np.ndarray, extra: pa.Table | None, *blocks: pa.Table) -> pa.Table:
    """Rows ``idx`` of the concatenated ``blocks`` (then ``extra``), columns ``cols``
    (runs in a Ray task over blocks in the object store, or in process)."""
    parts = [b.select(cols) for b in blocks] + ([extra] if extra is not None else [])
    return pa.concat_tables(parts).take(pa.array(idx, pa.int64()))


@functools.lru_cache(maxsize=1)
def _remote_take() -> Any:
    import ray

    return ray.remote(num_cpus=0.5)(_take_rows)


class _FetchedRows:
    """The validated rows the row passes fetched: blocks kept where they are (the
    object store with Ray, so the driver never pages in their feature columns) and
    taken from by :func:`_take_rows` (in a Ray task with Ray)."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.blocks: list[pa.Table] = []
        self.refs: list[Any] = []
        self.num_rows = 0

    def add(self, table: pa.Table, ref: Any) -> int:
        """Keep one block; returns the index of its first row."""
        start = self.num_rows
        self.blocks.append(table)
        self.refs.append(ref)
        self.num_rows += table.num_rows
        return start

    def schema(self, cols: list[str]) -> pa.Schema:
        return pa.schema([self.blocks[0].schema.field(c) for c in cols])

    def _args(self) -> list[Any]:
        return self.refs if self.engine == "ray" else self.blocks

    def take(self, cols: list[str], idx: np.ndarray, extra: pa.Table | None = None) -> pa.Table:
        return self._fetch(self.take_ref(cols, idx, extra))

    def take_ref(self, cols: list[str], idx: np.ndarray, extra: pa.Table | None = None) -> Any:
        """Like :meth:`take`, leaving the result in the object store (with Ray)."""
        if self.engine != "ray":
            return _take_rows(cols, idx, extra, *self.blocks)
        import ray

        return _remote_take().remote(cols, idx, extra, *self.refs)

    def _fetch(self, out: Any) -> pa.Table:
        if self.engine != "ray":
            return out
        import ray

        return ray.get(out)


def _window_too_small(spec: ModelSpec, err: WindowTooSmall, quarantined: int,
                      reasons: dict[str, int]) -> WindowTooSmall:
    extra = f"; {quarantined} rows quarantined ({reasons})" if quarantined else ""
    return WindowTooSmall(f"{spec.name}: {err}{extra}")


def build_window(storage: Storage, cfg: Config, *, since_t: float | None = None, seed: int = 0,
                 engine: str = "ray") -> TrainingWindow:
    """Build the training window of ``cfg.model`` from its labeled log (with Ray Data).

    The same window as :func:`window_from_table` over every valid row -- the latest
    valid label per ``request_id``, rows by ``t``, the same seeded selection -- but
    the driver never holds the log's rows, only the window's.

    1. **Key pass** (Ray Data, ``map_batches`` over the files, row group by row
       group): ``request_id, t, t_label`` only, and whether a file's columns broke the
       contract (footer). With the replay reservoir (``data.replay_capacity > 0``)
       each batch of files keeps only its ``window_recent`` (+25%, at least +1000)
       latest eligible rows; the latest of those bound the *region* that must hold
       the window, and a second key pass fetches every other row sharing a
       ``request_id`` with it (for the dedupe). If dedupe and invalid rows leave the
       region short of the window, every key is read instead. With the log as the
       replay pool (``replay_capacity == 0``) the pool's size seeds the replay sample,
       so every key is read and every row validated in the workers.
    2. **Row pass** (Ray Data): dedupe the keys and select the window on the driver,
       then read and validate only the rows it needs (the row groups holding them).
       A row found invalid is dropped and the selection made again; the rows of every
       ``request_id`` that appears more than once are validated too (the latest
       *valid* label wins). The rows stay in the object store: Ray tasks take the
       holdout, reference and the shuffled training blocks from them.

    What was not read is not counted: ``quarantine_reasons`` counts every row with
    the log replay pool; with the reservoir, whole files whose columns broke the
    contract, unreadable files and the rows the row pass validated, and
    ``duplicate_rows`` the duplicates among the keys read. The replay reservoir is
    fed first with the labeled files it has not read (one file at a time). ``train``
    is a Ray Dataset; ``engine="local"`` runs the same passes in this process
    without Ray and leaves ``train`` an arrow table (the ``"local"`` runner takes it);
    ``read_stats`` says what was read.

    >>> w = build_window(Storage("runs/store"), cfg, since_t=None, seed=0)  # doctest: +SKIP
    >>> w.rows, w.holdout_rows, w.quarantined_rows, w.replay_holdout_rows  # doctest: +SKIP
    (1480, 320, 12, 2000)
    """
    from lifelong_ray.data.replay import refresh_reservoir

    if engine not in ("ray", "local"):
        raise ValueError(f"engine must be 'ray' or 'local', got {engine!r}")
    spec = cfg.model
    spec_json = spec.model_dump(mode="json")
    files = ModelLogs(storage, spec.name).labeled_files()
    replay = refresh_reservoir(storage, cfg).rows if cfg.data.replay_capacity > 0 else None
    if replay is not None and files:
        # the latest rows only (and their request ids' other rows), when they hold the window
        recent = cfg.training.window_recent
        keys, markers, region_t = _region_keys(files, storage, spec_json, since_t,
                                               recent + max(1000, recent // 4), engine)
        stats = WindowReadStats(files=len(files), key_rows=keys.num_rows)
        window = _window_over_keys(keys, markers, files, storage, cfg, since_t=since_t, seed=seed, engine=engine,
                                   validated=False, region_t=region_t, replay=replay, stats=stats)
        if window is not None:
            return window
        log.info("training window of %s: the latest rows do not hold the window; reading every key", spec.name)
    keys = _read_keys(files, storage, spec_json, replay is None, engine) if files else _invalid_keys(0, "", 0, 0)
    ok = keys.column(REASON).is_null()
    markers = keys.filter(pc.invert(ok))
    keys = keys.filter(ok) if markers.num_rows else keys
    stats = WindowReadStats(files=len(files), key_rows=keys.num_rows,
                            feature_rows_decoded=keys.num_rows if replay is None else 0)
    window = _window_over_keys(keys, markers, files, storage, cfg, since_t=since_t, seed=seed, engine=engine,
                               validated=replay is None, region_t=None, replay=replay, stats=stats)
    assert window is not None
    return window


def _window_over_keys(keys: pa.Table, markers: pa.Table, files: list[str], storage: Storage, cfg: Config, *,
                      since_t: float | None, seed: int, engine: str, validated: bool, region_t: float | None,
                      replay: pa.Table | None, stats: WindowReadStats) -> TrainingWindow | None:
    """The window over the labeled rows whose keys are ``keys`` ((file, row) order; rows
    of ``markers`` broke the contract): dedupe and select on the keys, read and
    validate the rows needed (unless ``validated``), drop invalid ones and select
    again until every row the window uses is valid. With ``region_t``, ``keys`` hold
    every eligible row with ``t >= region_t`` only: None when those are too few for
    ``training.window_recent`` (the caller then reads every key)."""
    spec = cfg.model
    spec_json = spec.model_dump(mode="json")
    reasons: Counter[str] = Counter(markers.column(REASON).to_pylist())
    if "file:unreadable" in reasons:  # one marker row per unreadable file
        reasons["file:unreadable"] = len(set(markers.filter(pc.equal(markers.column(REASON), "file:unreadable"))
                                             .column(FILE).to_pylist()))
    from_log = replay is None
    n = keys.num_rows
    bad = np.zeros(n, dtype=bool)
    checked = np.full(n, validated)
    code = _codes(keys)
    base = keys.select(KEY_COLUMNS)
    del keys
    fetched = np.zeros(n, dtype=bool)
    fetched_rows = _FetchedRows(engine)
    at = np.full(n, -1, dtype=np.int64)  # where each fetched key's row is among fetched_rows
    while True:
        live_pos = np.flatnonzero(~bad)
        live = base if len(live_pos) == n else base.take(pa.array(live_pos))
        order, duplicates, in_dup = _latest_label(live)
        t = live.column("t").to_numpy()[order]
        del live
        if region_t is not None:  # the window must lie in the region
            in_region = (t >= region_t) | np.isnan(t) if since_t is None else t >= max(region_t, since_t)
            if np.count_nonzero(in_region) < cfg.training.window_recent:
                return None
        quarantined = sum(reasons.values())
        try:
            sel = select_window(t, cfg.training, since_t=since_t, seed=seed)
        except WindowTooSmall as err:
            raise _window_too_small(spec, err, quarantined, dict(sorted(reasons.items()))) from None
        parts = [sel.recent] + ([sel.replay, sel.replay_holdout] if from_log else [])
        needed = np.zeros(n, dtype=bool)
        needed[live_pos[order[np.concatenate(parts)]]] = True
        dup = live_pos[in_dup]
        wanted = needed & ~fetched
        wanted[dup[~checked[dup]]] = True
        todo = np.flatnonzero(wanted)  # sorted: by file, then row
        del wanted
        if not len(todo):
            break
        stats.passes += 1
        all_ok = True
        for got, ref in _read_rows(files, storage, spec_json, code[todo] >> 32, code[todo] & 0xFFFFFFFF, engine):
            # only the bookkeeping columns are read here: the rows stay where they are
            stats.feature_rows_decoded += int(pc.sum(got.column(DECODED)).as_py() or 0)
            pos = np.searchsorted(code, (got.column(FILE).to_numpy().astype(np.int64) << 32)
                                  | got.column(ROW).to_numpy().astype(np.int64))
            ok = got.column(VALID).to_numpy(zero_copy_only=False)
            all_ok &= bool(ok.all())
            new_bad = ~ok & ~checked[pos]
            reason_col = got.column(REASON)
            unread = pc.fill_null(pc.equal(reason_col, "file:unreadable"), False).to_numpy(zero_copy_only=False)
            for r in reason_col.filter(pa.array(new_bad & ~unread)).to_pylist():
                reasons[r] += 1
            if (new_bad & unread).any():  # a file that became unreadable counts once
                reasons["file:unreadable"] += len(set(got.column(FILE).filter(pa.array(new_bad & unread))
                                                      .to_pylist()))
            checked[pos] = True
            bad[pos[~ok]] = True
            keep = ok & needed[pos]
            if keep.any():
                start = fetched_rows.add(got, ref)
                at[pos[keep]] = start + np.flatnonzero(keep)
                fetched[pos[keep]] = True
                stats.rows_fetched += int(keep.sum())
        if all_ok:
            break  # nothing new is invalid: the selection stands and every row it needs is here
    reasons = Counter({k: v for k, v in reasons.items() if v})
    quarantined = sum(reasons.values())
    if quarantined:
        log.warning("training window of %s: %d labeled rows quarantined %s", spec.name, quarantined, dict(reasons))

    # select_window raised unless the window has rows: fetched_rows is not empty
    def local(idx: np.ndarray) -> np.ndarray:  # positions in the deduplicated order -> rows of fetched_rows
        return at[live_pos[order[idx]]]

    def recent_ids(pool_ids: pa.Array) -> pa.Array:
        """The ids of the recent rows that are in ``pool_ids`` (found on the keys: no row is fetched)."""
        hit = pc.fill_null(pc.is_in(base.column("request_id"), value_set=pool_ids), False).to_numpy(
            zero_copy_only=False)
        recent = live_pos[order[sel.recent]]
        return base.column("request_id").take(pa.array(recent[hit[recent]])).combine_chunks()

    def take_train(cols: list[str], idx: np.ndarray, extra: pa.Table | None) -> "ray.data.Dataset | pa.Table":
        if engine == "local":
            return fetched_rows.take(cols, idx, extra)
        import ray.data

        # slices taken by Ray tasks, straight into the object store: the driver never holds them
        row_bytes = max(1, sum(b.select(cols).nbytes for b in fetched_rows.blocks) // max(1, fetched_rows.num_rows))
        step = max(1, TRAIN_BLOCK_BYTES // row_bytes)
        refs = [fetched_rows.take_ref(cols, idx[i:i + step], extra) for i in range(0, len(idx), step)]
        return ray.data.from_arrow_refs(refs) if refs else ray.data.from_arrow(
            fetched_rows.schema(cols).empty_table())

    window = _assemble(fetched_rows.take, fetched_rows.num_rows, fetched_rows.schema, local, recent_ids, sel, t,
                       duplicates, cfg, since_t=since_t, seed=seed, quarantined=quarantined,
                       reasons=dict(sorted(reasons.items())), replay=replay, take_train=take_train)
    window.read_stats = stats
    return window


#: about how many bytes of training rows go in one block of the window's Ray Dataset
TRAIN_BLOCK_BYTES = 64 << 20


def _replay_from_pool(pool: pa.Table, recent_ids: pa.Array, n_train: int,
                      seed: int) -> tuple[pa.Table, pa.Table]:
    """(train, holdout) replay rows from a replay pool, leaving out the recent window's rows."""
    pool, _ = dedupe_latest_label(pool)
    in_recent = pc.fill_null(pc.is_in(pool.column("request_id"), value_set=recent_ids), False)
    pool = pool.filter(pc.invert(in_recent))
    train, holdout = split_replay(pool.num_rows, n_train, np.random.default_rng([seed, 2]))
    return pool.take(pa.array(train)), pool.take(pa.array(holdout))


def window_from_table(valid: pa.Table, cfg: Config, *, since_t: float | None, seed: int, quarantined: int = 0,
                      reasons: dict[str, int] | None = None, replay: pa.Table | None = None) -> TrainingWindow:
    """The window over already validated labeled rows (``t``, ``label``, features),
    with ``train`` as an arrow table; :func:`build_window` builds the same window
    reading only the rows it needs, the backtest uses this one as is with the local
    runner. ``replay`` is the replay pool (the reservoir's rows); without it, replay
    rows come from the older rows of ``valid``."""
    reasons = dict(reasons or {})
    # positions in the deduplicated, t-sorted order; `order` maps them to rows of `valid`
    order, duplicates = latest_label_order(valid)
    t = valid.column("t").to_numpy()[order]
    try:
        sel = select_window(t, cfg.training, since_t=since_t, seed=seed)
    except WindowTooSmall as err:
        raise _window_too_small(cfg.model, err, quarantined, reasons) from None
    def take(cols: list[str], idx: np.ndarray, extra: pa.Table | None = None) -> pa.Table:
        return _take_rows(cols, idx, extra, valid)

    def recent_ids(pool_ids: pa.Array) -> pa.Array:
        return valid.column("request_id").take(pa.array(order[sel.recent])).combine_chunks()

    return _assemble(take, valid.num_rows, lambda cols: valid.select(cols).schema, lambda idx: order[idx],
                     recent_ids, sel, t, duplicates, cfg, since_t=since_t, seed=seed, quarantined=quarantined,
                     reasons=reasons, replay=replay, take_train=take)


def _assemble(take: Any, n_rows: int, schema: Any, local: Any, recent_ids: Any, sel: WindowSelection, t: np.ndarray,
              duplicates: int, cfg: Config, *, since_t: float | None, seed: int, quarantined: int,
              reasons: dict[str, int], replay: pa.Table | None, take_train: Any) -> TrainingWindow:
    """The window of selection ``sel`` (positions in the deduplicated order, timestamps
    ``t``) over ``n_rows`` validated rows: ``local(positions)`` gives their row numbers,
    ``take(cols, rows)`` the rows (``schema(cols)`` their schema),
    ``take_train(cols, rows, extra)`` the training rows (``extra``, the replay rows from
    the reservoir, numbered after the ``n_rows``) and ``recent_ids(pool_ids)`` the
    request ids of the recent rows (at least those in ``pool_ids``)."""
    spec = cfg.model
    names = [f.name for f in spec.features]
    cols = names + [LABEL, "t"]
    train_cols = names + [LABEL]
    extra = None
    if replay is None:
        replay_idx = local(sel.replay)
        replay_holdout = take(cols, local(sel.replay_holdout))
    else:
        pool_ids = pc.unique(replay.column("request_id").drop_null())
        replay_train, replay_holdout = _replay_from_pool(replay, recent_ids(pool_ids), cfg.training.window_replay,
                                                         seed)
        extra = replay_train.select(train_cols).cast(schema(train_cols))
        replay_idx = n_rows + np.arange(replay_train.num_rows)
    train_idx = np.concatenate([local(sel.train_recent), replay_idx]).astype(np.int64)
    rng = np.random.default_rng([seed, 1])
    # shuffled once: t order is not i.i.d.
    train = take_train(train_cols, train_idx[rng.permutation(len(train_idx))], extra)
    holdout = take(cols, local(sel.holdout))
    n_ref = min(REFERENCE_ROWS, len(sel.recent))
    ref_idx = np.sort(rng.choice(sel.recent, size=n_ref, replace=False))
    reference = take(train_cols, local(ref_idx))
    return TrainingWindow(
        train=train,
        holdout=holdout,
        rows=len(train_idx),
        holdout_rows=len(sel.holdout),
        since_t=since_t,
        until_t=float(t[sel.recent].max()),
        replay_rows=len(replay_idx),
        quarantined_rows=quarantined,
        recent_rows=len(sel.recent),
        duplicate_rows=duplicates,
        quarantine_reasons=reasons,
        reference=reference,
        replay_holdout=replay_holdout.select(cols),
        replay_source="log" if replay is None else "reservoir",
    )
