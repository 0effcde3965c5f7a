"""benchmarks/rollback_time.py without Ray: its command line, the bound formula, the
fault per kind, the breakdown of the measured time, the checks on each case and the
--json shape."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import nbinom

from lifelong_ray.config import load_config
from lifelong_ray.policy.analysis import MIN_SERVED_FOR_RATES
from lifelong_ray.serving.faults import MAX_DELAY_MS, VersionFaults

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    with pytest.MonkeyPatch.context() as mp:  # benchmarks/ is not a package: import it from its folder
        mp.syspath_prepend(str(ROOT / "benchmarks"))
        yield importlib.import_module("rollback_time")


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "configs" / "demo.yaml")


def _case(bench, cfg, kind="errors", to_zero=1.0, reason="canary error rate 100.0% > 5.0%", **kw):
    fault = bench.fault_spec(kind, 1.0)
    b = bench.bound(cfg, rate=25.0, batch=10, delay_s=fault.get("delay_ms", 0.0) / 1000)
    parts = {"pickup": 0.1, "rows_after_t0": 20.0, **kw.pop("breakdown", {})}
    return bench.CaseResult(kind, "v0002", "v0001", fault, to_zero, b, parts, reason,
                            kw.pop("min_champion_weight", 90.0), **kw)


# -- command line -------------------------------------------------------------

def test_defaults_quick_and_kinds(bench):
    s, a = bench.parse_args([])
    assert s.kinds == ("errors", "nan", "latency") and (s.rate, s.batch, s.tick_seconds) == (25.0, 10, 0.5)
    assert a.port is None and not a.json and a.config == "configs/demo.yaml"
    assert bench.parse_args(["--quick"])[0].kinds == ("errors",)
    s, a = bench.parse_args(["--quick", "--kinds", "latency,nan", "--json", "--port", "8123", "--batch", "1"])
    assert s.kinds == ("latency", "nan") and s.batch == 1 and a.json and a.port == 8123  # --kinds wins over --quick


@pytest.mark.parametrize("argv, message", [
    (["--kinds", "errors,timeouts"], "--kinds must name distinct kinds among errors, nan, latency"),
    (["--kinds", "nan,nan"], "--kinds must name distinct kinds"),
    (["--kinds", ","], "--kinds must name distinct kinds"),
    (["--rate", "0"], "--rate must be > 0"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--label-delay", "-1"], "--label-delay must be >= 0"),
    (["--tick-seconds", "0"], "--tick-seconds must be > 0"),
    (["--warmup", "-2"], "--warmup must be >= 0"),
    (["--timeout", "0"], "--timeout must be > 0"),
    (["--port", "0"], "--port must lie in [1, 65535]"),
])
def test_bad_arguments_name_the_flag_and_rule(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_config_applies_the_overrides(bench, cfg):
    s, _ = bench.parse_args(["--tick-seconds", "0.3"])
    c = bench.bench_config(cfg, s, "/tmp/somewhere", 8123)
    assert c.controller.tick_seconds == 0.3 and c.storage.root == "/tmp/somewhere" and c.serving.port == 8123
    assert c.training.runner == "local" and c.drift.cooldown_seconds == 0
    assert c.rollout.canary_steps == [10, 50, 100] and c.rollout.min_seconds_per_step == 3600
    assert c.model.name == bench.MODEL and c.model.features == cfg.model.features  # the schema is kept


# -- the fault ----------------------------------------------------------------

def test_fault_per_kind_is_a_valid_fault_spec(bench):
    assert VersionFaults(**bench.fault_spec("errors")).abort_fraction == 1.0
    assert VersionFaults(**bench.fault_spec("nan")).nan_fraction == 1.0
    assert VersionFaults(**bench.fault_spec("latency", 7.5)).delay_ms == 75.0
    assert bench.fault_spec("latency", 1e9) == {"delay_ms": MAX_DELAY_MS}  # clamped to what faults.json allows
    with pytest.raises(ValueError, match="p95 latency > 0"):
        bench.fault_spec("latency")
    with pytest.raises(ValueError, match="unknown failure kind 'oom'"):
        bench.fault_spec("oom")


# -- the bound ----------------------------------------------------------------

def test_bound_adds_poll_evidence_delay_and_tick(bench, cfg):
    c = cfg.with_overrides(controller={"tick_seconds": 0.5}, rollout={"min_labeled_per_step": 60})
    b = bench.bound(c, rate=25.0, batch=10)
    assert b.rows_needed == MIN_SERVED_FOR_RATES == 20 and b.canary_requests == 2 and b.weight == 0.1
    assert b.requests_q == 2 + nbinom.ppf(0.95, 2, 0.1)                      # 46 requests
    assert b.evidence_s == pytest.approx(b.requests_q / 25.0)
    assert b.mean_evidence_s == pytest.approx(2 / 0.1 / 25.0)                # 0.8 s
    assert b.seal_s == c.data.log_seal_seconds == 0.25
    assert b.seconds == pytest.approx(c.serving.routing_poll_seconds + b.evidence_s + 0.25 + 0.5)
    assert bench.bound(c.with_overrides(data={"log_segments": False}), rate=25.0, batch=10).seal_s == 0.0
    slow = bench.bound(c, rate=25.0, batch=10, delay_s=0.3)
    assert slow.seconds == pytest.approx(b.seconds + 0.3)
    text = slow.formula()
    assert "poll 0.25 s" in text and "+ delay 0.30 s" in text and "+ seal 0.25 s" in text and "tick 0.50 s" in text
    assert f"= {slow.seconds:.2f} s" in text and "2 requests = 20 rows" in text


def test_the_latency_bound_waits_for_n_timed_requests_not_n_rows(bench, cfg):
    """One latency sample per request (its rows share it): the latency verdict needs
    MIN_SERVED_FOR_RATES canary requests whatever the batch size."""
    c = cfg.with_overrides(controller={"tick_seconds": 0.5}, rollout={"min_labeled_per_step": 60})
    lat = bench.bound(c, rate=25.0, batch=10, delay_s=2.0, per_request=True)
    assert (lat.canary_requests, lat.rows_needed) == (20, 200)
    assert lat.requests_q == 20 + nbinom.ppf(0.95, 20, 0.1)
    assert lat.evidence_s > bench.bound(c, rate=25.0, batch=10).evidence_s * 5
    assert "20 requests = 200 rows" in lat.formula()


def test_bound_follows_the_config(bench, cfg):
    few = cfg.with_overrides(rollout={"min_labeled_per_step": 8, "canary_steps": [25, 100]},
                             serving={"routing_poll_seconds": 1.0}, controller={"tick_seconds": 2.0})
    b = bench.bound(few, rate=10.0, batch=1)
    assert (b.rows_needed, b.canary_requests, b.weight, b.pickup_s, b.tick_s) == (8, 8, 0.25, 1.0, 2.0)
    assert bench.bound(few, rate=10.0, batch=8).canary_requests == 1
    assert bench.bound(few, rate=20.0, batch=1).evidence_s == pytest.approx(b.evidence_s / 2)
    with pytest.raises(ValueError, match="rate must be > 0"):
        bench.bound(few, rate=0.0, batch=1)


# -- measurements ---------------------------------------------------------------

def _log(rows):
    return pd.DataFrame(rows, columns=["t", "version", "error", "latency_ms"])


def test_breakdown_adds_up_to_the_measured_time(bench):
    rows = _log([(9.95, "v0002", None, 4.0), (9.99, "v0001", None, 4.0),           # before T0: clean
                 (10.2, "v0002", "injected_abort", 5.0), (10.2, "v0002", "injected_abort", 5.0),
                 (10.9, "v0002", "injected_abort", 5.0), (11.6, "v0002", "injected_abort", 5.0),
                 (11.7, "v0001", None, 4.0)])
    b = bench.breakdown(rows, candidate="v0002", kind="errors", delay_ms=0.0, t0=10.0, t1=12.0,
                        step_started=9.9, decided=11.5, rows_needed=4)
    assert b["pickup"] == pytest.approx(0.2) and b["evidence"] == pytest.approx(0.7)  # 4th canary row at 10.9
    assert b["wait"] == pytest.approx(0.6) and b["tick_work"] == pytest.approx(0.5)
    assert sum(b[k] for k in ("pickup", "evidence", "wait", "tick_work")) == pytest.approx(12.0 - 10.0)
    assert b["last_canary_row"] == pytest.approx(1.6)
    assert (b["rows_before_t0"], b["rows_after_t0"]) == (1.0, 4.0)


def test_breakdown_of_a_latency_fault_and_of_an_empty_log(bench):
    rows = _log([(10.1, "v0002", None, 3.0), (10.4, "v0002", None, 203.0), (10.5, "v0002", None, 205.0)])
    b = bench.breakdown(rows, candidate="v0002", kind="latency", delay_ms=200.0, t0=10.0, t1=11.0,
                        step_started=9.0, decided=10.8, rows_needed=2)
    assert b["pickup"] == pytest.approx(0.4) and b["evidence"] == 0.0  # enough rows before the first slow one
    empty = bench.breakdown(_log([]), candidate="v0002", kind="nan", delay_ms=0.0, t0=1.0, t1=2.0,
                            step_started=0.0, decided=1.5, rows_needed=20)
    assert math.isnan(empty["pickup"]) and math.isnan(empty["last_canary_row"]) and empty["rows_after_t0"] == 0


def test_champion_p95_uses_answered_rows_in_the_window(bench):
    rows = _log([(t, "v0001", None, float(t)) for t in range(1, 101)] + [(50.0, "v0001", "x", 1e6),
                                                                          (60.0, "v0002", None, 1e6)])
    assert bench.champion_p95_ms(rows, "v0001", since=1.0) == pytest.approx(95.05)
    assert bench.champion_p95_ms(rows, "v0001", since=91.0) == pytest.approx(99.55)
    with pytest.raises(RuntimeError, match="no answered rows of the champion v0009"):
        bench.champion_p95_ms(rows, "v0009", since=0.0)


def test_tick_period_is_the_median_spacing(bench):
    assert bench.tick_period([1.0, 1.5, 2.0, 3.5]) == 0.5
    assert math.isnan(bench.tick_period([]))


# -- checks and summary -----------------------------------------------------------

@pytest.mark.parametrize("kind, reason, ok", [
    ("errors", "canary error rate 100.0% > 5.0% (40/40 requests at 10%; ...)", True),
    ("errors", "canary answered none of its 20 requests (20 errors at 10%)", True),
    ("nan", "canary answered none of its 30 requests (30 errors at 10%)", True),
    ("latency", "canary p95 latency 180.0ms > 3 x champion p95 18.0ms (20 vs 200 requests at 10%)", True),
    ("latency", "canary answered none of its 20 requests", False),
    ("errors", "canary accuracy 0.500 vs champion 0.900", False),
])
def test_reason_must_name_the_failure(bench, kind, reason, ok):
    assert bench.reason_names_failure(kind, reason) is ok


def test_a_clean_case_has_no_problems_and_met_compares_with_the_bound(bench, cfg):
    c = _case(bench, cfg, to_zero=1.0)
    assert c.problems() == [] and c.met
    assert not _case(bench, cfg, to_zero=c.bound.seconds + 0.01).met
    assert _case(bench, cfg, to_zero=c.bound.seconds).met  # "at most"


def test_problems_name_what_went_wrong(bench, cfg):
    c = _case(bench, cfg, kind="latency", reason="canary error rate 50% > 5%", min_champion_weight=50.0,
              requests_failed=3, breakdown={"pickup": math.nan})
    assert c.problems() == [
        "latency: the rollback reason does not name the failure: canary error rate 50% > 5%",
        "latency: the champion fell to 50% (< 90%)",
        "latency: 3 client requests were not answered 200",
        "latency: no faulty canary row in the prediction log",
    ]
    assert _case(bench, cfg, reason="").problems() == ["errors: no rolled_back event for v0002"]


def test_json_summary_has_exactly_the_issue_keys(bench, cfg):
    cases = [_case(bench, cfg, kind=k, to_zero=s) for k, s in (("errors", 1.5), ("nan", 2.0), ("latency", 3.0))]
    out = bench.json_summary(cases)
    assert list(out) == ["cases"] and list(out["cases"]) == ["errors", "nan", "latency"]
    for kind, s in (("errors", 1.5), ("nan", 2.0), ("latency", 3.0)):
        assert list(out["cases"][kind]) == ["seconds_to_zero", "bound_seconds"]
        assert out["cases"][kind]["seconds_to_zero"] == s
        assert type(out["cases"][kind]["bound_seconds"]) is float


def test_print_tables_shows_the_bound_breakdown_and_problems(bench, cfg, capsys):
    parts = {"pickup": 0.1, "evidence": 0.5, "wait": 0.3, "tick_work": 0.35, "last_canary_row": 1.4,
             "rows_before_t0": 0.0, "rows_after_t0": 40.0}
    good = _case(bench, cfg, to_zero=1.25, breakdown=parts, requests_sent=250, seconds=10.0, tick_period=0.5)
    slow = _case(bench, cfg, kind="latency", to_zero=9.0, breakdown=parts, reason="", requests_sent=100, seconds=20.0)
    result = {"cases": [good, slow], "settings": {"rate": 25.0, "batch": 10, "label_delay": 2.0},
              "config": {"canary_steps": [10, 50, 100], "tick_seconds": 0.5, "routing_poll_seconds": 0.25},
              "date": "today", "machine": "a machine", "ray_version": "x", "load_before": (1.0, 2.0, 3.0),
              "load_after": (4.0, 5.0, 6.0), "wall_seconds": 100.0, "requests_sent": 350, "requests_failed": 0,
              "last_failure": "", "versions": {"v0001": 350}, "prediction_rows": 3500}
    bench.print_tables(result)
    out = capsys.readouterr().out
    assert "1.25" in out and "9.00" in out and out.count("NO") == 1
    assert f"{good.bound.seconds:.2f}" in out and "load average before 1.00 2.00 3.00" in out
    assert "+ delay 0.01 s" in out  # the latency case's bound holds its injected delay
    assert "problem:" in out and "latency: no rolled_back event for v0002" in out
    assert bench.problems(result) == ["latency: no rolled_back event for v0002"]
