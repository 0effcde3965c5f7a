"""benchmarks/serve_overhead.py without Ray: its command line, request bodies and the
pure summary (percentiles, medians across rounds, ratios, targets, the --json keys)."""

from __future__ import annotations

import importlib
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from lifelong_ray.config import load_config
from lifelong_ray.data.schema import Schema
from lifelong_ray.sim.streams import abrupt_concept_drift

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    with pytest.MonkeyPatch.context() as mp:  # benchmarks/ is not a package: import it from its folder
        mp.syspath_prepend(str(ROOT / "benchmarks"))
        yield importlib.import_module("serve_overhead")


def _phase(bench, latencies, rps, loaded=None, versions=None):
    return bench.Phase(list(latencies), rps, list(loaded or latencies), Counter(versions or {}))


# -- command line -------------------------------------------------------------

def test_defaults_and_quick(bench):
    s, a = bench.parse_args([])
    assert (s.rounds, s.latency_requests, s.throughput_requests, s.warmup) == (8, 200, 400, 100)
    assert s.throughput_turn == 40
    assert (s.concurrency, s.instances, s.canary_percent, s.breakdown) == (8, 10, 10.0, False)
    assert a.port is None and not a.json and a.config == "configs/demo.yaml"
    assert s.sides() == ["plain", "router"]
    q, _ = bench.parse_args(["--quick"])
    assert {k: getattr(q, k) for k in bench.QUICK} == bench.QUICK
    assert q.concurrency == s.concurrency and q.instances == s.instances


def test_explicit_sizes_win_over_quick(bench):
    s, a = bench.parse_args(["--quick", "--rounds", "3", "--warmup", "0", "--breakdown", "--json",
                             "--canary-percent", "50", "--port", "8123", "--concurrency", "4"])
    assert (s.rounds, s.warmup, s.latency_requests) == (3, 0, bench.QUICK["latency_requests"])
    assert s.breakdown and s.sides() == ["plain", "router", "plain+log"]
    assert (s.canary_percent, s.concurrency, a.port, a.json) == (50.0, 4, 8123, True)


@pytest.mark.parametrize("argv, flag", [
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--latency-requests", "-1"], "--latency-requests must be >= 1"),
    (["--concurrency", "0"], "--concurrency must be >= 1"),
    (["--throughput-turn", "15"], "--throughput-turn must be >= 2 x --concurrency = 16"),
    (["--concurrency", "30"], "--throughput-turn must be >= 2 x --concurrency = 60 (got 40)"),
    (["--instances", "0"], "--instances must be >= 1"),
    (["--warmup", "-5"], "--warmup must be >= 0"),
    (["--canary-percent", "0"], "--canary-percent must lie strictly between 0 and 100"),
    (["--canary-percent", "100"], "--canary-percent must lie strictly between 0 and 100"),
    (["--port", "70000"], "--port must lie in [1, 65535]"),
])
def test_bad_arguments_name_the_flag_and_rule(bench, capsys, argv, flag):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


# -- load ---------------------------------------------------------------------

def test_request_bodies_are_valid_predict_envelopes(bench):
    s, _ = bench.parse_args(["--instances", "7"])
    stream = abrupt_concept_drift(2 * bench.TRAIN_ROWS + 64 * s.instances, drift_at=bench.TRAIN_ROWS, seed=0)
    bodies = bench.request_bodies(stream, s)
    schema = Schema(load_config(ROOT / "configs" / "demo.yaml").model)
    assert len(bodies) == 64 and len(set(bodies)) == 64
    for raw in (bodies[0], bodies[-1]):
        body = json.loads(raw)
        assert list(body) == ["instances"] and len(body["instances"]) == 7
        _, violations = schema.validate_records(body["instances"])
        assert violations == []


def test_busy_rate_counts_only_while_every_client_was_busy(bench):
    assert bench.busy_rate(0.0, [0.2, 0.4, 0.5, 0.9, 1.3], busy_end=0.5) == (3, 0.5)
    assert bench.busy_rate(2.0, [], busy_end=2.5) == (0, 0.5)


def test_turns_cycle_every_side_through_every_position(bench):
    sides = ["plain", "router", "plain+log"]
    orders = bench.turn_orders(sides)
    assert len(orders) == 6 and len(set(orders)) == 6
    assert all(sorted(o) == sorted(sides) for o in orders)
    assert {o[0] for o in orders} == set(sides)


class _FakeLoad:
    """The real ``Load`` with ``one`` replaced: each side's request takes a fixed time."""

    def __init__(self, bench, seconds):
        self.load = bench.Load([b"{}"], instances=1, concurrency=4)
        self.seconds, self.calls = seconds, []

        def one(url):
            self.calls.append(url)
            time.sleep(self.seconds[url])
            return self.seconds[url] * 1e3, "v0001"
        self.load.one = one


