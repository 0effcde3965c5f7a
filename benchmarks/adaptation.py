"""Does the lifelong loop adapt better than its alternatives?

Replays drifting streams through four ways of keeping a classifier current, side by
side in one run, with the same labeled history and the same label delay:

* ``static``   — the first version only: trained once on the bootstrap rows, never again;
* ``periodic`` — retrain every ``--period`` samples on the most recent labeled rows and
  swap the new version in at once (no drift detection, no gate, no canary);
* ``lifelong`` — the lifelong policy: :class:`~lifelong_ray.sim.backtest.Backtest` with
  ``configs/benchmark.yaml`` (runner ``local``): drift detection, retrain, gate, canary;
* ``river-hat`` / ``river-arf`` — River's Hoeffding Adaptive Tree and Adaptive Random
  Forest, prequential predict-then-learn (StandardScaler on numbers, one-hot on
  categories), each label learned ``--label-delay`` samples after its prediction.

``static``, ``periodic`` and ``lifelong`` share one trainer:
:func:`lifelong_ray.training.runner.train` (the :class:`FeatureTransform` fitted on the
window, then :func:`~lifelong_ray.training.loop.fit_numpy`), on windows from
:func:`~lifelong_ray.data.window.window_from_table` with the config's sizes (the most
recent ``window_recent`` labeled rows, ``window_replay`` older ones, a
``holdout_fraction`` kept out), so the static model is exactly the lifelong loop's
first version and a periodic retrain sees what a lifelong retrain would.

Every method gets the first ``--bootstrap`` rows as labeled history and is scored
prequentially on the rest (each row predicted before its label is known; a label is
usable ``--label-delay`` samples after its row was served).

Columns (``--json`` prints exactly
``{"streams": {STREAM: {METHOD: {"accuracy", "retrains", "train_cpu_seconds",
"mean_detection_delay", "false_alarms"}}}}`` and nothing else on stdout):

* ``accuracy`` — prequential accuracy over rows ``[bootstrap, n)``;
* ``retrains`` — new versions trained after the first one (``lifelong``: retrain jobs
  started after the bootstrap one); for River, the internal adaptations: trees replaced
  after a drift signal (ARF, ``n_drifts_detected``) or alternate subtrees swapped in (HAT);
* ``train_cpu_seconds`` — ``time.process_time`` around every call of the trainer
  (``runner.train``, the first version included) or around River's ``learn_one``;
* ``mean_detection_delay`` — samples from each known drift onset to its first
  detection (``lifelong``: a ``drift_detected`` event; River: its first adaptation);
  ``null`` for methods that detect nothing or when no drift was detected;
* ``false_alarms`` — detections outside ``[onset, onset + horizon)`` of every known
  drift (horizon 5,000 samples, plus the blend width on the gradual stream).

``--seeds 0,1,2`` runs every (stream, method) pair on each seed's stream (and River
seed) and reports the mean accuracy (and train CPU seconds), the largest retrain
count, the total false alarms and the mean of every detection delay, with each seed's
accuracy and retrains beside them; the targets are checked on those, with each
seed's difference shown. With several seeds every JSON row also has ``"seeds":
{SEED: row}``. One seed's accuracy moves by a few tenths of a point with any policy
setting (the gradual stream's three blends decide it), so a difference that small
needs several seeds to mean anything.

Run from the repository root (River is an optional extra: ``pip install -e '.[bench]'``)::

    python benchmarks/adaptation.py             # 5 streams x 100,000 samples, ~8 min on 2 cores
    python benchmarks/adaptation.py --quick     # 15,000 samples, about a minute
    python benchmarks/adaptation.py --json > adaptation.json
    python benchmarks/adaptation.py --seeds 0,1,2   # each pair on three streams, ~50 min

Each (stream, method) pair runs in its own worker process (``--workers``, default
all cores) with torch limited to one intra-op thread: on a 2-core machine torch's
default thread pool slows the small MLP and the backtest several times over.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(ROOT))

from lifelong_ray.config import Config, load_config, parse_config  # noqa: E402
from lifelong_ray.sim import streams as gen  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs" / "benchmark.yaml"
METHODS = ("static", "periodic", "lifelong", "lifelong-hybrid", "river-hat", "river-arf")
RIVER_METHODS = ("river-hat", "river-arf")
STREAMS = ("abrupt", "sea", "gradual", "recurring", "stationary")
#: Streams river-arf runs on by default (about 3 CPU minutes per 100,000 samples).
ARF_STREAMS = ("abrupt", "sea", "gradual", "recurring")
FULL_SAMPLES = 100_000
QUICK_SAMPLES = 15_000
DETECTION_HORIZON = 5000
#: Samples between checks of River's adaptation counters (the backtest's batch size).
RIVER_CHECK_EVERY = 20


# ---------------------------------------------------------------------------
# streams
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamSpec:
    name: str
    describe: str
    build: Callable[[int, int], gen.Stream]   # (n, seed) -> stream
    horizon: Callable[[int], int] = lambda n: DETECTION_HORIZON


def _quarters(n: int) -> list[int]:
    return [n // 4, n // 2, 3 * n // 4]


STREAM_SPECS: dict[str, StreamSpec] = {s.name: s for s in (
    StreamSpec("abrupt", "demo concept turns 95 deg (+ input shift) at n/4, n/2, 3n/4",
               lambda n, seed: gen.abrupt_concept_drift(n, drift_at=_quarters(n), seed=seed)),
    StreamSpec("sea", "SEA concepts (10% label noise), threshold 8 -> 9 -> 7 -> 9.5 at n/4, n/2, 3n/4",
               lambda n, seed: gen.sea_concepts(n, drift_at=_quarters(n), seed=seed)),
    StreamSpec("gradual", "rotating hyperplane: demo concepts blend over n/10 samples from n/4, n/2, 3n/4",
               lambda n, seed: gen.rotating_hyperplane(n, drift_at=_quarters(n), width=n // 10, seed=seed),
               horizon=lambda n: DETECTION_HORIZON + n // 10),
    StreamSpec("recurring", "concepts A, B, A, B, A every n/5 samples",
               lambda n, seed: gen.recurring_concepts(n, period=n // 5, seed=seed)),
    StreamSpec("stationary", "the demo's first concept throughout: no drift",
               lambda n, seed: gen.stationary(n, seed=seed)),
)}


def config_for(base: Config, stream: gen.Stream, root: str) -> Config:
    """``base`` with its storage in ``root``; a stream whose columns differ from the
    config's features (SEA) gets a model section for its own columns."""
    cfg = base.with_overrides(storage={"root": root})
    if sorted(stream.features) == sorted(f.name for f in cfg.model.features):
        return cfg
    feats: list[dict[str, Any]] = []
    for name, col in stream.features.items():
        if col.dtype == object:
            feats.append({"name": name, "dtype": "category", "categories": sorted({str(v) for v in col})})
        else:
            feats.append({"name": name, "dtype": "float"})
    classes = sorted(int(c) for c in np.unique(stream.labels))
    data = cfg.model_dump(mode="json")
    data["model"] = {**data["model"], "features": feats, "label": {"name": "y", "classes": classes}}
    return parse_config(data)


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------
@dataclass
class MethodResult:
    accuracy: float
    retrains: int
    train_cpu_seconds: float
    mean_detection_delay: float | None
    false_alarms: int
    wall_seconds: float = 0.0
    detects: bool = False           # does the method signal drift at all?
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": float(self.accuracy), "retrains": int(self.retrains),
                "train_cpu_seconds": float(self.train_cpu_seconds),
                "mean_detection_delay": None if self.mean_detection_delay is None else float(self.mean_detection_delay),
                "false_alarms": int(self.false_alarms)}


