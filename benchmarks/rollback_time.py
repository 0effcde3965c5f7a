"""How fast does a failing canary lose its traffic?

Issue 5's target: from the moment a canary starts failing (100% errors, NaN outputs,
or 10x the champion's latency) to 0% canary weight takes at most one analysis
interval plus one tick. This script measures it on the real system, once per failure
kind, and prints the bound it is held to with the numbers that make it up.

**Setup.** A Ray of its own (or the one already initialised in this process), Ray
Serve on a free port of 127.0.0.1, the lifelong ingress and the controller actor for a
model ``rollback`` whose config is ``--config`` (``configs/demo.yaml``) with
:data:`OVERRIDES` (the in-process ``local`` runner and a short training, a
``--tick-seconds`` tick, canary steps 10/50/100 with a one-hour minimum per step so a
healthy canary stays at 10%, a generous gate margin so a candidate trained on the same
data passes it, no cooldown, a temporary storage root). A labeled batch of the demo's
drift-free stream is ingested, the controller trains and promotes ``v0001``, and an
open-loop client sends ``--rate`` predict requests a second of ``--batch`` rows each,
from a thread pool (so a slow canary does not slow the offered load), returning each
label ``--label-delay`` seconds later through ``:feedback``.

**One case per failure kind.** A ``retrain`` operator command makes the controller
train a candidate, gate it and start its canary at 10%. As soon as the routing table
shows the candidate at 10%, the fault is written for that version
(:mod:`lifelong_ray.serving.faults`; ``errors``: ``abort_fraction`` 1, ``nan``:
``nan_fraction`` 1, ``latency``: ``delay_ms`` = 10 x the champion's p95 latency measured
by the ingress over the last 10 s) at ``T0``; the routing table is read every 20 ms
until the candidate's weight is 0, at ``T1``. ``seconds_to_zero = T1 - T0``. The faults
are cleared and the next case starts. Each case is checked: a ``rolled_back`` event for
the candidate whose reason names the failure (error rate or "answered none", or p95
latency), the champion at >= 90% in every routing table read, every client request
answered 200 (the ingress falls back to the champion), and faulty canary answers in
the prediction log. A failed check makes the exit status 1.

**The bound** (:func:`bound`), from the config and the offered load:

    bound = pickup + evidence + delay + seal + tick

* ``pickup`` = ``serving.routing_poll_seconds``: the ingress re-reads ``faults.json``
  with the routing table, so the canary starts failing at most one poll after ``T0``;
* ``evidence``: an analysis judges error rate and latency once the canary served
  ``n = min(MIN_SERVED_FOR_RATES, rollout.min_labeled_per_step)`` rows in its step
  (rows are instances: a request of ``--batch`` rows counts ``--batch`` times), i.e.
  ``k = ceil(n / batch)`` canary requests. Each request goes to the canary with
  probability ``w`` (its first step, 10%), so the offered requests until it had ``k``
  is ``k`` + a negative binomial; ``evidence`` is its 95th percentile
  (:data:`EVIDENCE_QUANTILE`) over ``--rate`` (the mean, ``k / w / rate``, is printed
  too);
  The latency verdict needs ``n`` timed *requests* (one latency sample per request:
  its rows share it), so for the latency case ``k = n``;
* ``delay``: the injected delay (latency case only): a slow answer is logged, and can
  be judged, only once it has been answered;
* ``seal`` = ``data.log_seal_seconds`` (with ``data.log_segments``, the default on a
  local root): an answered row reaches the parquet log the controller reads when the
  ingress seals its segment;
* ``tick`` = ``controller.tick_seconds``: the next tick lists the log, decides and
  writes the routing table.

The bound leaves out the tick's own work (observe, decide, persist, write the table)
and the log write; the breakdown table shows them: ``pickup`` (``T0`` to the first
faulty canary row in the prediction log), ``evidence`` (to the ``n``-th canary row of
the step), ``wait`` (to the start of the tick that rolled back: the ``rolled_back``
event's ``t``), ``tick work`` (to ``T1``), when the canary's last row was logged
(the ingress stops routing to it one routing poll after ``T1``), the controller's tick
period (median spacing of its tick starts from ``T0`` to 3 s after the rollback), the
request rate that reached the wire between ``T0`` and ``T1`` and how late the client
started those requests (a late start means the machine, not the schedule, set the pace).
For the latency case, ``pickup`` holds the injected delay: a slow row is logged once
answered.

``--json`` prints exactly ``{"cases": {KIND: {"seconds_to_zero": float,
"bound_seconds": float}}}``; progress goes to stderr. Without it: tables (rich) with
the load average before and after. Run from the repository root::

    python benchmarks/rollback_time.py              # 3 kinds, ~3 min on 2 cores
    python benchmarks/rollback_time.py --quick      # errors only, ~1.5 min
    python benchmarks/rollback_time.py --json
"""

import argparse
import datetime as _dt
import functools
import json
import math
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import requests
from scipy.stats import nbinom

