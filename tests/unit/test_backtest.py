"""Backtest: the same decide(), router and trainer as the live system, on a sample clock."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lifelong_ray.config import load_config
from lifelong_ray.sim import backtest as bt
from lifelong_ray.sim.streams import abrupt_concept_drift

CFG = load_config("configs/demo.yaml").with_overrides(
    training={"runner": "local", "min_rows": 600}, estimator={"epochs": 20})


@pytest.fixture(scope="module")
def run():
    stream = abrupt_concept_drift(9000, drift_at=4000, seed=2)
    b = bt.Backtest(CFG, stream.to_table(label="y"), "y",
                    bt.BacktestSettings(bootstrap=1500, drift_at=[4000], label_delay=100))
    return b, b.run()


def test_backtest_and_live_system_share_the_decision_and_routing_code():
    from lifelong_ray.control import controller
    from lifelong_ray.serving import app

    assert bt.decide is controller.decide
    assert bt.choose_version is app.choose_version
    assert bt.WindowTracker is __import__("lifelong_ray.control.observe", fromlist=["WindowTracker"]).WindowTracker


def test_backtest_detects_retrains_canaries_and_recovers(run):
    _, rep = run
    sm = rep["summary"]
    kinds = [e["kind"] for e in rep["events"] if not e["data"].get("bootstrap")]
    for k in ("drift_detected", "retrain_started", "candidate_registered", "canary_started", "promoted"):
        assert k in kinds
    assert sm["detection_delays"] and 0 < sm["detection_delays"][0] < 1500
    assert sm["false_alarms"] == 0
    assert sm["accuracy_after_recovery"] > sm["accuracy_after_drift_static"] + 0.3
    assert sm["runner"] == ["local"] and sm["retrains"] >= 1


def test_prequential_bookkeeping(run):
    b, rep = run
    served = b.served_version != ""
    assert served[:1500].sum() == 0 and served[1500:].all()  # history rows are never scored
    assert rep["summary"]["samples"] == 9000 - 1500
    correct = (b.prediction == b.y)[1500:]
    assert rep["summary"]["prequential_accuracy"] == pytest.approx(correct.mean())
    # every row was predicted by a version that was serving then: the first one before the first canary
    first_canary = next(e["data"]["sample"] for e in rep["events"] if e["kind"] == "canary_started")
    assert set(b.served_version[1500:first_canary]) == {"v0001"}


def test_labels_are_revealed_only_after_the_delay():
    stream = abrupt_concept_drift(3000, drift_at=2000, seed=0)
    delay = 300
    b = bt.Backtest(CFG, stream.to_table(label="y"), "y", bt.BacktestSettings(bootstrap=1000, label_delay=delay))
    gaps: list[int] = []
    real_reveal = b._reveal

    def reveal(idx, buf):
        last_served = int(np.flatnonzero(b.served_version != "").max())
        gaps.append(last_served - int(idx.max()))
        real_reveal(idx, buf)

    b._reveal = reveal
    b.run()
    assert len(gaps) > 50 and min(gaps) >= delay


def test_detections_and_false_alarms():
    ev = [{"kind": "drift_detected", "data": {"sample": s}} for s in (100, 4200, 4300, 9000)]
    assert bt._detections(ev, [4000, 8000], start=0) == ([200, 1000], 1)


def test_infer_config_from_a_file_schema():
    table = pa.table({"a": [1.0, 2.0], "b": ["x", "y"], "t": [0, 1], "label": [0, 1]})
    cfg = bt.infer_config(table, "label")
    assert [(f.name, f.dtype) for f in cfg.model.features] == [("a", "float"), ("b", "category")]
    assert cfg.model.features[1].categories == ["x", "y"] and cfg.model.label.classes == [0, 1]
    with pytest.raises(ValueError, match="label column"):
        bt.infer_config(table, "nope")


def test_backtest_command_on_a_simulated_file(tmp_path):
    import json

    from lifelong_ray.cli import main

    data = tmp_path / "s.csv"
    assert main(["simulate", "--kind", "abrupt", "--n", "6000", "--drift-at", "4000", "--out", str(data)]) == 0
    assert main(["backtest", "--data", str(data), "--bootstrap", "1500", "--report-dir", str(tmp_path / "r")]) == 0
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["summary"]["drift_points"] == [4000]  # read from the simulate sidecar
    assert rep["summary"]["runner"] == ["local"] and (tmp_path / "r" / "report.png").stat().st_size > 10_000


# -- shadow, approvals and scripted operators: any live config replays ----------------------
LIVE = CFG.with_overrides(rollout={"shadow_fraction": 0.5, "shadow_min_samples": 200,
                                   "require_approval": ["canary", "full"]})


def _live_run(**settings):
    stream = abrupt_concept_drift(10000, drift_at=3000, seed=2)
    b = bt.Backtest(LIVE, stream.to_table(label="y"), "y",
                    bt.BacktestSettings(bootstrap=1500, drift_at=[3000], label_delay=100, **settings))
    rep = b.run()
    return b, rep, [e for e in rep["events"] if not e["data"].get("bootstrap")]


def test_a_config_with_shadow_and_approvals_finishes_with_a_promotion():
    b, rep, ev = _live_run(approve_after=300)
    kinds = [e["kind"] for e in ev]
    for k in ("shadow_started", "approval_requested", "approved", "canary_started", "promoted"):
        assert k in kinds, k
    assert kinds.index("shadow_started") < kinds.index("approval_requested") < kinds.index("canary_started")
    # the shadow left its stage on compared answers, as the live observer counts them
    shadow_passed = next(e for e in ev if e["kind"] == "canary_step" and e["data"].get("stage") == "shadow")
    assert shadow_passed["data"]["sample"] > next(e for e in ev if e["kind"] == "shadow_started")["data"]["sample"]
    assert "mirrored requests" in shadow_passed["reason"]
    mirrored = b.shadow_version != ""
    assert mirrored.any() and not (mirrored & (b.shadow_version == b.served_version)).any()
    # the policy approved each hold after it waited 300 samples, as "backtest"
    approvals = [e for e in ev if e["kind"] == "approved"]
    assert len(approvals) == 2 and all(e["data"]["who"] == "backtest" for e in approvals)
    for req, ok in zip([e for e in ev if e["kind"] == "approval_requested"], approvals):
        assert ok["data"]["sample"] - req["data"]["sample"] >= 300
    sm = rep["summary"]
    assert sm["promotions"] == 1 and sm["held"] is None and sm["rollout_stage_at_end"] == "stable"
    assert sm["approval_policy"] == "auto-approve after 300 samples"


def test_never_approving_holds_the_candidate_with_a_reason():
    b, rep, ev = _live_run(approval="never")
    kinds = [e["kind"] for e in ev]
    assert "approval_requested" in kinds and "approved" not in kinds and "promoted" not in kinds
    held = rep["summary"]["held"]
    assert held["stage"] == "approval" and held["approval_for"] == "canary"
    assert "backtest approval policy is 'never'" in held["reason"] and held["version"] in held["reason"]
    assert set(b.served_version[1500:]) == {"v0001"}  # it never got traffic


def test_scripted_pause_and_rollback_commands_show_in_the_events(tmp_path):
    from lifelong_ray.sim.operators import load_commands

    script = tmp_path / "ops.yaml"
    script.write_text("- {at_sample: 2000, kind: pause, who: ana, why: feature pipeline migration}\n"
                      "- {at_sample: 2600, kind: resume, who: ana, why: done}\n"
                      "- {at_sample: 2600, kind: resume, who: bob, why: twice}\n"
                      "- {at_sample: 7300, kind: rollback, who: ana, why: complaints}\n")
    b, rep, ev = _live_run(commands=load_commands(script), approve_after=0)
    by_kind = {k: [e for e in ev if e["kind"] == k] for k in ("paused", "resumed", "command_rejected", "rolled_back")}
    (p,) = by_kind["paused"]
    assert p["data"]["who"] == "ana" and 2000 <= p["data"]["sample"] < 2100
    assert "feature pipeline migration" in p["reason"]
    assert len(by_kind["resumed"]) == 1 and by_kind["command_rejected"][0]["data"]["who"] == "bob"
    (rb,) = [e for e in by_kind["rolled_back"] if e["data"].get("who") == "ana"]  # the canary started at 7200
    assert rb["data"]["sample"] == 7300 and "complaints" in rb["reason"] and rb["version"] == "v0002"
    assert set(b.served_version[7300:7500]) == {"v0001"}
    # no retrain started while paused
    starts = [e["data"]["sample"] for e in ev if e["kind"] == "retrain_started"]
    assert not [s for s in starts if p["data"]["sample"] < s < by_kind["resumed"][0]["data"]["sample"]]
    assert rep["summary"]["commands_scripted"] == 4


def test_a_bad_command_script_is_refused_naming_the_field(tmp_path):
    from lifelong_ray.cli import main
    from lifelong_ray.sim.operators import load_commands

    bad = tmp_path / "bad.json"
    bad.write_text('[{"at_sample": 10, "kind": "explode"}]')
    with pytest.raises(ValueError, match="command 0: kind"):
        load_commands(bad)
    data = tmp_path / "s.csv"
    data.write_text("x,y\n0.0,0\n1.0,1\n")
    assert main(["backtest", "--data", str(data), "--commands", str(bad), "--report-dir", str(tmp_path / "r")]) == 2
