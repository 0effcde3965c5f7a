"""Training windows: recent labeled rows + a replay sample of older ones, validated.

:func:`build_window` reads the ``labeled`` log of one model with Ray Data, validates
every row against the schema inside ``map_batches`` (invalid rows are dropped and
*counted*, per rule), and then selects, on the driver (windows are thousands of rows):

* **recent**  — valid rows with ``t >= since_t`` (all rows when ``since_t`` is None),
  the most recent ``training.window_recent`` of them by ``t``;
* **replay**  — a seeded random sample of up to ``training.window_replay`` of the
  other, older valid rows (so the new version does not forget the old regime);
* **holdout** — a seeded random ``training.holdout_fraction`` of the *recent* rows,
  kept out of training: the gate compares candidate and champion on it;
* **train**   — the rest of recent plus replay, handed to Ray Train as a
  ``ray.data.Dataset`` (feature columns + ``label``), in a seeded shuffled order.

A label corrected later (two labeled rows with the same ``request_id``) counts once,
with its latest label. Fewer than ``training.min_rows`` recent rows raises
:class:`WindowTooSmall`.

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
    >>> bool(t[sel.replay].max() < 50)
    True
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

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

    # whole-batch contract: features present and typed; label and t present and numeric
    broken = [f"{v.field}:schema_changed"
              for v in schema.check_columns(batch.schema, extra_ok=LABELED_META)
              if v.field in schema.by_name]
    for meta in (LABEL, "t"):
        typ = batch.schema.field(meta).type if meta in batch.column_names else None
        if typ is None or not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
            broken.append(f"{meta}:schema_changed")
    batch_reason = broken[0] if broken else None

    cols: dict[str, pa.Array] = {}
    rid = batch.column("request_id") if "request_id" in batch.column_names else None
    cols["request_id"] = _as_string(rid) if rid is not None else _null_array(pa.string(), n)
    t = _as_float(batch.column("t")) if batch_reason is None else np.full(n, np.nan)
    cols["t"] = pa.array(t, pa.float64())
    has_tl = (batch_reason is None and "t_label" in batch.column_names
              and not pa.types.is_string(batch.schema.field("t_label").type))
    t_label = _as_float(batch.column("t_label")) if has_tl else t.copy()
    cols["t_label"] = pa.array(np.where(np.isnan(t_label), t, t_label), pa.float64())
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


def dedupe_latest_label(table: pa.Table) -> tuple[pa.Table, int]:
    """Keep one row per non-null ``request_id`` (the one labeled last); rows without
    an id are all kept. Returns the table (sorted by ``t``, ties broken
    deterministically) and the number of rows dropped."""
    n = table.num_rows
    if n == 0:
        return table, 0
    rid = np.asarray(table.column("request_id").fill_null("").to_numpy(zero_copy_only=False), dtype=object)
    t = table.column("t").to_numpy()
    t_label = table.column("t_label").to_numpy()
    has_id = rid != ""
    # order by request id, then label time: the last row of each id group wins
    order = np.lexsort((t_label, rid.astype(str)))
    keep = np.zeros(n, dtype=bool)
    keep[~has_id] = True
    sorted_ids = rid[order]
    last_of_group = np.ones(n, dtype=bool)
    last_of_group[:-1] = sorted_ids[:-1] != sorted_ids[1:]
    winners = order[last_of_group & has_id[order]]
    keep[winners] = True
    dropped = int(n - keep.sum())
    kept = np.flatnonzero(keep)
    # deterministic order whatever order the blocks came back in: by t, then id, then t_label
    final = kept[np.lexsort((t_label[kept], rid[kept].astype(str), t[kept]))]
    return table.take(pa.array(final)), dropped


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

    @property
    def train(self) -> np.ndarray:
        return np.concatenate([self.train_recent, self.replay])


def select_window(t: np.ndarray, cfg: TrainingConfig, *, since_t: float | None, seed: int) -> WindowSelection:
    """Pick recent / holdout / train / replay rows from timestamps ``t`` (any order).

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
    holdout = np.sort(recent[perm[:n_hold]])
    train_recent = np.sort(recent[perm[n_hold:]])
    older_mask = np.ones(len(t), dtype=bool)
    older_mask[recent] = False
    older = idx[older_mask]
    n_replay = min(cfg.window_replay, len(older))
    replay = np.sort(rng.choice(older, size=n_replay, replace=False)) if n_replay else older[:0]
    return WindowSelection(recent=recent, holdout=holdout, train_recent=train_recent, replay=replay)


