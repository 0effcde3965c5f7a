"""What does the data plane cost: prediction logging, batch validation, window memory?

Three measurements, each against its baseline in the same run:

1. **Logging overhead of a prediction.** The ingress's own work per request, as the
   real code does it, for one instance at a time, sequentially: validate the JSON
   record (``Schema.validate_records``), predict with a model registered in and
   loaded from the registry (``LoadedModel.predict``), build the arrow feature columns
   and write the durable parquet log file (``ModelLogs.append_predictions``: zstd
   parquet, temp file, fsync, rename) -- versus exactly the same without the log
   write. The two variants alternate request by request so load from other
   processes hits both alike. ``logging_p50_overhead = p50_with / p50_without - 1``.
   The Ray Serve hops (HTTP proxy -> ingress -> replica, ~1-3 ms) are not in either
   variant, so this is the overhead relative to the ingress's CPU work alone: an
   upper bound of the share it adds to an HTTP request.
2. **Validation throughput of batch ingest** (the Ray-free path of ``lifelong
   ingest``): read a labeled parquet file, check its columns, mark every row
   (``mark_rows``: ``Schema.row_mask`` + the label domain) and run the guard's
   label-shift and range checks on the valid rows (the champion disagreement check
   needs a model and is left out) -- versus a plain ``pyarrow.parquet.read_table``
   of the same file. Rows per second, median of ``--repeats``.
3. **Peak memory while building a training window** over a labeled log of about
   ``--window-gb`` GB (in-memory arrow size), with ``training.window_recent`` at 90%
   of its rows (so the window itself is ~0.9 of that): a fresh subprocess builds it with
   ``build_window`` (Ray Data reads and validates the log, the replay reservoir is
   fed, the window is selected on the driver) and reports its peak RSS
   (``resource.getrusage``; the Ray worker processes that read the files are not
   counted). ``--quick`` uses the Ray-free equivalent (``validate_batch`` per file
   + ``window_from_table``) so it runs anywhere.

``--json`` prints exactly ``{"logging_p50_overhead", "validate_rows_per_s",
"pyarrow_rows_per_s", "window_peak_rss_mb"}``; without it, tables (rich).

    python benchmarks/ingest.py                 # 2000 requests, 1M-row file, ~1 GB window
    python benchmarks/ingest.py --quick --json  # seconds, small sizes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lifelong_ray.config import Config, load_config  # noqa: E402
from lifelong_ray.data.guard import label_shift, out_of_range  # noqa: E402
from lifelong_ray.data.ingest import mark_rows, schema_problems, to_labeled  # noqa: E402
from lifelong_ray.data.logs import ModelLogs, feature_arrays  # noqa: E402
from lifelong_ray.data.schema import Schema  # noqa: E402
from lifelong_ray.data.transform import FeatureTransform, columns_from_table  # noqa: E402
from lifelong_ray.sim.streams import abrupt_concept_drift  # noqa: E402
from lifelong_ray.storage import Storage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
JSON_KEYS = ("logging_p50_overhead", "validate_rows_per_s", "pyarrow_rows_per_s", "window_peak_rss_mb")
T0 = 1.7e9


def _config(root: str, window_recent: int = 2500) -> Config:
    return load_config(ROOT / "configs" / "demo.yaml").with_overrides(
        storage={"root": root}, training={"runner": "local", "window_recent": window_recent, "window_replay": 500})


# -- 1. logging overhead ----------------------------------------------------------------
def _registered_model(cfg: Config, storage: Storage) -> Any:
    """The demo MLP, fitted briefly and registered, loaded back as serving loads it."""
    from lifelong_ray.registry.store import Registry
    from lifelong_ray.training.loop import fit_numpy

    schema = Schema(cfg.model)
    table = abrupt_concept_drift(2000, drift_at=1000, seed=0).to_table(label="y")
    cols = columns_from_table(table, schema)
    transform = FeatureTransform.fit(cols, schema)
    est = cfg.estimator.model_copy(update={"epochs": 2})
    state, _ = fit_numpy(transform.apply(cols), table.column("y").to_numpy().copy(), est, n_classes=2, seed=0)
    reg = Registry(storage, cfg.model.name)
    version = reg.register(state_dict=state, transform=transform, estimator=est, n_in=transform.n_out,
                           classes=[0, 1], reference=table.drop_columns(["y"]), metadata={"job_id": "bench"})
    return reg.load(version)


def measure_logging(cfg: Config, storage: Storage, requests: int) -> dict[str, float]:
    schema = Schema(cfg.model)
    categorical = {f.name for f in schema.features if f.dtype == "category"}
    model = _registered_model(cfg, storage)
    logs = ModelLogs.from_config(storage, cfg)
    records = abrupt_concept_drift(requests, drift_at=requests // 2, seed=1).rows(0, requests)

    def serve(i: int, log: bool) -> float:
        t0 = time.perf_counter()
        cols, violations = schema.validate_records([records[i]])
        assert not violations
        labels, conf = model.predict(cols)
        if log:
            logs.append_predictions(request_ids=[f"r{i}"], t=time.time(), version=model.version,
                                    features=feature_arrays(cols, schema.names, categorical), predictions=labels,
                                    confidence=conf, latency_ms=(time.perf_counter() - t0) * 1e3, key="user-1")
        return time.perf_counter() - t0

    for i in range(min(50, requests)):  # warm-up: imports, allocator, page cache
        serve(i, i % 2 == 0)
    with_log, without = [], []
    for i in range(requests):
        (with_log if i % 2 == 0 else without).append(serve(i, i % 2 == 0))
    p50w, p50o = statistics.median(with_log), statistics.median(without)
    return {"p50_with_ms": p50w * 1e3, "p50_without_ms": p50o * 1e3,
            "p95_with_ms": float(np.percentile(with_log, 95)) * 1e3,
            "p95_without_ms": float(np.percentile(without, 95)) * 1e3,
            "overhead": p50w / p50o - 1, "requests": requests}


# -- 2. validation throughput ------------------------------------------------------------
def labeled_file(path: Path, rows: int, seed: int = 0) -> None:
    """A labeled batch file like one `lifelong ingest` takes (demo schema + y)."""
    pq.write_table(abrupt_concept_drift(rows, drift_at=rows // 2, seed=seed).to_table(label="y"), path)


def validate_once(cfg: Config, path: Path, history: np.ndarray, ranges: dict) -> int:
    table = pq.read_table(path)
    assert not schema_problems(table.schema, cfg.model, "y")
    marked = mark_rows(table, cfg.model, "y")
    good = table.filter(marked.column("__reason").is_null())
    labeled = to_labeled(good, cfg.model, "y", T0)
    cols = columns_from_table(labeled, Schema(cfg.model))
    labels = labeled.column("label").to_numpy()
    findings = [label_shift(labels, history, classes=[0, 1], cfg=cfg.data), out_of_range(cols, ranges, cfg=cfg.data)]
    assert not any(findings), findings
    return good.num_rows


def measure_validation(cfg: Config, workdir: Path, rows: int, repeats: int) -> dict[str, float]:
    path = workdir / "batch.parquet"
    labeled_file(path, rows)
    hist = abrupt_concept_drift(2000, drift_at=1000, seed=5)
    history = hist.labels
    ranges = {n: (float(v.min()), float(v.max())) for n, v in hist.features.items() if v.dtype != object}
    ours, plain = [], []
    for _ in range(repeats):  # alternating, like the other benchmarks
        t0 = time.perf_counter()
        assert validate_once(cfg, path, history, ranges) == rows
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert pq.read_table(path).num_rows == rows
        plain.append(time.perf_counter() - t0)
    return {"rows": rows, "validate_s": statistics.median(ours), "pyarrow_s": statistics.median(plain),
            "validate_rows_per_s": rows / statistics.median(ours), "pyarrow_rows_per_s": rows / statistics.median(plain)}


# -- 3. window memory --------------------------------------------------------------------
def write_labeled_log(cfg: Config, storage: Storage, target_bytes: float, file_rows: int) -> dict[str, float]:
    """Labeled-log files totalling about ``target_bytes`` of arrow memory."""
    logs = ModelLogs(storage, cfg.model.name)
    written = rows = files = 0
    while written < target_bytes:
        s = abrupt_concept_drift(file_rows, drift_at=file_rows // 2, seed=files)
        table = to_labeled(s.to_table(label="y"), cfg.model, "y", T0 + files)
        ids = pa.array(np.char.add("r", np.arange(rows, rows + file_rows).astype(str)).astype(object), pa.string())
        table = table.set_column(0, "request_id", ids)
        table = table.set_column(1, "t", pa.array(np.arange(rows, rows + file_rows, dtype=float)))
        logs.append_labeled(table, T0 + files)
        written += table.nbytes
        rows += file_rows
        files += 1
    return {"log_bytes": float(written), "log_rows": float(rows), "log_files": float(files)}


def _window_child(root: str, recent: int, use_ray: bool) -> None:
    """Runs in a fresh process: build the window, print peak RSS (MB) and window sizes as JSON."""
    cfg = _config(root, recent)
    storage = Storage(root)
    if use_ray:
        import ray

        from lifelong_ray.data.window import build_window

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        w = build_window(storage, cfg, since_t=None, seed=0)
        ray.shutdown()
    else:
        from lifelong_ray.data.replay import refresh_reservoir
        from lifelong_ray.data.window import VALID, REASON, validate_batch, window_from_table

        parts = []
        for path in ModelLogs(storage, cfg.model.name).labeled_files():
            checked = validate_batch(pq.read_table(path), cfg.model)
            parts.append(checked.filter(checked.column(VALID)).drop_columns([VALID, REASON]))
        valid = pa.concat_tables(parts)
        w = window_from_table(valid, cfg, since_t=None, seed=0, replay=refresh_reservoir(storage, cfg).rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_rss_mb": peak, "rows": w.rows, "holdout_rows": w.holdout_rows,
                      "replay_holdout_rows": w.replay_holdout_rows}))


def measure_window(workdir: Path, gigabytes: float, use_ray: bool) -> dict[str, float]:
    root = str(workdir / "store")
    cfg = _config(root)
    info = write_labeled_log(cfg, Storage(root), gigabytes * 1e9, file_rows=500_000 if gigabytes >= 0.5 else 20_000)
    recent = int(0.9 * info["log_rows"])  # the window is ~90% of the log: a ~window-gb window
    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--window-child", root, "--recent", str(recent)]
                         + (["--ray"] if use_ray else []), capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"window subprocess failed:\n{out.stderr[-3000:]}")
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {**info, **child, "path": "build_window (Ray Data)" if use_ray else "validate_batch + window_from_table"}


# -- main --------------------------------------------------------------------------------
def run(requests: int, rows: int, repeats: int, window_gb: float, use_ray: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        work = Path(tmp)
        cfg = _config(str(work / "serve"))
        logging_ = measure_logging(cfg, Storage(cfg.storage.root), requests)
        validation = measure_validation(cfg, work, rows, repeats)
        window = measure_window(work, window_gb, use_ray)
    return {"logging": logging_, "validation": validation, "window": window}


def json_summary(r: dict[str, Any]) -> dict[str, float]:
    return {"logging_p50_overhead": r["logging"]["overhead"],
            "validate_rows_per_s": r["validation"]["validate_rows_per_s"],
            "pyarrow_rows_per_s": r["validation"]["pyarrow_rows_per_s"],
            "window_peak_rss_mb": r["window"]["peak_rss_mb"]}


def print_tables(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    lg, va, wi = r["logging"], r["validation"], r["window"]
    t = Table(title=f"prediction logging, {lg['requests']} sequential single-instance requests")
    for col in ("variant", "p50 ms", "p95 ms"):
        t.add_column(col)
    t.add_row("validate + predict + durable parquet log", f"{lg['p50_with_ms']:.3f}", f"{lg['p95_with_ms']:.3f}")
    t.add_row("validate + predict", f"{lg['p50_without_ms']:.3f}", f"{lg['p95_without_ms']:.3f}")
    t.add_row("p50 overhead", f"{lg['overhead']:+.1%}", "target <= +5%")
    c.print(t)
    t = Table(title=f"batch validation of a {va['rows']:,}-row parquet file")
    for col in ("path", "seconds", "rows/s"):
        t.add_column(col)
    t.add_row("read + columns + mark_rows + guard", f"{va['validate_s']:.3f}", f"{va['validate_rows_per_s']:,.0f}")
    t.add_row("pyarrow.parquet.read_table", f"{va['pyarrow_s']:.3f}", f"{va['pyarrow_rows_per_s']:,.0f}")
    c.print(t)
    t = Table(title="training window memory")
    for col in ("path", "labeled log", "window", "peak RSS"):
        t.add_column(col)
    t.add_row(wi["path"], f"{wi['log_rows']:,.0f} rows, {wi['log_bytes'] / 1e9:.2f} GB in {wi['log_files']:.0f} files",
              f"{wi['rows']:,} train + {wi['holdout_rows']:,} holdout + {wi['replay_holdout_rows']:,} replay holdout",
              f"{wi['peak_rss_mb']:,.0f} MB")
    c.print(t)
    c.print(f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores · "
            f"python {platform.python_version()} · pyarrow {pa.__version__}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests (half with logging)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the batch file to validate")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--window-gb", type=float, default=1.0, help="labeled log size (arrow GB) for the window")
    ap.add_argument("--quick", action="store_true", help="small sizes, Ray-free window path")
    ap.add_argument("--json", action="store_true", help="print only the JSON summary")
    ap.add_argument("--window-child", metavar="ROOT", help=argparse.SUPPRESS)
    ap.add_argument("--recent", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--ray", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.window_child:
        _window_child(args.window_child, args.recent, args.ray)
        return 0
    if args.quick:
        args.requests, args.rows, args.repeats, args.window_gb = 200, 50_000, 1, 0.02
    result = run(args.requests, args.rows, args.repeats, args.window_gb, use_ray=not args.quick)
    if args.json:
        print(json.dumps(json_summary(result)))
    else:
        print_tables(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