@dataclass(frozen=True)
class Job:
    stream: str
    method: str
    n: int
    seed: int
    bootstrap: int
    label_delay: int
    period: int
    config_path: str
    overrides: tuple[tuple[str, str, Any], ...] = ()   # (section, key, value) applied to the config


def _detections(samples: list[int], drift_points: list[int], start: int, horizon: int) -> tuple[list[int], int]:
    """Delays of the scored drifts (onsets at or after ``start``) and false alarms,
    by the backtest's own definition."""
    from lifelong_ray.sim.backtest import _detections as detections

    events = [{"kind": "drift_detected", "data": {"sample": int(s)}} for s in samples]
    return detections(events, [p for p in drift_points if p >= start], start, horizon=horizon)


def _mean(xs: list[int]) -> float | None:
    return float(np.mean(xs)) if xs else None


# ---------------------------------------------------------------------------
# the shared trainer (CPU time counted around every call)
# ---------------------------------------------------------------------------
class _TrainClock:
    """Counts ``time.process_time`` spent inside :func:`lifelong_ray.training.runner.train`.

    The backtest reaches the trainer through ``train_and_register``, which looks
    ``runner.train`` up on each call, so wrapping the module attribute for the length
    of a run times every retrain of every method the same way."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.calls = 0

    #: The trainer entry points of :mod:`lifelong_ray.training.runner` that are timed
    #: (``finetune``: the incremental steps of ``training.mode`` online/hybrid).
    ENTRY_POINTS = ("train", "finetune")

    @contextlib.contextmanager
    def installed(self) -> Iterator["_TrainClock"]:
        from lifelong_ray.training import runner

        real = {name: getattr(runner, name) for name in self.ENTRY_POINTS if hasattr(runner, name)}

        def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                c0 = time.process_time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.cpu += time.process_time() - c0
                    self.calls += 1
            return wrapper

        for name, fn in real.items():
            setattr(runner, name, timed(fn))
        try:
            yield self
        finally:
            for name, fn in real.items():
                setattr(runner, name, fn)


def _labeled_table(stream: gen.Stream, cfg: Config, rate: float) -> Any:
    """All rows as the labeled log the backtest builds (request_id, t, t_label, label, features)."""
    import pyarrow as pa

    from lifelong_ray.data.window import LABEL

    n = len(stream)
    t = np.arange(n, dtype=float) / rate
    cols: dict[str, Any] = {"request_id": pa.array([f"row-{i}" for i in range(n)], pa.string()),
                            "t": pa.array(t), "t_label": pa.array(t), LABEL: pa.array(stream.labels)}
    for f in cfg.model.features:
        col = stream.features[f.name]
        cols[f.name] = pa.array(col.tolist(), pa.string()) if f.dtype == "category" else pa.array(col, pa.float64())
    return pa.table(cols)


def _fit_version(cfg: Config, labeled: Any, upto: int, seed: int) -> Any:
    """A version trained like a lifelong retrain on the labeled rows ``[0, upto)``."""
    from lifelong_ray.data.window import window_from_table
    from lifelong_ray.training import runner

    window = window_from_table(labeled.slice(0, upto), cfg, since_t=None, seed=seed)
    return runner.train(window, cfg, seed).as_loaded()


def _columns(stream: gen.Stream, cfg: Config, lo: int, hi: int) -> dict[str, np.ndarray]:
    return {f.name: stream.features[f.name][lo:hi] for f in cfg.model.features}


# ---------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------
def run_static(job: Job, stream: gen.Stream, cfg: Config) -> MethodResult:
    from lifelong_ray.sim.backtest import BacktestSettings

    rate = BacktestSettings().rate
    labeled = _labeled_table(stream, cfg, rate)
    with _TrainClock().installed() as clock:
        # the backtest's first retrain job uses seed training.seed + 1 (its retrain count)
        model = _fit_version(cfg, labeled, job.bootstrap, cfg.training.seed + 1)
    pred, _ = model.predict(_columns(stream, cfg, job.bootstrap, len(stream)))
    acc = float((pred == stream.labels[job.bootstrap:]).mean())
    return MethodResult(acc, 0, clock.cpu, None, 0)


def run_periodic(job: Job, stream: gen.Stream, cfg: Config) -> MethodResult:
    from lifelong_ray.sim.backtest import BacktestSettings

    n, boot, d = len(stream), job.bootstrap, job.label_delay
    labeled = _labeled_table(stream, cfg, BacktestSettings().rate)
    correct = 0
    retrains = 0
    with _TrainClock().installed() as clock:
        model = _fit_version(cfg, labeled, boot, cfg.training.seed + 1)
        for lo in range(boot, n, job.period):
            if lo > boot:  # rows served up to `lo - d` have their labels by now
                retrains += 1
                model = _fit_version(cfg, labeled, max(boot, lo - d), cfg.training.seed + 1 + retrains)
            hi = min(lo + job.period, n)
            pred, _ = model.predict(_columns(stream, cfg, lo, hi))
            correct += int((pred == stream.labels[lo:hi]).sum())
    return MethodResult(correct / (n - boot), retrains, clock.cpu, None, 0)


def run_lifelong(job: Job, stream: gen.Stream, cfg: Config) -> MethodResult:
    from lifelong_ray.sim.backtest import Backtest, BacktestSettings

    settings = BacktestSettings(label_delay=job.label_delay, bootstrap=job.bootstrap, drift_at=stream.drift_points)
    with _TrainClock().installed() as clock:
        report = Backtest(cfg, stream.to_table(label="y"), "y", settings, storage_root=cfg.storage.root).run()
    sm = report["summary"]
    started = [e for e in report["events"] if e["kind"] == "retrain_started"]
    if started and clock.calls == 0:
        raise RuntimeError("the backtest trained without calling a timed trainer entry point: "
                           "update _TrainClock.ENTRY_POINTS so train CPU time is counted")
    online = sum(1 for e in started if (e.get("data") or {}).get("job_kind") == "online")
    detected = [int(e["data"]["sample"]) for e in report["events"] if e["kind"] == "drift_detected"]
    delays, false_alarms = _detections(detected, stream.drift_points, job.bootstrap,
                                       STREAM_SPECS[job.stream].horizon(job.n))
    # every training job after the first version counts: full retrains and incremental steps
    return MethodResult(float(sm["prequential_accuracy"]), max(0, len(started) - 1), clock.cpu, _mean(delays),
                        false_alarms, detects=True,
                        extra={"promotions": sm["promotions"], "rollbacks": sm["rollbacks"],
                               "drifts_detected": sm["drifts_detected"], "detection_delays": delays,
                               "incremental_steps": online})


def run_lifelong_hybrid(job: Job, stream: gen.Stream, cfg: Config) -> MethodResult:
    """The same loop with ``training.mode: hybrid``: between full retrains, a copy of the
    champion is fine-tuned on each fresh labeled mini-batch and canaried if it gains."""
    return run_lifelong(job, stream, cfg.with_overrides(training={"mode": "hybrid"}))


def _river_model(method: str, stream: gen.Stream, seed: int) -> tuple[Any, Any]:
    from river import compose, forest, preprocessing, tree

    numeric = [k for k, v in stream.features.items() if v.dtype != object]
    categorical = [k for k, v in stream.features.items() if v.dtype == object]
    parts = []
    if numeric:
        parts.append(compose.Select(*numeric) | preprocessing.StandardScaler())
    if categorical:
        parts.append(compose.Select(*categorical) | preprocessing.OneHotEncoder())
    features = parts[0] if len(parts) == 1 else compose.TransformerUnion(*parts)
    learner = (tree.HoeffdingAdaptiveTreeClassifier(seed=seed) if method == "river-hat"
               else forest.ARFClassifier(seed=seed))
    return features | learner, learner


def _river_adaptations(learner: Any) -> int:
    if hasattr(learner, "n_drifts_detected"):        # ARF: trees reset after a drift signal
        return int(learner.n_drifts_detected())
    return int(learner.n_switch_alternate_trees)    # HAT: alternate subtrees swapped in


def run_river(job: Job, stream: gen.Stream, cfg: Config) -> MethodResult:
    n, boot, d = len(stream), job.bootstrap, job.label_delay
    model, learner = _river_model(job.method, stream, job.seed)
    rows = stream.rows(0, n)
    y = stream.labels.tolist()
    cpu = 0.0
    c0 = time.process_time()
    for i in range(boot):  # the labeled history, learned in order
        model.learn_one(rows[i], y[i])
    cpu += time.process_time() - c0
    base = _river_adaptations(learner)
    adaptations: list[int] = []
    seen = base
    correct = 0
    for i in range(boot, n):
        correct += int(model.predict_one(rows[i]) == y[i])
        j = i - d  # the label of row j arrives now
        if j >= boot:
            c0 = time.process_time()
            model.learn_one(rows[j], y[j])
            cpu += time.process_time() - c0
        if (i - boot) % RIVER_CHECK_EVERY == RIVER_CHECK_EVERY - 1:
            now = _river_adaptations(learner)
            adaptations.extend([i + 1] * (now - seen))
            seen = now
    delays, false_alarms = _detections(adaptations, stream.drift_points, boot, STREAM_SPECS[job.stream].horizon(job.n))
    return MethodResult(correct / (n - boot), len(adaptations), cpu, _mean(delays), false_alarms, detects=True,
                        extra={"detection_delays": delays})


RUNNERS: dict[str, Callable[[Job, gen.Stream, Config], MethodResult]] = {
    "static": run_static, "periodic": run_periodic, "lifelong": run_lifelong,
    "lifelong-hybrid": run_lifelong_hybrid,
    "river-hat": run_river, "river-arf": run_river,
}


def run_job(job: Job) -> tuple[Job, MethodResult]:
    """One method on one stream, in this process (a worker of the pool)."""
    import torch

    torch.set_num_threads(1)
    stream = STREAM_SPECS[job.stream].build(job.n, job.seed)
    root = tempfile.mkdtemp(prefix=f"adaptation-{job.stream}-{job.method}-")
    try:
        cfg = config_for(load_config(job.config_path), stream, root)
        if job.overrides:
            sections: dict[str, dict[str, Any]] = {}
            for section, key, value in job.overrides:
                sections.setdefault(section, {})[key] = value
            cfg = cfg.with_overrides(**sections)
        t0 = time.perf_counter()
        res = RUNNERS[job.method](job, stream, cfg)
        res.wall_seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return job, res


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
#: Rough relative cost per sample, to start the slowest jobs first.
_COST = {"river-arf": 10.0, "lifelong-hybrid": 6.0, "periodic": 2.5, "lifelong": 2.5, "river-hat": 1.8, "static": 0.2}


def run_benchmark(*, n: int, streams: list[str], methods: list[str], seeds: Sequence[int] = (0,), bootstrap: int = 2000,
                  label_delay: int = 200, period: int = 2000, config: str | Path = DEFAULT_CONFIG,
                  workers: int = 1, arf_samples: int | None = None, arf_streams: list[str] | None = None,
                  overrides: tuple[tuple[str, str, Any], ...] = (),
                  progress: Callable[[str], None] | None = None) -> dict[str, dict[str, MethodResult]]:
    """Run ``methods`` on ``streams`` of ``n`` samples; results by stream, then method.

    ``river-arf`` is the slow one: ``arf_streams`` limits it to some streams (default
    all) and ``arf_samples`` runs it on shorter streams (default ``n``).
    ``overrides`` are ``(section, key, value)`` replacements of the config.
    ``seeds`` runs every pair on each seed's stream; several seeds give each pair's
    :func:`aggregate` of its runs.
    """
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    unknown = sorted(set(streams) - set(STREAM_SPECS)) + sorted(set(methods) - set(RUNNERS))
    if unknown:
        raise ValueError(f"unknown stream or method: {unknown}; streams {list(STREAM_SPECS)}, methods {list(RUNNERS)}")
    if not 0 < bootstrap < n:
        raise ValueError(f"bootstrap must lie in (0, {n}), got {bootstrap}")
    min_rows = load_config(config).training.min_rows
    for section, key, value in overrides:
        min_rows = int(value) if (section, key) == ("training", "min_rows") else min_rows
    if bootstrap < min_rows:
        raise ValueError(f"bootstrap ({bootstrap}) must hold at least training.min_rows ({min_rows}) labeled rows: "
                         "the first version of every method trains on it")
    if any(m.startswith("river") for m in methods):
        import river  # noqa: F401 - fail before any work when the extra is missing
    jobs = [Job(s, m, (arf_samples or n) if m == "river-arf" else n, sd, bootstrap, label_delay, period,
                str(config), tuple(overrides))
            for sd in seeds for s in streams for m in methods
            if m != "river-arf" or arf_streams is None or s in arf_streams]
    jobs.sort(key=lambda j: -_COST.get(j.method, 1.0) * j.n)
    out: dict[str, dict[str, dict[int, MethodResult]]] = {s: {} for s in streams}
    say = progress or (lambda msg: None)

    def done(job: Job, res: MethodResult) -> None:
        out[job.stream].setdefault(job.method, {})[job.seed] = res
        on_seed = f" seed {job.seed}" if len(seeds) > 1 else ""
        say(f"{job.stream:>10} {job.method:<9}{on_seed} accuracy {res.accuracy:.4f} in {res.wall_seconds:.1f}s")

    if workers <= 1:
        _init_worker()
        for job in jobs:
            done(*run_job(job))
    else:
        # one thread per worker for every library (numpy's BLAS is set up at import, in the child)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker) as pool:
            futures = [pool.submit(run_job, job) for job in jobs]
            for fut in as_completed(futures):
                done(*fut.result())
    return {s: {m: aggregate({sd: out[s][m][sd] for sd in seeds}) for m in methods if m in out[s]}
            for s in streams}


def aggregate(runs: dict[int, MethodResult]) -> MethodResult:
    """One method's result on one stream over several seeds, each run in ``extra["seeds"]``.

    Accuracy, train CPU seconds and wall seconds are the means over seeds; the
    detection delay is the mean of every seed's delays together. ``retrains`` is
    the largest count and ``false_alarms`` the total, so a target on them (a third
    of periodic's retrains, zero false alarms) holds on every seed. One seed is
    returned as it is.

        >>> a = MethodResult(0.90, 15, 2.0, 500.0, 0, extra={"detection_delays": [400, 600]})
        >>> b = MethodResult(0.92, 16, 4.0, 700.0, 1, extra={"detection_delays": [700]})
        >>> r = aggregate({0: a, 1: b})
        >>> round(r.accuracy, 4), r.retrains, r.train_cpu_seconds, r.mean_detection_delay, r.false_alarms
        (0.91, 16, 3.0, 566.6666666666666, 1)
        >>> sorted(r.extra["seeds"]), aggregate({0: a}) is a
        ([0, 1], True)
    """
    if len(runs) == 1:
        return next(iter(runs.values()))
    rs = list(runs.values())
    delays = [d for r in rs for d in r.extra.get("detection_delays", [])]
    return MethodResult(float(np.mean([r.accuracy for r in rs])), max(r.retrains for r in rs),
                        float(np.mean([r.train_cpu_seconds for r in rs])), _mean(delays),
                        sum(r.false_alarms for r in rs), wall_seconds=float(np.mean([r.wall_seconds for r in rs])),
                        detects=rs[0].detects, extra={"seeds": dict(runs)})


def per_seed(result: MethodResult) -> dict[int, MethodResult]:
    """The run of each seed behind ``result`` (``{}`` for a one-seed result)."""
    return dict(result.extra.get("seeds") or {})


def to_json(results: dict[str, dict[str, MethodResult]]) -> dict[str, Any]:
    """``{"streams": {STREAM: {METHOD: row}}}``; over several seeds each row also has
    ``"seeds": {SEED: row}``, the run of each seed."""
    def row(r: MethodResult) -> dict[str, Any]:
        runs = per_seed(r)
        return {**r.to_json(), **({"seeds": {str(sd): x.to_json() for sd, x in runs.items()}} if runs else {})}

    return {"streams": {s: {m: row(r) for m, r in by_method.items()} for s, by_method in results.items()}}


def check_targets(results: dict[str, dict[str, MethodResult]]) -> list[tuple[str, bool | None, str]]:
    """The issue's targets, measured: (target, met or None when not measured, numbers)."""
    checks: list[tuple[str, bool | None, str]] = []
    for s, r in results.items():
        life = r.get("lifelong")
        if life is None:
            continue
        per = r.get("periodic")
        mean = "mean " if per_seed(life) else ""
        if per is not None:
            ok = life.accuracy >= per.accuracy and life.retrains * 3 <= per.retrains
            checks.append((f"{s}: lifelong accuracy >= periodic with <= 1/3 of its retrains", ok,
                           f"{mean}{life.accuracy:.4f} vs {per.accuracy:.4f} ({life.accuracy - per.accuracy:+.4f}); "
                           f"retrains {life.retrains} vs {per.retrains}{_by_seed(life, per, retrains=True)}"))
        rivers = {m: r[m] for m in RIVER_METHODS if m in r}
        if rivers and s != "stationary":
            best_m, best = max(rivers.items(), key=lambda kv: kv[1].accuracy)
            checks.append((f"{s}: lifelong accuracy >= River's best", life.accuracy >= best.accuracy,
                           f"{mean}{life.accuracy:.4f} vs {best_m} {best.accuracy:.4f} "
                           f"({life.accuracy - best.accuracy:+.4f}){_by_seed(life, best)}"))
        if s == "stationary":
            checks.append(("stationary: zero lifelong retrains", life.retrains == 0,
                           f"{life.retrains} retrains, {life.false_alarms} false alarms"))
        if s == "abrupt":
            delay = life.mean_detection_delay
            checks.append(("abrupt: lifelong mean detection delay < 1,000 samples",
                           None if delay is None else delay < 1000,
                           "no drift detected" if delay is None else f"{delay:.0f} samples "
                           f"({_delays(life)})"))
    return checks


def _delays(r: MethodResult) -> str:
    """Each detection delay: ``[567, 520, 545]``, or by seed ``0 [..], 1 [..]``."""
    runs = per_seed(r)
    if not runs:
        return str(r.extra.get("detection_delays"))
    return ", ".join(f"{sd} {x.extra.get('detection_delays')}" for sd, x in runs.items())


def _by_seed(life: MethodResult, other: MethodResult, retrains: bool = False) -> str:
    """``"; by seed: 0 -0.0003 (15), 1 +0.0005 (16)"``: lifelong's accuracy against
    ``other`` on each seed (with its retrains), empty for a one-seed run."""
    mine, theirs = per_seed(life), per_seed(other)
    parts = [f"{sd} {mine[sd].accuracy - theirs[sd].accuracy:+.4f}" + (f" ({mine[sd].retrains})" if retrains else "")
             for sd in mine if sd in theirs]
    return f"; by seed: {', '.join(parts)}" if parts else ""


def render(results: dict[str, dict[str, MethodResult]], args: argparse.Namespace, wall: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(110, Console().width))
    for s, by_method in results.items():
        spec = STREAM_SPECS[s]
        table = Table(title=f"{s}: {spec.describe}", title_justify="left")
        several = any(per_seed(r) for r in by_method.values())
        cols = ("method", "accuracy", *(("accuracy by seed", ) if several else ()), "retrains",
                "train CPU s", "mean detect delay", "false alarms", "wall s")
        for col in cols:
            table.add_column(col, justify="left" if col in ("method", "accuracy by seed") else "right")
        best = max(r.accuracy for r in by_method.values())
        for m, r in by_method.items():
            name = m + (f" (n={args.arf_samples:,})" if m == "river-arf" and args.arf_samples else "")
            acc = f"{r.accuracy:.4f}"
            incr = r.extra.get("incremental_steps", 0)
            retrains = f"{r.retrains} ({r.retrains - incr} full)" if incr else str(r.retrains)
            runs = per_seed(r)
            if runs:  # the largest count over seeds, then each seed's
                retrains += " (" + "/".join(str(x.retrains) for x in runs.values()) + ")"
            by_seed = ((" / ".join(f"{x.accuracy:.4f}" for x in runs.values()), ) if several else ())
            table.add_row(name, f"[bold]{acc}[/bold]" if r.accuracy == best else acc, *by_seed, retrains,
                          f"{r.train_cpu_seconds:.1f}",
                          "-" if r.mean_detection_delay is None else f"{r.mean_detection_delay:.0f}",
                          str(r.false_alarms) if r.detects else "-", f"{r.wall_seconds:.1f}")
        console.print(table)
    checks = check_targets(results)
    if checks:
        t = Table(title="targets", title_justify="left")
        t.add_column("target")
        t.add_column("met")
        t.add_column("measured")
        for name, ok, detail in checks:
            t.add_row(name, "n/a" if ok is None else ("[green]yes[/green]" if ok else "[red]no[/red]"), detail)
        console.print(t)
    sets = " ".join(f"--set {sec}.{key}={json.dumps(val)}" for sec, key, val in args.overrides)
    seeds = (f"seeds {','.join(map(str, args.seeds))} (accuracy: the mean)" if len(args.seeds) > 1
             else f"seed {args.seeds[0]}")
    console.print(f"{args.n:,} samples per stream, bootstrap {args.bootstrap}, label delay {args.label_delay}, "
                  f"periodic every {args.period}, {seeds}, config {args.config} {sets}, "
                  f"{args.workers} worker(s); wall {wall:.0f}s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the results as JSON only")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_SAMPLES:,} samples per stream")
    p.add_argument("--samples", "-n", dest="n", type=int, default=None,
                   help=f"samples per stream (default {FULL_SAMPLES:,}; {QUICK_SAMPLES:,} with --quick)")
    p.add_argument("--streams", default=",".join(STREAMS), help=f"comma-separated, from {','.join(STREAMS)}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    p.add_argument("--arf-streams", default=",".join(ARF_STREAMS),
                   help="streams river-arf runs on (it is the slow one; default: the drifting ones; 'all' for all)")
    p.add_argument("--arf-samples", type=int, default=None,
                   help="samples per stream for river-arf only (default: the same as everyone)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of the config for every stream (YAML value), e.g. training.mode=hybrid")
    p.add_argument("--label-delay", type=int, default=200)
    p.add_argument("--bootstrap", type=int, default=2000, help="labeled history rows before scoring starts")
    p.add_argument("--period", type=int, default=2000, help="samples between periodic retrains")
    p.add_argument("--config", default=str(DEFAULT_CONFIG.relative_to(ROOT)))
    p.add_argument("--seed", type=int, default=None, help="stream (and River) seed (default 0)")
    p.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="run every pair on each of these seeds' streams and report the mean accuracy, the largest "
                        "retrain count and the total false alarms, with each seed's figures (e.g. 0,1,2)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
    args = p.parse_args(argv)
    args.n = args.n or (QUICK_SAMPLES if args.quick else FULL_SAMPLES)
    args.streams = [s for s in args.streams.split(",") if s]
    args.methods = [m for m in args.methods.split(",") if m]
    args.arf_streams = None if args.arf_streams == "all" else [s for s in args.arf_streams.split(",") if s]
    args.overrides = [parse_override(o) for o in args.overrides]
    if args.seeds is not None and args.seed is not None:
        p.error("--seed and --seeds exclude each other")
    try:
        args.seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else [args.seed or 0]
    except ValueError:
        p.error(f"--seeds wants comma-separated integers, got {args.seeds!r}")
    if len(set(args.seeds)) != len(args.seeds) or not args.seeds:
        p.error(f"--seeds wants distinct seeds, got {args.seeds}")
    args.seed = args.seeds[0]
    return args


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"drift.accuracy_drop=0.05"`` -> ``("drift", "accuracy_drop", 0.05)`` (the value read as YAML).

    >>> parse_override("rollout.canary_steps=[10, 100]")
    ('rollout', 'canary_steps', [10, 100])
    """
    import yaml

    path, sep, value = text.partition("=")
    section, dot, key = path.strip().partition(".")
    if not (sep and dot and section and key):
        raise argparse.ArgumentTypeError(f"--set wants SECTION.KEY=VALUE, got {text!r}")
    return section, key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = Path(args.config)
    if not config.is_absolute() and not config.exists():
        config = ROOT / config
    if "river-hat" in args.methods or "river-arf" in args.methods:
        try:
            import river  # noqa: F401
        except ImportError:
            print("River is not installed: pip install -e '.[bench]' (or drop the river-* methods with --methods)",
                  file=sys.stderr)
            return 2
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        if not args.json:
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    results = run_benchmark(n=args.n, streams=args.streams, methods=args.methods, seeds=args.seeds,
                            bootstrap=args.bootstrap, label_delay=args.label_delay, period=args.period,
                            config=config, workers=args.workers, arf_samples=args.arf_samples,
                            arf_streams=args.arf_streams, overrides=tuple(args.overrides), progress=progress)
    wall = time.perf_counter() - t0
    if args.json:
        print(json.dumps(to_json(results)))
    else:
        render(results, args, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
