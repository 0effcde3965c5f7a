"""Prometheus metrics of the serving layer, in their own registry.

The ingress replica updates these objects and ``GET /metrics`` returns
:func:`exposition`. A private :class:`~prometheus_client.CollectorRegistry` keeps
them apart from whatever else runs in the process (Ray's own metrics included).

    >>> PREDICTIONS.labels(model="m", version="v0001").inc(3)
    >>> b"lifelong_predictions_total" in exposition()[0]
    True
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

PREDICTIONS = Counter(
    "lifelong_predictions",
    "Instances answered, by the version that served them (shadow copies not included).",
    ["model", "version"],
    registry=REGISTRY,
)
PREDICT_LATENCY = Histogram(
    "lifelong_predict_latency_seconds",
    "Latency of a predict request inside the ingress (validation, routing, model call).",
    ["model"],
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
    "lifelong_route_weight",
    "Current routing weight (percent) of each version.",
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


def set_route_weights(model: str, weights: dict[str, float], previous: dict[str, float]) -> None:
    """Publish the current weights; versions that left the table drop to 0."""
    for version in previous:
        if version not in weights:
            ROUTE_WEIGHT.labels(model=model, version=version).set(0.0)
    for version, w in weights.items():
        ROUTE_WEIGHT.labels(model=model, version=version).set(float(w))


def exposition() -> tuple[bytes, str]:
    """The text exposition of :data:`REGISTRY` and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
