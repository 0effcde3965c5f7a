"""What does the canary router cost per HTTP predict, against a plain Serve app?

Two ways of serving the same trained model, side by side on ONE Ray Serve instance
(same HTTP proxy, same port, different route prefixes), in the same run, under the
same load:

* ``router`` -- the real lifelong serving path, as in production: the ``lifelong``
  ingress (:func:`lifelong_ray.serving.deploy.deploy_ingress`, route ``/``) with two
  registered versions at a weighted routing table (90/10 by default), so every request
  pays for request validation, the routing decision, the call of the chosen version
  and the durable prediction log written before the answer (the replica's segment,
  sealed into parquet every ``data.log_seal_seconds``; ``data.log_segments``).
  ``--placement`` sets ``serving.version_placement``: ``ingress`` (the default here:
  both versions loaded in the ingress replica and called in-line, the placement for a
  small CPU model like this one) or ``deployment`` (each version its own Serve app,
  :func:`~lifelong_ray.serving.deploy.deploy_version`, one handle hop per request).
* ``plain`` -- one Serve deployment (FastAPI ingress, route ``/plain``) that loads
  the champion version from the same registry (:class:`~lifelong_ray.registry.LoadedModel`)
  and does the same model work in its own replica: parse the same ``PredictRequest``
  envelope, validate the instances against the schema, make request ids, transform +
  predict, answer the same JSON through the same ``PredictResponse`` model. No router,
  no second hop, no log.
* ``plain+log`` (``--breakdown`` only) -- ``plain`` plus the same durable prediction
  log write as the ingress (its ``AnswerLog``, awaited before the answer, into a log
  prefix of its own). It splits the router's extra time into "the log write"
  (``plain+log`` - ``plain``) and "the version hop and the rest"
  (``router`` - ``plain+log``).

The model is ``configs/demo.yaml``'s (an MLP on five numbers and one category),
trained in-process (``fit_numpy``) on two slices of the demo stream and registered
twice (``v0001`` the champion, ``v0002`` the canary), in a temporary storage root.
Serve replicas get the config's fractional ``num_cpus``.

Load, the same for every side: requests of ``--instances`` rows cycling through a
fixed list of bodies drawn from the demo stream (no routing key, so the router splits
them by request id). Per round, first ``--latency-requests`` requests per side one
at a time, the sides taking turns request by request (p50 / p90 / p99 latency: this
machine's speed moves by up to 25% within seconds, which a block of requests per side
would catch on one side only), then per side ``--throughput-requests`` requests from
``--concurrency`` client threads, each with its own keep-alive ``requests.Session``
(requests per second), the sides again taking turns, burst by burst of
``--throughput-turn`` requests (each cycle of turns in the next order), for the same
reason. A burst's rate is counted while every client is busy: the requests completed
from its start until the first client finds no request left, over that time
(:func:`busy_rate`); the drain that follows, where fewer clients are busy, would add a
fixed time per burst to both sides and pull the ratio toward 1. A side's rate in a
round is its bursts' completed requests over their busy time. Every side is warmed up
first. Figures are medians across ``--rounds`` rounds and ratios are router / plain of
those medians.

**Replica CPU per request** (a column of the table, not in ``--json``): around each of
a side's bursts, the user + system CPU seconds of the side's replica processes (all
threads, from ``/proc/<pid>/stat``; the router's are the ingress and the version apps),
summed over a round and divided by its concurrent requests: the work each side's
replicas do per request, where req/s also measures the share of 2 busy cores a side's
replica happened to get. It still moves between runs (Serve's per-request cost changes
with how requests bunch up). Serve's HTTP proxy and the client threads, shared by the sides, are not counted.

Targets (issue 5): p50 ratio <= 1.10 and throughput ratio >= 0.90. ``--json`` prints
exactly ``{"p50_ratio", "p99_ratio", "throughput_ratio", "plain_rps", "router_rps"}``
(floats) on stdout; progress goes to stderr. Without ``--json``: result tables (rich),
with the load average of the machine before and after.

Ray: ``RAY_ADDRESS`` set -> joins that cluster (pass ``--port`` = its Serve HTTP port);
else a Ray that is already initialised in this process is used; else a local Ray is
started and shut down at the end. It refuses to run where a ``lifelong`` Serve app
already exists (it would replace someone's ingress). Its own apps are deleted at the end.

Run from the repository root::

    python benchmarks/serve_overhead.py                 # ~4 min on a busy 2-core machine
    python benchmarks/serve_overhead.py --breakdown     # + the plain+log side
    python benchmarks/serve_overhead.py --quick --json  # ~1 min
"""

import argparse
import asyncio
import contextlib
import datetime as _dt
import functools
import itertools
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# NB: no ``from __future__ import annotations`` here: the plain deployment's FastAPI
# route is pickled by value into its replica, and FastAPI must find real classes (not
# strings to resolve) in its annotations there.

