"""What does the data plane cost: prediction logging, batch validation, window memory?

Three measurements, each against its baseline in the same run:

1. **Logging overhead of a prediction**, four variants: no log write, and the log
   write under each ``data.durability.predictions`` mode: ``fsync`` (synced before the
   answer), ``group`` (the default: written to the OS before the answer, synced by the
   log's group commit within ``data.flush_interval_ms``) and ``none`` (never synced).

   * **Over HTTP** (the user-visible figure; not with ``--quick``): the script starts
     its own local Ray and Serve (127.0.0.1, a free port; shut down at the end) and
     deploys ONE small app (one replica) doing the ingress's predict work: parse the
     JSON body, ``Schema.validate_records``, predict with a model registered in and
     loaded from the registry, and -- in the log variants -- the ingress's own log
     write (``lifelong_ray.data.answers.AnswerLog``, the class the ingress writes
     through: the replica's segment log, sealed into parquet every
     ``data.log_seal_seconds``; awaited before the answer). The variant is the last
     part of the path (``/bench/no-log``, ``/bench/log-group``, ...); each log variant
     writes under a storage root of its own. All variants share the replica process,
     so the comparison holds everything but the log write equal: an A/A check with two
     identical no-log *apps* (two replicas) measured their p50s 4.1% apart, as much as
     the target; two no-log routes of this one app, 0.7% apart. One client sends
     ``--requests`` single-instance requests one at a time, the variants in turn
     request by request (each cycle of four in the next of their orders); p50/p95
     over all of a variant's requests. Turn by turn, because this machine's speed moves
     by up to 25% within seconds: with chunks of 66 requests per variant (the earlier
     design), the chunks' p50s ranged from 13 to 23 ms in one run. The price: a log
     variant's seal (every ``log_seal_seconds``, a few ms) can delay a request of
     another variant, so the log's tail is shared, not its p50. Then each variant
     serves the same requests from ``--clients`` concurrent clients, in ``--rounds``/2
     alternating rounds (p50 latency, requests/s and the parquet files the seals
     wrote). The version hop of the real router is left out of every variant.
   * **In process** (always; the only one with ``--quick``): the same work without
     HTTP, request by request on one event loop, the variants taking turns, with the
     same writer (an ``AnswerLog`` per log variant, appends awaited): the
     overhead relative to the ingress's CPU work alone, an upper bound of the HTTP share.

   ``logging_p50_overhead = p50(log) / p50(no log) - 1`` for the variant of the default
   ``data.durability.predictions``, over HTTP when it was measured, else in process.
2. **Validation throughput of batch ingest** (the Ray-free path of ``lifelong
   ingest``): read a labeled parquet file, check its columns, mark every row
   (``mark_rows``: ``Schema.row_mask`` + the label domain) and run the guard's
   label-shift and range checks on the valid rows (the champion disagreement check
   needs a model and is left out) -- versus a plain ``pyarrow.parquet.read_table``
   of the same file. Rows per second, median of ``--repeats``.
3. **Peak memory while building a training window** over a labeled log of about
   ``--window-gb`` GB (in-memory arrow size), with ``training.window_recent`` at 90%
   of its rows (so the window itself is ~0.9 of that) or ``--window-rows``: a fresh
   subprocess builds it with ``build_window`` (a Ray Data key pass over every file,
   the replay reservoir fed file by file, then a Ray Data pass reading only the rows
   the window needs) and reports its peak RSS and build time (``resource.getrusage``;
   the Ray worker processes that read the files are not counted). ``--quick`` runs
   the same passes in process (``engine="local"``) so it runs anywhere.
   ``--window-only`` runs just this, over each of a list of log sizes and window
   sizes, to show the peak grows with the window and not with the log.

``--json`` prints exactly ``{"logging_p50_overhead", "validate_rows_per_s",
"pyarrow_rows_per_s", "window_peak_rss_mb"}``; without it, tables (rich). When a phase
fails (``logging``, ``logging_http``, ``validation``, ``window``), the others still run,
the JSON line is still printed, with null for what was not measured plus
``"failed_phase"`` (the first that failed) and ``"error"``, and the exit status is 1.

Ray: every Ray phase starts a local instance of its own (``ray.init(address="local")``),
whether or not a local head (``lifelong up``, ``ray start``) or ``RAY_ADDRESS`` is
there: joining one would measure someone else's cluster, and a join refuses the
``num_cpus`` a measurement sets.

    python benchmarks/ingest.py                 # 2000 requests, 1M-row file, ~1 GB window
    python benchmarks/ingest.py --quick --json  # seconds, small sizes
    python benchmarks/ingest.py --window-only --window-gb 0.25,1 --window-rows 20000   # window RSS only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import resource
import socket
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

from lifelong_ray.config import Config, DataConfig, load_config  # noqa: E402
from lifelong_ray.data.guard import label_shift, out_of_range  # noqa: E402
from lifelong_ray.data.ingest import mark_rows, schema_problems, to_labeled  # noqa: E402
from lifelong_ray.data.logs import ModelLogs  # noqa: E402
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
#: the variants (HTTP routes): ``data.durability.predictions`` of the log writer, None for no log write
HTTP_VARIANTS = {"/no-log": None, "/log-fsync": "fsync", "/log-group": "group", "/log-none": "none"}


def _durable(cfg: Config, mode: str) -> Config:
    """``cfg`` with the prediction log's durability set to ``mode``."""
    return cfg.with_overrides(data={"durability": {**cfg.data.durability.model_dump(), "predictions": mode}})


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


