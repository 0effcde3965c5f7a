"""Prometheus metrics of the serving layer, in their own registry.

Two kinds of metrics share :data:`REGISTRY`, and ``GET /metrics`` returns
:func:`exposition`:

* counters and histograms the ingress replica updates as requests pass
  (predictions, latency, feedback, rejections, version errors, routing weights);
* the controller's persisted state, read at scrape time by
  :class:`~lifelong_ray.serving.metrics_state.StateCollector` (:data:`STATE`, cached
  for a second): drift scores, error budget, canary weight, retrains, quota,
  quarantined rows. :func:`watch` adds a served model to it.

A private :class:`~prometheus_client.CollectorRegistry` keeps them apart from
whatever else runs in the process (Ray's own metrics included). Names carry the
``lifelong_`` prefix, their unit, and ``_total`` for counters;
:func:`metric_names` lists every sample name exported (the dashboards test
checks its PromQL against it). ``version`` labels are bounded: the series of a
version that left the routing table are removed :data:`VERSION_GRACE_S` later.

    >>> PREDICTIONS.labels(model="m", version="v0001").inc(3)
    >>> b"lifelong_predictions_total" in exposition()[0]
    True
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from lifelong_ray.config import Config
from lifelong_ray.serving.metrics_state import SPECS, StateCollector, sample_names

REGISTRY = CollectorRegistry(auto_describe=True)

PREDICTIONS = Counter(
    "lifelong_predictions",
    "Instances answered, by the version that served them (shadow copies not included).",
    ["model", "version"],
    registry=REGISTRY,
)
PREDICT_LATENCY = Histogram(
    "lifelong_predict_latency_seconds",
    "Latency of a predict request inside the ingress (validation, routing, model call, durable log write), "
    "by the version that answered.",
    ["model", "version"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
FEEDBACK = Counter(
    "lifelong_feedback",
    "Feedback labels received, by outcome (accepted or rejected) and reason code (\"none\" when accepted).",
    ["model", "outcome", "reason"],
    registry=REGISTRY,
)
LABEL_REQUESTS = Counter(
    "lifelong_label_requests",
    "Request ids handed out by GET .../label-requests for labeling.",
    ["model"],
    registry=REGISTRY,
)
ADMIN_COMMANDS = Counter(
    "lifelong_admin_commands",
    "Admin HTTP calls by command kind and result (accepted, disabled, unauthorized, invalid, failed).",
    ["model", "kind", "result"],
    registry=REGISTRY,
)
FAULTS_INJECTED = Counter(
    "lifelong_faults_injected",
    "Faults injected from models/<m>/faults.json (chaos testing), by kind (abort, delay, nan).",
    ["model", "version", "kind"],
    registry=REGISTRY,
)
REJECTED = Counter(
    "lifelong_rejected_requests",
    "Requests answered 4xx, by the first rule they broke.",
    ["model", "rule"],
    registry=REGISTRY,
)
ROUTE_WEIGHT = Gauge(
    "lifelong_route_weight_percent",
    "Routing weight (percent) of each version in the table this ingress replica routes with.",
    ["model", "version"],
    registry=REGISTRY,
)
VERSION_ERRORS = Counter(
    "lifelong_version_errors",
    "Model calls that failed, by version and kind (exception, timeout, unavailable, non_finite_output, "
    "injected_abort); a failed canary falls back to the champion.",
    ["model", "version", "kind"],
    registry=REGISTRY,
)

LOG_UNFLUSHED = Gauge(
    "lifelong_log_unflushed_seconds",
    "How long the oldest record of a log with durability 'group' has waited, written to the OS but not yet "
    "synced to the device (0 when all are synced): the records a power loss would lose now are at most this old. "
    "Stays under data.flush_interval_ms plus one sync while the disk keeps up.",
    ["model", "log"],
    registry=REGISTRY,
)


#: the collector of the controller's persisted state (drift, budget, rollout, retrains, quota, quarantine)
STATE = StateCollector()
REGISTRY.register(STATE)

#: seconds the series of a version stay after it left the routing table (enough for a few scrapes)
VERSION_GRACE_S = 600.0
#: metrics with a ``version`` label that the ingress updates
VERSIONED: tuple[MetricWrapperBase, ...] = (PREDICTIONS, PREDICT_LATENCY, FAULTS_INJECTED, ROUTE_WEIGHT,
                                            VERSION_ERRORS)
_departed: dict[tuple[str, str], float] = {}
_departed_lock = threading.Lock()


def watch(cfg: Config) -> None:
    """Export the persisted controller state of ``cfg``'s model at scrape time."""
    STATE.watch(cfg)


def set_route_weights(model: str, weights: dict[str, float], previous: dict[str, float],
                      now: float | None = None) -> None:
    """Publish the current weights. Versions that left the table drop to 0 and their
    series are removed :data:`VERSION_GRACE_S` later (:func:`prune_versions`)."""
    now = time.monotonic() if now is None else now
    with _departed_lock:
        for version in previous:
            if version not in weights:
                ROUTE_WEIGHT.labels(model=model, version=version).set(0.0)
                _departed.setdefault((model, version), now)
        for version, w in weights.items():
            _departed.pop((model, version), None)
            ROUTE_WEIGHT.labels(model=model, version=version).set(float(w))
    prune_versions(now)


def prune_versions(now: float | None = None) -> list[tuple[str, str]]:
    """Remove every series of the versions that left their routing table over
    :data:`VERSION_GRACE_S` ago; returns the (model, version) pairs removed."""
    now = time.monotonic() if now is None else now
    with _departed_lock:
        gone = [key for key, t in _departed.items() if now - t >= VERSION_GRACE_S]
        for key in gone:
            del _departed[key]
    for model, version in gone:
        for metric in VERSIONED:
            _remove_series(metric, model, version)
    return gone


def _remove_series(metric: MetricWrapperBase, model: str, version: str) -> None:
    names = list(metric._labelnames)  # noqa: SLF001 - the label order remove() expects
    seen: set[tuple[str, ...]] = set()
    for fam in metric.collect():
        for s in fam.samples:
            if s.labels.get("model") == model and s.labels.get("version") == version:
                key = tuple(s.labels.get(n, "") for n in names)
                if key not in seen:
                    seen.add(key)
                    try:
                        metric.remove(*key)
                    except KeyError:
                        pass


def metric_names() -> set[str]:
    """Every sample name :func:`exposition` can contain (``_total``, ``_bucket``, ... included):
    the metric objects of this module and the families of :data:`STATE`."""
    out: set[str] = set()
    for obj in list(globals().values()):
        if isinstance(obj, MetricWrapperBase):
            for fam in obj.describe():
                out.update(_family_samples(fam.name, fam.type))
    for spec in SPECS:
        out.update(sample_names(spec))
    return out


def _family_samples(name: str, kind: str) -> list[str]:
    if kind == "counter":
        return [f"{name}_total", f"{name}_created"]
    if kind == "histogram":
        return [f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"]
    return [name]


def exposition() -> tuple[bytes, str]:
    """The text exposition of :data:`REGISTRY` and its content type (blocking: it may read storage)."""
    prune_versions()
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