import numpy as np
import requests

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lifelong_ray.config import Config, load_config  # noqa: E402
from lifelong_ray.data.logs import ModelLogs  # noqa: E402
from lifelong_ray.data.schema import Schema  # noqa: E402
from lifelong_ray.data.transform import FeatureTransform, columns_from_table  # noqa: E402
from lifelong_ray.registry.store import Registry  # noqa: E402
from lifelong_ray.sim.streams import Stream, abrupt_concept_drift  # noqa: E402
from lifelong_ray.storage import Storage  # noqa: E402
from lifelong_ray.training.loop import fit_numpy  # noqa: E402
from lifelong_ray.training.runner import class_indices  # noqa: E402

JSON_KEYS = ("p50_ratio", "p99_ratio", "throughput_ratio", "plain_rps", "router_rps")
MAX_P50_RATIO = 1.10
MIN_THROUGHPUT_RATIO = 0.90
ROUTER, PLAIN, PLAIN_LOG = "router", "plain", "plain+log"
#: the name prefix of a Serve replica actor (``SERVE_REPLICA::<app>#<deployment>#<id>``)
REPLICA_PREFIX = "SERVE_REPLICA::"
#: side -> (Serve app name, route prefix); the router is the lifelong ingress on "/"
PLAIN_APPS = {PLAIN: ("serve-overhead-plain", "/plain"), PLAIN_LOG: ("serve-overhead-plain-log", "/plain-log")}
PERCENTILES = (50, 90, 99)
TRAIN_ROWS = 2000


@dataclass(frozen=True)
class Settings:
    """How much load, in what shape. ``canary_percent`` goes to v0002, the rest to v0001."""

    rounds: int = 8
    latency_requests: int = 200
    throughput_requests: int = 400
    throughput_turn: int = 40
    concurrency: int = 8
    instances: int = 10
    warmup: int = 100
    canary_percent: float = 10.0
    breakdown: bool = False
    seed: int = 0
    placement: str = "ingress"

    def sides(self) -> list[str]:
        return [PLAIN, ROUTER] + ([PLAIN_LOG] if self.breakdown else [])


QUICK = {"rounds": 2, "latency_requests": 60, "throughput_requests": 120, "warmup": 30}
#: the sizes --quick and the explicit flags may set (the turn has no --quick value of its own)
SIZES = (*QUICK, "throughput_turn")


@dataclass
class Phase:
    """One side's measurement in one round."""

    latencies_ms: list[float]          # sequential requests
    rps: float                         # at the fixed concurrency
    loaded_latencies_ms: list[float]   # the same concurrent requests, each one's latency
    versions: Counter = field(default_factory=Counter)
    cpu_ms: float | None = None        # the side's replica processes: CPU ms per concurrent request


# --------------------------------------------------------------------------------------
# pure summary
# --------------------------------------------------------------------------------------
def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 of a list of latencies.

    >>> percentiles([float(i) for i in range(1, 101)])
    {'p50': 50.5, 'p90': 90.1, 'p99': 99.01}
    """
    if not latencies_ms:
        raise ValueError("no latencies to summarise")
    values = np.percentile(np.asarray(latencies_ms, dtype=np.float64), PERCENTILES)
    return {f"p{p}": round(float(v), 6) for p, v in zip(PERCENTILES, values)}


def summarize_side(phases: list[Phase]) -> dict[str, Any]:
    """Medians across rounds of each round's percentiles and requests per second."""
    per_round = [percentiles(p.latencies_ms) for p in phases]
    out: dict[str, Any] = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
    out["rps"] = statistics.median(p.rps for p in phases)
    out["loaded_p50"] = statistics.median(percentiles(p.loaded_latencies_ms)["p50"] for p in phases)
    out["rounds_p50"] = [r["p50"] for r in per_round]
    out["rounds_rps"] = [p.rps for p in phases]
    cpu = [p.cpu_ms for p in phases if p.cpu_ms is not None]
    out["cpu_ms"] = statistics.median(cpu) if cpu else None
    versions: Counter = Counter()
    for p in phases:
        versions.update(p.versions)
    out["versions"] = dict(sorted(versions.items()))
    return out