if __package__ in (None, ""):  # run as a script: make the repository and this folder importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from lifelong_ray.config import Config, load_config  # noqa: E402
from lifelong_ray.control.commands import submit_command  # noqa: E402
from lifelong_ray.control.controller import load_state  # noqa: E402
from lifelong_ray.data.ingest import ingest_table  # noqa: E402
from lifelong_ray.data.logs import LogTail, ModelLogs  # noqa: E402
from lifelong_ray.events import AuditLog, Event, EventKind  # noqa: E402
from lifelong_ray.policy.analysis import MIN_SERVED_FOR_RATES  # noqa: E402
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage  # noqa: E402
from lifelong_ray.serving.faults import MAX_DELAY_MS, clear_faults, write_faults  # noqa: E402
from lifelong_ray.serving.routing import RoutingTable, read_routing  # noqa: E402
from lifelong_ray.sim.streams import Stream, stationary  # noqa: E402
from lifelong_ray.storage import Storage  # noqa: E402
from serve_overhead import load_average, machine  # noqa: E402

KINDS = ("errors", "nan", "latency")
LATENCY_FACTOR = 10.0            # the latency fault: this many times the champion's p95
EVIDENCE_QUANTILE = 0.95         # of the offered requests until the canary served enough rows
MIN_CHAMPION_WEIGHT = 90.0       # the champion keeps at least this share throughout
POLL_S = 0.02                    # how often the routing table is read
P95_WINDOW_S = 10.0              # champion latency measured over this many seconds before T0
TICK_SAMPLE_S = 3.0              # the tick period is sampled from T0 until this long after the rollback
MODEL = "rollback"
BOOTSTRAP_ROWS = 1000
STREAM_ROWS = 200_000
#: what the benchmark changes in --config (plus the tick, the storage root and the port)
OVERRIDES: dict[str, dict[str, Any]] = {
    "model": {"name": MODEL},
    "estimator": {"epochs": 10},
    "training": {"runner": "local", "min_rows": 500, "window_recent": 1000, "window_replay": 0},
    "drift": {"cooldown_seconds": 0},
    "rollout": {"canary_steps": [10, 50, 100], "min_seconds_per_step": 3600, "gate_margin": 0.5,
                "retire_grace_seconds": 1, "shadow_fraction": 0.0, "require_approval": [], "probation_labels": 0},
    "quota": {"max_retrains_per_hour": 60},
}


@dataclass(frozen=True)
class Settings:
    """The offered load and the controller's tick."""

    kinds: tuple[str, ...] = KINDS
    rate: float = 25.0            # predict requests per second (open loop)
    batch: int = 10               # rows per request (250 rows/s: the demo's row rate)
    label_delay: float = 2.0      # seconds from a prediction to its label
    tick_seconds: float = 0.5
    warmup: float = 5.0           # seconds of traffic before the first case
    timeout: float = 240.0        # per wait (first version, each canary, each rollback)
    seed: int = 0


QUICK = {"kinds": ("errors",)}


# --------------------------------------------------------------------------------------
# pure parts: the fault, the bound, the breakdown, the summary
# --------------------------------------------------------------------------------------
def fault_spec(kind: str, champion_p95_ms: float | None = None) -> dict[str, float]:
    """The ``faults.json`` entry of one failure kind (:class:`~lifelong_ray.serving.faults.VersionFaults`).

    >>> fault_spec("errors"), fault_spec("nan")
    ({'abort_fraction': 1.0}, {'nan_fraction': 1.0})
    >>> fault_spec("latency", champion_p95_ms=12.5)
    {'delay_ms': 125.0}
    """
    if kind == "errors":
        return {"abort_fraction": 1.0}
    if kind == "nan":
        return {"nan_fraction": 1.0}
    if kind == "latency":
        if champion_p95_ms is None or not champion_p95_ms > 0:
            raise ValueError(f"the latency fault needs the champion's p95 latency > 0 ms (got {champion_p95_ms})")
        return {"delay_ms": min(LATENCY_FACTOR * champion_p95_ms, MAX_DELAY_MS)}
    raise ValueError(f"unknown failure kind {kind!r}; expected one of: {', '.join(KINDS)}")


@dataclass(frozen=True)
class Bound:
    """``pickup + evidence + delay + seal + tick`` (seconds) and what they are made of."""

    rows_needed: int        # n: canary rows in the step before rates and latency are judged
    weight: float           # the canary's share of requests in its first step (0..1)
    canary_requests: int    # k = ceil(n / batch)
    requests_q: float       # offered requests until the canary had k, at EVIDENCE_QUANTILE
    rate: float             # offered requests per second
    pickup_s: float
    evidence_s: float
    delay_s: float
    tick_s: float
    seal_s: float = 0.0     # data.log_seal_seconds: answered rows reach the log when the ingress seals

    @property
    def seconds(self) -> float:
        return self.pickup_s + self.evidence_s + self.delay_s + self.seal_s + self.tick_s

    @property
    def mean_evidence_s(self) -> float:
        return self.canary_requests / self.weight / self.rate

    def formula(self) -> str:
        """The bound with its numbers.

        >>> b = Bound(20, 0.1, 5, 89.0, 50.0, 0.25, 1.78, 0.0, 0.5)
        >>> print(b.formula())
        poll 0.25 s + evidence 1.78 s (p95 of the offered requests until the canary at 10% served 5 requests = 20 rows: 89 requests at 50/s; mean 1.00 s) + tick 0.50 s = 2.53 s
        """
        delay = f" + delay {self.delay_s:.2f} s" if self.delay_s else ""
        delay += f" + seal {self.seal_s:.2f} s" if self.seal_s else ""
        return (f"poll {self.pickup_s:.2f} s + evidence {self.evidence_s:.2f} s (p{EVIDENCE_QUANTILE * 100:.0f} of the"
                f" offered requests until the canary at {self.weight:.0%} served {self.canary_requests} requests"
                f" = {self.rows_needed} rows: {self.requests_q:.0f} requests at {self.rate:g}/s;"
                f" mean {self.mean_evidence_s:.2f} s){delay} + tick {self.tick_s:.2f} s = {self.seconds:.2f} s")


