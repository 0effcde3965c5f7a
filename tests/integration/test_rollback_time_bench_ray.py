"""benchmarks/rollback_time.py --quick end to end on the session's Ray and Serve,
in-process: the controller actor trains and promotes a first version, a retrain
command canaries a candidate at 10%, the injected 100%-error fault rolls it back
with a reason naming the error rate while the champion keeps >= 90% and every client
request is answered (the benchmark's own checks; main() returns 1 if any fails),
``--json`` prints exactly the issue's shape, and the benchmark removes its Serve apps,
its controller and its storage. No timing assertions (DESIGN.md rule 8)."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quick_json_run_on_the_session_serve(serve_port, capsys, monkeypatch):
    import ray
    from ray import serve

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # not a package: import it from its folder
    bench = importlib.import_module("rollback_time")
    monkeypatch.chdir(ROOT)  # --config is relative to the repository root
    assert bench.main(["--quick", "--json", "--port", str(serve_port), "--warmup", "2", "--timeout", "180"]) == 0
    # Ray's raylet may print warnings to the driver's stdout; everything else must be the JSON
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip() and "(raylet)" not in ln]
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert lines[0] == json.dumps(summary)
    assert list(summary) == ["cases"] and list(summary["cases"]) == ["errors"]
    case = summary["cases"]["errors"]
    assert list(case) == ["seconds_to_zero", "bound_seconds"]
    assert all(type(v) is float and math.isfinite(v) and v > 0 for v in case.values())
    apps = set(serve.status().applications)
    assert "lifelong" not in apps and not any(a.startswith(f"lifelong-{bench.MODEL}-") for a in apps)
    with pytest.raises(ValueError):
        ray.get_actor(f"lifelong-controller-{bench.MODEL}", namespace="lifelong")