def measure_logging(cfg: Config, storage: Storage, requests: int) -> dict[str, Any]:
    """In process, request by request on one event loop: the variants of
    :data:`HTTP_VARIANTS` take turns, each log variant with the ingress's writer."""
    from lifelong_ray.data.answers import AnswerLog
    from lifelong_ray.serving.app import new_request_ids

    schema = Schema(cfg.model)
    model = _registered_model(cfg, storage)
    records = abrupt_concept_drift(requests, drift_at=requests // 2, seed=1).rows(0, requests)
    routes = list(HTTP_VARIANTS)

    async def measure() -> dict[str, list[float]]:
        writers: dict[str, AnswerLog | None] = {
            route: None if mode is None else AnswerLog.from_config(_durable(cfg, mode),
                                                                   Storage(variant_root(cfg.storage.root, route)))
            for route, mode in HTTP_VARIANTS.items()}

        async def serve(i: int, log: AnswerLog | None) -> float:
            t0 = time.perf_counter()
            cols, violations = schema.validate_records([records[i]])
            assert not violations
            labels, conf = model.predict(cols)
            ids = new_request_ids(len(labels))
            if log is not None:
                await log.append(request_ids=ids, version=model.version, features=log.features(cols), labels=labels,
                                 confidence=conf, latency_ms=(time.perf_counter() - t0) * 1e3, key="user-1")
            return time.perf_counter() - t0

        try:
            for i in range(min(60, requests)):  # warm-up: imports, allocator, page cache
                await serve(i, writers[routes[i % len(routes)]])
            times: dict[str, list[float]] = {r: [] for r in routes}
            for i in range(requests):
                route = routes[i % len(routes)]
                times[route].append(await serve(i, writers[route]))
                await asyncio.sleep(0)  # let a due seal run, as the ingress's loop would between requests
            return times
        finally:
            for w in writers.values():
                if w is not None:  # a segment log seals what is left
                    w.close()

    times = asyncio.run(measure())
    return _summary(times, {"requests_per_variant": len(times[routes[0]])})


def _summary(seq: dict[str, list[float]], extra: dict[str, Any]) -> dict[str, Any]:
    """p50/p95 (ms) per variant, and each log variant's p50 overhead over ``/no-log``."""
    out: dict[str, Any] = dict(extra)
    for route, xs in seq.items():
        out[route] = {"p50_ms": statistics.median(xs) * 1e3, "p95_ms": float(np.percentile(xs, 95)) * 1e3}
    for route in seq:
        out[route]["overhead"] = out[route]["p50_ms"] / out["/no-log"]["p50_ms"] - 1
    return out


# -- 1b. logging overhead over HTTP ------------------------------------------------------
def variant_root(root: str, route: str) -> str:
    """The storage root a log variant writes its prediction log under."""
    return os.path.join(root, "variants", route.strip("/"))


def _predict_deployment() -> Any:
    """The ingress's predict work as one Serve deployment: validate -> predict -> (log) -> answer,
    for every variant of :data:`HTTP_VARIANTS` (the last part of the request's path).

    The log write is the ingress's own (``AnswerLog``: a segment log on a local root,
    ``data.log_segments``), awaited before the answer."""
    from ray import serve
    from starlette.requests import Request

    from lifelong_ray.data.answers import AnswerLog
    from lifelong_ray.registry.store import Registry
    from lifelong_ray.serving.app import apply_switch_interval, new_request_ids

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=128)
    class BenchPredict:
        def __init__(self, cfg_dict: dict[str, Any], version: str,
                     variants: dict[str, tuple[str, str] | None]) -> None:
            """``variants``: route -> None (no log) or (its durability, the storage root of its log)."""
            cfg = Config.model_validate(cfg_dict)
            apply_switch_interval([cfg])  # as the ingress replica
            self.schema = Schema(cfg.model)
            self.model = Registry(Storage(cfg.storage.root), cfg.model.name).load(version)
            self.logs: dict[str, AnswerLog | None] = {
                route: None if log is None else AnswerLog.from_config(_durable(cfg, log[0]), Storage(log[1]))
                for route, log in variants.items()}
            self.inflight = 0  # as the ingress: the log syncs in-line only for a lone request

        async def __call__(self, request: Request) -> dict[str, Any]:
            self.inflight += 1
            try:
                return await self._answer(request, self.logs["/" + request.url.path.rstrip("/").rsplit("/", 1)[-1]])
            finally:
                self.inflight -= 1

        async def _answer(self, request: Request, log: AnswerLog | None) -> dict[str, Any]:
            t0 = time.perf_counter()
            body = await request.json()
            cols, violations = self.schema.validate_records(body["instances"])
            if violations:
                raise ValueError(violations)
            labels, conf = self.model.predict(cols)
            ids = new_request_ids(len(labels))
            if log is not None:
                await log.append(request_ids=ids, version=self.model.version, features=log.features(cols),
                                 labels=labels, confidence=conf, latency_ms=(time.perf_counter() - t0) * 1e3,
                                 key=body.get("key"), alone=self.inflight <= 1)
            return {"predictions": np.asarray(labels).tolist(), "request_ids": ids}

    return BenchPredict


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sequential(url: str, bodies: list[bytes], session: Any) -> list[float]:
    out = []
    for body in bodies:
        t0 = time.perf_counter()
        r = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
        out.append(time.perf_counter() - t0)
        r.raise_for_status()
    return out


