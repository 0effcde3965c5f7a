"""Training windows: recent labeled rows + replayed past rows, validated.

:func:`build_window` reads the ``labeled`` log of one model with Ray Data, validates
every row against the schema inside ``map_batches`` (invalid rows are dropped and
*counted*, per rule), and then selects, on the driver (windows are thousands of rows):

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
    n = table.num_rows
    if n == 0:
        return np.empty(0, np.int64), 0
    rid = table.column("request_id").fill_null("").combine_chunks()
    pos = pa.array(np.arange(n, dtype=np.int64))
    # order by request id, then label time, then position: the last row of each id group wins
    order = pc.sort_indices(pa.table({"rid": rid, "t_label": table.column("t_label"), "pos": pos}),
                            sort_keys=[("rid", "ascending"), ("t_label", "ascending"), ("pos", "ascending")])
    sorted_ids = rid.take(order)
    last_of_group = np.ones(n, dtype=bool)
    if n > 1:
        last_of_group[:-1] = pc.not_equal(sorted_ids.slice(0, n - 1), sorted_ids.slice(1)).to_numpy(
            zero_copy_only=False)
    has_id = pc.not_equal(sorted_ids, "").to_numpy(zero_copy_only=False)
    order_np = order.to_numpy()
    keep = np.zeros(n, dtype=bool)
    keep[order_np[(last_of_group & has_id) | ~has_id]] = True
    kept = pa.array(np.flatnonzero(keep))
    dropped = int(n - len(kept))
    # deterministic order whatever order the blocks came back in: by t, then id, then t_label
    sub = pa.table({"t": table.column("t").take(kept), "rid": rid.take(kept),
                    "t_label": table.column("t_label").take(kept), "pos": kept})
    final = pc.sort_indices(sub, sort_keys=[("t", "ascending"), ("rid", "ascending"), ("t_label", "ascending"),
                                            ("pos", "ascending")])
    return kept.take(final).to_numpy(), dropped


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
    ``quarantined_rows`` the rows of the log dropped by validation, with
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
    replay_holdout: pa.Table | None = None
    replay_source: str = "log"

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
    if not files:
        return empty_valid(spec), 0, {}
    table = _read_log(files, storage, spec.model_dump(mode="json"))
    if table.num_rows == 0:
        return empty_valid(spec), 0, {}
    valid = table.column(VALID).to_numpy(zero_copy_only=False)
    reasons = Counter(r for r in table.column(REASON).to_pylist() if r is not None)
    good = table.filter(pa.array(valid)).drop_columns([VALID, REASON])
    return good, int((~valid).sum()), dict(sorted(reasons.items()))


def build_window(storage: Storage, cfg: Config, *, since_t: float | None = None, seed: int = 0) -> TrainingWindow:
    """Build the training window of ``cfg.model`` from its labeled log (needs Ray).

    The replay reservoir is fed with the labeled rows it has not seen first, then
    used as the replay pool (when ``data.replay_capacity > 0``).

    >>> w = build_window(Storage("runs/store"), cfg, since_t=None, seed=0)  # doctest: +SKIP
    >>> w.rows, w.holdout_rows, w.quarantined_rows, w.replay_holdout_rows  # doctest: +SKIP
    (1480, 320, 12, 2000)
    """
    import ray.data

    from lifelong_ray.data.replay import refresh_reservoir

    spec = cfg.model
    valid, quarantined, reasons = read_validated(storage, spec)
    if quarantined:
        log.warning("training window of %s: %d labeled rows quarantined %s", spec.name, quarantined, reasons)
    replay = refresh_reservoir(storage, cfg).rows if cfg.data.replay_capacity > 0 else None
    window = window_from_table(valid, cfg, since_t=since_t, seed=seed, quarantined=quarantined, reasons=reasons,
                               replay=replay)
    window.train = ray.data.from_arrow(window.train)
    return window


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
    with ``train`` as an arrow table; :func:`build_window` wraps it for Ray Train,
    the backtest uses it as is with the local runner. ``replay`` is the replay pool
    (the reservoir's rows); without it, replay rows come from the older rows of ``valid``."""
    spec = cfg.model
    names = [f.name for f in spec.features]
    reasons = dict(reasons or {})
    # positions in the deduplicated, t-sorted order; `order` maps them to rows of `valid`
    order, duplicates = latest_label_order(valid)
    t = valid.column("t").to_numpy()[order]
    try:
        sel = select_window(t, cfg.training, since_t=since_t, seed=seed)
    except WindowTooSmall as err:
        extra = f"; {quarantined} rows quarantined ({reasons})" if quarantined else ""
        raise WindowTooSmall(f"{spec.name}: {err}{extra}") from None

    cols = names + [LABEL, "t"]
    rows = valid.select(cols)
    if replay is None:
        source, replay_idx = rows, order[sel.replay]
        replay_holdout = rows.take(pa.array(order[sel.replay_holdout]))
    else:
        recent_ids = valid.column("request_id").take(pa.array(order[sel.recent])).combine_chunks()
        replay_train, replay_holdout = _replay_from_pool(replay, recent_ids, cfg.training.window_replay, seed)
        # concatenating tables copies no data: one take below builds the whole training table
        source = pa.concat_tables([rows, replay_train.select(cols).cast(rows.schema)])
        replay_idx = valid.num_rows + np.arange(replay_train.num_rows)
    train_idx = np.concatenate([order[sel.train_recent], replay_idx])
    rng = np.random.default_rng([seed, 1])
    # shuffled once: t order is not i.i.d.
    train_table = source.select(names + [LABEL]).take(pa.array(train_idx[rng.permutation(len(train_idx))]))
    holdout = rows.take(pa.array(order[sel.holdout]))
    n_ref = min(REFERENCE_ROWS, len(sel.recent))
    ref_idx = np.sort(rng.choice(sel.recent, size=n_ref, replace=False))
    reference = valid.select(names + [LABEL]).take(pa.array(order[ref_idx]))
    return TrainingWindow(
        train=train_table,
        holdout=holdout,
        rows=train_table.num_rows,
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
