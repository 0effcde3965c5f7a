"""``lifelong demo``: the whole loop on one machine, for real, over HTTP.

1. starts a local Ray, Ray Serve (127.0.0.1) and the lifelong ingress;
2. ingests a first labeled batch (the pre-drift concept) and starts the
   controller actor, which trains v0001 with Ray Train and promotes it;
3. drives a drifting stream through ``POST :predict`` at a steady rate and
   returns each label ``label_delay`` samples later through ``POST :feedback``;
4. the controller detects the drift, retrains with Ray Train, gates and
   canaries the candidate through the router and promotes it (or rolls back);
5. writes ``report.json`` + ``report.png`` and prints a summary table.

Exit code 0 only if the loop recovered: a version trained after the drift took
100% of traffic and its served accuracy came back.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import requests
from rich.console import Console
from rich.live import Live

from lifelong_ray.config import Config, load_config
from lifelong_ray.control.controller import resolve_storage
from lifelong_ray.data.ingest import ingest_table
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import columns_from_table
from lifelong_ray.events import AuditLog, EventKind
from lifelong_ray.registry.store import Registry
from lifelong_ray.serving.routing import read_routing
from lifelong_ray.sim.report import (REQUIRED_SUMMARY_KEYS, build_report, print_summary, summarize_events,
                                     write_report)
from lifelong_ray.sim.streams import Stream, abrupt_concept_drift
from lifelong_ray.storage import Storage

log = logging.getLogger(__name__)
console = Console()


@dataclass
class DemoSettings:
    config: str = "configs/demo.yaml"
    report_dir: str = "runs/demo"
    seed: int = 0
    samples: int = 24000          # served through HTTP
    drift_at: int = 6000          # traffic sample where the concept changes
    bootstrap_rows: int = 2000    # labeled rows of the first concept, ingested before traffic
    batch: int = 20               # instances per predict request
    rate: float = 250.0           # samples per second
    label_delay: int = 200        # labels come back this many samples after the prediction
    series_window: int = 250
    port: int | None = None
    timeout_s: float = 240.0      # per phase


@dataclass
class Served:
    """What the client saw, one entry per sample."""

    version: list[str] = field(default_factory=list)
    prediction: list[int] = field(default_factory=list)
    t: list[float] = field(default_factory=list)


class TrafficDriver:
    """Sends predictions and delayed labels over HTTP; remembers what was served."""

    def __init__(self, base_url: str, model: str, stream: Stream, offset: int, s: DemoSettings) -> None:
        self.url = f"{base_url}/v1/models/{model}"
        self.stream = stream
        self.offset = offset
        self.s = s
        self.http = requests.Session()
        self.served = Served()
        self.pending: list[tuple[int, list[str], list[int]]] = []  # (due sample, ids, labels)
        self.feedback_sent = 0
        self.t0 = time.time()

    def wait_until_serving(self, timeout: float) -> dict[str, float]:
        """Block until the ingress itself routes to a version (it polls the routing table)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.http.get(self.url, timeout=10)
            if r.status_code == 200 and r.json().get("weights"):
                return r.json()["weights"]
            time.sleep(0.2)
        raise TimeoutError(f"{self.url} routes to no version after {timeout:.0f}s")

    def predict(self, i: int) -> None:
        rows = self.stream.rows(self.offset + i, self.offset + i + self.s.batch)
        r = self.http.post(f"{self.url}:predict", json={"instances": rows}, timeout=30)
        _check(r)
        body = r.json()
        n = len(rows)
        self.served.version.extend([body["model_version"]] * n)
        self.served.prediction.extend(int(p) for p in body["predictions"])
        self.served.t.extend([time.time() - self.t0] * n)
        labels = self.stream.labels[self.offset + i: self.offset + i + n].tolist()
        self.pending.append((i + n + self.s.label_delay, body["request_ids"], labels))

    def flush_labels(self, upto: int) -> None:
        due = [p for p in self.pending if p[0] <= upto]
        if not due:
            return
        self.pending = [p for p in self.pending if p[0] > upto]
        labels = [{"request_id": rid, "label": int(y)} for _, ids, ys in due for rid, y in zip(ids, ys)]
        r = self.http.post(f"{self.url}:feedback", json={"labels": labels}, timeout=30)
        _check(r)
        body = r.json()
        if body["rejected"]:
            raise RuntimeError(f"feedback rejected: {body['rejected'][:3]}")
        self.feedback_sent += body["accepted"]


def _check(r: requests.Response) -> None:
    if r.status_code >= 400:
        raise RuntimeError(f"{r.request.method} {r.url} -> {r.status_code}: {r.text[:500]}")


def _start_ray_and_serve(cfg: Config) -> None:
    import ray
    from ray import serve

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
             namespace="lifelong", log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": cfg.serving.host, "port": cfg.serving.port})