def test_concurrent_turns_alternate_bursts_and_measure_each_side(bench):
    fake = _FakeLoad(bench, {"p": 0.001, "r": 0.03})
    cpu_reads = Counter()

    def cpu(side):
        cpu_reads[side] += 1
        return float(cpu_reads[side])   # one CPU second more at each read

    try:
        out = fake.load.concurrent_turns({"plain": "p", "router": "r"}, n=24, turn=8, first=1, cpu=cpu)
    finally:
        fake.load.close()
    assert len(fake.calls) == 48 and fake.calls.count("p") == fake.calls.count("r") == 24
    # bursts of 8, the sides in turn: first=1 starts with the second order (router, plain)
    bursts = [fake.calls[i:i + 8] for i in range(0, 48, 8)]
    assert [set(b) for b in bursts] == [{"r"}, {"p"}, {"p"}, {"r"}, {"r"}, {"p"}]
    (p_rps, p_ms, p_v, p_cpu), (r_rps, r_ms, r_v, r_cpu) = out["plain"], out["router"]
    assert len(p_ms) == len(r_ms) == 24 and p_v == r_v == Counter(v0001=24)
    # 4 clients, 1 ms vs 30 ms per request (at least: a sleep may overrun, never underrun)
    assert 0 < r_rps <= 4 / 0.03 and p_rps > r_rps
    assert p_cpu == r_cpu == pytest.approx(3 * 1.0 / 24 * 1e3)  # 3 bursts, 1 s each, over 24 requests
    nocpu = _FakeLoad(bench, {"p": 0.001})
    try:
        assert nocpu.load.concurrent_turns({"plain": "p"}, n=8, turn=8)["plain"][3] is None
    finally:
        nocpu.load.close()


# -- summary ------------------------------------------------------------------

def test_percentiles_match_numpy_linear_interpolation(bench):
    assert bench.percentiles([4.0, 1.0, 3.0, 2.0]) == {"p50": 2.5, "p90": 3.7, "p99": 3.97}
    with pytest.raises(ValueError, match="no latencies"):
        bench.percentiles([])


def test_summary_takes_medians_across_rounds_and_router_over_plain(bench):
    plain = [_phase(bench, [10.0] * 99 + [20.0], rps) for rps in (100.0, 200.0, 150.0)]
    router = [_phase(bench, [11.0] * 99 + [30.0], rps, versions={"v0001": 9, "v0002": 1})
              for rps in (90.0, 170.0, 140.0)]
    s = bench.summarize({"plain": plain, "router": router})
    assert s["sides"]["plain"]["p50"] == 10.0 and s["sides"]["router"]["p50"] == 11.0
    assert s["plain_rps"] == 150.0 and s["router_rps"] == 140.0          # medians, not means
    assert s["p50_ratio"] == pytest.approx(1.1)
    assert s["p99_ratio"] == pytest.approx(s["sides"]["router"]["p99"] / s["sides"]["plain"]["p99"])
    assert s["throughput_ratio"] == pytest.approx(140.0 / 150.0)
    assert s["rounds_throughput_ratio"] == pytest.approx([0.9, 0.85, 140.0 / 150.0])
    assert s["sides"]["router"]["versions"] == {"v0001": 27, "v0002": 3}
    assert s["targets"]["p50"]["met"] and s["targets"]["throughput"]["met"]  # 1.10 and 0.93: on the line
    assert bench.json_summary(s) == {"p50_ratio": s["p50_ratio"], "p99_ratio": s["p99_ratio"],
                                     "throughput_ratio": s["throughput_ratio"],
                                     "plain_rps": 150.0, "router_rps": 140.0}


def test_summary_reports_missed_targets(bench):
    s = bench.summarize({"plain": [_phase(bench, [5.0], 300.0)], "router": [_phase(bench, [5.6], 260.0)]})
    assert s["p50_ratio"] == pytest.approx(1.12) and not s["targets"]["p50"]["met"]
    assert s["throughput_ratio"] == pytest.approx(260 / 300) and not s["targets"]["throughput"]["met"]
    summary = bench.json_summary(s)
    assert list(summary) == list(bench.JSON_KEYS)
    assert all(type(v) is float for v in summary.values())