def summarize(phases: dict[str, list[Phase]]) -> dict[str, Any]:
    """Per-side figures, router / plain ratios and the verdict on the issue's targets.

    >>> fast = Phase([1.0, 1.0, 2.0], rps=100.0, loaded_latencies_ms=[5.0])
    >>> slow = Phase([1.5, 1.5, 3.0], rps=80.0, loaded_latencies_ms=[6.0])
    >>> s = summarize({"plain": [fast, fast], "router": [slow, slow]})
    >>> s["p50_ratio"], s["throughput_ratio"], s["targets"]["p50"]["met"], s["targets"]["throughput"]["met"]
    (1.5, 0.8, False, False)
    """
    for side in (PLAIN, ROUTER):
        if not phases.get(side):
            raise ValueError(f"no measurements of the {side!r} side")
    sides = {name: summarize_side(ps) for name, ps in phases.items()}
    plain, router = sides[PLAIN], sides[ROUTER]
    out: dict[str, Any] = {
        "p50_ratio": router["p50"] / plain["p50"],
        "p90_ratio": router["p90"] / plain["p90"],
        "p99_ratio": router["p99"] / plain["p99"],
        "throughput_ratio": router["rps"] / plain["rps"],
        "plain_rps": plain["rps"],
        "router_rps": router["rps"],
        "rounds_p50_ratio": [r / p for r, p in zip(router["rounds_p50"], plain["rounds_p50"])],
        "rounds_throughput_ratio": [r / p for r, p in zip(router["rounds_rps"], plain["rounds_rps"])],
        "sides": sides,
    }
    out["targets"] = {
        "p50": {"rule": f"p50 ratio <= {MAX_P50_RATIO:.2f}", "value": out["p50_ratio"],
                "met": out["p50_ratio"] <= MAX_P50_RATIO},
        "throughput": {"rule": f"throughput ratio >= {MIN_THROUGHPUT_RATIO:.2f}", "value": out["throughput_ratio"],
                       "met": out["throughput_ratio"] >= MIN_THROUGHPUT_RATIO},
    }
    return out


def premise_problems(summary: dict[str, Any], s: Settings, router_log_rows: int) -> list[str]:
    """What says the router side was NOT the production path it claims to be (empty: fine).

    The router's prediction log must hold one row per instance it answered (logging on,
    as in production), and the canary must have answered some requests (two versions
    really served), checked only where at least 10 canary answers are expected.

    >>> p = Phase([1.0], rps=1.0, loaded_latencies_ms=[1.0], versions=Counter(v0001=1000))
    >>> s = Settings(rounds=1, latency_requests=500, throughput_requests=500, warmup=0)
    >>> premise_problems(summarize({"plain": [p], "router": [p]}), s, router_log_rows=9999)
    ['the router logged 9999 prediction rows for 1000 requests of 10 instances', 'only v0001 answered through the router (canary 10%)']
    """
    problems = []
    measured = s.rounds * (s.latency_requests + s.throughput_requests)
    requests_sent = 2 * s.warmup + measured
    if router_log_rows != requests_sent * s.instances:
        problems.append(f"the router logged {router_log_rows} prediction rows for {requests_sent} requests "
                        f"of {s.instances} instances")
    answered = summary["sides"][ROUTER]["versions"]
    if len(answered) < 2 and measured * min(s.canary_percent, 100 - s.canary_percent) / 100 >= 10:
        problems.append(f"only {', '.join(answered) or 'no version'} answered through the router "
                        f"(canary {s.canary_percent:g}%)")
    return problems


def json_summary(summary: dict[str, Any]) -> dict[str, float]:
    """Exactly the ``--json`` keys, as floats.

    >>> p = Phase([2.0], rps=50.0, loaded_latencies_ms=[2.0])
    >>> json_summary(summarize({"plain": [p], "router": [p]}))
    {'p50_ratio': 1.0, 'p99_ratio': 1.0, 'throughput_ratio': 1.0, 'plain_rps': 50.0, 'router_rps': 50.0}
    """
    return {k: float(summary[k]) for k in JSON_KEYS}


def busy_rate(start: float, done: list[float], busy_end: float) -> tuple[int, float]:
    """(requests completed, seconds) of one burst while every client was busy: from
    ``start`` (all clients sent their first request) to ``busy_end`` (the first client
    found no request left), counting the completion times in ``done`` up to ``busy_end``.

    >>> busy_rate(10.0, [10.5, 10.6, 11.0, 11.2, 11.9], busy_end=11.0)
    (3, 1.0)
    """
    return sum(1 for t in done if t <= busy_end), busy_end - start


