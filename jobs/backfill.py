"""Backfill as a Ray job: rebuild a model's training history from historical parquet logs.

    ray job submit --working-dir . -- python jobs/backfill.py --config configs/demo.yaml /archive/demo/ --window

SOURCE is a parquet file or a directory of them (read recursively with Ray Data, Hive
``date=`` folders not turned into columns). Two layouts are accepted:

* a labeled batch: the feature columns, the label column (``--label``, default the
  config's), optional ``request_id`` and ``t`` (unix seconds);
* a labeled log of lifelong itself (``request_id, t, t_label, version, prediction,
  label`` + features), e.g. an archive of ``models/<model>/labeled`` or another store's.

Rows are validated in Ray Data ``map_batches`` against the config's contract
(:func:`lifelong_ray.data.ingest.mark_rows`); a row without a time is invalid
(``t:null``). The marked rows are streamed to the driver and gathered per UTC day of
their own ``t`` in chunks of up to ``--chunk-rows`` (:func:`day_chunks`: the driver never
holds the whole source); for each chunk the ingest path
(:func:`lifelong_ray.data.ingest.ingest_marked`) quarantines the failing rows, guards the
rest against the history written so far and appends them to the labeled log in that
day's partition, so windows and retention see them at their historical time. A source
in time order (e.g. ``date=`` folders) is written in time order. With
``data.replay_capacity`` > 0 the replay reservoir is then fed the new rows; ``--window``
builds the training window the next retrain would use and prints its summary.

The last stdout line is JSON: totals, one report per day, and the window. Rows count
once in a window by ``request_id`` (the latest label wins); a row without one gets an id
from its time, features and label (:func:`content_ids`), so re-running a backfill is
harmless with either layout. ``--dry-run`` validates
and reports without writing. Exit status: 0 done, 2 bad input (no such source, columns
that do not match the config), 1 the backfill failed or nothing was accepted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import FAILED, JobInputError, connect, fail, load  # noqa: E402

JOB = "backfill.py"
#: Labeled-log columns dropped before validation (recomputed or meaningless for a backfill).
LOG_ONLY = ("t_label", "version", "prediction")
#: rows of one day written at once: the driver holds at most about twice this many
CHUNK_ROWS = 200_000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/backfill.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--config", required=True, help="the model's YAML config")
    p.add_argument("source", help="a parquet file or a directory of parquet files")
    p.add_argument("--label", help="label column (default: 'label' for a lifelong log, else the config's)")
    p.add_argument("--time-column", default="t", help="row time column, unix seconds (default t)")
    p.add_argument("--dry-run", action="store_true", help="validate and report; write nothing")
    p.add_argument("--window", action="store_true", help="then build the next training window and report it")
    p.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS,
                   help=f"rows of one day written at once; the driver holds about twice this (default {CHUNK_ROWS})")
    return p


def read_source(source: str) -> Any:
    """``source`` as a Ray Dataset in file order (directories recursively, no Hive columns)."""
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    return ray.data.read_parquet(source, partitioning=None, file_extensions=["parquet", "pq"])


def plan_columns(names: list[str], cfg: Any, label: str | None, time_column: str) -> tuple[str, list[str], str]:
    """(label column, columns to drop, layout) for a source with columns ``names``."""
    from lifelong_ray.data.logs import LABELED_META

    is_log = all(c in names for c in LABELED_META)
    label = label or ("label" if is_log else cfg.model.label.name)
    if time_column not in names:
        raise JobInputError(f"the source has no time column {time_column!r} (columns: {names}); a backfill writes "
                            f"rows at their historical time: pass --time-column")
    drop = [c for c in LOG_ONLY if is_log and c in names]
    return label, drop, "labeled-log" if is_log else "batch"


def content_ids(batch: Any, columns: list[str]) -> Any:
    """A ``request_id`` for rows that have none, from their content (time, features, label):
    re-running a backfill gives every row the same id again, so a window counts it once
    (identical rows, same time and values, count once too).

    >>> import pyarrow as pa
    >>> ids = content_ids(pa.table({"x": [1.0, 1.0, 2.0], "t": [5.0, 5.0, 5.0]}), ["x", "t"]).to_pylist()
    >>> ids[0] == ids[1] != ids[2], ids[0].startswith("backfill-"), len(ids[0])
    (True, True, 25)
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    hashes = pd.util.hash_pandas_object(batch.select(columns).to_pandas(), index=False).to_numpy(np.uint64)
    return pa.array([f"backfill-{h:016x}" for h in hashes.tolist()], pa.string())


