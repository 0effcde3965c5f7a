"""Smoke test of benchmarks/soak.py --json at a tiny size (no timing assertions: DESIGN.md rule 8)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_soak_prints_exactly_the_contract_keys():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--predictions", "6000",
                          "--rate", "500", "--commands", "30", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600, check=True)
    summary = json.loads(out.stdout)
    assert set(summary) == {"predictions", "rss_mb_at_25pct", "rss_mb_at_end", "rss_growth_ratio", "tick_p50_s",
                            "tick_p99_s", "tick_seconds", "restart_seconds", "restart_peak_rss_mb", "commands",
                            "commands_applied_twice", "rss_mb_by_life", "restart_process_seconds"}
    by_life = summary.pop("rss_mb_by_life")  # one controller process per life: start, restart at 50%, at 90%
    assert len(by_life) == 3 and all(isinstance(v, float) and v > 0 for v in by_life)
    assert by_life[-1] == summary["rss_mb_at_end"]
    assert summary["predictions"] == 6000 and summary["commands"] == 30
    assert isinstance(summary["commands_applied_twice"], int)
    floats = {k: v for k, v in summary.items() if k not in ("predictions", "commands", "commands_applied_twice")}
    assert all(isinstance(v, float) and math.isfinite(v) and v >= 0 for v in floats.values())
    assert summary["restart_peak_rss_mb"] > 0 and summary["tick_seconds"] == 1.0