def bound(cfg: Config, rate: float, batch: int, delay_s: float = 0.0, per_request: bool = False) -> Bound:
    """The time a failing canary may take to reach 0%, from ``cfg`` and the offered load.

    ``per_request``: the verdict needs ``n`` *requests*, not rows (the latency verdict:
    one latency sample per request, since the rows of a request share its latency).

    >>> from lifelong_ray.config import load_config
    >>> cfg = load_config("configs/demo.yaml").with_overrides(controller={"tick_seconds": 0.5})
    >>> b = bound(cfg, rate=50.0, batch=4)
    >>> b.rows_needed, b.canary_requests, b.requests_q, round(b.seconds, 2), b.seal_s
    (20, 5, 89.0, 2.78, 0.25)
    >>> round(bound(cfg, rate=50.0, batch=4, delay_s=0.2).seconds, 2)
    2.98
    >>> lat = bound(cfg, rate=50.0, batch=4, delay_s=0.2, per_request=True)
    >>> lat.rows_needed, lat.canary_requests
    (80, 20)
    """
    if rate <= 0 or batch < 1:
        raise ValueError(f"rate must be > 0 and batch >= 1 (got {rate}, {batch})")
    n = min(MIN_SERVED_FOR_RATES, cfg.rollout.min_labeled_per_step)
    w = cfg.rollout.canary_steps[0] / 100.0
    k = n if per_request else math.ceil(n / batch)
    requests_q = k + float(nbinom.ppf(EVIDENCE_QUANTILE, k, w))
    return Bound(rows_needed=k * batch if per_request else n, weight=w, canary_requests=k, requests_q=requests_q, rate=rate,
                 pickup_s=cfg.serving.routing_poll_seconds, evidence_s=requests_q / rate, delay_s=delay_s,
                 tick_s=cfg.controller.tick_seconds,
                 seal_s=cfg.data.log_seal_seconds if cfg.data.log_segments else 0.0)


def faulty_rows(rows: pd.DataFrame, kind: str, delay_ms: float = 0.0) -> pd.Series:
    """Which prediction-log rows show the injected fault: an error row (errors, NaN), or
    a latency of at least the injected delay.

    >>> rows = pd.DataFrame({"error": [None, "boom"], "latency_ms": [5.0, 300.0]})
    >>> faulty_rows(rows, "errors").tolist(), faulty_rows(rows, "latency", delay_ms=250).tolist()
    ([False, True], [False, True])
    """
    if kind == "latency":
        return rows["latency_ms"] >= delay_ms
    return rows["error"].notna()


def champion_p95_ms(rows: pd.DataFrame, champion: str, since: float) -> float:
    """p95 of the ingress-measured latency of the champion's answered rows since ``since``.

    >>> rows = pd.DataFrame({"t": [1.0, 2.0, 3.0, 4.0], "version": ["v1", "v1", "v2", "v1"],
    ...                      "error": [None, None, None, "x"], "latency_ms": [10.0, 20.0, 99.0, 99.0]})
    >>> champion_p95_ms(rows, "v1", since=0.0)
    19.5
    """
    sel = rows[(rows["version"] == champion) & rows["error"].isna() & (rows["t"] >= since)]
    if sel.empty:
        raise RuntimeError(f"no answered rows of the champion {champion} since t={since:.1f} to measure its latency")
    return float(np.percentile(sel["latency_ms"].to_numpy(dtype=float), 95))