# ---------------------------------------------------------------------------
# the window (Ray Data)
# ---------------------------------------------------------------------------
@dataclass
class TrainingWindow:
    """What one retrain trains and gates on.

    ``rows`` counts training rows (train part of recent + replay); ``holdout_rows`` the
    gate rows; ``quarantined_rows`` the rows of the log dropped by validation, with
    ``quarantine_reasons`` counting them per ``"<field>:<rule>"``. ``reference`` is a
    seeded sample (at most 5000) of the recent raw rows (features + ``label``): the
    distribution the new version was trained for, to detect drift against later.
    :func:`build_window` always sets ``train`` to a Ray Dataset; code that builds a
    window by hand without Ray (tests, backtests) may pass an arrow table with the
    same columns to the ``"local"`` runner.
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

    def summary(self) -> dict[str, Any]:
        """The lineage record of the window (goes into the version metadata)."""
        return {"rows": self.rows, "since_t": self.since_t, "until_t": self.until_t,
                "replay_rows": self.replay_rows, "holdout_rows": self.holdout_rows,
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


def _validate_udf(batch: pa.Table, spec_json: dict) -> pa.Table:
    return validate_batch(batch, ModelSpec.model_validate(spec_json))


def _read_validate_files_udf(batch: pa.Table, spec_json: dict, filesystem: Any) -> pa.Table:
    """Ray Data UDF of the per-file path: read each listed file on its own, validate it."""
    import pyarrow.parquet as pq

    spec = ModelSpec.model_validate(spec_json)
    out = []
    for path in batch.column("path").to_pylist():
        try:
            with filesystem.open_input_file(path) as fh:
                table = pq.read_table(fh)
        except (OSError, pa.ArrowException) as err:
            log.warning("labeled log file %s is unreadable: %s", path, err)
            marker = validate_batch(pa.table({"t": pa.array([float("nan")])}), spec)
            out.append(marker.set_column(marker.schema.get_field_index(REASON), REASON,
                                         pa.array(["file:unreadable"], pa.string())))
            continue
        out.append(validate_batch(table, spec))
    return pa.concat_tables(out) if out else validate_batch(pa.table({}), spec)


def _read_log(files: list[str], storage: Storage, spec_json: dict) -> pa.Table:
    """All rows of ``files``, validated (``validate_batch`` output), via Ray Data.

    ``ray.data.read_parquet`` first; it unifies the schemas of the files it samples and
    fails when a column changed type between files (a schema change upstream). Then
    the files are listed into a dataset and each is read and validated on its own,
    so such a file is quarantined instead of blocking every retrain."""
    import ray.data

    try:
        ds = ray.data.read_parquet(files, filesystem=storage.fs, partitioning=None)
        # batch_size=None: one batch per block, validated before any concatenation
        ds = ds.map_batches(_validate_udf, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"spec_json": spec_json})
        return dataset_to_arrow(ds)
    except Exception as err:  # noqa: BLE001 - retried file by file below
        log.warning("reading the labeled log in one pass failed (%s: %s); reading file by file",
                    type(err).__name__, str(err).splitlines()[0] if str(err) else "")
    ds = ray.data.from_items([{"path": f} for f in files])
    ds = ds.map_batches(_read_validate_files_udf, batch_format="pyarrow", batch_size=16,
                        fn_kwargs={"spec_json": spec_json, "filesystem": storage.fs})
    return dataset_to_arrow(ds)


def read_validated(storage: Storage, spec: ModelSpec) -> tuple[pa.Table, int, dict[str, int]]:
    """Read the whole labeled log with Ray Data and validate it in ``map_batches``.

    Returns the valid rows (``request_id, t, t_label, label`` + features), the number of quarantined rows and
    their count per reason (an unreadable file counts once, as ``file:unreadable``)."""
    files = ModelLogs(storage, spec.name).labeled_files()
    empty = validate_batch(pa.table({}), spec).slice(0, 0)
    if not files:
        return empty.drop_columns([VALID, REASON]), 0, {}
    table = _read_log(files, storage, spec.model_dump(mode="json"))
    if table.num_rows == 0:
        return empty.drop_columns([VALID, REASON]), 0, {}
    valid = table.column(VALID).to_numpy(zero_copy_only=False)
    reasons = Counter(r for r in table.column(REASON).to_pylist() if r is not None)
    good = table.filter(pa.array(valid)).drop_columns([VALID, REASON])
    return good, int((~valid).sum()), dict(sorted(reasons.items()))


def build_window(storage: Storage, cfg: Config, *, since_t: float | None = None, seed: int = 0) -> TrainingWindow:
    """Build the training window of ``cfg.model`` from its labeled log (needs Ray).

    >>> w = build_window(Storage("runs/store"), cfg, since_t=None, seed=0)  # doctest: +SKIP
    >>> w.rows, w.holdout_rows, w.quarantined_rows                          # doctest: +SKIP
    (1480, 320, 12)
    """
    import ray.data

    spec = cfg.model
    valid, quarantined, reasons = read_validated(storage, spec)
    if quarantined:
        log.warning("training window of %s: %d labeled rows quarantined %s", spec.name, quarantined, reasons)
    window = window_from_table(valid, cfg, since_t=since_t, seed=seed, quarantined=quarantined, reasons=reasons)
    window.train = ray.data.from_arrow(window.train)
    return window


def window_from_table(valid: pa.Table, cfg: Config, *, since_t: float | None, seed: int, quarantined: int = 0,
                      reasons: dict[str, int] | None = None) -> TrainingWindow:
    """The window over already validated labeled rows (``t``, ``label``, features),
    with ``train`` as an arrow table; :func:`build_window` wraps it for Ray Train,
    the backtest uses it as is with the local runner."""
    spec = cfg.model
    names = [f.name for f in spec.features]
    reasons = dict(reasons or {})
    valid, duplicates = dedupe_latest_label(valid)
    t = valid.column("t").to_numpy()
    try:
        sel = select_window(t, cfg.training, since_t=since_t, seed=seed)
    except WindowTooSmall as err:
        extra = f"; {quarantined} rows quarantined ({reasons})" if quarantined else ""
        raise WindowTooSmall(f"{spec.name}: {err}{extra}") from None

    rng = np.random.default_rng([seed, 1])
    train_idx = sel.train[rng.permutation(len(sel.train))]  # shuffled once: t order is not i.i.d.
    train_table = valid.select(names + [LABEL]).take(pa.array(train_idx))
    holdout = valid.select(names + [LABEL, "t"]).take(pa.array(sel.holdout))
    n_ref = min(REFERENCE_ROWS, len(sel.recent))
    ref_idx = np.sort(rng.choice(sel.recent, size=n_ref, replace=False))
    reference = valid.select(names + [LABEL]).take(pa.array(ref_idx))
    return TrainingWindow(
        train=train_table,
        holdout=holdout,
        rows=len(train_idx),
        holdout_rows=len(sel.holdout),
        since_t=since_t,
        until_t=float(t[sel.recent].max()),
        replay_rows=len(sel.replay),
        quarantined_rows=quarantined,
        recent_rows=len(sel.recent),
        duplicate_rows=duplicates,
        quarantine_reasons=reasons,
        reference=reference,
    )