def _shutdown(model: str) -> None:
    import ray
    from ray import serve

    from lifelong_ray.control.actor import stop_controller

    try:
        stop_controller(model)
        serve.shutdown()
    finally:
        ray.shutdown()


def _wait_for(predicate, what: str, timeout: float, status) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        status.update(f"waiting: {what}")
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_demo(s: DemoSettings) -> int:
    t_start = time.time()
    cfg = load_config(s.config)
    report_dir = Path(s.report_dir)
    store = report_dir / "store"
    shutil.rmtree(store, ignore_errors=True)
    overrides: dict[str, Any] = {"storage": {"root": str(store)}}
    if s.port:
        overrides["serving"] = {"port": s.port}
    cfg = resolve_storage(cfg.with_overrides(**overrides))
    model = cfg.model.name
    storage = Storage(cfg.storage.root)
    stream = abrupt_concept_drift(s.bootstrap_rows + s.samples, drift_at=s.bootstrap_rows + s.drift_at, seed=s.seed)

    from lifelong_ray.control.actor import start_controller
    from lifelong_ray.serving.deploy import deploy_ingress

    with console.status("starting Ray and Serve") as status:
        _start_ray_and_serve(cfg)
        try:
            deploy_ingress([cfg])
            ingest_table(storage, cfg, stream.slice(0, s.bootstrap_rows).to_table(label=cfg.model.label.name),
                         time.time())
            start_controller(cfg)
            first = _wait_for(lambda: read_routing(storage, model).weights,
                              "the first version to be trained with Ray Train and promoted", s.timeout_s, status)
        except BaseException:
            _shutdown(model)
            raise
    base = f"http://{cfg.serving.host}:{cfg.serving.port}"
    driver = TrafficDriver(base, model, stream, s.bootstrap_rows, s)
    driver.wait_until_serving(30)
    t_ready = time.time()
    console.print(f"[green]serving {list(first)} after {t_ready - t_start:.1f}s[/green]")
    audit = AuditLog(storage, model)
    try:
        _drive(driver, s, storage, audit, model)
        # Let the last labels and the controller settle.
        driver.flush_labels(s.samples + s.label_delay)
        time.sleep(2 * cfg.controller.tick_seconds)
    finally:
        events = [e.to_json() for e in audit.read()]
        registry = Registry(storage, model)
        _shutdown(model)
    report = _report(s, stream, driver, events, registry, cfg, t_start, t_ready)
    json_path, png_path = write_report(report, report_dir)
    ok, verdict = _verdict(report)
    _print_summary(report, verdict, json_path, png_path)
    return 0 if ok else 1


def _drive(driver: TrafficDriver, s: DemoSettings, storage: Storage, audit: AuditLog, model: str) -> None:
    t0 = driver.t0 = time.time()
    last_status = 0.0
    status_txt = ""
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        for i in range(0, s.samples, s.batch):
            target = t0 + i / s.rate
            if (delay := target - time.time()) > 0:
                time.sleep(delay)
            driver.predict(i)
            driver.flush_labels(i + s.batch)
            if time.time() - last_status > 0.5:
                last_status = time.time()
                table = read_routing(storage, model)
                weights = " ".join(f"{v}:{w:g}%" for v, w in sorted(table.weights.items()))
                recent = _recent_accuracy(driver, s)
                evs = audit.read(since=t0 - 1)
                last = evs[-1] if evs else None
                drift = "[red]drifted[/red]" if i >= s.drift_at else "stable"
                status_txt = (f"sample {i:>6}/{s.samples}  concept {drift}  accuracy(last {s.series_window})"
                              f" {recent:.3f}  weights {weights}")
                if last:
                    status_txt += f"\n  last event: {last.kind.value} {last.version or ''} — {last.reason[:110]}"
                live.update(status_txt)


def _recent_accuracy(driver: TrafficDriver, s: DemoSettings) -> float:
    n = len(driver.served.prediction)
    if n == 0:
        return float("nan")
    lo = max(0, n - s.series_window)
    y = driver.stream.labels[driver.offset + lo: driver.offset + n]
    return float(np.mean(np.asarray(driver.served.prediction[lo:n]) == y))