def breakdown(rows: pd.DataFrame, *, candidate: str, kind: str, delay_ms: float, t0: float, t1: float,
              step_started: float, decided: float, rows_needed: int) -> dict[str, float]:
    """Where ``T1 - T0`` went, from the prediction log (``t``, ``version``, ``error``,
    ``latency_ms``): ``pickup`` (to the first faulty canary row), ``evidence`` (to the
    ``rows_needed``-th canary row of the step, if later), ``wait`` (to the start of the
    deciding tick), ``tick_work`` (to ``T1``); the four add up to ``T1 - T0``. Also
    ``last_canary_row`` (seconds from ``T0`` to the canary's last logged row) and the
    canary's rows in the step before and after ``T0``. NaN where the log has no such row.

    >>> rows = pd.DataFrame({"t": [10.0, 10.1, 10.3, 10.6, 11.4], "version": ["v2"] * 5,
    ...                      "error": [None, "x", "x", "x", "x"], "latency_ms": [1.0] * 5})
    >>> b = breakdown(rows, candidate="v2", kind="errors", delay_ms=0, t0=10.05, t1=11.2, step_started=9.9,
    ...               decided=10.9, rows_needed=4)
    >>> {k: round(v, 2) for k, v in b.items()}
    {'pickup': 0.05, 'evidence': 0.5, 'wait': 0.3, 'tick_work': 0.3, 'last_canary_row': 1.35, 'rows_before_t0': 1.0, 'rows_after_t0': 4.0}
    """
    cand = rows[(rows["version"] == candidate) & (rows["t"] >= step_started)].sort_values("t", kind="stable")
    after = cand[cand["t"] >= t0]
    bad = after[faulty_rows(after, kind, delay_ms)]
    first_bad = float(bad["t"].iloc[0]) if len(bad) else math.nan
    nth = float(cand["t"].iloc[rows_needed - 1]) if len(cand) >= rows_needed else math.nan
    evidence_at = max(first_bad, nth)
    return {"pickup": first_bad - t0, "evidence": evidence_at - first_bad, "wait": decided - evidence_at,
            "tick_work": t1 - decided, "last_canary_row": float(cand["t"].iloc[-1]) - t0 if len(cand) else math.nan,
            "rows_before_t0": float(len(cand) - len(after)), "rows_after_t0": float(len(after))}


def tick_period(starts: list[float]) -> float:
    """Median seconds between consecutive tick starts (NaN with fewer than two).

    >>> tick_period([10.0, 10.5, 11.3, 11.8]), tick_period([3.0])
    (0.5, nan)
    """
    return float(np.median(np.diff(starts))) if len(starts) >= 2 else math.nan


def reason_names_failure(kind: str, reason: str) -> bool:
    """Does a ``rolled_back`` reason name the failure that was injected?

    >>> reason_names_failure("nan", "canary answered none of its 20 requests (20 errors at 10%); v0001 back to 100%")
    True
    >>> reason_names_failure("latency", "canary error rate 100.0% > 5.0%")
    False
    """
    if kind == "latency":
        return "p95 latency" in reason
    return "error rate" in reason or "answered none" in reason


@dataclass
class CaseResult:
    """One failure kind, measured."""

    kind: str
    candidate: str
    champion: str
    fault: dict[str, float]
    seconds_to_zero: float
    bound: Bound
    breakdown: dict[str, float]
    reason: str                       # of the rolled_back event ("" when there was none)
    min_champion_weight: float        # over every routing table read during the case
    champion_p95_ms: float | None = None
    requests_failed: int = 0          # client requests not answered 200 during the case
    requests_sent: int = 0
    seconds: float = 0.0              # from the retrain command to the champion alone again
    rate_t0_t1: float = math.nan      # requests per second sent between T0 and T1
    client_lag_p95: float = math.nan  # p95 of how late those requests started (s)
    tick_period: float = math.nan     # median seconds between tick starts from T0 to TICK_SAMPLE_S after

    @property
    def met(self) -> bool:
        return self.seconds_to_zero <= self.bound.seconds

    def problems(self) -> list[str]:
        """What says this case did not run as it claims (empty: fine).

        >>> b = Bound(20, 0.1, 5, 89.0, 50.0, 0.25, 1.78, 0.0, 0.5)
        >>> c = CaseResult("nan", "v0002", "v0001", {"nan_fraction": 1.0}, 1.2, b, {},
        ...                reason="", min_champion_weight=50.0, requests_failed=2)
        >>> for p in c.problems(): print(p)
        nan: no rolled_back event for v0002
        nan: the champion fell to 50% (< 90%)
        nan: 2 client requests were not answered 200
        nan: no faulty canary row in the prediction log
        """
        out = []
        if not self.reason:
            out.append(f"{self.kind}: no rolled_back event for {self.candidate}")
        elif not reason_names_failure(self.kind, self.reason):
            out.append(f"{self.kind}: the rollback reason does not name the failure: {self.reason}")
        if self.min_champion_weight < MIN_CHAMPION_WEIGHT:
            out.append(f"{self.kind}: the champion fell to {self.min_champion_weight:g}% (< {MIN_CHAMPION_WEIGHT:g}%)")
        if self.requests_failed:
            out.append(f"{self.kind}: {self.requests_failed} client requests were not answered 200")
        if not math.isfinite(self.breakdown.get("pickup", math.nan)):
            out.append(f"{self.kind}: no faulty canary row in the prediction log")
        return out