def turn_orders(sides: list[str]) -> list[tuple[str, ...]]:
    """The orders the sides take turns in, cycle after cycle, so that no side always
    follows the same one.

    >>> turn_orders(["plain", "router"])
    [('plain', 'router'), ('router', 'plain')]
    """
    return list(itertools.permutations(sides))


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    """The command line: load settings plus where to run (``--config``, ``--port``, ``--json``).

    >>> s, a = parse_args(["--quick", "--json", "--port", "8123"])
    >>> s.rounds, s.latency_requests, a.json, a.port
    (2, 60, True, 8123)
    """
    d = Settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml", help="model config (its schema and estimator)")
    ap.add_argument("--port", type=int, default=None,
                    help="Serve HTTP port (default: a free one; must be Serve's port when it already runs)")
    ap.add_argument("--rounds", type=int, default=None, help=f"alternating rounds (default {d.rounds})")
    ap.add_argument("--latency-requests", type=int, default=None,
                    help=f"sequential requests per side and round (default {d.latency_requests})")
    ap.add_argument("--throughput-requests", type=int, default=None,
                    help=f"concurrent requests per side and round (default {d.throughput_requests})")
    ap.add_argument("--throughput-turn", type=int, default=None,
                    help=f"concurrent requests per side before the next side's turn (default {d.throughput_turn}; "
                         "at least twice --concurrency)")
    ap.add_argument("--concurrency", type=int, default=d.concurrency, help="client threads for throughput")
    ap.add_argument("--instances", type=int, default=d.instances, help="rows per predict request")
    ap.add_argument("--warmup", type=int, default=None, help=f"warm-up requests per side (default {d.warmup})")
    ap.add_argument("--canary-percent", type=float, default=d.canary_percent,
                    help="share of v0002 in the routing table (v0001 gets the rest)")
    ap.add_argument("--breakdown", action="store_true", help="also measure plain + the durable log write")
    ap.add_argument("--placement", choices=("ingress", "deployment"), default=d.placement,
                    help="serving.version_placement of the router side: 'ingress' (versions loaded in the "
                         "ingress replica; the recommended placement for a small CPU model such as the demo's) "
                         "or 'deployment' (each version its own Serve app, one handle hop per request)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--quick", action="store_true",
                    help=f"a short run: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    ap.add_argument("--json", action="store_true", help="print only the JSON summary on stdout")
    a = ap.parse_args(argv)
    sizes = dict(QUICK) if a.quick else {}
    sizes.update({k: getattr(a, k) for k in SIZES if getattr(a, k) is not None})
    s = Settings(**sizes, concurrency=a.concurrency, instances=a.instances, canary_percent=a.canary_percent,
                 breakdown=a.breakdown, seed=a.seed, placement=a.placement)
    for name in ("rounds", "latency_requests", "throughput_requests", "concurrency", "instances"):
        if getattr(s, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(s, name)})")
    if s.throughput_turn < 2 * s.concurrency:
        ap.error(f"--throughput-turn must be >= 2 x --concurrency = {2 * s.concurrency} (got {s.throughput_turn}): "
                 "a burst must keep every client busy for more than one request")
    if s.warmup < 0:
        ap.error(f"--warmup must be >= 0 (got {s.warmup})")
    if not 0 < s.canary_percent < 100:
        ap.error(f"--canary-percent must lie strictly between 0 and 100 (got {s.canary_percent:g}): "
                 "the router must serve two versions")
    if a.port is not None and not 1 <= a.port <= 65535:
        ap.error(f"--port must lie in [1, 65535] (got {a.port})")
    return s, a


# --------------------------------------------------------------------------------------
# the model: two registered versions
# --------------------------------------------------------------------------------------
def register_versions(cfg: Config, stream: Stream) -> list[str]:
    """Train the config's estimator on two slices of ``stream`` and register both."""
    schema = Schema(cfg.model)
    classes = [int(c) for c in cfg.model.label.classes]
    reg = Registry(Storage(cfg.storage.root), cfg.model.name)
    versions = []
    for i in range(2):
        table = stream.slice(i * TRAIN_ROWS, (i + 1) * TRAIN_ROWS).to_table(label=cfg.model.label.name)
        cols = columns_from_table(table, schema)
        transform = FeatureTransform.fit(cols, schema)
        y = class_indices(table.column(cfg.model.label.name).to_numpy(), classes)
        state, _ = fit_numpy(transform.apply(cols), y, cfg.estimator, len(classes), seed=i)
        versions.append(reg.register(
            state_dict=state, transform=transform, estimator=cfg.estimator, n_in=transform.n_out,
            classes=classes, reference=table.drop_columns([cfg.model.label.name]),
            metadata={"job_id": f"serve-overhead-{i}", "note": "benchmarks/serve_overhead.py"}))
    return versions