def _report(s: DemoSettings, stream: Stream, driver: TrafficDriver, events: list[dict], registry: Registry,
            cfg: Config, t_start: float, t_ready: float) -> dict:
    n = len(driver.served.prediction)
    off = s.bootstrap_rows
    y = stream.labels[off: off + n]
    pred = np.asarray(driver.served.prediction)
    served_t = np.asarray(driver.served.t)
    t0 = driver.t0
    correct = pred == y
    # What the initial model would have scored on the same traffic.
    first = registry.list_versions()[0]
    initial = registry.load(first)
    traffic = stream.slice(off, off + n).to_table()
    static_pred, _ = initial.predict(columns_from_table(traffic, Schema(cfg.model)))
    static_correct = static_pred == y
    # Events on the traffic clock: seconds since traffic start, and the sample then.
    for e in events:
        e["t"] = e["t"] - t0
        k = int(np.searchsorted(served_t, e["t"]))
        e.setdefault("data", {})["sample"] = k if e["t"] >= 0 else 0
    drift_t = float(served_t[s.drift_at]) if n > s.drift_at else None
    promoted_after = [e for e in events if e["kind"] == EventKind.PROMOTED.value and not e["data"].get("bootstrap")
                      and drift_t is not None and e["t"] >= drift_t]
    recovered_at = promoted_after[0]["data"]["sample"] if promoted_after else None
    after = slice(recovered_at, n) if recovered_at is not None else slice(max(s.drift_at, n - 1000), n)
    detections = [e["data"]["sample"] - s.drift_at for e in events
                  if e["kind"] == EventKind.DRIFT_DETECTED.value and e["data"]["sample"] >= s.drift_at]
    train_seconds = sum(float(e["data"].get("train_seconds", 0.0)) for e in events
                        if e["kind"] == EventKind.RETRAIN_FINISHED.value)
    w = s.series_window
    idx = list(range(w, n + 1, w))
    summary: dict[str, Any] = {
        "samples": n,
        "prequential_accuracy": float(correct.mean()) if n else None,
        **summarize_events(events),
        "detection_delays": detections[:1],
        "accuracy_before_drift": float(correct[: s.drift_at].mean()) if n else None,
        "accuracy_after_drift_static": float(static_correct[s.drift_at:].mean()) if n > s.drift_at else None,
        "accuracy_after_recovery": float(correct[after].mean()) if n > s.drift_at else None,
        "seconds_to_recover": (promoted_after[0]["t"] - drift_t) if promoted_after else None,
        "train_seconds": train_seconds,
        "wall_seconds": time.time() - t_start,
        # extras
        "startup_seconds": t_ready - t_start,
        "recovered_at_sample": recovered_at,
        "samples_to_recover": (recovered_at - s.drift_at) if recovered_at is not None else None,
        "drift_points": [s.drift_at],
        "label_delay": s.label_delay,
        "samples_per_second": n / max(1e-9, float(served_t[-1])) if n else None,
        "runner": cfg.training.runner,
        "versions": registry.list_versions(),
        "feedback_sent": driver.feedback_sent,
    }
    assert all(k in summary for k in REQUIRED_SUMMARY_KEYS)
    newest = np.asarray([v != first for v in driver.served.version])
    series = {
        "sample": idx,
        "accuracy": [float(correct[i - w: i].mean()) for i in idx],
        "static_accuracy": [float(static_correct[i - w: i].mean()) for i in idx],
        "canary_weight": [float(100 * newest[i - w: i].mean()) for i in idx],
        "t": [float(served_t[i - 1]) for i in idx],
        "drift_points": [s.drift_at],
    }
    return build_report(events=events, series=series, summary=summary)


def _verdict(report: dict) -> tuple[bool, str]:
    sm = report["summary"]
    order = ["drift_detected", "retrain_started", "candidate_registered", "canary_started", "promoted"]
    kinds = [e["kind"] for e in report["events"] if not e.get("data", {}).get("bootstrap")]
    pos, found = 0, []
    for k in kinds:
        if pos < len(order) and k == order[pos]:
            found.append(k)
            pos += 1
    problems = []
    if found != order:
        problems.append(f"events in order {order} not all seen (saw {found})")
    before, after, static = sm["accuracy_before_drift"], sm["accuracy_after_recovery"], sm["accuracy_after_drift_static"]
    if None in (before, after, static):
        problems.append("accuracy figures missing")
    else:
        if after < before - 0.05:
            problems.append(f"accuracy after recovery {after:.3f} is more than 5 points below before-drift {before:.3f}")
        if after < static + 0.10:
            problems.append(f"accuracy after recovery {after:.3f} is not 10 points above static {static:.3f}")
    if problems:
        return False, "NOT RECOVERED: " + "; ".join(problems)
    return True, "RECOVERED: drift detected, retrained with Ray Train, canaried and promoted"


def _print_summary(report: dict, verdict: str, json_path: Path, png_path: Path) -> None:
    print_summary(report, "lifelong demo", ("samples_to_recover", "startup_seconds", "samples_per_second"),
                  console=console)
    color = "green" if verdict.startswith("RECOVERED") else "red"
    console.print(f"[{color}]{verdict}[/{color}]")
    console.print(f"report: {json_path}  plot: {png_path}")
