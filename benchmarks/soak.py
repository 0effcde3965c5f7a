"""Does the controller run for months: flat memory, ticks within the period, fast restarts?

A soak of the REAL control path on a fake clock, the controller in a process of its own:

* **ingress side**: predictions go through the ingress's own writer, a
  :class:`~lifelong_ray.data.segments.SegmentLog` (one JSON line per request, sealed
  into the parquet prediction log once per tick), and labels through
  :meth:`ModelLogs.append_feedback <lifelong_ray.data.logs.ModelLogs.append_feedback>`
  (what the feedback endpoint's group commit writes). Half of the predictions are
  labeled, each after a delay drawn uniformly from ``[0, 1.1 x label horizon]``: most
  labels are late, about one in eleven arrives after the horizon (the observer must
  count it expired, not keep it). No HTTP.
* **controller side**: a real :class:`~lifelong_ray.control.controller.Controller`
  (observer, ``decide()``, state persisted, audit log, registry, routing table) on
  real :class:`~lifelong_ray.storage.Storage` in a temporary directory, in a child
  process (``multiprocessing``, ``spawn``) that ticks when the parent says so. The
  parent owns the fake clock and writes the logs and commands (the ingress's and the
  operators' work), so the controller process holds only what the controller holds. Actions that
  need Ray run through a stub: ``deploy_version``, ``retire_version`` (Ray Serve) and
  ``start_retrain`` (a Ray task) are recorded and skipped; alias and routing writes
  are the real ones.
* **operators**: ``--commands`` (2,000) pause/resume/rollback commands, spread over
  the run, through :func:`~lifelong_ray.control.commands.submit_command`.
* **restarts**: at 50% and 90% of the predictions the controller process ends and a
  new one is started and builds its controller from storage (a Ray actor restart is a
  new process); ``restart_seconds`` is the longest construction plus first tick in the
  new process, ``restart_process_seconds`` the same plus the process's start and imports
  (as the parent sees it), and ``restart_peak_rss_mb`` the new process's peak RSS
  during its construction and first tick (sampled every 5 ms).

The clock advances ``controller.tick_seconds`` (1 s) per tick, and each tick carries
``--rate`` predictions (1,000), so the run spans ``predictions / rate`` fake seconds.
The label horizon (``data.label_horizon_seconds``) and the log readers' lag
(``data.log_late_seconds``, at most its 1 h default) are a tenth of that and the SLO
period a fifth, so the state the controller must hold reaches its steady size well
before the 25% mark. All RSS figures are of the controller process, "settled": after
``gc.collect()``, Arrow's ``release_unused()`` and glibc's ``malloc_trim(0)`` (live
memory, not what an earlier peak left mapped). ``rss_mb_at_25pct`` is the first
process's, after the tick that reaches 25% of the predictions; ``rss_mb_at_end`` the
last process's (started at 90%, from the checkpoint and the log tail) after the last
tick; ``rss_growth_ratio = rss_mb_at_end / rss_mb_at_25pct`` compares those two
processes, i.e. whether the state a controller holds, and rebuilds after a restart,
stays the same size as the run goes on. ``rss_mb_by_life`` is each process's settled
RSS just before it ends (at 50%, at 90%, at the end): the first entry against
``rss_mb_at_25pct`` is the growth inside one process (25% to 50%). ``tick_p50_s``/``tick_p99_s`` time
``Controller.tick()`` alone, in the controller process (writing the logs is the
ingress's work, not timed; the first start's construction is not timed either).
``commands_applied_twice`` counts command ids with more than one audit event (each
command must leave exactly one: what it did, or ``command_rejected``).

``--json`` prints exactly one line::

    {"predictions", "rss_mb_at_25pct", "rss_mb_at_end", "rss_growth_ratio", "tick_p50_s",
     "tick_p99_s", "tick_seconds", "restart_seconds", "restart_peak_rss_mb", "commands",
     "commands_applied_twice", "rss_mb_by_life", "restart_process_seconds"}

Goals: ``rss_growth_ratio`` <= 1.05, ``tick_p99_s`` < ``tick_seconds``,
``restart_seconds`` < 60, ``commands_applied_twice`` == 0.

    python benchmarks/soak.py                                   # 2,000,000 predictions
    python benchmarks/soak.py --predictions 200000 --json
    python benchmarks/soak.py --predictions 20000 --commands 40 --json   # seconds (the unit test)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lifelong_ray.clock import Clock  # noqa: E402
from lifelong_ray.config import Config, EstimatorConfig, parse_config  # noqa: E402
from lifelong_ray.control import controller as ctl  # noqa: E402
from lifelong_ray.control.commands import submit_command  # noqa: E402
from lifelong_ray.control.executor import Executor  # noqa: E402
from lifelong_ray.data.logs import ModelLogs, feature_values  # noqa: E402
from lifelong_ray.data.segments import SegmentLog  # noqa: E402
from lifelong_ray.events import AuditLog  # noqa: E402
from lifelong_ray.policy.model import Action, ControllerState  # noqa: E402
from lifelong_ray.storage import Storage  # noqa: E402

MODEL = "soak"
FEATURES = ["x0", "x1", "x2"]
T0 = 1.7e9
REQUEST_ROWS = 20  # instances per predict request
KEYS = ("predictions", "rss_mb_at_25pct", "rss_mb_at_end", "rss_growth_ratio", "tick_p50_s", "tick_p99_s",
        "tick_seconds", "restart_seconds", "restart_peak_rss_mb", "commands", "commands_applied_twice")
EXTRA_KEYS = ("rss_mb_by_life", "restart_process_seconds")


class FakeClock(Clock):
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


class StubExecutor(Executor):
    """The real executor, except the actions that need Ray (recorded, not run)."""

    skipped: Counter = Counter()

    def _start_retrain(self, a: Action) -> None:
        StubExecutor.skipped["start_retrain"] += 1

    def _deploy(self, a: Action) -> None:
        StubExecutor.skipped["deploy_version"] += 1

    def _retire(self, a: Action) -> None:
        StubExecutor.skipped["retire_version"] += 1


def settled_rss_mb() -> float:
    """RSS after a garbage collection and after handing freed heap back to the OS (Arrow's
    pool and glibc's ``malloc_trim``): live memory, not what an earlier peak left mapped."""
    import ctypes

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
    return rss_mb()


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRss:
    """The highest RSS seen while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> "PeakRss":
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def make_config(root: str, run_seconds: float) -> Config:
    lag = {"log_late_seconds": min(3600.0, max(10.0, run_seconds / 10))}
    sync = {"durability": {"predictions": "none", "feedback": "none"}}  # the soak measures memory, not the disk
    return parse_config({
        "model": {"name": MODEL, "features": [{"name": f} for f in FEATURES],
                  "label": {"name": "y", "classes": [0, 1]}},
        "training": {"runner": "local"},
        "data": {"label_horizon_seconds": max(10.0, run_seconds / 10), **sync, **lag},
        "slo": {"period_seconds": max(60.0, run_seconds / 5)},
        "storage": {"root": root},
    })


def register_champion(cfg: Config, storage: Storage) -> None:
    """v0001 as the champion: a registered logistic model whose reference is the stream's inputs."""
    import pyarrow as pa
    import torch

    from lifelong_ray.data.schema import Schema
    from lifelong_ray.data.transform import FeatureTransform, columns_from_table
    from lifelong_ray.registry.store import Registry
    from lifelong_ray.training.estimators import build_module

    schema = Schema(cfg.model)
    rng = np.random.default_rng(0)
    ref = pa.table({f: rng.normal(size=2000) for f in FEATURES})
    transform = FeatureTransform.fit(columns_from_table(ref, schema), schema)
    est = EstimatorConfig(kind="logistic")
    torch.manual_seed(0)
    module = build_module(est, transform.n_out, 2)
    reg = Registry(storage, MODEL)
    v = reg.register(state_dict=module.state_dict(), transform=transform, estimator=est, n_in=transform.n_out,
                     classes=[0, 1], reference=ref, metadata={"job_id": "soak-bootstrap"})
    reg.set_alias("champion", v)
    state = ControllerState(model=MODEL, champion=v, champion_reference_accuracy=0.9, weights={v: 100.0},
                            routing_generation=1)
    storage.write_json(ctl.state_path(MODEL), state.model_dump(mode="json"))


class Life:
    """One controller process (a Ray actor's life): built from storage in a child process
    started with ``spawn``, then ticked by the parent, which owns the clock and the writers."""

    def __init__(self, root: str, run_seconds: float, t: float) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        started = time.perf_counter()
        self.proc = ctx.Process(target=_life, args=(child, root, run_seconds, t), daemon=True)
        self.proc.start()
        child.close()
        #: construction + first tick, its peak RSS (both in the child), and the wall time from
        #: the process's start to its first tick done (interpreter and imports included)
        self.first_tick_s, self.peak_rss_mb, self.tick_only_s = self._recv()
        self.wall_s = time.perf_counter() - started

    def _recv(self):
        if not self.conn.poll(600):
            raise RuntimeError("the controller process did not answer in 600 s")
        msg = self.conn.recv()
        if isinstance(msg, BaseException):
            raise msg
        return msg

    def call(self, *msg: object):
        self.conn.send(msg)
        return self._recv()

    def end(self) -> tuple[float, dict]:
        """Settled RSS just before the end, and the stubbed actions; the process exits."""
        rss, skipped = self.call("end")
        self.proc.join(60)
        self.conn.close()
        return rss, skipped


def _life(conn, root: str, run_seconds: float, t: float) -> None:
    """The controller process: a Controller on the shared storage, ticked on the parent's word."""
    try:
        ctl.Executor = StubExecutor  # the controller builds its executor by this name
        cfg = make_config(root, run_seconds)
        clock = FakeClock(t)
        with PeakRss() as peak:
            started = time.perf_counter()
            # the lease holder of a Ray actor is its actor id, which a restart keeps (control/actor.py)
            controller = ctl.Controller(cfg, clock=clock, holder="actor-soak")
            ticked = time.perf_counter()
            controller.tick()
            done = time.perf_counter()
        conn.send((done - started, peak.peak, done - ticked))
        while True:
            msg = conn.recv()
            if msg[0] == "tick":
                clock.t = msg[1]
                started = time.perf_counter()
                controller.tick()
                conn.send(time.perf_counter() - started)
            elif msg[0] == "rss":
                conn.send(settled_rss_mb())
            elif msg[0] == "progress":
                conn.send((rss_mb(), getattr(controller.observer, "held", lambda: {})()))
            elif msg[0] == "end":
                conn.send((settled_rss_mb(), dict(StubExecutor.skipped)))
                return
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
        conn.send(RuntimeError(f"controller process failed: {exc!r}"))
        raise


def run(predictions: int, rate: int, commands: int, progress: bool = False,
        restarts: tuple[float, ...] = (0.5, 0.9)) -> dict:
    tmp = tempfile.TemporaryDirectory(prefix="lifelong-soak-")
    root = tmp.name
    ticks = max(1, -(-predictions // rate))
    tick_s = 1.0
    run_seconds = ticks * tick_s
    cfg = make_config(root, run_seconds)
    assert cfg.controller.tick_seconds == tick_s
    storage = Storage(root)
    register_champion(cfg, storage)
    logs = ModelLogs(storage, MODEL, fsync=False)
    clock = FakeClock(T0)
    segments = SegmentLog(logs, logs.predictions_prefix, replica="soak", seal_s=None, clock=clock.now)
    horizon = cfg.data.label_horizon_seconds
    rng = np.random.default_rng(1)

    due_t: list[np.ndarray] = []  # pending labels, one array triple per batch
    due_id: list[np.ndarray] = []
    due_y: list[np.ndarray] = []
    command_at = set(np.linspace(0, ticks - 1, commands).astype(int).tolist()) if commands else set()
    per_tick_commands = Counter(np.linspace(0, ticks - 1, commands).astype(int).tolist()) if commands else Counter()
    kinds = ("pause", "resume", "rollback")
    submitted = 0
    restart_at = {int(ticks * f) for f in restarts}
    tick_times: list[float] = []
    restart_times: list[float] = []
    restart_walls: list[float] = []
    restart_peaks: list[float] = []
    rss_by_life: list[float] = []
    skipped: Counter = Counter()
    rss_25 = None
    loop = asyncio.new_event_loop()
    life: Life | None = None
    n_done = 0

    async def write_requests(ids: np.ndarray, x: np.ndarray, pred: np.ndarray) -> None:
        for lo in range(0, len(ids), REQUEST_ROWS):
            hi = min(lo + REQUEST_ROWS, len(ids))
            rec = logs.prediction_record(
                request_ids=ids[lo:hi].tolist(), t=clock.now(), version="v0001",
                features=feature_values({f: x[lo:hi, j] for j, f in enumerate(FEATURES)}, FEATURES, set()),
                categorical=set(), predictions=pred[lo:hi].tolist(), confidence=[0.9] * (hi - lo),
                latency_ms=float(rng.gamma(4.0, 2.0)))
            await segments.append(lambda t, rec=rec: rec, hi - lo)

    for k in range(ticks):
        clock.t = T0 + k * tick_s
        n = min(rate, predictions - n_done)
        ids = np.array([f"{i:032x}" for i in range(n_done, n_done + n)], dtype=object)
        x = rng.normal(size=(n, len(FEATURES)))
        y = (x[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
        pred = np.where(rng.random(n) < 0.9, y, 1 - y)
        loop.run_until_complete(write_requests(ids, x, pred))
        segments.seal_now()
        n_done += n
        lab = rng.random(n) < 0.5
        due_t.append(clock.t + rng.uniform(0, 1.1 * horizon, size=int(lab.sum())))
        due_id.append(ids[lab])
        due_y.append(y[lab])
        # labels due by now, in one feedback file
        out_ids, out_y = [], []
        for i in range(len(due_t)):
            if not due_t[i].size:
                continue
            now_due = due_t[i] <= clock.t
            if now_due.any():
                out_ids.append(due_id[i][now_due])
                out_y.append(due_y[i][now_due])
                due_t[i], due_id[i], due_y[i] = due_t[i][~now_due], due_id[i][~now_due], due_y[i][~now_due]
        keep = [i for i in range(len(due_t)) if due_t[i].size]
        due_t, due_id, due_y = [due_t[i] for i in keep], [due_id[i] for i in keep], [due_y[i] for i in keep]
        if out_ids:
            logs.append_feedback(np.concatenate(out_ids).tolist(), np.concatenate(out_y).tolist(), t=clock.t)
        if k in command_at:
            for _ in range(per_tick_commands[k]):
                submit_command(storage, MODEL, kinds[submitted % len(kinds)], who="soak", why=f"soak {submitted}",
                               now=clock.t)
                submitted += 1
        if life is None:  # the first start: its first tick is an ordinary tick
            life = Life(root, run_seconds, clock.t)
            tick_times.append(life.tick_only_s)
        elif k in restart_at:  # the old process ends, a new one is built from storage
            rss, sk = life.end()
            rss_by_life.append(rss)
            skipped.update(sk)
            life = Life(root, run_seconds, clock.t)
            restart_times.append(life.first_tick_s)
            restart_walls.append(life.wall_s)
            restart_peaks.append(life.peak_rss_mb)
        else:
            tick_times.append(life.call("tick", clock.t))
        if rss_25 is None and n_done >= predictions * 0.25:
            rss_25 = life.call("rss")
        if progress and k % max(1, ticks // 20) == 0:
            rss_now, held = life.call("progress")
            print(f"tick {k}/{ticks}: {n_done} predictions, controller rss {rss_now:.0f} MB,"
                  f" last tick {tick_times[-1] if tick_times else 0:.3f} s {held}", file=sys.stderr, flush=True)
    rss_end, sk = life.end()
    rss_by_life.append(rss_end)
    skipped.update(sk)
    StubExecutor.skipped.update(skipped)
    events = AuditLog(storage, MODEL).read()
    per_command = Counter(e.data["command_id"] for e in events if e.data.get("command_id"))
    segments.close()
    loop.close()
    tmp.cleanup()
    ticks_arr = np.asarray(tick_times) if tick_times else np.zeros(1)
    return {
        "predictions": int(n_done),
        "rss_mb_at_25pct": round(float(rss_25 or rss_end), 1),
        "rss_mb_at_end": round(float(rss_end), 1),
        "rss_growth_ratio": round(float(rss_end / (rss_25 or rss_end)), 3),
        "tick_p50_s": round(float(np.percentile(ticks_arr, 50)), 4),
        "tick_p99_s": round(float(np.percentile(ticks_arr, 99)), 4),
        "tick_seconds": float(cfg.controller.tick_seconds),
        "restart_seconds": round(float(max(restart_times, default=0.0)), 3),
        "restart_peak_rss_mb": round(float(max(restart_peaks, default=rss_end)), 1),
        "commands": int(submitted),
        "commands_applied_twice": int(sum(1 for c in per_command.values() if c > 1)),
        "rss_mb_by_life": [round(float(r), 1) for r in rss_by_life],
        "restart_process_seconds": round(float(max(restart_walls, default=0.0)), 3),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--predictions", type=int, default=2_000_000, help="predictions to serve (up to 10M)")
    ap.add_argument("--rate", type=int, default=1000, help="predictions per tick (one tick = 1 fake second)")
    ap.add_argument("--commands", type=int, default=2000, help="operator commands mixed in")
    ap.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = ap.parse_args(argv)
    if not 1 <= args.predictions <= 10_000_000:
        ap.error("--predictions must be between 1 and 10,000,000")
    started = time.perf_counter()
    out = run(args.predictions, args.rate, args.commands, progress=not args.json)
    if args.json:
        print(json.dumps(out))
        return
    from rich.console import Console
    from rich.table import Table

    goals = {"rss_growth_ratio": "<= 1.05", "tick_p99_s": f"< {out['tick_seconds']:g}",
             "restart_seconds": "< 60", "commands_applied_twice": "0"}
    table = Table(title=f"soak: {out['predictions']:,} predictions, {out['commands']:,} commands,"
                        f" restarts at 50% and 90% ({time.perf_counter() - started:.0f} s wall)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal")
    for k in KEYS + EXTRA_KEYS:
        v = out[k]
        table.add_row(k, ", ".join(f"{r:g}" for r in v) if isinstance(v, list) else f"{v:,}" if isinstance(v, int)
                      else f"{v:g}", goals.get(k, ""))
    Console().print(table)
    if StubExecutor.skipped:
        Console().print(f"stubbed actions (need Ray): {dict(StubExecutor.skipped)}")


if __name__ == "__main__":
    main()
