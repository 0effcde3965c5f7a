"""Scrape-time metrics of what the controller persisted: drift, budget, rollout, retrains, quota.

The ingress counts what passes through it (:mod:`lifelong_ray.serving.metrics`);
everything else a dashboard needs lives on storage, written by the controller
and the data path. :class:`StateCollector` is a ``prometheus_client`` custom
collector that reads it when Prometheus scrapes, so nothing is pushed and the
numbers are exactly the controller's:

* ``models/<m>/controller/state.json`` (:class:`~lifelong_ray.policy.model.ControllerState`):
  rollout stage, champion and candidate, windowed quality, per-feature drift
  scores, error budget and burn rates, retrain state, quota usage;
* ``models/<m>/routing.json``: the live versions and the canary weight;
* ``models/<m>/quarantine/``: rows waiting for review, by reason code;
* ``models/<m>/events/``: the audit log, read incrementally (each file once), for
  event counts, retrains started and retrain durations.

One collection is cached for ``ttl_s`` (1 s) so scrapes stay cheap. Label
cardinality is bounded: ``version`` takes only the versions in the routing
table, the champion and the candidate; ``feature`` only the model's configured
features; every other label is an enum (SLI, burn window from the config,
rollout stage, event kind, quarantine reason code).

    >>> import tempfile
    >>> from lifelong_ray.config import parse_config
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}],
    ...                               "label": {"name": "y", "classes": [0, 1]}},
    ...                     "storage": {"root": tempfile.mkdtemp()}})
    >>> c = StateCollector()
    >>> c.watch(cfg)
    >>> fams = {f.name: f for f in c.collect()}
    >>> [s.value for s in fams["lifelong_rollout_stage"].samples if s.labels["stage"] == "stable"]
    [1.0]
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from lifelong_ray.config import Config
from lifelong_ray.data.quarantine import QuarantineStore
from lifelong_ray.events import EventKind
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage
from lifelong_ray.policy.model import ControllerState
from lifelong_ray.policy.quota import DAY, HOUR
from lifelong_ray.serving.routing import RoutingTable, read_routing
from lifelong_ray.storage import Storage

logger = logging.getLogger("lifelong_ray.serving.metrics")

#: seconds one collection is reused for
DEFAULT_TTL_S = 1.0
#: upper bounds of the retrain duration histogram (seconds)
RETRAIN_DURATION_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
_SLIS = ("quality", "latency", "error_rate", "freshness")
_EVENTS_PREFIX = "models/{model}/events"


@dataclass(frozen=True)
class Spec:
    """One exported metric family: name (counters without ``_total``), type, help and labels."""

    name: str
    kind: str  # "gauge" | "counter" | "histogram"
    help: str
    labels: tuple[str, ...]

    def family(self) -> Metric:
        if self.kind == "gauge":
            return GaugeMetricFamily(self.name, self.help, labels=list(self.labels))
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=list(self.labels))
        return HistogramMetricFamily(self.name, self.help, labels=list(self.labels))


_M, _MV = ("model",), ("model", "version")
SPECS: tuple[Spec, ...] = (
    Spec("lifelong_model_info", "gauge", "1 for each live version and its role (champion, candidate, shadow, "
         "serving: in the routing table otherwise).", ("model", "version", "role")),
    Spec("lifelong_rollout_stage", "gauge", "1 for the rollout stage the model is in, 0 for the others.",
         ("model", "stage")),
    Spec("lifelong_canary_weight_percent", "gauge", "Traffic share (percent) of the candidate in the routing "
         "table; version \"none\" and 0 when no candidate is rolling out.", _MV),
    Spec("lifelong_routing_generation", "gauge", "Generation of the routing table on storage (bumps on every "
         "traffic change).", _M),
    Spec("lifelong_controller_paused", "gauge", "1 while an operator paused retrains and rollout steps.", _M),
    Spec("lifelong_controller_last_tick_timestamp_seconds", "gauge", "Controller clock time of its last "
         "persisted tick.", _M),
    Spec("lifelong_quality_accuracy_ratio", "gauge", "Labeled accuracy of the version over the last quality "
         "window.", _MV),
    Spec("lifelong_quality_reference_accuracy_ratio", "gauge", "Accuracy the last quality window was compared "
         "with (the version's holdout accuracy at promotion).", _MV),
    Spec("lifelong_quality_window_labels", "gauge", "Labeled rows in the last quality window.", _MV),
    Spec("lifelong_holdout_accuracy_ratio", "gauge", "Holdout accuracy of the candidate and of the champion "
         "measured by the last retrain gate.", _MV),
    Spec("lifelong_drift_score", "gauge", "Population stability index (PSI) of each feature in the last "
         "feature-drift window, against the reference of the version named.", ("model", "version", "feature")),
    Spec("lifelong_drift_detected", "gauge", "1 while the drift monitor of the kind (feature, performance) is "
         "active (fired and not yet reset by a clean window).", ("model", "kind")),
    Spec("lifelong_drift_windows", "counter", "Drift windows the controller evaluated, by kind (feature, "
         "performance).", ("model", "kind")),
    Spec("lifelong_error_budget_remaining_ratio", "gauge", "Error budget left over the SLO period, per SLI "
         "(1 untouched, 0 spent, below 0 overspent).", ("model", "sli")),
    Spec("lifelong_error_budget_burn_rate", "gauge", "Error-budget burn rate per SLI over each alert window "
         "(1.0 spends the budget exactly over the period).", ("model", "sli", "window")),
    Spec("lifelong_slo_alert_firing", "gauge", "1 while the multi-window burn-rate alert (fast, slow) of the "
         "SLI fires.", ("model", "sli", "alert")),
    Spec("lifelong_error_budget_frozen", "gauge", "1 while a spent error budget freezes non-urgent rollouts.",
         _M),
    Spec("lifelong_retrain_running", "gauge", "1 while a retrain job runs, by job kind (full, online).",
         ("model", "kind")),
    Spec("lifelong_retrain_queue_length", "gauge", "Deferred retrain requests waiting for quota.", _M),
    Spec("lifelong_retrains", "counter", "Retrain jobs started, by job kind (full, online).", ("model", "kind")),
    Spec("lifelong_retrain_duration_seconds", "histogram", "Wall time of finished retrain jobs from start to "
         "result, by job kind and outcome (succeeded, failed).", ("model", "kind", "outcome")),
    Spec("lifelong_retrain_cpu_seconds", "counter", "Training CPU-seconds of finished retrain jobs "
         "(train time x workers x CPUs per worker).", _M),
    Spec("lifelong_quota_retrains_last_hour", "gauge", "Full retrains started in the hour before the "
         "controller's last tick.", _M),
    Spec("lifelong_quota_cpu_seconds_last_day", "gauge", "Training CPU-seconds charged to the quota over the "
         "24 h before the controller's last tick.", _M),
    Spec("lifelong_quota_gpu_seconds_last_day", "gauge", "Training GPU-seconds charged to the quota over the "
         "24 h before the controller's last tick.", _M),
    Spec("lifelong_quota_used_ratio", "gauge", "Share of each configured quota in use (retrains_per_hour, "
         "cpu_seconds_per_day, gpu_seconds_per_day, concurrent_retrains).", ("model", "quota")),
    Spec("lifelong_quarantined_rows", "gauge", "Rows held in quarantine (not released), by reason code.",
         ("model", "reason")),
    Spec("lifelong_events", "counter", "Audit-log events by kind (promoted, rolled_back, drift_detected, ...).",
         ("model", "kind")),
    Spec("lifelong_metrics_source_errors", "counter", "Failed reads of a persisted source (state, routing, "
         "quarantine, events) while collecting these metrics.", ("model", "source")),
)
SPEC_BY_NAME = {s.name: s for s in SPECS}


def sample_names(spec: Spec) -> list[str]:
    """The sample names a family of ``spec`` exposes (what PromQL can select).

    >>> sample_names(SPEC_BY_NAME["lifelong_retrains"])
    ['lifelong_retrains_total']
    """
    if spec.kind == "counter":
        return [f"{spec.name}_total"]
    if spec.kind == "histogram":
        return [f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count"]
    return [spec.name]


# -- the audit log, read incrementally ------------------------------------------------------
@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(RETRAIN_DURATION_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        i = next((k for k, b in enumerate(RETRAIN_DURATION_BUCKETS) if value <= b), len(RETRAIN_DURATION_BUCKETS))
        self.counts[i] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, n in zip((*RETRAIN_DURATION_BUCKETS, math.inf), self.counts):
            acc += n
            out.append(("+Inf" if math.isinf(bound) else repr(bound), float(acc)))
        return out


def _job_kind(job_id: str | None, data: dict[str, Any]) -> str:
    if data.get("job_kind") in ("full", "online"):
        return str(data["job_kind"])
    return "online" if job_id and "-online-" in job_id else "full"


class EventTally:
    """Counts from one model's audit log; each file is read once (files are append-only).

    ``events`` counts every event by kind; ``retrains`` counts ``retrain_started`` by
    job kind; a ``retrain_finished``/``retrain_failed`` event adds its job's wall time
    (from its start event; ``train_seconds`` if the start was not seen) to
    ``durations`` and, when it reports ``train_seconds``, its CPU-seconds to
    ``cpu_seconds``.
    """

    def __init__(self, storage: Storage, cfg: Config) -> None:
        self.storage = storage
        self.cfg = cfg
        self.prefix = _EVENTS_PREFIX.format(model=cfg.model.name)
        self.seen: set[str] = set()
        self.events: Counter[str] = Counter()
        self.retrains: Counter[str] = Counter()
        self.durations: dict[tuple[str, str], _Histogram] = {}
        self.cpu_seconds = 0.0
        self._started: dict[str, tuple[float, str]] = {}

    def refresh(self) -> None:
        """Read the files not read yet, oldest event first."""
        from lifelong_ray.events import Event

        new = [p for p in self.storage.list(self.prefix, suffix=".jsonl") if p not in self.seen]
        batch: list[Event] = []
        for path in new:  # parse every new file first: a failure leaves all of them unread
            for line in self.storage.read_bytes(path).decode().splitlines():
                if line.strip():
                    batch.append(Event.model_validate_json(line))
        for ev in sorted(batch, key=lambda e: e.t):
            self._add(ev)
        self.seen.update(new)

    def _add(self, ev: Any) -> None:
        self.events[ev.kind.value] += 1
        job_id = ev.data.get("job_id")
        if ev.kind == EventKind.RETRAIN_STARTED:
            kind = _job_kind(job_id, ev.data)
            self.retrains[kind] += 1
            if job_id:
                self._started[str(job_id)] = (ev.t, kind)
        elif ev.kind in (EventKind.RETRAIN_FINISHED, EventKind.RETRAIN_FAILED):
            start = self._started.pop(str(job_id), None) if job_id else None
            kind = start[1] if start else _job_kind(job_id, ev.data)
            train_s = ev.data.get("train_seconds")
            if start is not None:
                seconds = max(0.0, ev.t - start[0])
            elif isinstance(train_s, (int, float)):
                seconds = float(train_s)
            else:
                return
            outcome = "succeeded" if ev.kind == EventKind.RETRAIN_FINISHED else "failed"
            self.durations.setdefault((kind, outcome), _Histogram()).observe(seconds)
            if isinstance(train_s, (int, float)) and math.isfinite(train_s):
                tc = self.cfg.training
                self.cpu_seconds += float(train_s) * tc.num_workers * tc.cpus_per_worker


# -- one collection -----------------------------------------------------------------------
class _Families:
    """The families of one collection, filled model by model."""

    def __init__(self) -> None:
        self.by_name = {s.name: s.family() for s in SPECS}

    def add(self, name: str, labels: Iterable[Any], value: float | None) -> None:
        if value is None or not isinstance(value, (int, float)) or math.isnan(value):
            return
        self.by_name[name].add_metric([str(v) for v in labels], float(value))

    def histogram(self, name: str, labels: Iterable[Any], buckets: list[tuple[str, float]], total: float) -> None:
        self.by_name[name].add_metric([str(v) for v in labels], buckets, total)

    def __iter__(self):
        return iter(self.by_name.values())


def read_state(storage: Storage, model: str) -> ControllerState | None:
    """The persisted controller state (None before the controller's first save)."""
    from lifelong_ray.control.controller import load_state

    return load_state(storage, model)


def live_versions(state: ControllerState | None, table: RoutingTable | None) -> set[str]:
    """The versions a ``version`` label may take: the routing table's, the champion, the candidate.

    >>> sorted(live_versions(None, RoutingTable(model="m", weights={"v0001": 90, "v0002": 10}, champion="v0001")))
    ['v0001', 'v0002']
    """
    out: set[str] = set()
    if table is not None:
        out.update(table.weights)
        out.update(v for v in (table.champion, table.shadow) if v)
    if state is not None:
        out.update(v for v in (state.champion, state.candidate) if v)
    return out


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def add_state(f: _Families, cfg: Config, state: ControllerState | None, table: RoutingTable | None) -> None:
    """Everything derived from the controller state and the routing table of one model."""
    model = cfg.model.name
    live = live_versions(state, table)
    stage = state.rollout if state is not None else RolloutStage.STABLE
    for s in RolloutStage:
        f.add("lifelong_rollout_stage", (model, s.value), 1.0 if s == stage else 0.0)

    champion = (state.champion if state is not None else None) or (table.champion if table else None)
    candidate = state.candidate if state is not None else None
    shadow = table.shadow if table is not None else None
    for v in sorted(live):
        role = "champion" if v == champion else "candidate" if v == candidate else \
            "shadow" if v == shadow else "serving"
        f.add("lifelong_model_info", (model, v, role), 1.0)
    weights = table.weights if table is not None else {}
    if candidate:
        f.add("lifelong_canary_weight_percent", (model, candidate), float(weights.get(candidate, 0.0)))
    else:
        f.add("lifelong_canary_weight_percent", (model, "none"), 0.0)
    if table is not None:
        f.add("lifelong_routing_generation", (model,), float(table.generation))
    if state is None:
        return

    f.add("lifelong_controller_paused", (model,), float(state.paused))
    f.add("lifelong_controller_last_tick_timestamp_seconds", (model,), _num(state.last_tick_t))

    q = state.last_quality or {}
    qv = q.get("version") or champion
    if qv in live:
        f.add("lifelong_quality_accuracy_ratio", (model, qv), _num(q.get("accuracy")))
        f.add("lifelong_quality_reference_accuracy_ratio", (model, qv), _num(q.get("reference")))
        f.add("lifelong_quality_window_labels", (model, qv), _num(q.get("n")))
    gate = state.gate or {}
    if candidate in live:
        f.add("lifelong_holdout_accuracy_ratio", (model, candidate), _num(gate.get("candidate_accuracy")))
        if champion in live:
            f.add("lifelong_holdout_accuracy_ratio", (model, champion), _num(gate.get("champion_accuracy")))

    fd = state.last_feature_drift or {}
    fv = fd.get("version") or champion
    psi = fd.get("psi") or {}
    if fv in live and isinstance(psi, dict):
        for feat in cfg.model.features:
            f.add("lifelong_drift_score", (model, fv, feat.name), _num(psi.get(feat.name)))
    f.add("lifelong_drift_detected", (model, "feature"), float(state.feature_monitor.active))
    f.add("lifelong_drift_detected", (model, "performance"), float(state.quality_monitor.active))
    f.add("lifelong_drift_windows", (model, "feature"), float(state.feature_windows_done))
    f.add("lifelong_drift_windows", (model, "performance"), float(state.quality_windows_done))

    _add_budget(f, cfg, state)
    _add_retrain_and_quota(f, cfg, state)


def _add_budget(f: _Families, cfg: Config, state: ControllerState) -> None:
    model = cfg.model.name
    f.add("lifelong_error_budget_frozen", (model,), float(state.budget_frozen))
    slis = (state.budget or {}).get("slis") or {}
    windows = {f"{s:g}s" for s in (cfg.slo.fast.long_seconds, cfg.slo.fast.short_seconds,
                                   cfg.slo.slow.long_seconds, cfg.slo.slow.short_seconds)}
    for sli in _SLIS:
        st = slis.get(sli)
        if not isinstance(st, dict):
            continue
        f.add("lifelong_error_budget_remaining_ratio", (model, sli), _num(st.get("remaining")))
        burn = st.get("burn") or {}
        for w in sorted(windows, key=lambda w: float(w[:-1])):
            f.add("lifelong_error_budget_burn_rate", (model, sli, w), _num(burn.get(w)))
        firing = set(st.get("alerts") or [])
        for alert in ("fast", "slow"):
            f.add("lifelong_slo_alert_firing", (model, sli, alert), 1.0 if alert in firing else 0.0)


def _add_retrain_and_quota(f: _Families, cfg: Config, state: ControllerState) -> None:
    model, qc = cfg.model.name, cfg.quota
    running = state.retrain == RetrainStage.RUNNING
    for kind in ("full", "online"):
        f.add("lifelong_retrain_running", (model, kind), 1.0 if running and state.retrain_kind == kind else 0.0)
    f.add("lifelong_retrain_queue_length", (model,), float(len(state.retrain_queue)))
    now = state.last_tick_t if state.last_tick_t is not None else time.time()
    hour = sum(1 for r in state.retrain_history if 0 <= now - r.start_t < HOUR)
    day = [r for r in state.retrain_history if 0 <= now - r.start_t < DAY]
    cpu, gpu = sum(r.cpu_seconds for r in day), sum(r.gpu_seconds for r in day)
    f.add("lifelong_quota_retrains_last_hour", (model,), float(hour))
    f.add("lifelong_quota_cpu_seconds_last_day", (model,), cpu)
    f.add("lifelong_quota_gpu_seconds_last_day", (model,), gpu)
    if qc.max_retrains_per_hour > 0:
        f.add("lifelong_quota_used_ratio", (model, "retrains_per_hour"), hour / qc.max_retrains_per_hour)
    if qc.cpu_seconds_per_day:
        f.add("lifelong_quota_used_ratio", (model, "cpu_seconds_per_day"), cpu / qc.cpu_seconds_per_day)
    if qc.gpu_seconds_per_day:
        f.add("lifelong_quota_used_ratio", (model, "gpu_seconds_per_day"), gpu / qc.gpu_seconds_per_day)
    f.add("lifelong_quota_used_ratio", (model, "concurrent_retrains"),
          (1.0 if running and state.retrain_kind == "full" else 0.0) / qc.max_concurrent_retrains)


def add_events(f: _Families, model: str, tally: EventTally) -> None:
    for kind in EventKind:
        if tally.events.get(kind.value):
            f.add("lifelong_events", (model, kind.value), float(tally.events[kind.value]))
    for kind in ("full", "online"):
        f.add("lifelong_retrains", (model, kind), float(tally.retrains.get(kind, 0)))
    for (kind, outcome), h in sorted(tally.durations.items()):
        f.histogram("lifelong_retrain_duration_seconds", (model, kind, outcome), h.buckets(), h.total)
    f.add("lifelong_retrain_cpu_seconds", (model,), tally.cpu_seconds)


def add_quarantine(f: _Families, model: str, counts: dict[str, int]) -> None:
    for reason, rows in sorted(counts.items()):
        f.add("lifelong_quarantined_rows", (model, reason), float(rows))


class StateCollector(Collector):
    """Collects :data:`SPECS` for every watched model from storage, at most once per ``ttl_s``."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._models: dict[str, tuple[Config, Storage, EventTally]] = {}
        self._errors: Counter[tuple[str, str]] = Counter()
        self._cached: list[Metric] | None = None
        self._cached_at = -math.inf
        self.collections = 0  # collections actually computed (not served from the cache)

    def watch(self, cfg: Config) -> None:
        """Export the state of ``cfg``'s model (again: the new config replaces the old)."""
        with self._lock:
            storage = Storage(cfg.storage.root)
            self._models[cfg.model.name] = (cfg, storage, EventTally(storage, cfg))
            self._cached = None

    def models(self) -> list[str]:
        return sorted(self._models)

    def describe(self) -> Iterable[Metric]:
        """The families without samples (keeps registration from collecting)."""
        return [s.family() for s in SPECS]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = self.clock()
            if self._cached is None or now - self._cached_at >= self.ttl_s:
                self._cached = self._collect()
                self._cached_at = self.clock()
                self.collections += 1
            return list(self._cached)

    def _collect(self) -> list[Metric]:
        f = _Families()
        for name, (cfg, storage, tally) in sorted(self._models.items()):
            state = self._read(name, "state", lambda: read_state(storage, name))
            table = self._read(name, "routing", lambda: read_routing(storage, name))
            add_state(f, cfg, state, table)
            counts = self._read(name, "quarantine", lambda: QuarantineStore(storage, name).counts())
            add_quarantine(f, name, counts or {})
            self._read(name, "events", tally.refresh)
            add_events(f, name, tally)
        for (model, source), n in sorted(self._errors.items()):
            f.add("lifelong_metrics_source_errors", (model, source), float(n))
        return list(f)

    def _read(self, model: str, source: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except Exception as err:  # noqa: BLE001 - one unreadable source must not fail the scrape
            self._errors[(model, source)] += 1
            if self._errors[(model, source)] in (1, 10) or self._errors[(model, source)] % 100 == 0:
                logger.warning("metrics: %s of %s unreadable (%d times): %s", source, model,
                               self._errors[(model, source)], err)
            return None