def json_summary(cases: list[CaseResult]) -> dict[str, dict[str, dict[str, float]]]:
    """Exactly the ``--json`` shape.

    >>> b = Bound(20, 0.1, 5, 89.0, 50.0, 0.25, 1.78, 0.0, 0.5)
    >>> json_summary([CaseResult("errors", "v2", "v1", {}, 1.25, b, {}, "x", 90.0)])
    {'cases': {'errors': {'seconds_to_zero': 1.25, 'bound_seconds': 2.53}}}
    """
    return {"cases": {c.kind: {"seconds_to_zero": float(c.seconds_to_zero),
                               "bound_seconds": round(float(c.bound.seconds), 6)} for c in cases}}


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    """The command line.

    >>> s, a = parse_args(["--quick", "--json", "--rate", "20"])
    >>> s.kinds, s.rate, s.batch, a.json
    (('errors',), 20.0, 10, True)
    """
    d = Settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml", help="model config (schema, estimator, rollout)")
    ap.add_argument("--kinds", default=None, help=f"comma-separated failure kinds (default: {','.join(KINDS)})")
    ap.add_argument("--rate", type=float, default=d.rate, help="offered predict requests per second")
    ap.add_argument("--batch", type=int, default=d.batch, help="rows (instances) per predict request")
    ap.add_argument("--label-delay", type=float, default=d.label_delay, help="seconds from a prediction to its label")
    ap.add_argument("--tick-seconds", type=float, default=d.tick_seconds, help="controller.tick_seconds")
    ap.add_argument("--warmup", type=float, default=d.warmup, help="seconds of traffic before the first case")
    ap.add_argument("--timeout", type=float, default=d.timeout, help="seconds per wait before giving up")
    ap.add_argument("--port", type=int, default=None, help="Serve HTTP port (default: a free one)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--quick", action="store_true", help="the errors case only")
    ap.add_argument("--json", action="store_true", help="print only the JSON summary on stdout")
    a = ap.parse_args(argv)
    kinds = tuple(k.strip() for k in a.kinds.split(",") if k.strip()) if a.kinds else \
        QUICK["kinds"] if a.quick else d.kinds
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        ap.error(f"--kinds must name distinct kinds among {', '.join(KINDS)} (got {a.kinds!r})")
    for flag, value, ok, rule in (("--rate", a.rate, a.rate > 0, "> 0"), ("--batch", a.batch, a.batch >= 1, ">= 1"),
                                  ("--label-delay", a.label_delay, a.label_delay >= 0, ">= 0"),
                                  ("--tick-seconds", a.tick_seconds, a.tick_seconds > 0, "> 0"),
                                  ("--warmup", a.warmup, a.warmup >= 0, ">= 0"),
                                  ("--timeout", a.timeout, a.timeout > 0, "> 0")):
        if not ok:
            ap.error(f"{flag} must be {rule} (got {value:g})")
    if a.port is not None and not 1 <= a.port <= 65535:
        ap.error(f"--port must lie in [1, 65535] (got {a.port})")
    s = Settings(kinds=kinds, rate=a.rate, batch=a.batch, label_delay=a.label_delay, tick_seconds=a.tick_seconds,
                 warmup=a.warmup, timeout=a.timeout, seed=a.seed)
    return s, a


def bench_config(cfg: Config, s: Settings, root: str, port: int) -> Config:
    """``cfg`` with :data:`OVERRIDES`, the tick, the storage root and the port."""
    sections = {k: dict(v) for k, v in OVERRIDES.items()}
    sections["controller"] = {"tick_seconds": s.tick_seconds}
    sections["storage"] = {"root": root}
    sections["serving"] = {"port": port, "host": "127.0.0.1"}
    return cfg.with_overrides(**sections)