def _concurrent(url: str, bodies: list[bytes], clients: int) -> list[float]:
    import requests
    from concurrent.futures import ThreadPoolExecutor

    def client(k: int) -> list[float]:
        with requests.Session() as session:
            return _sequential(url, bodies[k::clients], session)

    with ThreadPoolExecutor(clients) as pool:
        return [x for part in pool.map(client, range(clients)) for x in part]


def measure_logging_http(cfg: Config, storage: Storage, requests_: int, rounds: int,
                         clients: int) -> dict[str, Any]:
    """p50/p95 of sequential predicts over real HTTP per variant (the variants in turn,
    request by request), then the same under ``clients`` concurrent clients (``rounds``/2
    alternating rounds), with the log files written."""
    import ray
    import requests
    from ray import serve

    version = _registered_model(cfg, storage).version
    records = abrupt_concept_drift(requests_, drift_at=requests_ // 2, seed=1).rows(0, requests_)
    bodies = [json.dumps({"instances": [r], "key": "user-1"}).encode() for r in records]
    port = _free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        variants = {route: None if mode is None else (mode, variant_root(cfg.storage.root, route))
                    for route, mode in HTTP_VARIANTS.items()}
        serve.run(_predict_deployment().bind(cfg.model_dump(mode="json"), version, variants), name="bench",
                  route_prefix="/bench")
        base = f"http://127.0.0.1:{port}/bench"
        seq: dict[str, list[float]] = {r: [] for r in HTTP_VARIANTS}
        orders = list(itertools.permutations(HTTP_VARIANTS))
        with requests.Session() as session:
            for route in HTTP_VARIANTS:  # warm-up
                _sequential(base + route, bodies[:20], session)
            # request by request, the variants in turn (each cycle in the next of the
            # orders, so no variant always follows the same one): this machine's speed
            # moves by +-25% within seconds, which chunks of requests would each catch apart
            for i, body in enumerate(bodies[:len(bodies) - len(bodies) % len(HTTP_VARIANTS)]):
                route = orders[(i // len(HTTP_VARIANTS)) % len(orders)][i % len(HTTP_VARIANTS)]
                seq[route].extend(_sequential(base + route, [body], session))
        conc: dict[str, list[float]] = {r: [] for r in HTTP_VARIANTS}
        files: dict[str, int] = {r: 0 for r in HTTP_VARIANTS}
        wall: dict[str, float] = {r: 0.0 for r in HTTP_VARIANTS}
        prefix = ModelLogs(storage, cfg.model.name).predictions_prefix

        def log_files(route: str) -> int:
            return len(Storage(variant_root(cfg.storage.root, route)).list(prefix, suffix=".parquet"))

        conc_rounds = max(1, rounds // 2)
        per_round = max(clients, len(bodies) // conc_rounds)
        for k in range(conc_rounds):  # one variant at a time, alternating (ABC, CBA, ...)
            order = list(HTTP_VARIANTS) if k % 2 == 0 else list(reversed(HTTP_VARIANTS))
            chunk = bodies[(k * per_round) % len(bodies):][:per_round]
            for route in order:
                before = log_files(route)
                t0 = time.perf_counter()
                conc[route].extend(_concurrent(base + route, chunk, clients))
                wall[route] += time.perf_counter() - t0
                time.sleep(3 * cfg.data.log_seal_seconds)  # the last seal of this variant's segment
                files[route] += log_files(route) - before
    finally:
        serve.shutdown()
        ray.shutdown()
    out = _summary(seq, {"requests_per_variant": len(seq["/no-log"]), "clients": clients,
                         "concurrent_requests": len(conc["/no-log"])})
    for route in HTTP_VARIANTS:
        out[route].update(conc_p50_ms=statistics.median(conc[route]) * 1e3, conc_rps=len(conc[route]) / wall[route],
                          conc_files=files[route])
    for route in HTTP_VARIANTS:
        out[route]["conc_overhead"] = out[route]["conc_p50_ms"] / out["/no-log"]["conc_p50_ms"] - 1
    return out


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
    """Runs in a fresh process: build the window, print peak RSS (MB), wall time, window
    sizes and what the build read, as JSON."""
    import dataclasses

    from lifelong_ray.data.window import build_window

    cfg = _config(root, recent)
    storage = Storage(root)
    if use_ray:
        import ray

        # a local instance of its own, even with a local head up or RAY_ADDRESS set (joining
        # one refuses num_cpus, and would measure someone else's cluster)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t0 = time.perf_counter()
    w = build_window(storage, cfg, since_t=None, seed=0, engine="ray" if use_ray else "local")
    wall = time.perf_counter() - t0
    if use_ray:
        ray.shutdown()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_rss_mb": peak, "build_s": wall, "rows": w.rows, "holdout_rows": w.holdout_rows,
                      "replay_holdout_rows": w.replay_holdout_rows, "window_recent": recent,
                      "read": dataclasses.asdict(w.read_stats) if w.read_stats else None}))


#: the most the window subprocess may take before the phase counts as failed
WINDOW_TIMEOUT_S = 1800.0


def measure_window(workdir: Path, gigabytes: float, use_ray: bool, window_rows: int | None = None) -> dict[str, Any]:
    """Peak RSS of building a window over a fresh ~``gigabytes`` GB labeled log;
    ``training.window_recent`` is ``window_rows``, or 90% of the log's rows (a window
    about as large as the log) when None."""
    root = str(workdir / "store")
    cfg = _config(root)
    info = write_labeled_log(cfg, Storage(root), gigabytes * 1e9, file_rows=500_000 if gigabytes >= 0.5 else 20_000)
    recent = window_rows if window_rows else int(0.9 * info["log_rows"])
    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--window-child", root, "--recent", str(recent)]
                         + (["--ray"] if use_ray else []), capture_output=True, text=True, env=env, check=False,
                         timeout=WINDOW_TIMEOUT_S)
    if out.returncode != 0:
        raise RuntimeError(f"window subprocess failed:\n{out.stderr[-3000:]}")
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {**info, **child, "path": "build_window (Ray Data)" if use_ray else "build_window (engine=local)"}


def window_only(gigabytes: list[float], window_rows: list[int | None], use_ray: bool) -> list[dict[str, Any]]:
    """Only the window measurement, for each log size and window size (a fresh log each)."""
    out = []
    for gb in gigabytes:
        for rows in window_rows:
            with tempfile.TemporaryDirectory(prefix="ingest-window-") as tmp:
                out.append({"window_gb": gb, **measure_window(Path(tmp), gb, use_ray, rows)})
    return out


# -- main --------------------------------------------------------------------------------
#: the phases of :func:`run`, in order (what ``failed_phase`` names)
PHASES = ("logging", "logging_http", "validation", "window")


def run(requests: int, rows: int, repeats: int, window_gb: float, use_ray: bool, rounds: int = 10,
        clients: int = 8, window_rows: int | None = None) -> dict[str, Any]:
    """Every measurement; over HTTP (a local Ray + Serve of its own) only with ``use_ray``.

    A phase that fails leaves its result None and its error in ``errors`` (phase ->
    message); the other phases still run."""
    errors: dict[str, str] = {}

    def phase(name: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - reported in the result (and the JSON line), not raised
            import traceback

            traceback.print_exc(file=sys.stderr)
            errors[name] = f"{type(err).__name__}: {err}"[-2000:]
            return None

    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        work = Path(tmp)
        cfg = _config(str(work / "serve"))
        load_before = os.getloadavg()[0]
        logging_ = phase("logging", measure_logging, cfg, Storage(cfg.storage.root), requests)
        http = phase("logging_http", measure_logging_http, _config(str(work / "http")), Storage(str(work / "http")),
                     requests, rounds, clients) if use_ray else None
        validation = phase("validation", measure_validation, cfg, work, rows, repeats)
        window = phase("window", measure_window, work, window_gb, use_ray, window_rows)
    return {"logging": logging_, "http": http, "validation": validation, "window": window,
            "load": (load_before, os.getloadavg()[0]), "default_route": DEFAULT_ROUTE, "errors": errors}


#: the variant of the default ``data.durability.predictions``: what ``logging_p50_overhead`` reports
DEFAULT_ROUTE = next(r for r, mode in HTTP_VARIANTS.items() if mode == DataConfig().durability.predictions)


def json_summary(r: dict[str, Any]) -> dict[str, Any]:
    """``logging_p50_overhead``: over HTTP when measured (not with ``--quick``), else in process.
    A phase that failed leaves its figures null and adds ``failed_phase`` and ``error``."""
    primary = r["http"] or r["logging"]
    validation, window = r["validation"] or {}, r["window"] or {}
    out: dict[str, Any] = {
        "logging_p50_overhead": primary[DEFAULT_ROUTE]["overhead"] if primary else None,
        "validate_rows_per_s": validation.get("validate_rows_per_s"),
        "pyarrow_rows_per_s": validation.get("pyarrow_rows_per_s"),
        "window_peak_rss_mb": window.get("peak_rss_mb")}
    errors = r.get("errors") or {}
    if errors:
        first = next(p for p in PHASES if p in errors)
        out.update(failed_phase=first, error=errors[first])
    return out


def _console() -> Any:
    """A rich console; piped into a file it is 132 columns wide, so no figure is cut off
    (rich falls back to 80)."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 132)


def print_tables(r: dict[str, Any]) -> None:
    from rich.table import Table

    c = _console()
    lg, va, wi = r["logging"], r["validation"], r["window"]
    names = {"/no-log": "no log", **{route: f"log, durability {mode}" for route, mode in HTTP_VARIANTS.items() if mode}}
    http = r["http"]
    t = Table(title="prediction logging: p50 overhead target <= +5% "
                    f"(logging_p50_overhead = {'HTTP' if http else 'in-process'} {r['default_route']})")
    for col in ("variant", "in process p50 / p95 ms", "overhead") + (
            ("HTTP p50 / p95 ms", "overhead", "HTTP concurrent p50 ms", "overhead", "req/s", "log files")
            if http else ()):
        t.add_column(col)
    for route, name in names.items():
        a = lg[route]
        cells = [name, f"{a['p50_ms']:.3f} / {a['p95_ms']:.3f}", f"{a['overhead']:+.1%}"]
        if http:
            h = http[route]
            cells += [f"{h['p50_ms']:.2f} / {h['p95_ms']:.2f}", f"{h['overhead']:+.1%}", f"{h['conc_p50_ms']:.2f}",
                      f"{h['conc_overhead']:+.1%}", f"{h['conc_rps']:.0f}", f"{h['conc_files']}"]
        t.add_row(*cells)
    c.print(t)
    c.print(f"in process: {lg['requests_per_variant']} requests per variant, taking turns"
            + (f"; HTTP: {http['requests_per_variant']} sequential requests per variant, taking turns, "
               f"then {http['concurrent_requests']} from {http['clients']} concurrent clients per variant"
               if http else "; HTTP: not measured (--quick)"))
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
            f"python {platform.python_version()} · pyarrow {pa.__version__} · "
            f"load average {r['load'][0]:.2f} before, {r['load'][1]:.2f} after")


def print_window_runs(runs: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table(title="training window memory (--window-only)")
    for col in ("labeled log", "window_recent", "window", "peak RSS", "build s", "rows decoded / fetched"):
        t.add_column(col)
    for wi in runs:
        rd = wi.get("read") or {}
        t.add_row(f"{wi['log_rows']:,.0f} rows, {wi['log_bytes'] / 1e9:.2f} GB in {wi['log_files']:.0f} files",
                  f"{wi['window_recent']:,}",
                  f"{wi['rows']:,} train + {wi['holdout_rows']:,} holdout + {wi['replay_holdout_rows']:,} replay ho",
                  f"{wi['peak_rss_mb']:,.0f} MB", f"{wi['build_s']:.1f}",
                  f"{rd.get('feature_rows_decoded', 0):,} / {rd.get('rows_fetched', 0):,}")
    _console().print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000,
                    help="sequential requests, split among the four variants (in process; and again over HTTP)")
    ap.add_argument("--rounds", type=int, default=10, help="the concurrent HTTP phase runs in rounds/2 alternating rounds")
    ap.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients of the concurrent phase")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the batch file to validate")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--window-gb", default="1.0", help="labeled log size (arrow GB) for the window")
    ap.add_argument("--quick", action="store_true", help="small sizes, Ray-free: no HTTP, in-process window path")
    ap.add_argument("--json", action="store_true", help="print only the JSON summary")
    ap.add_argument("--window-only", action="store_true",
                    help="only the window measurement; --window-gb and --window-rows may list several values")
    ap.add_argument("--window-rows", default="",
                    help="training.window_recent of the window (comma-separated list with --window-only; "
                         "0 or none: 90%% of the log's rows)")
    ap.add_argument("--window-child", metavar="ROOT", help=argparse.SUPPRESS)
    ap.add_argument("--recent", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--ray", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.window_child:
        _window_child(args.window_child, args.recent, args.ray)
        return 0
    sizes = [float(x) for x in str(args.window_gb).split(",")]
    windows: list[int | None] = [int(x) or None for x in args.window_rows.split(",") if x] or [None]
    if args.quick:
        args.requests, args.rows, args.repeats, sizes = 200, 50_000, 1, [0.02]
    if args.window_only:
        runs = window_only(sizes, windows, use_ray=not args.quick)
        if args.json:
            print(json.dumps(runs))
        else:
            print_window_runs(runs)
        return 0
    # Ray prints some of its own messages (a raylet's, at shutdown) to stdout: with --json,
    # stdout carries the JSON and nothing else
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        result = run(args.requests, args.rows, args.repeats, sizes[0], use_ray=not args.quick, rounds=args.rounds,
                     clients=args.clients, window_rows=windows[0])
    if args.json:
        print(json.dumps(json_summary(result)))
    elif not result["errors"]:
        print_tables(result)
    for name, err in result["errors"].items():
        print(f"ingest.py: phase {name} failed: {err}", file=sys.stderr)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
