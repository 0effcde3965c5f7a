"""benchmarks/serve_overhead.py end to end on the session's Ray and Serve, in-process,
at a tiny size: the router (ingress + two versions, durable log on) and both plain
apps really serve over HTTP, the benchmark's own premise checks pass (one prediction
log file per router request, both versions answered), ``--json`` prints exactly the
issue's keys, and the benchmark removes its Serve apps (other modules share Serve).
No timing assertions (DESIGN.md rule 8)."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quick_json_run_on_the_session_serve(serve_port, capsys, monkeypatch):
    from ray import serve

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # not a package: import it from its folder
    bench = importlib.import_module("serve_overhead")
    monkeypatch.chdir(ROOT)  # --config is relative to the repository root
    argv = ["--quick", "--json", "--breakdown", "--port", str(serve_port), "--rounds", "1",
            "--latency-requests", "30", "--throughput-requests", "40", "--warmup", "5",
            "--concurrency", "4", "--canary-percent", "50"]
    assert bench.main(argv) == 0  # raises if the router side was not the production path
    out = capsys.readouterr().out
    summary = json.loads(out)
    assert out.strip() == json.dumps(summary)  # nothing else on stdout
    assert list(summary) == ["p50_ratio", "p99_ratio", "throughput_ratio", "plain_rps", "router_rps"]
    assert all(type(v) is float and math.isfinite(v) and v > 0 for v in summary.values())
    assert summary["throughput_ratio"] == pytest.approx(summary["router_rps"] / summary["plain_rps"])
    ours = {"lifelong", "lifelong-demo-v0001", "lifelong-demo-v0002"} | {n for n, _ in bench.PLAIN_APPS.values()}
    assert not ours & set(serve.status().applications)