def mark_udf(batch: Any, spec_json: dict, label: str, time_column: str, drop: list[str]) -> Any:
    """Ray Data UDF: drop log-only columns, name the time column ``t``, mark each row's first
    broken rule (:func:`~lifelong_ray.data.ingest.mark_rows`); a null time is ``t:null``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from lifelong_ray.config import ModelSpec
    from lifelong_ray.data.ingest import mark_rows
    from lifelong_ray.data.quarantine import ROW_REASON

    batch = batch.drop_columns(drop)
    if time_column != "t":
        batch = batch.rename_columns(["t" if c == time_column else c for c in batch.column_names])
    spec = ModelSpec.model_validate(spec_json)
    if "request_id" not in batch.column_names:
        batch = batch.append_column("request_id", content_ids(batch, [f.name for f in spec.features] + [label, "t"]))
    marked = mark_rows(batch, spec, label)
    t = batch.column("t").cast(pa.float64())
    no_time = np.asarray(pc.is_null(t).to_numpy(zero_copy_only=False), dtype=bool)
    reasons = np.asarray(marked.column(ROW_REASON).to_pylist(), dtype=object)
    reasons[no_time & (reasons == None)] = "t:null"  # noqa: E711 - elementwise
    return marked.set_column(marked.column_names.index(ROW_REASON), ROW_REASON, pa.array(reasons, pa.string()))


def day_chunks(batches: Iterable[Any], now: float, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[str, Any]]:
    """``(day, rows)`` from a stream of marked batches: each batch's rows by UTC day of
    their ``t`` (a null ``t`` counts as ``now``), gathered up to ``chunk_rows`` per day.
    A day is written when it holds ``chunk_rows`` rows; when all days together hold twice
    that, every day is written, oldest first; the rest at the end. So the driver holds at
    most about ``2 * chunk_rows`` rows plus one batch, and a source in time order is
    written in time order, in chunks large enough for the guard to judge.

    >>> import pyarrow as pa
    >>> jan1, day = 1_767_225_600.0, 86_400.0
    >>> stream = [pa.table({"t": [jan1, jan1 + 1, jan1 + day]}),
    ...           pa.table({"t": [jan1 + day + 1, None, jan1 + 2 * day]})]
    >>> [(d, rows.num_rows) for d, rows in day_chunks(stream, now=jan1 + 2 * day, chunk_rows=2)]
    [('2026-01-01', 2), ('2026-01-02', 2), ('2026-01-03', 2)]
    """
    import numpy as np
    import pyarrow as pa

    from lifelong_ray.data.logs import day_of

    buffers: dict[str, list[Any]] = {}
    held: Counter[str] = Counter()

    def flush(day: str) -> tuple[str, Any]:
        held.pop(day)
        return day, pa.concat_tables(buffers.pop(day))

    for batch in batches:
        if batch.num_rows == 0:
            continue
        t = batch.column("t").cast(pa.float64()).to_numpy(zero_copy_only=False)
        days = np.array([day_of(v) for v in np.where(np.isnan(t), now, t)])
        for day in sorted(set(days.tolist())):
            part = batch.filter(pa.array(days == day))
            buffers.setdefault(day, []).append(part)
            held[day] += part.num_rows
            if held[day] >= chunk_rows:
                yield flush(day)
        if sum(held.values()) >= 2 * chunk_rows:
            for day in sorted(buffers):
                yield flush(day)
    for day in sorted(buffers):
        yield flush(day)


def merge_report(total: dict[str, Any], rep: Any) -> None:
    """Add one chunk's :class:`~lifelong_ray.data.ingest.IngestReport` to its day's report."""
    for key in ("received", "accepted", "quarantined"):
        total[key] = total.get(key, 0) + getattr(rep, key)
    reasons = total.setdefault("reasons", {})
    for reason, n in rep.reasons.items():
        reasons[reason] = reasons.get(reason, 0) + n
    total.setdefault("quarantine_ids", []).extend(rep.quarantine_ids)
    total.setdefault("paths", []).extend([rep.path] if rep.path else [])
    total.setdefault("batch_reasons", []).extend([rep.batch_reason] if rep.batch_reason else [])
    total["balanced"] = total["received"] == total["accepted"] + total["quarantined"]


def backfill(cfg: Any, source: str, *, label: str | None = None, time_column: str = "t",
             dry_run: bool = False, now: float | None = None, chunk_rows: int = CHUNK_ROWS) -> dict[str, Any]:
    """Validate ``source`` with Ray Data and write it, day by day, through the ingest path;
    the source is streamed (:func:`day_chunks`), never held whole on the driver."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from lifelong_ray.data.ingest import ingest_marked, schema_problems
    from lifelong_ray.data.quarantine import ROW_REASON
    from lifelong_ray.storage import Storage

    ds = read_source(source)
    names = ds.schema().names
    label, drop, layout = plan_columns(names, cfg, label, time_column)
    kept = pa.schema([f for f in ds.schema().base_schema if f.name not in drop])
    if time_column != "t":
        kept = pa.schema([f.with_name("t") if f.name == time_column else f for f in kept])
    problems = schema_problems(kept, cfg.model, label)
    if problems:
        raise JobInputError(f"{source} does not match the config of {cfg.model.name!r}: {'; '.join(problems)}")
    marked = ds.map_batches(
        mark_udf, batch_format="pyarrow", batch_size=None,
        fn_kwargs={"spec_json": cfg.model.model_dump(mode="json"), "label": label, "time_column": time_column,
                   "drop": drop})
    batches = marked.iter_batches(batch_format="pyarrow", batch_size=None)  # streamed: never the whole source
    out: dict[str, Any] = {"source": source, "layout": layout, "label": label, "received": 0,
                           "accepted": 0, "quarantined": 0, "days": []}
    if dry_run:
        counts: Counter[str] = Counter()
        for batch in batches:
            out["received"] += batch.num_rows
            counts.update(r for r in batch.column(ROW_REASON).to_pylist() if r is not None)
        out.update(valid=out["received"] - sum(counts.values()), invalid=dict(sorted(counts.items())))
        return out
    storage = Storage(cfg.storage.root)
    now = time.time() if now is None else now
    days: dict[str, dict[str, Any]] = {}
    for day, part in day_chunks(batches, now, chunk_rows):
        part_t = pc.max(part.column("t").cast(pa.float64())).as_py()
        rep = ingest_marked(storage, cfg, part, float(part_t if part_t is not None else now), label=label,
                            source=f"backfill:{Path(source).name}:{day}")
        if not rep.balanced:  # an invariant, not an input error
            raise AssertionError(f"backfill lost rows on {day}: {rep}")
        merge_report(days.setdefault(day, {"day": day}), rep)
        out["received"] += rep.received
        out["accepted"] += rep.accepted
        out["quarantined"] += rep.quarantined
    out["days"] = [days[d] for d in sorted(days)]
    if cfg.data.replay_capacity > 0:
        from lifelong_ray.data.replay import refresh_reservoir

        res = refresh_reservoir(storage, cfg)
        out["replay_rows"] = res.rows.num_rows
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load(args.config)
        source = Path(args.source)
        if not source.exists():
            raise JobInputError(f"no such source: {args.source} (under `ray job submit` relative paths are read "
                                f"from the uploaded working dir; pass an absolute path)")
        if source.is_dir() and not any(source.rglob("*.parquet")) and not any(source.rglob("*.pq")):
            raise JobInputError(f"{args.source} holds no .parquet files")
        connect()
        if args.chunk_rows < 1:
            raise JobInputError(f"--chunk-rows must be >= 1, got {args.chunk_rows}")
        out = backfill(cfg, str(source.resolve()), label=args.label, time_column=args.time_column,
                       dry_run=args.dry_run, chunk_rows=args.chunk_rows)
    except JobInputError as err:
        fail(JOB, str(err))
    if args.window and not args.dry_run:
        from lifelong_ray.data.window import WindowTooSmall, build_window
        from lifelong_ray.storage import Storage

        try:
            out["window"] = build_window(Storage(cfg.storage.root), cfg, since_t=None,
                                         seed=cfg.training.seed).summary()
        except WindowTooSmall as err:
            out["window"] = {"error": str(err)}
    print(json.dumps(out))
    if not args.dry_run and out["received"] and out["accepted"] == 0:
        fail(JOB, f"no row of {args.source} was accepted ({out['quarantined']} quarantined): review them with "
                  f"`lifelong quarantine {cfg.model.name}`", FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
