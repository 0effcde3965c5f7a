"""The scrape-time exporter on real persisted controller state.

A real :class:`~lifelong_ray.control.controller.Controller` (in-process, no Ray)
ticks on real storage: a drifted, mislabeled stream makes it detect feature and
performance drift, start a retrain whose result file is already there (so the
executor starts nothing), finish it, pass the gate and hold the candidate for
approval. :class:`~lifelong_ray.serving.metrics_state.StateCollector` then reads
what the controller persisted (state, routing table, audit log) plus a real
quarantine entry, and the text exposition is parsed back with prometheus-client.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lifelong_ray.clock import Clock
from lifelong_ray.config import EstimatorConfig, parse_config
from lifelong_ray.control import controller as ctl
from lifelong_ray.data.logs import ModelLogs, feature_arrays
from lifelong_ray.data.quarantine import QuarantineStore
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import FeatureTransform, columns_from_table
from lifelong_ray.events import AuditLog, Event, EventKind
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage
from lifelong_ray.policy.model import ControllerState
from lifelong_ray.registry.store import Registry
from lifelong_ray.serving import metrics as M
from lifelong_ray.serving.metrics_state import SPECS, StateCollector, sample_names
from lifelong_ray.serving.routing import RoutingTable, write_routing
from lifelong_ray.storage import Storage
from lifelong_ray.training.estimators import build_module
from lifelong_ray.training.retrain import RetrainResult, job_path

MODEL = "m"
JOB = f"{MODEL}-retrain-0001"  # the id the controller gives its first retrain


class StepClock(Clock):
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        self.t += 1.0
        return self.t


def _event(kind: EventKind, t: float) -> Event:
    return Event(t=t, kind=kind, model=MODEL, reason="test")


class ManualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _cfg(root: str):
    return parse_config({
        "model": {"name": MODEL,
                  "features": [{"name": "x"}, {"name": "c", "dtype": "category", "categories": ["a", "b"]}],
                  "label": {"name": "y", "classes": [0, 1]}},
        "training": {"runner": "local", "min_rows": 20, "num_workers": 2, "cpus_per_worker": 1.5},
        "drift": {"window_size": 50, "label_window": 40, "consecutive_windows": 1},
        "rollout": {"require_approval": ["canary"]},
        "quota": {"cpu_seconds_per_day": 1000},
        "storage": {"root": root},
    })


def _register_two(storage: Storage, cfg) -> None:
    rng = np.random.default_rng(0)
    schema = Schema(cfg.model)
    ref = pa.table({"x": rng.normal(size=200), "c": rng.choice(["a", "b"], 200).tolist()})
    transform = FeatureTransform.fit(columns_from_table(ref, schema), schema)
    est = EstimatorConfig(kind="logistic")
    reg = Registry(storage, MODEL)
    for job in ("bootstrap", JOB):
        torch.manual_seed(0)
        module = build_module(est, transform.n_out, 2)
        reg.register(state_dict=module.state_dict(), transform=transform, estimator=est, n_in=transform.n_out,
                     classes=[0, 1], reference=ref, metadata={"job_id": job})
    reg.set_alias("champion", "v0001")


@pytest.fixture
def approval(tmp_path):
    """The controller, after 3 ticks, holds v0002 for approval (see the module doc)."""
    cfg = _cfg(str(tmp_path))
    storage = Storage(cfg.storage.root)
    _register_two(storage, cfg)
    write_routing(storage, RoutingTable(model=MODEL, generation=1, weights={"v0001": 100.0}, champion="v0001"))
    state = ControllerState(model=MODEL, seq=3, champion="v0001", champion_reference_accuracy=0.9,
                            retrain=RetrainStage.PENDING, retrain_reason="operator", retrain_purpose="operator")
    storage.write_json(ctl.state_path(MODEL), state.model_dump(mode="json"))
    storage.write_json(job_path(MODEL, JOB), RetrainResult(
        job_id=JOB, status="ok", version="v0002", candidate_accuracy=0.95, champion_accuracy=0.8,
        holdout_rows=100, train_rows=400, train_seconds=12.5, runner="local", error=None,
        finished_at=0.0).to_json())
    n, rng = 100, np.random.default_rng(1)
    ids = [f"r{i}" for i in range(n)]
    logs = ModelLogs(storage, MODEL)
    logs.append_predictions(request_ids=ids, t=1000.0, version="v0001",
                            features=feature_arrays({"x": rng.normal(loc=3.0, size=n),  # far from the reference
                                                     "c": np.array(["a"] * n, dtype=object)}, ["x", "c"], {"c"}),
                            predictions=[1] * n, confidence=[0.9] * n, latency_ms=5.0)
    logs.append_feedback(ids, [1] * 70 + [0] * 30, t=1010.0)
    c = ctl.Controller(cfg, clock=StepClock(1100.0))
    for _ in range(3):
        c.tick()
    assert c.state.rollout == RolloutStage.APPROVAL and c.state.candidate == "v0002"
    quarantine = QuarantineStore(storage, MODEL)
    quarantine.put(pa.table({"x": [99.0, 98.0, 97.0]}), reason="above_max", message="x above max",
                   source="batch.parquet", t=1200.0)
    quarantine.put(pa.table({"x": [1.0]}), reason="label_domain", message="label 7", source="b2.parquet", t=1201.0)
    return cfg, storage, c.state


def _samples(collector: StateCollector) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in collector.collect():
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _value(samples: dict[str, list], name: str, **labels: str) -> float:
    hits = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


def test_state_of_a_real_controller_is_exported(approval):
    cfg, storage, state = approval
    collector = StateCollector()
    collector.watch(cfg)
    s = _samples(collector)

    assert _value(s, "lifelong_rollout_stage", model=MODEL, stage="approval") == 1.0
    assert sum(x.value for x in s["lifelong_rollout_stage"]) == 1.0
    roles = {x.labels["version"]: x.labels["role"] for x in s["lifelong_model_info"]}
    assert roles == {"v0001": "champion", "v0002": "candidate"}
    assert _value(s, "lifelong_canary_weight_percent", model=MODEL, version="v0002") == 0.0  # held before canary
    assert _value(s, "lifelong_routing_generation", model=MODEL) == 1.0
    assert _value(s, "lifelong_controller_last_tick_timestamp_seconds", model=MODEL) == state.last_tick_t

    # windowed quality of the champion: the last window's numbers, as the controller saved them
    q = state.last_quality
    assert _value(s, "lifelong_quality_accuracy_ratio", model=MODEL, version="v0001") == q["accuracy"]
    assert _value(s, "lifelong_quality_reference_accuracy_ratio", model=MODEL, version="v0001") == 0.9
    assert _value(s, "lifelong_quality_window_labels", model=MODEL, version="v0001") == q["n"] == 40
    assert _value(s, "lifelong_holdout_accuracy_ratio", model=MODEL, version="v0002") == 0.95
    assert _value(s, "lifelong_holdout_accuracy_ratio", model=MODEL, version="v0001") == 0.8

    # drift: one PSI per configured feature, the numbers the controller computed
    psi = state.last_feature_drift["psi"]
    assert {x.labels["feature"] for x in s["lifelong_drift_score"]} == {"x", "c"}
    for feature in ("x", "c"):
        assert _value(s, "lifelong_drift_score", model=MODEL, version="v0001", feature=feature) == psi[feature]
    assert psi["x"] > cfg.drift.psi_threshold
    assert _value(s, "lifelong_drift_detected", model=MODEL, kind="feature") == 1.0
    assert _value(s, "lifelong_drift_detected", model=MODEL, kind="performance") == 1.0
    assert _value(s, "lifelong_drift_windows_total", model=MODEL, kind="feature") == state.feature_windows_done

    # error budget: every SLI, every configured burn window
    slis = state.budget["slis"]
    for sli, st in slis.items():
        assert _value(s, "lifelong_error_budget_remaining_ratio", model=MODEL, sli=sli) == st["remaining"]
        for window, rate in st["burn"].items():
            assert _value(s, "lifelong_error_budget_burn_rate", model=MODEL, sli=sli, window=window) == rate
    assert {x.labels["window"] for x in s["lifelong_error_budget_burn_rate"]} == {"300s", "3600s", "1800s",
                                                                                  "21600s"}
    assert len(s["lifelong_slo_alert_firing"]) == 2 * len(slis)

    # retrains: counted from the audit log, duration from its start and finish events
    events = AuditLog(storage, MODEL).read()
    started = [e for e in events if e.kind == EventKind.RETRAIN_STARTED]
    finished = [e for e in events if e.kind == EventKind.RETRAIN_FINISHED]
    assert len(started) == len(finished) == state.retrain_count == 1
    assert _value(s, "lifelong_retrains_total", model=MODEL, kind="full") == 1.0
    assert _value(s, "lifelong_retrains_total", model=MODEL, kind="online") == 0.0
    wall = finished[0].t - started[0].t
    assert _value(s, "lifelong_retrain_duration_seconds_count", model=MODEL, kind="full", outcome="succeeded") == 1
    assert _value(s, "lifelong_retrain_duration_seconds_sum", model=MODEL, kind="full", outcome="succeeded") == wall
    assert _value(s, "lifelong_retrain_duration_seconds_bucket", model=MODEL, kind="full", outcome="succeeded",
                  le="+Inf") == 1
    assert _value(s, "lifelong_retrain_cpu_seconds_total", model=MODEL) == 12.5 * 2 * 1.5
    for kind in {e.kind.value for e in events}:
        assert _value(s, "lifelong_events_total", model=MODEL, kind=kind) == \
            sum(1 for e in events if e.kind.value == kind)

    # quota, as the controller charged it
    assert _value(s, "lifelong_quota_retrains_last_hour", model=MODEL) == 1.0
    cpu = state.retrain_history[-1].cpu_seconds
    assert cpu == 12.5 * 2 * 1.5
    assert _value(s, "lifelong_quota_cpu_seconds_last_day", model=MODEL) == cpu
    assert _value(s, "lifelong_quota_used_ratio", model=MODEL, quota="cpu_seconds_per_day") == cpu / 1000
    assert _value(s, "lifelong_quota_used_ratio", model=MODEL, quota="retrains_per_hour") == 1 / 6
    assert "gpu_seconds_per_day" not in {x.labels["quota"] for x in s["lifelong_quota_used_ratio"]}  # no limit set

    # quarantine: rows per reason code
    assert _value(s, "lifelong_quarantined_rows", model=MODEL, reason="above_max") == 3.0
    assert _value(s, "lifelong_quarantined_rows", model=MODEL, reason="label_domain") == 1.0
    assert "lifelong_metrics_source_errors_total" not in s


def test_canary_weight_and_bounded_version_labels(approval):
    cfg, storage, state = approval
    # a canary at 10% with a shadow; v0003 exists nowhere but an old quality window
    canary = state.model_copy(update={"rollout": RolloutStage.CANARY, "step_index": 0, "weights":
                                      {"v0001": 90.0, "v0002": 10.0}, "routing_generation": 2,
                                      "last_quality": {**state.last_quality, "version": "v0003"}})
    storage.write_json(ctl.state_path(MODEL), canary.model_dump(mode="json"))
    write_routing(storage, RoutingTable(model=MODEL, generation=2, weights={"v0001": 90.0, "v0002": 10.0},
                                        champion="v0001"))
    collector = StateCollector()
    collector.watch(cfg)
    s = _samples(collector)
    assert _value(s, "lifelong_canary_weight_percent", model=MODEL, version="v0002") == 10.0
    assert _value(s, "lifelong_rollout_stage", model=MODEL, stage="canary") == 1.0
    versions = {x.labels["version"] for name, xs in s.items() for x in xs if "version" in x.labels}
    assert versions == {"v0001", "v0002"}  # v0003 is not live: its quality window is not exported
    assert "lifelong_quality_accuracy_ratio" not in s

    # promoted: v0002 alone; v0001 leaves every version label
    done = canary.model_copy(update={"rollout": RolloutStage.STABLE, "champion": "v0002", "candidate": None,
                                     "last_feature_drift": None, "last_quality": None})
    storage.write_json(ctl.state_path(MODEL), done.model_dump(mode="json"))
    write_routing(storage, RoutingTable(model=MODEL, generation=3, weights={"v0002": 100.0}, champion="v0002"))
    collector.ttl_s = 0.0
    s = _samples(collector)
    versions = {x.labels["version"] for name, xs in s.items() for x in xs if "version" in x.labels}
    assert versions == {"v0002", "none"}
    assert _value(s, "lifelong_canary_weight_percent", model=MODEL, version="none") == 0.0


def test_cache_and_incremental_event_reads(approval):
    cfg, storage, _ = approval
    clock = ManualClock()
    collector = StateCollector(ttl_s=1.0, clock=clock)
    collector.watch(cfg)
    first = _value(_samples(collector), "lifelong_events_total", model=MODEL, kind="drift_detected")
    AuditLog(storage, MODEL).append([_event(EventKind.DRIFT_DETECTED, 2000.0)])
    clock.t = 0.5  # within the ttl: the cached collection, no storage read
    assert _value(_samples(collector), "lifelong_events_total", model=MODEL, kind="drift_detected") == first
    assert collector.collections == 1
    clock.t = 1.5
    assert _value(_samples(collector), "lifelong_events_total", model=MODEL, kind="drift_detected") == first + 1
    clock.t = 3.0  # no new file: nothing counted twice
    assert _value(_samples(collector), "lifelong_events_total", model=MODEL, kind="drift_detected") == first + 1
    assert collector.collections == 3


def test_an_unreadable_source_is_counted_and_the_rest_still_exported(approval):
    cfg, storage, _ = approval
    storage.write_bytes(ctl.state_path(MODEL), b"{not json")
    collector = StateCollector(ttl_s=0.0)
    collector.watch(cfg)
    s = _samples(collector)
    assert _value(s, "lifelong_metrics_source_errors_total", model=MODEL, source="state") == 1.0
    assert _value(s, "lifelong_quarantined_rows", model=MODEL, reason="above_max") == 3.0
    assert _value(s, "lifelong_routing_generation", model=MODEL) == 1.0
    s = _samples(collector)
    assert _value(s, "lifelong_metrics_source_errors_total", model=MODEL, source="state") == 2.0


def test_exposition_round_trips_with_declared_types(approval):
    cfg, _, _ = approval
    registry = CollectorRegistry()
    collector = StateCollector()
    collector.watch(cfg)
    registry.register(collector)  # describe() keeps registration from reading storage
    assert collector.collections == 0
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    for spec in SPECS:
        if spec.name == "lifelong_metrics_source_errors":
            continue  # no errors here
        assert spec.name in fams, spec.name
        assert fams[spec.name].type == spec.kind
        for sample in fams[spec.name].samples:
            assert sample.name in sample_names(spec)
            assert set(sample.labels) - {"le"} == set(spec.labels)
            assert sample.name.startswith("lifelong_") and math.isfinite(sample.value)


def test_metric_names_follow_the_conventions():
    names = M.metric_names()
    assert all(n.startswith("lifelong_") for n in names)
    for spec in SPECS:
        assert set(sample_names(spec)) <= names
    assert {"lifelong_predictions_total", "lifelong_predict_latency_seconds_bucket", "lifelong_feedback_total",
            "lifelong_route_weight_percent"} <= names
    for spec in SPECS:
        if spec.kind == "counter":
            assert not spec.name.endswith("_total")  # the exposition adds it


def test_series_of_a_departed_version_are_removed_after_the_grace():
    model = "prune-test"
    M.set_route_weights(model, {"v0001": 50.0, "v0002": 50.0}, {}, now=0.0)
    M.PREDICTIONS.labels(model=model, version="v0001").inc(2)
    M.PREDICTIONS.labels(model=model, version="v0002").inc(3)
    M.PREDICT_LATENCY.labels(model=model, version="v0001").observe(0.01)
    M.VERSION_ERRORS.labels(model=model, version="v0001", kind="timeout").inc()

    def versions() -> set[str]:
        return {s.labels["version"] for metric in M.VERSIONED for fam in metric.collect() for s in fam.samples
                if s.labels.get("model") == model}

    M.set_route_weights(model, {"v0002": 100.0}, {"v0001": 50.0, "v0002": 50.0}, now=10.0)
    assert versions() == {"v0001", "v0002"}  # still there: the last counts reach a scrape
    assert M.prune_versions(now=10.0 + M.VERSION_GRACE_S - 1) == []
    assert M.prune_versions(now=10.0 + M.VERSION_GRACE_S) == [(model, "v0001")]
    assert versions() == {"v0002"}
    text = M.exposition()[0].decode()
    assert f'lifelong_predictions_total{{model="{model}",version="v0002"}} 3.0' in text
    assert f'model="{model}",version="v0001"' not in text