def test_summary_keeps_the_breakdown_side(bench):
    p = _phase(bench, [2.0, 4.0], 50.0, loaded=[8.0])
    s = bench.summarize({"plain": [p], "router": [p], "plain+log": [_phase(bench, [3.0], 40.0)]})
    assert set(s["sides"]) == {"plain", "router", "plain+log"}
    assert s["sides"]["plain"]["loaded_p50"] == 8.0 and s["sides"]["plain+log"]["rps"] == 40.0


def test_summary_needs_both_sides(bench):
    with pytest.raises(ValueError, match="'router'"):
        bench.summarize({"plain": [_phase(bench, [1.0], 1.0)]})
    with pytest.raises(ValueError, match="'plain'"):
        bench.summarize({"plain": [], "router": [_phase(bench, [1.0], 1.0)]})


# -- premise checks and the printed tables --------------------------------------

def test_premise_problems_catch_a_missing_log_or_canary(bench):
    s = bench.Settings(rounds=2, latency_requests=50, throughput_requests=50, warmup=10, canary_percent=10)
    both = {"plain": [_phase(bench, [1.0], 1.0)],
            "router": [_phase(bench, [1.0], 1.0, versions={"v0001": 180, "v0002": 20})]}
    assert bench.premise_problems(bench.summarize(both), s, router_log_rows=2200) == []  # 220 x 10 instances
    only_champion = {**both, "router": [_phase(bench, [1.0], 1.0, versions={"v0001": 200})]}
    problems = bench.premise_problems(bench.summarize(only_champion), s, router_log_rows=220)
    assert problems == ["the router logged 220 prediction rows for 220 requests of 10 instances",
                        "only v0001 answered through the router (canary 10%)"]
    tiny = bench.Settings(rounds=1, latency_requests=20, throughput_requests=20, warmup=0, canary_percent=10)
    assert bench.premise_problems(bench.summarize(only_champion), tiny, router_log_rows=400) == []  # 4 expected


def test_print_tables_shows_ratios_breakdown_and_missed_targets(bench, capsys):
    s = bench.Settings(rounds=1, breakdown=True)
    result = bench.summarize({"plain": [_phase(bench, [4.0], 200.0)],
                              "router": [_phase(bench, [9.0], 80.0, versions={"v0001": 9, "v0002": 1})],
                              "plain+log": [_phase(bench, [7.0], 120.0)]})
    result.update(settings=s.__dict__, versions=["v0001", "v0002"], weights={"v0001": 90.0, "v0002": 10.0},
                  load_before=(0.5, 0.4, 0.3), load_after=(0.6, 0.4, 0.3), measure_seconds=12.0,
                  prediction_log_files=1234, prediction_log_rows=23_000, ray_version="x", date="today", machine="a machine")
    bench.print_tables(result)
    out = capsys.readouterr().out
    assert "router / plain" in out and "2.250" in out and "0.400" in out  # p50 9/4, throughput 80/200
    assert "v0001 9, v0002 1" in out and "23,000 rows in 1,234 files for 800 requests" in out and "load average before 0.50 0.40 0.30" in out
    assert "3.00" in out and "60%" in out and "2.00" in out and "40%" in out  # log 7-4, hop 9-7 of 5 ms
    assert out.count("NO") == 2


def test_replica_cpu_per_request_is_the_median_of_the_rounds_that_measured_it(bench, capsys):
    plain = [bench.Phase([4.0], 200.0, [8.0], cpu_ms=c) for c in (5.0, 7.0, 6.0)]
    router = [bench.Phase([5.0], 180.0, [9.0], cpu_ms=c) for c in (6.5, None, 6.0)]
    s = bench.summarize({"plain": plain, "router": router})
    assert s["sides"]["plain"]["cpu_ms"] == 6.0 and s["sides"]["router"]["cpu_ms"] == 6.25
    assert bench.summarize({"plain": [_phase(bench, [1.0], 1.0)], "router": [_phase(bench, [1.0], 1.0)]}
                           )["sides"]["router"]["cpu_ms"] is None  # not measured: None, never 0
    s.update(settings=bench.Settings(rounds=3).__dict__, versions=["v0001", "v0002"], weights={"v0001": 90.0},
             load_before=(0.5,) * 3, load_after=(0.6,) * 3, measure_seconds=1.0, prediction_log_files=1,
             prediction_log_rows=1, ray_version="x", date="today", machine="m")
    bench.print_tables(s)
    out = capsys.readouterr().out
    assert "replica CPU ms/req" in out and "6.25" in out and "1.042" in out  # 6.25 / 6.0


def test_process_cpu_seconds_reads_this_process_and_none_for_a_gone_one(bench):
    import os

    assert bench.process_cpu_seconds(os.getpid()) > 0
    assert bench.process_cpu_seconds(2 ** 22 + 7) is None  # above Linux's pid_max
