"""The operator's command line: argparse, exit codes, and `status`/`history` rendered
from real storage state (a registry with real artifacts, a saved controller state and
an audit log) through ``--config`` (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import yaml
from rich.console import Console

from lifelong_ray.cli import (
    NO_APP,
    STATUS_FORMAT,
    build_parser,
    main,
    parse_since,
    ray_start_command,
    status_document,
    status_table,
)
from lifelong_ray.config import load_config
from lifelong_ray.control.controller import load_state, state_path
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import FeatureTransform
from lifelong_ray.events import AuditLog, Event, EventKind
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage
from lifelong_ray.policy.model import ControllerState
from lifelong_ray.policy.quota import RetrainRecord, RetrainRequest
from lifelong_ray.registry.store import Registry
from lifelong_ray.storage import Storage
from lifelong_ray.training.estimators import build_module

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z

# Every key of a model entry in `lifelong status --json` (docs/runbook.md documents them).
MODEL_KEYS = {"model", "champion", "candidate", "stage", "approval_for", "paused", "weights", "versions", "retrain",
              "drift", "budget", "quota", "last_decisions", "controller", "storage"}


@pytest.fixture
def config(tmp_path) -> str:
    data = yaml.safe_load(open("configs/demo.yaml"))
    data["storage"]["root"] = str(tmp_path / "store")
    data["quota"] = {"cpu_seconds_per_day": 3600, "max_retrains_per_hour": 4}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture
def store(config) -> Storage:
    """Three registered versions, a controller state mid-canary, and an audit log."""
    cfg = load_config(config)
    storage = Storage(cfg.storage.root)
    reg = Registry(storage, "demo")
    schema = Schema(cfg.model)
    rng = np.random.default_rng(0)
    cols = {f.name: rng.normal(size=20) for f in cfg.model.features if f.dtype != "category"}
    cols["segment"] = np.array(["a", "b", "c", "a"] * 5, dtype=object)
    transform = FeatureTransform.fit(cols, schema)
    for i, acc in enumerate((0.81, 0.86, 0.9), start=1):
        module = build_module(cfg.estimator, transform.n_out, 2)
        reg.register(state_dict=module.state_dict(), transform=transform, estimator=cfg.estimator,
                     n_in=transform.n_out, classes=[0, 1], reference=pa.table({"x0": cols["x0"]}),
                     metadata={"job_id": f"demo-retrain-{i:04d}", "created_at": NOW - 3000 + i * 600,
                               "kind": "full", "metrics": {"holdout_accuracy": acc}})
    state = ControllerState(
        model="demo", seq=42, last_tick_t=NOW - 5, champion="v0002", previous_champion="v0001",
        candidate="v0003", rollout=RolloutStage.CANARY, step_index=0, weights={"v0002": 90.0, "v0003": 10.0},
        retrain=RetrainStage.PENDING, retrain_deferred_reason="quota|quota: 4/4 retrains in the last hour",
        retrain_queue=[RetrainRequest(kind="feature_drift", reason="PSI 0.31 > 0.20", requested_t=NOW - 60)],
        retrain_history=[RetrainRecord(start_t=NOW - 1800, cpu_seconds=120.0),
                         RetrainRecord(start_t=NOW - 600, cpu_seconds=80.5)],
        budget_frozen=True, budget_reason="accuracy budget exhausted: 104% spent",
        budget={"exhausted": True, "alerting": True, "reason": "accuracy budget exhausted: 104% spent",
                "slis": {"accuracy": {"remaining": -0.04, "burn": {"3600s": 15.2}, "alerts": ["fast"]}}},
        last_feature_drift={"index": 7, "drifted": True, "reason": "PSI 0.31 > 0.20 on 2/6 features", "t": NOW - 30},
        last_quality={"index": 3, "accuracy": 0.74, "reason": "accuracy 0.74 < reference 0.86 - 0.10", "t": NOW - 20})
    storage.write_json(state_path("demo"), state.model_dump(mode="json"))
    kinds = [(EventKind.PROMOTED, "v0002", "canary accuracy 0.86 >= champion 0.81 - margin 0.05"),
             (EventKind.DRIFT_DETECTED, "v0002", "performance drift: accuracy 0.74 < reference 0.86 - 0.10"),
             (EventKind.CANDIDATE_REGISTERED, "v0003", "v0003: holdout accuracy 0.900 vs champion 0.740"),
             (EventKind.GATE_PASSED, "v0003", "candidate holdout accuracy 0.900 >= champion 0.740 - margin 0.02"),
             (EventKind.CANARY_STARTED, "v0003", "v0003 takes 10% of traffic; champion v0002 90%"),
             (EventKind.BUDGET_FROZEN, "v0002", "accuracy budget exhausted: 104% spent")]
    AuditLog(storage, "demo").append([Event(t=NOW - 7200 + i * 1200, kind=k, model="demo", version=v, reason=r)
                                      for i, (k, v, r) in enumerate(kinds)])
    return storage


# -- argparse ------------------------------------------------------------------------------

def test_up_binds_serve_and_dashboard_to_loopback_unless_told():
    args = build_parser().parse_args(["up", "configs/demo.yaml", "--port", "8123"])
    assert (args.port, args.host, args.dashboard_host, args.no_dashboard) == (8123, None, "127.0.0.1", False)
    assert load_config("configs/demo.yaml").serving.host == "127.0.0.1"
    cmd = ray_start_command(num_cpus=4)
    assert cmd[1:3] == ["start", "--head"]
    assert cmd[cmd.index("--dashboard-host") + 1] == "127.0.0.1"
    cmd = ray_start_command(num_cpus=2, dashboard_host="0.0.0.0", dashboard_port=9999, include_dashboard=False)
    assert cmd[cmd.index("--dashboard-host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--dashboard-port") + 1] == "9999"
    assert cmd[cmd.index("--include-dashboard") + 1] == "false"


def test_an_unknown_event_kind_is_a_usage_error_that_lists_the_valid_kinds(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["history", "demo", "--kind", "drifted"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown event kind 'drifted'" in err
    assert all(k.value in err for k in EventKind)


def test_kinds_may_be_comma_separated_and_repeated():
    args = build_parser().parse_args(["history", "demo", "--kind", "promoted,rolled_back", "--kind", "paused"])
    assert [k for group in args.kind for k in group] == [EventKind.PROMOTED, EventKind.ROLLED_BACK, EventKind.PAUSED]


@pytest.mark.parametrize("text, expected", [
    ("30m", NOW - 1800), ("1h", NOW - 3600), ("2d", NOW - 2 * 86400), ("1h30m", NOW - 5400), ("90s", NOW - 90),
    ("2027-01-15T07:00:00Z", NOW - 3600), ("2027-01-15T07:00:00", NOW - 3600),
    ("2027-01-15T09:00:00+02:00", NOW - 3600),
])
def test_since_takes_spans_and_iso_times(text, expected):
    assert parse_since(text, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "1x", "", "30m later"])
def test_a_bad_since_says_what_it_accepts(text):
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_since(text, NOW)


# -- status --------------------------------------------------------------------------------

def test_status_document_reads_versions_stage_drift_budget_quota_and_decisions(config, store):
    cfg = load_config(config)
    doc = status_document(cfg, load_state(store, "demo").model_dump(mode="json"))
    assert set(doc) == MODEL_KEYS
    assert (doc["champion"], doc["candidate"], doc["stage"], doc["paused"]) == ("v0002", "v0003", "canary", False)
    assert doc["weights"] == {"v0002": 90.0, "v0003": 10.0}
    assert [(v["version"], v["weight"], v["role"], v["holdout_accuracy"]) for v in doc["versions"]] == [
        ("v0001", 0.0, "previous", 0.81), ("v0002", 90.0, "champion", 0.86), ("v0003", 10.0, "candidate", 0.9)]
    assert doc["versions"][2]["job_id"] == "demo-retrain-0003"
    assert doc["retrain"]["stage"] == "pending"
    assert doc["retrain"]["deferred_reason"] == "quota: 4/4 retrains in the last hour"
    assert doc["retrain"]["queue"] == [{"kind": "feature_drift", "reason": "PSI 0.31 > 0.20", "urgent": False}]
    assert doc["drift"]["feature"]["reason"] == "PSI 0.31 > 0.20 on 2/6 features"
    assert doc["budget"]["frozen"] is True and doc["budget"]["slis"]["accuracy"]["remaining"] == -0.04
    assert doc["quota"] == {"retrains_24h": 2, "cpu_seconds_24h": 200.5, "gpu_seconds_24h": 0.0,
                            "max_retrains_per_hour": 4, "max_concurrent_retrains": 1, "cpu_seconds_per_day": 3600.0,
                            "gpu_seconds_per_day": None, "allowed_hours": None}
    # the last five decisions, oldest first, each with its reason and an ISO time
    assert [e["kind"] for e in doc["last_decisions"]] == ["drift_detected", "candidate_registered", "gate_passed",
                                                          "canary_started", "budget_frozen"]
    assert doc["last_decisions"][-1]["time"] == "2027-01-15T07:40:00+00:00"
    assert doc["controller"]["source"] == "storage" and doc["controller"]["seq"] == 42


def test_status_table_shows_every_column(config, store):
    cfg = load_config(config)
    doc = status_document(cfg, load_state(store, "demo").model_dump(mode="json"))
    console = Console(record=True, width=250)
    console.print(status_table([doc]))
    text = console.export_text()
    for needle in ("v0002 90% champion", "v0003 10% candidate", "canary", "pending", "PSI 0.31 > 0.20",
                   "FROZEN: accuracy budget exhausted", "2 retrains in 24h", "cpu 200.5/3600s", "queued: feature_drift",
                   "07:40:00 budget_frozen"):
        assert needle in text, needle


def test_status_json_is_a_stable_document(config, store, capsys):
    assert main(["status", "--config", config, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"format", "generated_at", "generated_time", "models"}
    assert out["format"] == STATUS_FORMAT
    (model,) = out["models"]
    assert set(model) == MODEL_KEYS and model["model"] == "demo" and model["stage"] == "canary"


def test_status_before_the_controller_ever_ran(tmp_path, capsys):
    data = yaml.safe_load(open("configs/demo.yaml"))
    data["storage"]["root"] = str(tmp_path / "empty")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert main(["status", "--config", str(tmp_path / "c.yaml"), "--json"]) == 0
    (model,) = json.loads(capsys.readouterr().out)["models"]
    assert (model["champion"], model["stage"], model["versions"], model["controller"]["source"]) == \
        (None, "stable", [], "none")
    assert main(["status", "--config", str(tmp_path / "c.yaml")]) == 0
    assert "no version yet" in capsys.readouterr().out


# -- history -------------------------------------------------------------------------------

def test_history_filters_by_kind_and_since(config, store, capsys, monkeypatch):
    monkeypatch.setattr("time.time", lambda: NOW)
    assert main(["history", "demo", "--config", config, "--json", "--kind", "promoted,budget_frozen"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert [e["kind"] for e in events] == ["promoted", "budget_frozen"]
    assert set(events[0]) == {"t", "time", "kind", "model", "version", "reason", "data"}
    assert main(["history", "demo", "--config", config, "--json", "--since", "1h"]) == 0  # inclusive
    assert [e["kind"] for e in json.loads(capsys.readouterr().out)] == ["gate_passed", "canary_started",
                                                                        "budget_frozen"]
    assert main(["history", "demo", "--config", config, "--json", "--since", "2027-01-15T06:00:00Z",
                 "--limit", "1"]) == 0
    assert [e["kind"] for e in json.loads(capsys.readouterr().out)] == ["budget_frozen"]
    assert main(["history", "demo", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "history of demo (6 events)" in out and "canary accuracy 0.86 >= champion 0.81" in out


# -- errors: one line saying what to do next, the documented exit code -------------------

def test_usage_errors_exit_2_without_a_traceback(config, store, tmp_path, capsys):
    assert main(["history", "demo", "--config", config, "--since", "last week"]) == 2
    err = capsys.readouterr().err
    assert "--since 'last week' is neither" in err and "Traceback" not in err
    assert main(["status", "other", "--config", config]) == 2
    assert "configures model 'demo', not 'other'" in capsys.readouterr().err
    assert main(["status", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_an_unexpected_failure_is_one_line_and_exit_1(config, store, capsys):
    # the controller state is corrupt: a runtime failure, reported without a traceback
    store.write_bytes(state_path("demo"), b"{not json")
    assert main(["status", "--config", config]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lifelong status: ") and "LIFELONG_DEBUG=1" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_the_no_app_message_says_what_to_run():
    assert "run `lifelong up CONFIG`" in NO_APP
