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
