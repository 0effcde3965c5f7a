"""Report assembly, validation, and the json + png files."""

from __future__ import annotations

import json

import pytest

from lifelong_ray.events import Event, EventKind
from lifelong_ray.sim.report import (
    REQUIRED_SUMMARY_KEYS,
    build_report,
    plot_report,
    summarize_events,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ev(sample: int | None, kind: str, version: str, reason: str = "because", **data) -> dict:
    if sample is not None:
        data["sample"] = sample
    return {"t": (sample or 0) / 50.0, "kind": kind, "model": "demo", "version": version,
            "reason": reason, "data": data}


def _synthetic() -> tuple[list[dict], dict, dict]:
    samples = list(range(0, 6001, 100))
    acc = [0.95 if s < 2000 else 0.42 if s < 2600 else 0.7 if s < 2800 else 0.94 for s in samples]
    static = [0.95 if s < 2000 else 0.42 for s in samples]
    weight = [0 if s < 2500 else 10 if s < 2650 else 50 if s < 2800 else 100 for s in samples]
    series = {"sample": samples, "accuracy": acc, "static_accuracy": static, "canary_weight": weight,
              "t": [s / 50.0 for s in samples], "drift_points": [2000]}
    events = [
        _ev(0, "promoted", "v1", "bootstrap", bootstrap=True),
        _ev(2250, "drift_detected", "v1", "accuracy 0.42 < 0.95 - 0.10"),
        _ev(2260, "retrain_started", "v2"),
        {"t": 2480 / 50.0, "kind": "candidate_registered", "model": "demo", "version": "v2",
         "reason": "no sample: placed from t"},
        _ev(2500, "canary_started", "v2"),
        _ev(2520, "rolled_back", "v2", "canary accuracy low"),
        _ev(2530, "retrain_started", "v3"),
        _ev(2800, "promoted", "v3", "100%"),
    ]
    summary = dict.fromkeys(REQUIRED_SUMMARY_KEYS)
    summary.update(summarize_events(events))
    summary.update(samples=6000, prequential_accuracy=0.81, detection_delays=[250],
                   accuracy_before_drift=0.95, accuracy_after_drift_static=0.42,
                   accuracy_after_recovery=0.94, seconds_to_recover=16.0, train_seconds=4.2,
                   wall_seconds=120.0, drift_points=[2000])
    return events, series, summary


def test_summarize_events_counts_and_skips_bootstrap() -> None:
    events, _, _ = _synthetic()
    assert summarize_events(events) == {"drifts_detected": 1, "retrains": 2, "promotions": 1, "rollbacks": 1,
                                        "incremental_steps": 0}
    assert summarize_events([]) == {"drifts_detected": 0, "retrains": 0, "promotions": 0, "rollbacks": 0,
                                    "incremental_steps": 0}


def test_missing_summary_key_is_named() -> None:
    events, series, summary = _synthetic()
    for key in ("detection_delays", "wall_seconds"):
        bad = {k: v for k, v in summary.items() if k != key}
        with pytest.raises(ValueError, match=key):
            build_report(events=events, series=series, summary=bad)


def test_bad_events_and_series_rejected() -> None:
    _, series, summary = _synthetic()
    with pytest.raises(ValueError, match="'kind'"):
        build_report(events=[{"t": 1.0}], series=series, summary=summary)
    with pytest.raises(ValueError, match="canary_weight"):
        build_report(events=[], series={**series, "canary_weight": [1.0]}, summary=summary)


def test_accepts_event_objects_and_numpy_values() -> None:
    import numpy as np

    _, series, summary = _synthetic()
    ev = Event(t=3.0, kind=EventKind.DRIFT_DETECTED, model="demo", reason="PSI 0.31 > 0.20")
    rep = build_report(events=[ev], series={**series, "accuracy": np.asarray(series["accuracy"])},
                       summary={**summary, "prequential_accuracy": np.float32(0.5), "train_seconds": float("nan")})
    assert rep["events"][0]["kind"] == "drift_detected"
    assert type(rep["series"]["accuracy"][0]) is float
    assert rep["summary"]["prequential_accuracy"] == 0.5 and rep["summary"]["train_seconds"] is None
    json.dumps(rep, allow_nan=False)


def test_write_report_round_trip(tmp_path) -> None:
    events, series, summary = _synthetic()
    report = build_report(events=events, series=series, summary=summary)
    json_path, png_path = write_report(report, tmp_path / "run")
    assert json_path.name == "report.json" and png_path.name == "report.png"
    back = json.loads(json_path.read_text())
    assert set(back) == {"summary", "events", "series"}
    assert set(REQUIRED_SUMMARY_KEYS) <= set(back["summary"])
    s = back["summary"]
    assert (s["drifts_detected"], s["retrains"], s["promotions"], s["rollbacks"]) == (1, 2, 1, 1)
    assert [e["t"] for e in back["events"]] == sorted(e["t"] for e in back["events"])
    assert all({"t", "kind", "model", "version", "reason"} <= set(e) for e in back["events"])
    assert back["series"]["sample"] == series["sample"]
    data = png_path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 20_000 < len(data) < 2_000_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 1000 and height >= 600


def test_plot_tolerates_sparse_reports(tmp_path) -> None:
    """Nulls everywhere, no series, events without samples: still a PNG."""
    summary = dict.fromkeys(REQUIRED_SUMMARY_KEYS)
    report = build_report(events=[{"t": 1.0, "kind": "drift_detected", "reason": "x"}], series={},
                          summary=summary)
    path = tmp_path / "sparse.png"
    plot_report(report, path)
    assert path.read_bytes()[:8] == PNG_MAGIC