# --------------------------------------------------------------------------------------
# the plain baseline: one Serve deployment doing the same model work
# --------------------------------------------------------------------------------------
def plain_app(cfg_dict: dict[str, Any], version: str, durable_log: bool) -> Any:
    """A one-deployment Serve app answering ``POST /v1/models/{model}:predict`` like the ingress.

    Built inside a function so that cloudpickle ships the class by value to its replica
    (this file is not an importable module there)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from ray import serve

    from lifelong_ray.data.answers import AnswerLog
    from lifelong_ray.serving.app import Ingress, PredictRequest, PredictResponse, apply_switch_interval, new_request_ids

    api = FastAPI(title="serve_overhead plain baseline")

    @serve.deployment(name="PlainModel", max_ongoing_requests=Ingress.max_ongoing_requests)
    @serve.ingress(api)
    class PlainModel:
        def __init__(self, cfg_dict: dict, version: str, durable_log: bool) -> None:
            cfg = Config.model_validate(cfg_dict)
            apply_switch_interval([cfg])  # the same Python runtime setting as the ingress replica
            self.name = cfg.model.name
            self.limit = cfg.serving.max_instances_per_request
            self.schema = Schema(cfg.model)
            self.model = Registry(Storage(cfg.storage.root), self.name).load(version)
            # a prefix of its own, so the router's prediction log holds the router's rows only
            self.log = AnswerLog.from_config(cfg, prefix=f"models/{self.name}-plain-log/predictions") \
                if durable_log else None
            self.inflight = 0  # as the ingress: the log syncs in-line only for a lone request

        @api.post("/v1/models/{model}:predict", response_model=PredictResponse)
        async def predict(self, model: str, body: PredictRequest) -> Any:
            self.inflight += 1
            try:
                return await self._predict(model, body)
            finally:
                self.inflight -= 1

        async def _predict(self, model: str, body: PredictRequest) -> Any:
            t0 = time.perf_counter()
            n = len(body.instances)
            if model != self.name or not 0 < n <= self.limit:
                return JSONResponse(status_code=422, content={"error": f"model {model!r}, {n} instances"})
            cols, violations = self.schema.validate_records(body.instances)
            if violations:
                return JSONResponse(status_code=422, content={"error": "invalid instances",
                                                              "violations": [v.to_json() for v in violations]})
            request_ids = new_request_ids(n)
            labels, conf = self.model.predict(cols)
            labels = np.asarray(labels, dtype=np.int64).tolist()
            conf = np.asarray(conf, dtype=np.float64).tolist()
            if self.log is not None:
                await self.log.append(request_ids=request_ids, version=self.model.version,
                                      features=self.log.features(cols), labels=labels, confidence=conf,
                                      latency_ms=(time.perf_counter() - t0) * 1e3, key=body.key,
                                      alone=self.inflight <= 1)
            return {"predictions": labels, "request_ids": request_ids, "model_version": self.model.version}

    num_cpus = Config.model_validate(cfg_dict).serving.ingress_num_cpus
    return PlainModel.options(ray_actor_options={"num_cpus": num_cpus}).bind(cfg_dict, version, durable_log)


# --------------------------------------------------------------------------------------
# HTTP load
# --------------------------------------------------------------------------------------
class Load:
    """Sends the fixed request bodies to one URL: one at a time, or from a thread pool."""

    def __init__(self, bodies: list[bytes], instances: int, concurrency: int) -> None:
        self.bodies = bodies
        self.instances = instances
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="client")
        self.concurrency = concurrency
        self._local = threading.local()
        self._next = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers["content-type"] = "application/json"
        return s

    def _body(self) -> bytes:
        with self._lock:
            i, self._next = self._next, self._next + 1
        return self.bodies[i % len(self.bodies)]

    def one(self, url: str) -> tuple[float, str]:
        """(latency in ms, model_version) of one predict; anything but a full 200 raises."""
        body = self._body()
        t0 = time.perf_counter()
        r = self._session().post(url, data=body, timeout=60)
        ms = (time.perf_counter() - t0) * 1e3
        if r.status_code != 200:
            raise RuntimeError(f"POST {url} -> {r.status_code}: {r.text[:300]}")
        answer = r.json()
        if len(answer["predictions"]) != self.instances:
            raise RuntimeError(f"POST {url} answered {len(answer['predictions'])} predictions")
        return ms, answer["model_version"]

    def sequential(self, url: str, n: int) -> tuple[list[float], Counter]:
        out = [self.one(url) for _ in range(n)]
        return [ms for ms, _ in out], Counter(v for _, v in out)

    def burst(self, url: str, n: int) -> tuple[int, float, list[float], Counter]:
        """``n`` requests to ``url`` from every client thread at once: (requests completed
        while all clients were busy, that time in seconds (:func:`busy_rate`), every
        request's latency, versions)."""
        lock = threading.Lock()
        left = n
        busy_end: list[float] = []
        out: list[tuple[float, float, str]] = []   # (completed at, ms, version)

        def client() -> None:
            nonlocal left
            while True:
                with lock:
                    if left == 0:
                        if not busy_end:
                            busy_end.append(time.perf_counter())
                        return
                    left -= 1
                ms, version = self.one(url)
                with lock:
                    out.append((time.perf_counter(), ms, version))

        start = time.perf_counter()
        for f in [self.pool.submit(client) for _ in range(self.concurrency)]:
            f.result()
        completed, seconds = busy_rate(start, [t for t, _, _ in out], busy_end[0])
        return completed, seconds, [ms for _, ms, _ in out], Counter(v for _, _, v in out)

    def concurrent_turns(self, urls: dict[str, str], n: int, turn: int, first: int = 0,
                         cpu: Callable[[str], float | None] = lambda side: None,
                         ) -> dict[str, tuple[float, list[float], Counter, float | None]]:
        """``n`` concurrent requests per side, the sides taking turns burst by burst of
        ``turn`` requests (cycle ``i`` in order ``turn_orders[first + i]``). Per side:
        (requests per second while all clients were busy, latencies, versions, replica
        CPU ms per request from ``cpu(side)`` read around each burst, or None)."""
        orders = turn_orders(list(urls))
        acc = {side: {"done": 0, "seconds": 0.0, "ms": [], "versions": Counter(), "cpu": 0.0, "cpu_ok": True}
               for side in urls}
        sent = 0
        for i in itertools.count():
            if sent >= n:
                break
            size = min(turn, n - sent)
            for side in orders[(first + i) % len(orders)]:
                a = acc[side]
                c0 = cpu(side)
                done, seconds, ms, versions = self.burst(urls[side], size)
                c1 = cpu(side)
                a["done"] += done
                a["seconds"] += seconds
                a["ms"].extend(ms)
                a["versions"].update(versions)
                if c0 is None or c1 is None:
                    a["cpu_ok"] = False
                else:
                    a["cpu"] += c1 - c0
            sent += size
        return {side: (a["done"] / a["seconds"], a["ms"], a["versions"], a["cpu"] / n * 1e3 if a["cpu_ok"] else None)
                for side, a in acc.items()}

    def interleaved(self, urls: dict[str, str], n: int) -> dict[str, tuple[list[float], Counter]]:
        """``n`` sequential requests per side, the sides in turn request by request (each
        cycle in the next of :func:`turn_orders`): every side meets the same moments of
        the machine, whose speed moves within seconds."""
        orders = turn_orders(list(urls))
        out: dict[str, tuple[list[float], Counter]] = {side: ([], Counter()) for side in urls}
        for i in range(n * len(urls)):
            side = orders[(i // len(urls)) % len(orders)][i % len(urls)]
            ms, version = self.one(urls[side])
            out[side][0].append(ms)
            out[side][1][version] += 1
        return out


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid``, all its threads (Linux ``/proc``), or None.

    >>> process_cpu_seconds(os.getpid()) is None or process_cpu_seconds(os.getpid()) > 0
    True
    """
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request_bodies(stream: Stream, s: Settings, count: int = 64) -> list[bytes]:
    """``count`` JSON bodies of ``s.instances`` rows each, taken from ``stream``."""
    start = 2 * TRAIN_ROWS  # rows no version was trained on
    return [json.dumps({"instances": stream.rows(start + i * s.instances, start + (i + 1) * s.instances)}).encode()
            for i in range(count)]


def run_rounds(load: Load, urls: dict[str, str], s: Settings, say: Any,
               cpu: Callable[[str], float | None] = lambda side: None) -> dict[str, list[Phase]]:
    for side in s.sides():
        load.sequential(urls[side], s.warmup)
        load.burst(urls[side], s.warmup)
    phases: dict[str, list[Phase]] = {side: [] for side in s.sides()}
    side_urls = {side: urls[side] for side in s.sides()}
    for r in range(s.rounds):
        sequential = load.interleaved(side_urls, s.latency_requests)
        concurrent = load.concurrent_turns(side_urls, s.throughput_requests, s.throughput_turn, first=r, cpu=cpu)
        for side in s.sides():
            latencies, versions = sequential[side]
            rps, loaded, v2, cpu_ms = concurrent[side]
            p = Phase(latencies, rps, loaded, versions + v2, cpu_ms)
            phases[side].append(p)
            say(f"round {r + 1}/{s.rounds} {side:>9}: p50 {percentiles(p.latencies_ms)['p50']:.2f} ms, "
                f"{p.rps:.0f} req/s" + (f", replica CPU {p.cpu_ms:.2f} ms/request" if p.cpu_ms is not None else ""))
    return phases


# --------------------------------------------------------------------------------------
# Ray / Serve at the edge
# --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ok(url: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, timeout=5)
            if r.status_code == 200 and r.json().get("weights", True):
                return r.json()
            last = f"{r.status_code}: {r.text[:200]}"
        except requests.RequestException as err:
            last = str(err)
        time.sleep(0.25)
    raise TimeoutError(f"GET {url} not ready after {timeout_s:.0f}s ({last}); is Serve on this port? (--port)")


class ServeSession:
    """Starts (or joins) Ray and Serve, deploys both sides, and removes what it made."""

    def __init__(self, cfg: Config, versions: list[str], s: Settings, port: int | None) -> None:
        self.cfg, self.versions, self.s = cfg, versions, s
        self.port = port
        self.started_ray = False    # a local Ray of our own: shut Serve and Ray down at the end
        self.connected = False      # joined RAY_ADDRESS: disconnect at the end
        self.apps: list[str] = []

    def __enter__(self) -> "ServeSession":
        import ray
        from ray import serve

        from lifelong_ray.serving import deploy

        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):
                ray.init(address=os.environ["RAY_ADDRESS"], configure_logging=False, log_to_driver=False)
                self.connected = True
            else:
                ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
                         namespace="serve-overhead", log_to_driver=False, configure_logging=False)
                self.started_ray = True
        try:
            if self.port is None:
                self.port = _free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": self.port})
            if deploy.INGRESS_APP in serve.status().applications:
                raise RuntimeError(f"a Serve app {deploy.INGRESS_APP!r} already runs on this Ray; "
                                   "this benchmark would replace it: use a Ray of its own")
            self._deploy()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _deploy(self) -> None:
        from ray import serve

        from lifelong_ray.serving import deploy
        from lifelong_ray.serving.routing import RoutingTable, write_routing

        champion, canary = self.versions
        weights = {champion: 100.0 - self.s.canary_percent, canary: self.s.canary_percent}
        write_routing(Storage(self.cfg.storage.root),
                      RoutingTable(model=self.cfg.model.name, generation=1, weights=weights, champion=champion))
        for v in self.versions:
            self.apps.append(deploy.version_app_name(self.cfg.model.name, v))
            deploy.deploy_version(self.cfg, v)
        self.apps.append(deploy.INGRESS_APP)
        deploy.deploy_ingress([self.cfg])
        cfg_dict = deploy.serving_config_dict(self.cfg)
        for side in self.s.sides():
            if side in PLAIN_APPS:
                name, prefix = PLAIN_APPS[side]
                self.apps.append(name)
                serve.run(plain_app(cfg_dict, champion, side == PLAIN_LOG), name=name, route_prefix=prefix)
        _wait_ok(f"{self.base}/v1/models/{self.cfg.model.name}")  # the ingress routes to both versions

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def replica_pids(self) -> dict[str, list[int]]:
        """The pids of each side's Serve replicas: the router's are the ingress and the
        versions' apps; a plain side's its app's. Serve names each replica actor
        ``SERVE_REPLICA::<app>#<deployment>#<id>``; every such named actor of a side's
        apps is asked for its pid (``__ray_call__``, Ray's developer API that runs a
        function on an actor). {} if that fails, and the CPU column then shows "-"."""
        import ray

        plain_names = {name for name, _ in PLAIN_APPS.values()}
        apps = {ROUTER: {name for name in self.apps if name not in plain_names}}
        apps.update({side: {PLAIN_APPS[side][0]} for side in self.s.sides() if side in PLAIN_APPS})
        out: dict[str, list[int]] = {side: [] for side in apps}
        try:
            asked = []
            for actor in ray.util.list_named_actors(all_namespaces=True):
                name = actor["name"]
                if not name.startswith(REPLICA_PREFIX):
                    continue
                app = name[len(REPLICA_PREFIX):].split("#", 1)[0]
                for side, names in apps.items():
                    if app in names:
                        handle = ray.get_actor(name, namespace=actor["namespace"])
                        # a lambda, so cloudpickle ships it by value (this file is no module there)
                        asked.append((side, handle.__ray_call__.remote(lambda _replica: __import__("os").getpid())))
            for side, ref in asked:
                out[side].append(int(ray.get(ref, timeout=30)))
        except Exception:  # noqa: BLE001 - the accounting is optional
            return {}
        return out

    def urls(self) -> dict[str, str]:
        path = f"/v1/models/{self.cfg.model.name}:predict"
        out = {ROUTER: f"{self.base}{path}"}
        out.update({side: f"{self.base}{PLAIN_APPS[side][1]}{path}" for side in self.s.sides() if side in PLAIN_APPS})
        return out

    def __exit__(self, *exc: Any) -> None:
        import ray
        from ray import serve

        try:
            if self.started_ray:
                serve.shutdown()
            else:
                for name in self.apps:
                    if name in serve.status().applications:
                        serve.delete(name, _blocking=False)
                deadline = time.monotonic() + 60
                while set(self.apps) & set(serve.status().applications) and time.monotonic() < deadline:
                    time.sleep(0.2)
        finally:
            if self.started_ray or self.connected:
                ray.shutdown()


def log_size(storage: Storage, model: str) -> tuple[int, int]:
    """(files, rows) of the model's prediction log."""
    import pyarrow.parquet as pq

    from lifelong_ray.data.segments import seal_orphans

    logs = ModelLogs(storage, model)
    seal_orphans(logs, logs.predictions_prefix, fsync=True)  # rows the stopped ingress had not sealed
    files = logs.live_files(logs.predictions_prefix)
    return len(files), sum(pq.read_metadata(storage.path(f)).num_rows for f in files)


def load_average() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def run_benchmark(cfg: Config, s: Settings, port: int | None = None, say: Any = print) -> dict[str, Any]:
    """Train and register two versions, deploy both sides, run the rounds, summarise."""
    import ray

    store = tempfile.mkdtemp(prefix="serve-overhead-")
    cfg = cfg.with_overrides(storage={"root": store}, serving={"version_placement": s.placement})
    stream = abrupt_concept_drift(2 * TRAIN_ROWS + 64 * s.instances, drift_at=TRAIN_ROWS, seed=s.seed)
    try:
        say("training and registering two versions")
        versions = register_versions(cfg, stream)
        say("starting Serve and deploying the router (ingress + 2 versions) and the plain app")
        with ServeSession(cfg, versions, s, port) as session:
            load = Load(request_bodies(stream, s), s.instances, s.concurrency)
            try:
                load_before = load_average()
                pids = session.replica_pids()

                def cpu(side: str) -> float | None:
                    seconds = [process_cpu_seconds(pid) for pid in pids.get(side, [])]
                    return sum(seconds) if seconds and None not in seconds else None

                t0 = time.perf_counter()
                phases = run_rounds(load, session.urls(), s, say, cpu)
                seconds = time.perf_counter() - t0
                load_after = load_average()
            finally:
                load.close()
        log_files, log_rows = log_size(Storage(store), cfg.model.name)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    out = summarize(phases)
    problems = premise_problems(out, s, log_rows)
    if problems:
        raise RuntimeError("the router side did not run as in production: " + "; ".join(problems))
    out.update(settings=s.__dict__, versions=versions, weights={versions[0]: 100 - s.canary_percent,
                                                                 versions[1]: s.canary_percent},
               load_before=load_before, load_after=load_after, measure_seconds=seconds,
               prediction_log_files=log_files, prediction_log_rows=log_rows, ray_version=ray.__version__,
               date=f"{_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", machine=machine())
    return out


def machine() -> str:
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}"


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------
def print_tables(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=132)
    s = r["settings"]
    console.print(f"Serve overhead: router (ingress + {len(r['versions'])} versions, placement {s['placement']}, at "
                  f"{', '.join(f'{v} {w:g}%' for v, w in r['weights'].items())}) vs a plain one-deployment app; "
                  f"{s['instances']} instances per request, {s['rounds']} rounds of {s['latency_requests']} sequential + "
                  f"{s['throughput_requests']} requests at concurrency {s['concurrency']} (turns of "
                  f"{s['throughput_turn']}); medians across rounds")
    console.print(f"{r['date']} | {r['machine']} | Ray {r['ray_version']} | load average before "
                  f"{' '.join(f'{x:.2f}' for x in r['load_before'])}, after "
                  f"{' '.join(f'{x:.2f}' for x in r['load_after'])} | measured for {r['measure_seconds']:.0f} s")
    t = Table(title="HTTP predict latency (sequential) and throughput (concurrent)")
    for col in ("side", "p50 ms", "p90 ms", "p99 ms", "req/s", f"p50 ms at {s['concurrency']} clients",
                "replica CPU ms/req", "answered by"):
        t.add_column(col, justify="left" if col in ("side", "answered by") else "right")

    def cpu_cell(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    for name, side in r["sides"].items():
        t.add_row(name, f"{side['p50']:.2f}", f"{side['p90']:.2f}", f"{side['p99']:.2f}", f"{side['rps']:.0f}",
                  f"{side['loaded_p50']:.2f}", cpu_cell(side.get("cpu_ms")),
                  ", ".join(f"{v} {n}" for v, n in side["versions"].items()))
    cpu_r, cpu_p = r["sides"][ROUTER].get("cpu_ms"), r["sides"][PLAIN].get("cpu_ms")
    t.add_row("router / plain", f"{r['p50_ratio']:.3f}", f"{r['p90_ratio']:.3f}", f"{r['p99_ratio']:.3f}",
              f"{r['throughput_ratio']:.3f}",
              f"{r['sides'][ROUTER]['loaded_p50'] / r['sides'][PLAIN]['loaded_p50']:.3f}",
              f"{cpu_r / cpu_p:.3f}" if cpu_r and cpu_p else "-", "")
    console.print(t)
    console.print("per round, router / plain: p50 " + ", ".join(f"{x:.3f}" for x in r["rounds_p50_ratio"])
                  + "; throughput " + ", ".join(f"{x:.3f}" for x in r["rounds_throughput_ratio"]))
    if PLAIN_LOG in r["sides"]:
        sides = r["sides"]
        b = Table(title="Where the router's extra p50 goes (differences of medians)")
        b.add_column("part")
        b.add_column("ms", justify="right")
        b.add_column("share", justify="right")
        extra = sides[ROUTER]["p50"] - sides[PLAIN]["p50"]
        for part, ms in (("durable prediction log write (plain+log - plain)", sides[PLAIN_LOG]["p50"] - sides[PLAIN]["p50"]),
                         ("version hop, routing, metrics (router - plain+log)", sides[ROUTER]["p50"] - sides[PLAIN_LOG]["p50"])):
            b.add_row(part, f"{ms:.2f}", f"{ms / extra:.0%}" if extra > 0 else "-")
        b.add_row("total extra (router - plain)", f"{extra:.2f}", "")
        console.print(b)
    n_requests = 2 * s["warmup"] + s["rounds"] * (s["latency_requests"] + s["throughput_requests"])
    console.print(f"router prediction log: {r['prediction_log_rows']:,} rows in {r['prediction_log_files']:,} files "
                  f"for {n_requests:,} requests (sealed segments, or group commit without data.log_segments)")
    g = Table(title="Targets (issue 5)")
    for col in ("target", "measured", "met"):
        g.add_column(col)
    for tgt in r["targets"].values():
        g.add_row(tgt["rule"], f"{tgt['value']:.3f}", "yes" if tgt["met"] else "[red]NO[/red]")
    console.print(g)


def main(argv: list[str] | None = None) -> int:
    s, a = parse_args(argv)
    progress = functools.partial(print, file=sys.stderr, flush=True)
    # Ray prints some of its own messages (a raylet's, at shutdown) to stdout: with --json,
    # stdout carries the JSON and nothing else
    with contextlib.redirect_stdout(sys.stderr) if a.json else contextlib.nullcontext():
        result = run_benchmark(load_config(a.config), s, port=a.port, say=progress)
    if a.json:
        print(json.dumps(json_summary(result)))
    else:
        print_tables(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
