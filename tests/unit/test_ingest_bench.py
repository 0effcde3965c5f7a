"""Smoke test of benchmarks/ingest.py --quick --json (no timing assertions: DESIGN.md rule 8)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_json_prints_exactly_the_contract_keys():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ingest.py"), "--quick", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600, check=True)
    summary = json.loads(out.stdout)
    assert set(summary) == {"logging_p50_overhead", "validate_rows_per_s", "pyarrow_rows_per_s",
                            "window_peak_rss_mb"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in summary.values())
    assert summary["validate_rows_per_s"] > 0 and summary["pyarrow_rows_per_s"] > 0
    assert summary["window_peak_rss_mb"] > 0 and summary["logging_p50_overhead"] > -1


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ingest_bench", ROOT / "benchmarks" / "ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failed_phase_still_prints_the_json_line_names_the_phase_and_exits_non_zero(monkeypatch, capsys):
    bench = _bench_module()

    def broken(*args, **kwargs):
        raise RuntimeError("window subprocess failed: ValueError: When connecting to an existing cluster, ...")

    logging_ = {route: {"p50_ms": 1.0, "p95_ms": 2.0, "overhead": 0.5 if route != "/no-log" else 0.0}
                for route in bench.HTTP_VARIANTS}
    monkeypatch.setattr(bench, "measure_logging", lambda *a, **k: logging_)
    monkeypatch.setattr(bench, "measure_validation", lambda *a, **k: {"validate_rows_per_s": 10.0,
                                                                      "pyarrow_rows_per_s": 20.0})
    monkeypatch.setattr(bench, "measure_window", broken)
    assert bench.main(["--quick", "--json"]) == 1
    out = capsys.readouterr()
    (line,) = out.out.strip().splitlines()
    summary = json.loads(line)
    assert summary == {"logging_p50_overhead": 0.5, "validate_rows_per_s": 10.0, "pyarrow_rows_per_s": 20.0,
                       "window_peak_rss_mb": None, "failed_phase": "window",
                       "error": "RuntimeError: window subprocess failed: ValueError: When connecting to an "
                                "existing cluster, ..."}
    assert "phase window failed" in out.err


def test_the_first_failed_phase_is_named_and_the_others_still_run(monkeypatch, capsys):
    bench = _bench_module()
    ran = []

    def fails(name):
        def fn(*args, **kwargs):
            ran.append(name)
            raise OSError(f"{name} broke")
        return fn

    monkeypatch.setattr(bench, "measure_logging", fails("logging"))
    monkeypatch.setattr(bench, "measure_validation", fails("validation"))
    monkeypatch.setattr(bench, "measure_window", lambda *a, **k: ran.append("window") or {"peak_rss_mb": 5.0})
    assert bench.main(["--quick", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert ran == ["logging", "validation", "window"]
    assert summary["failed_phase"] == "logging" and summary["error"] == "OSError: logging broke"
    assert summary["logging_p50_overhead"] is None and summary["window_peak_rss_mb"] == 5.0


def test_the_default_durability_picks_the_reported_variant():
    bench = _bench_module()
    assert bench.HTTP_VARIANTS[bench.DEFAULT_ROUTE] == "group"


def test_every_benchmark_starts_its_own_ray_or_joins_only_an_explicit_address():
    """``ray.init()`` with no address joins whatever local head is up (``lifelong up``,
    ``ray start``) and refuses the num_cpus a benchmark sets: each call names its address."""
    import ast

    calls = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "ray.init":
                calls.append((path.name, node.lineno, {k.arg for k in node.keywords}))
    assert calls, "no ray.init call found"
    assert [(name, line) for name, line, kws in calls if "address" not in kws] == []