# --------------------------------------------------------------------------------------
# the client: open-loop predict traffic with delayed labels
# --------------------------------------------------------------------------------------
class Traffic:
    """Sends ``rate`` predict requests a second from a thread pool (open loop: a slow
    answer does not delay the next request) and each label ``label_delay`` s later."""

    def __init__(self, base_url: str, model: str, stream: Stream, s: Settings, offset: int) -> None:
        self.url = f"{base_url}/v1/models/{model}"
        self.stream, self.s, self.offset = stream, s, offset
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="rollback-client")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pending: list[tuple[float, list[str], list[int]]] = []   # (due, request ids, labels)
        self.started: list[tuple[float, float]] = []   # (scheduled, started) wall times of each request
        self.sent = 0
        self.failed = 0
        self.last_failure = ""
        self.versions: Counter = Counter()
        self._threads = [threading.Thread(target=self._send_loop, daemon=True, name="rollback-send"),
                         threading.Thread(target=self._label_loop, daemon=True, name="rollback-labels")]

    def __enter__(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        self.pool.shutdown(wait=True)

    def _session(self) -> requests.Session:
        if getattr(self._local, "http", None) is None:
            self._local.http = requests.Session()
        return self._local.http

    def _send_loop(self) -> None:
        start, i = time.time(), 0
        while not self._stop.is_set():
            if (wait := start + i / self.s.rate - time.time()) > 0:
                self._stop.wait(wait)
                continue
            self.pool.submit(self._predict, i, start + i / self.s.rate)
            i += 1

    def _rows(self, i: int) -> tuple[list[dict[str, Any]], list[int]]:
        span = len(self.stream) - self.offset - self.s.batch
        lo = self.offset + (i * self.s.batch) % span
        return self.stream.rows(lo, lo + self.s.batch), self.stream.labels[lo:lo + self.s.batch].tolist()

    def _predict(self, i: int, scheduled: float) -> None:
        rows, labels = self._rows(i)
        with self._lock:
            self.started.append((scheduled, time.time()))
        try:
            r = self._session().post(f"{self.url}:predict", json={"instances": rows}, timeout=60)
            ok = r.status_code == 200
            body = r.json() if ok else {}
            failure = "" if ok else f"{r.status_code}: {r.text[:300]}"
        except requests.RequestException as err:
            ok, body, failure = False, {}, str(err)
        with self._lock:
            self.sent += 1
            if not ok:
                self.failed += 1
                self.last_failure = failure
                return
            self.versions[body["model_version"]] += 1
            self._pending.append((time.monotonic() + self.s.label_delay, body["request_ids"], labels))

    def _label_loop(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            with self._lock:
                due = [p for p in self._pending if p[0] <= now]
                self._pending = [p for p in self._pending if p[0] > now]
            labels = [{"request_id": rid, "label": int(y)} for _, ids, ys in due for rid, y in zip(ids, ys)]
            if not labels:
                continue
            try:
                r = self._session().post(f"{self.url}:feedback", json={"labels": labels}, timeout=60)
                if r.status_code != 200 or r.json()["rejected"]:
                    raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
            except (requests.RequestException, RuntimeError) as err:
                with self._lock:
                    self.failed += 1
                    self.last_failure = f"feedback: {err}"

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.sent, self.failed

    def offered(self, t_from: float, t_to: float) -> tuple[float, float]:
        """(requests per second that reached the wire, p95 seconds they started late) for
        the requests scheduled in ``[t_from, t_to)``: a late start means the client, not the
        schedule, set the pace (the machine could not keep up)."""
        with self._lock:
            lags = [b - a for a, b in self.started if t_from <= a < t_to]
        if not lags or t_to <= t_from:
            return math.nan, math.nan
        return len(lags) / (t_to - t_from), float(np.percentile(lags, 95))


# --------------------------------------------------------------------------------------
# Ray / Serve at the edge
# --------------------------------------------------------------------------------------
def _until(what: str, timeout: float, check: Callable[[], Any], every: float = 0.25,
           fail: Callable[[], str] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; ``fail`` may name a reason to stop early."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := check()):
            return value
        if fail is not None and (why := fail()):
            raise RuntimeError(f"while waiting for {what}: {why}")
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Stack:
    """Ray (its own, or the one initialised in this process), Serve, the ingress, the
    controller and the first version; removes what it made."""

    def __init__(self, cfg: Config, s: Settings, port: int | None, say: Callable[[str], None]) -> None:
        self.cfg, self.s, self.port, self.say = cfg, s, port, say
        self.storage: Storage | None = None
        self.started_ray = False
        self.deployed = False

    def __enter__(self) -> "Stack":
        import ray
        from ray import serve

        from lifelong_ray.control.actor import start_controller
        from lifelong_ray.serving.deploy import INGRESS_APP, deploy_ingress

        if not ray.is_initialized():
            ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="rollback-time",
                     log_to_driver=False, configure_logging=False)
            self.started_ray = True
        try:
            if self.port is None:
                from serve_overhead import _free_port
                self.port = _free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": self.port})
            if INGRESS_APP in serve.status().applications:
                raise RuntimeError(f"a Serve app {INGRESS_APP!r} already runs on this Ray; this benchmark would "
                                   "replace it: use a Ray of its own")
            self.root = tempfile.mkdtemp(prefix="rollback-time-")
            self.cfg = bench_config(self.cfg, self.s, self.root, self.port)
            self.storage = Storage(self.root)
            self.deployed = True
            deploy_ingress([self.cfg])
            self.stream = stationary(STREAM_ROWS, seed=self.s.seed)
            ingest_table(self.storage, self.cfg, self.stream.slice(0, BOOTSTRAP_ROWS).to_table(
                label=self.cfg.model.label.name), time.time())
            start_controller(self.cfg)
            self.say("training and promoting v0001")
            _until("the first version", self.s.timeout, lambda: self.routing().weights)
            _until("the ingress to route", 60, self._ingress_routes)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routing(self) -> RoutingTable:
        assert self.storage is not None
        return read_routing(self.storage, MODEL)

    def _ingress_routes(self) -> bool:
        r = requests.get(f"{self.base}/v1/models/{MODEL}", timeout=10)
        return r.status_code == 200 and bool(r.json().get("weights"))

    def __exit__(self, *exc: Any) -> None:
        import ray
        from ray import serve

        from lifelong_ray.control.actor import stop_controller
        from lifelong_ray.serving.deploy import INGRESS_APP, deployed_versions, version_app_name

        try:
            stop_controller(MODEL)
            if self.deployed and not self.started_ray:
                apps = [INGRESS_APP] + [version_app_name(MODEL, v) for v in deployed_versions(self.cfg)]
                for name in apps:
                    if name in serve.status().applications:
                        serve.delete(name, _blocking=False)
                deadline = time.monotonic() + 60
                while set(apps) & set(serve.status().applications) and time.monotonic() < deadline:
                    time.sleep(0.2)
        finally:
            if self.started_ray:
                try:
                    serve.shutdown()
                finally:
                    ray.shutdown()
            if self.storage is not None:
                shutil.rmtree(self.root, ignore_errors=True)


class PredictionLog:
    """The ingress's prediction log as read by the benchmark (read incrementally)."""

    COLUMNS = ["t", "version", "error", "latency_ms", "shadow"]

    def __init__(self, storage: Storage) -> None:
        self.tail = LogTail(storage, ModelLogs(storage, MODEL).predictions_prefix)
        self.rows = pd.DataFrame({c: pd.Series(dtype=object) for c in self.COLUMNS})

    def refresh(self) -> pd.DataFrame:
        new = self.tail.read_new(columns=self.COLUMNS)
        if new is not None:
            fresh = new.to_pandas()
            fresh = fresh[~fresh["shadow"].fillna(False).astype(bool)]
            self.rows = pd.concat([self.rows, fresh], ignore_index=True) if len(self.rows) else fresh
        return self.rows


def _events(storage: Storage, kinds: set[EventKind], since: float) -> list[Event]:
    return AuditLog(storage, MODEL).read(kinds=kinds, since=since)


def _note_tick(storage: Storage, starts: set[float]) -> Any:
    """Read the controller's state; remember when its last tick started. Returns the state."""
    st = load_state(storage, MODEL)
    if st is not None and st.last_tick_t is not None:
        starts.add(st.last_tick_t)
    return st


def run_case(stack: Stack, traffic: Traffic, log: PredictionLog, kind: str, say: Callable[[str], None]) -> CaseResult:
    """Canary a fresh candidate, break it at T0, time its way to 0%."""
    storage, s, cfg = stack.storage, stack.s, stack.cfg
    assert storage is not None
    champion = stack.routing().champion
    assert champion is not None
    first_step = float(cfg.rollout.canary_steps[0])
    t_cmd = time.time()
    sent0, failed0 = traffic.counts()
    submit_command(storage, MODEL, "retrain", who="benchmarks/rollback_time.py", why=f"rollback case {kind}",
                   now=t_cmd)
    stop_kinds = {EventKind.COMMAND_REJECTED, EventKind.GATE_FAILED, EventKind.RETRAIN_FAILED,
                  EventKind.ROLLED_BACK, EventKind.ROLLOUT_ABORTED}

    def canary() -> str | None:
        w = stack.routing().weights
        return next((v for v, x in w.items() if v != champion and x == first_step), None)

    def went_wrong() -> str:
        evs = _events(storage, stop_kinds, t_cmd)
        return f"{evs[0].kind.value}: {evs[0].reason}" if evs else ""

    say(f"{kind}: retraining a candidate and waiting for its canary at {first_step:g}%")
    candidate = _until(f"the {kind} candidate's canary", s.timeout, canary, every=POLL_S, fail=went_wrong)
    p95 = None
    if kind == "latency":
        p95 = champion_p95_ms(log.refresh(), champion, since=time.time() - P95_WINDOW_S)
    fault = fault_spec(kind, p95)
    t0 = time.time()
    write_faults(storage, MODEL, {candidate: fault})
    min_champion = 100.0
    tick_starts: set[float] = set()
    while True:
        table = stack.routing()
        min_champion = min(min_champion, table.weights.get(champion, 0.0))
        _note_tick(storage, tick_starts)
        if table.weights.get(candidate, 0.0) == 0.0:
            t1 = time.time()
            break
        if time.time() - t0 > s.timeout:
            state = load_state(storage, MODEL)
            last = state.gate.get("last_analysis") if state else None
            raise TimeoutError(f"{kind}: {candidate} still at {table.weights} {s.timeout:.0f}s after the fault; "
                               f"last analysis: {last}")
        time.sleep(POLL_S)
    clear_faults(storage, MODEL)
    say(f"{kind}: {candidate} at 0% after {t1 - t0:.2f} s; waiting for the controller to settle")

    def settled() -> bool:
        st = _note_tick(storage, tick_starts)
        return (st is not None and st.rollout == RolloutStage.STABLE and st.retrain == RetrainStage.IDLE
                and stack.routing().weights == {champion: 100.0})

    _until("the controller to settle", s.timeout, settled, every=POLL_S)
    deadline = time.time() + cfg.serving.routing_poll_seconds + fault.get("delay_ms", 0.0) / 1000 + TICK_SAMPLE_S
    while time.time() < deadline:  # in-flight rows land; the tick period is sampled meanwhile
        _note_tick(storage, tick_starts)
        time.sleep(POLL_S)
    rolled = [e for e in _events(storage, {EventKind.ROLLED_BACK}, t_cmd) if e.version == candidate]
    started = [e for e in _events(storage, {EventKind.CANARY_STARTED}, t_cmd) if e.version == candidate]
    b = bound(cfg, s.rate, s.batch, delay_s=fault.get("delay_ms", 0.0) / 1000, per_request=kind == "latency")
    parts = breakdown(log.refresh(), candidate=candidate, kind=kind, delay_ms=fault.get("delay_ms", 0.0), t0=t0, t1=t1,
                      step_started=started[0].t if started else t_cmd, decided=rolled[0].t if rolled else math.nan,
                      rows_needed=b.rows_needed)
    sent1, failed1 = traffic.counts()
    rate, lag = traffic.offered(t0, t1)
    return CaseResult(kind=kind, candidate=candidate, champion=champion, fault=fault, seconds_to_zero=t1 - t0,
                      bound=b, breakdown=parts, reason=rolled[0].reason if rolled else "",
                      min_champion_weight=min_champion, champion_p95_ms=p95, requests_failed=failed1 - failed0,
                      requests_sent=sent1 - sent0, seconds=time.time() - t_cmd, rate_t0_t1=rate, client_lag_p95=lag,
                      tick_period=tick_period(sorted(t for t in tick_starts if t >= t0)))


def run_benchmark(cfg: Config, s: Settings, port: int | None = None,
                  say: Callable[[str], None] = print) -> dict[str, Any]:
    """Start everything, run one case per kind, and return the results."""
    import ray

    load_before = load_average()
    t_start = time.time()
    with Stack(cfg, s, port, say) as stack:
        assert stack.storage is not None
        log = PredictionLog(stack.storage)
        with Traffic(stack.base, MODEL, stack.stream, s, offset=BOOTSTRAP_ROWS) as traffic:
            say(f"warming up: {s.rate:g} requests/s of {s.batch} rows for {s.warmup:g} s")
            time.sleep(s.warmup)
            cases = [run_case(stack, traffic, log, kind, say) for kind in s.kinds]
            sent, failed = traffic.counts()
            versions = dict(traffic.versions)
            last_failure = traffic.last_failure
        rows = len(log.refresh())
        cfg_used = stack.cfg
    return {"cases": cases, "settings": asdict(s), "config": {
                "tick_seconds": cfg_used.controller.tick_seconds,
                "routing_poll_seconds": cfg_used.serving.routing_poll_seconds,
                "min_labeled_per_step": cfg_used.rollout.min_labeled_per_step,
                "canary_steps": cfg_used.rollout.canary_steps,
                "max_error_rate": cfg_used.rollout.max_error_rate,
                "max_latency_ratio": cfg_used.rollout.max_latency_ratio},
            "requests_sent": sent, "requests_failed": failed, "last_failure": last_failure,
            "versions": versions, "prediction_rows": rows, "wall_seconds": time.time() - t_start,
            "load_before": load_before, "load_after": load_average(), "ray_version": ray.__version__,
            "date": f"{_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", "machine": machine()}


def problems(result: dict[str, Any]) -> list[str]:
    return [p for c in result["cases"] for p in c.problems()]


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------
def _s(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}"


def print_tables(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=200)
    s, c = r["settings"], r["config"]
    console.print(f"Rollback time: failing canary at {c['canary_steps'][0]}% -> 0%; {s['rate']:g} requests/s of "
                  f"{s['batch']} rows (open loop), labels after {s['label_delay']:g} s; tick {c['tick_seconds']:g} s, "
                  f"routing poll {c['routing_poll_seconds']:g} s")
    console.print(f"{r['date']} | {r['machine']} | Ray {r['ray_version']} | load average before "
                  f"{' '.join(f'{x:.2f}' for x in r['load_before'])}, after "
                  f"{' '.join(f'{x:.2f}' for x in r['load_after'])} | {r['wall_seconds']:.0f} s in all")
    t = Table(title="Seconds from the fault (T0) to 0% canary weight in the routing table (T1)")
    for col in ("kind", "fault", "seconds_to_zero", "bound", "met", "pickup", "evidence", "wait", "tick work",
                "canary's last row", "canary rows before/after T0", "tick period", "req/s T0-T1",
                "client lag p95"):
        t.add_column(col, justify="left" if col in ("kind", "fault") else "right")
    for case in r["cases"]:
        b = case.breakdown
        fault = ", ".join(f"{k} {v:g}" for k, v in case.fault.items())
        if case.champion_p95_ms is not None:
            fault += f" (champion p95 {case.champion_p95_ms:.1f} ms)"
        t.add_row(case.kind, fault, _s(case.seconds_to_zero), _s(case.bound.seconds),
                  "yes" if case.met else "[red]NO[/red]", _s(b["pickup"]), _s(b["evidence"]), _s(b["wait"]),
                  _s(b["tick_work"]), _s(b["last_canary_row"]),
                  f"{b['rows_before_t0']:.0f}/{b['rows_after_t0']:.0f}", _s(case.tick_period),
                  _s(case.rate_t0_t1), _s(case.client_lag_p95))
    console.print(t)
    for case in r["cases"]:
        console.print(f"[bold]{case.kind}[/bold] bound: {case.bound.formula()}")
        console.print(f"  {case.candidate} rolled back: {case.reason or '(no rolled_back event)'}")
        console.print(f"  champion {case.champion} min weight {case.min_champion_weight:g}%; "
                      f"{case.requests_sent} requests during the case ({case.requests_sent / case.seconds:.1f}/s "
                      f"achieved), {case.requests_failed} not answered 200; case took {case.seconds:.0f} s")
    console.print(f"requests: {r['requests_sent']} sent, {r['requests_failed']} failed"
                  f"{' (last: ' + r['last_failure'] + ')' if r['requests_failed'] else ''}; answered by "
                  + ", ".join(f"{v} {n}" for v, n in sorted(r["versions"].items()))
                  + f"; {r['prediction_rows']:,} prediction log rows")
    for p in problems(r):
        console.print(f"[red]problem:[/red] {p}")


def main(argv: list[str] | None = None) -> int:
    s, a = parse_args(argv)
    progress = functools.partial(print, file=sys.stderr, flush=True)
    result = run_benchmark(load_config(a.config), s, port=a.port, say=progress)
    if a.json:
        print(json.dumps(json_summary(result["cases"])))
    else:
        print_tables(result)
    for p in problems(result):
        progress(f"problem: {p}")
    return 1 if problems(result) else 0


if __name__ == "__main__":
    raise SystemExit(main())
