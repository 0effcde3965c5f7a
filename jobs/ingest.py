"""Batch ingest as a Ray job: a labeled parquet/CSV file into a model's labeled log.

    ray job submit --working-dir . -- python jobs/ingest.py --config configs/demo.yaml FILE [--label y]

The file is read with Ray Data; a batch whose columns changed is quarantined whole
(``schema_changed``); otherwise every row is checked against the contract inside
``map_batches`` (:func:`lifelong_ray.data.ingest.mark_rows`), and on the driver the
failing rows go to the quarantine, the valid ones through the poisoning/label guard
and into the labeled log, exactly as ``lifelong ingest`` does. It prints one JSON
line: the :class:`~lifelong_ray.data.ingest.IngestReport` (``received = accepted +
quarantined``). Exit status 0, or 3 when the whole batch was quarantined.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def read_dataset(path: str) -> Any:
    """The file as a Ray Dataset, rows kept in file order."""
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    if path.lower().endswith(".csv"):
        return ray.data.read_csv(path)
    return ray.data.read_parquet(path)


def ingest_file(cfg: Any, path: str, label: str | None = None, now: float | None = None) -> Any:
    """Ingest ``path`` for ``cfg.model`` with Ray Data; returns the IngestReport."""
    from lifelong_ray.data.ingest import ingest_marked, mark_rows_udf, quarantine_batch, schema_problems
    from lifelong_ray.data.schema import Rule
    from lifelong_ray.data.window import dataset_to_arrow
    from lifelong_ray.storage import Storage

    label = label or cfg.model.label.name
    now = time.time() if now is None else now
    storage = Storage(cfg.storage.root)
    source = Path(path).name
    ds = read_dataset(path)
    problems = schema_problems(ds.schema().base_schema, cfg.model, label)
    if problems:
        return quarantine_batch(storage, cfg, dataset_to_arrow(ds), reason=Rule.SCHEMA_CHANGED.value,
                                message="; ".join(problems), t=now, source=source, label=label)
    marked = ds.map_batches(mark_rows_udf, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"spec_json": cfg.model.model_dump(mode="json"), "label": label})
    report = ingest_marked(storage, cfg, dataset_to_arrow(marked), now, label=label, source=source)
    if not report.balanced:  # an invariant, not an input error
        raise AssertionError(f"ingest lost rows: {report}")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the model's YAML config")
    p.add_argument("file", help="labeled parquet or CSV file")
    p.add_argument("--label", help="label column (default: the config's label name)")
    args = p.parse_args(argv)

    import ray

    from lifelong_ray.config import ConfigError, load_config
    from lifelong_ray.control.controller import resolve_storage

    try:
        cfg = resolve_storage(load_config(args.config))
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    if not os.path.exists(args.file):
        print(f"no such file: {args.file}", file=sys.stderr)
        return 2
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, configure_logging=False)
    report = ingest_file(cfg, os.path.abspath(args.file), args.label)
    print(json.dumps(report.to_json()))
    return 3 if report.batch_reason is not None else 0


if __name__ == "__main__":
    sys.exit(main())
