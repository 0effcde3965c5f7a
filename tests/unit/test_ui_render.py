"""The status page's pure parts (serving/ui.py): windowed quality, the SVG chart, the HTML,
and :func:`gather` over a real temporary storage root (no Ray, no HTTP)."""

from __future__ import annotations

import math
import re

import numpy as np
import pyarrow as pa
import pytest

from lifelong_ray.serving import ui
from lifelong_ray.serving.ui import EventView, ModelView, QualityPoint

EVIL = '<img src=x onerror="alert(1)">'


def test_quality_points_cut_windows_of_rows_in_time_order_per_version():
    rng = np.random.default_rng(0)
    n = 1000
    t = rng.permutation(np.arange(n, dtype=float))  # out of order on purpose
    version = np.where(t < 500, "v1", np.where(t % 10 == 0, "v2", "v1")).astype(object)
    ok_p = np.where(t < 500, 0.9, 0.6)
    label = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < ok_p, label, 1 - label)
    pts = ui.quality_points(t, list(version), pred, label, window=100)
    v1 = [p for p in pts if p.version == "v1"]
    v2 = [p for p in pts if p.version == "v2"]
    assert len(v1) == 10 and [p.t for p in v1] == [99.0 + 100 * i for i in range(10)]
    assert all(p.n == 100 for p in v1[:5]) and all(p.n == 90 for p in v1[5:])
    assert np.mean([p.accuracy for p in v1[:5]]) > 0.8 > 0.7 > np.mean([p.accuracy for p in v1[5:]])
    assert len(v2) == 5 and all(p.n == 10 for p in v2)  # a 10% canary shows


def test_quality_points_skip_ingested_rows_small_shares_and_short_tails():
    t = np.arange(250, dtype=float)
    version = ["v1"] * 240 + [None] * 10  # batch-ingested rows have no version
    version[5] = "v9"                      # one row of v9: below min_n
    pts = ui.quality_points(t, version, np.ones(250, int), np.ones(250, int), window=100)
    assert {p.version for p in pts} == {"v1"}
    assert [p.n for p in pts] == [99, 100]  # the tail of 40 served rows is under half a window
    assert ui.quality_points([], [], [], [], window=100) == []
    with pytest.raises(ValueError):
        ui.quality_points([1.0], ["v"], [1], [1], window=0)


def _view(**kw) -> ModelView:
    base = dict(
        name="iris",
        routing={"model": "iris", "generation": 3, "weights": {"v0001": 90.0, "v0002": 10.0}, "champion": "v0001",
                 "shadow": None, "shadow_fraction": 0.0},
        versions=[{"version": "v0001", "holdout_accuracy": 0.91, "created_at": 1000.0, "kind": "full"},
                  {"version": "v0002", "holdout_accuracy": 0.93, "created_at": 5000.0, "parent": "v0001"}],
        state={"seq": 12, "last_tick_t": 9990.0, "rollout": "canary", "candidate": "v0002", "step_index": 0,
               "retrain": "idle", "retrain_count": 1, "champion_reference_accuracy": 0.9,
               "budget": {"alerting": False, "slis": {"quality": {"remaining": 0.5, "burn": {"300s": 1.0}}}},
               "last_feature_drift": {"drifted": False, "max_psi": 0.05, "reason": "PSI under 0.2"}},
        events=[EventView(t=2000.0, kind="promoted", version="v0001", reason="first version"),
                EventView(t=6000.0, kind="drift_detected", version="v0001", reason="accuracy fell"),
                EventView(t=7000.0, kind="canary_step", version="v0002", reason="10% -> 25%")],
        quality=[QualityPoint(t=1500.0 + 500 * i, version="v0001", accuracy=0.9 - 0.02 * i, n=100)
                 for i in range(12)] + [QualityPoint(t=8000.0, version="v0002", accuracy=0.95, n=12)],
        label_window=100, labeled_rows=1200)
    base.update(kw)
    return ModelView(**base)


def test_page_shows_every_part_and_loads_nothing():
    html = ui.render_page([_view()], now=10_000.0)
    assert html.startswith("<!DOCTYPE html>")
    for needle in ("<script", "<link", "<img", "src=", "url("):
        assert needle not in html
    assert "90%" in html and "10%" in html and ">canary<" in html and "candidate <b>v0002</b>" in html
    assert "max PSI 0.050" in html and ">quality<" in html and "50%" in html
    assert "controller tick 12, 10 s ago" in html
    chart = html[html.index("<svg"):html.index("</svg>")]
    assert chart.count("<circle") == 13
    assert "reference 0.900" in chart
    # marked kinds get a marker with their reason; routine steps are in the table only
    assert "drift_detected v0001: accuracy fell" in chart and "promoted v0001" in chart
    assert "canary_step" not in chart
    rows = re.findall(r"<tr><td class=\"nowrap\">.*?</tr>", html[html.index('class="decisions"'):])
    assert [r.count("canary_step") > 0 for r in rows] == [True, False, False]  # newest first


def test_every_data_string_is_escaped():
    view = _view(name=EVIL, routing={"weights": {EVIL: 100.0}, "champion": EVIL},
                 versions=[{"version": EVIL, "kind": EVIL, "parent": EVIL}],
                 state={"rollout": EVIL, "candidate": EVIL, "retrain": "pending", "retrain_reason": EVIL,
                        "retrain_deferred_reason": EVIL, "budget_frozen": True, "budget_reason": EVIL,
                        "budget": {"slis": {EVIL: {"remaining": 0.1, "burn": {EVIL: 2.0}}}},
                        "last_feature_drift": {"drifted": True, "reason": EVIL},
                        "last_quality": {"drifted": True, "n": EVIL}},
                 events=[EventView(t=5000.0, kind="rolled_back", version=EVIL, reason=EVIL)],
                 quality=[QualityPoint(t=5000.0, version=EVIL, accuracy=0.5, n=3)],
                 errors=[EVIL])
    html = ui.render_page([view], now=6000.0)
    assert "<img" not in html and 'onerror="' not in html
    assert html.count("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;") >= 15


def test_page_renders_with_nothing_known_yet_and_with_odd_values():
    empty = ui.render_page([ModelView(name="fresh")], now=0.0)
    assert "No labeled predictions and no events yet" in empty
    assert "No registered version yet" in empty and "No decision recorded yet" in empty
    assert "no controller state yet" in empty
    odd = _view(state={"rollout": None, "budget": {"slis": {"quality": {"remaining": math.nan}}},
                       "champion_reference_accuracy": math.inf, "last_tick_t": "yesterday"},
                quality=[QualityPoint(t=10.0, version="v0001", accuracy=1.0, n=5)], events=[])
    html = ui.render_page([odd], now=20.0)
    assert "<svg" in html and "nan" not in html.lower().replace("nanoseconds", "")
    assert ui.render_page([], now=0.0).count("No model is served here") == 1


def test_chart_keeps_recent_markers_only_and_spans_events_without_points():
    pts = [QualityPoint(t=100_000.0 + 60 * i, version="v1", accuracy=0.9, n=50) for i in range(10)]
    old = EventView(t=1.0, kind="promoted", version="v1", reason="long ago")
    new = EventView(t=100_100.0, kind="rolled_back", version="v2", reason="worse")
    svg = ui.quality_chart(pts, [old, new])
    assert "worse" in svg and "long ago" not in svg
    only_events = ui.quality_chart([], [EventView(t=50.0, kind="retrain_started", version=None, reason="r")])
    assert "<svg" in only_events and "retrain_started: r" in only_events


def test_nice_step_gives_at_most_seven_ticks():
    for span in (5.0, 300.0, 7200.0, 3 * 86400.0, 400 * 86400.0):
        assert span / ui._nice_step(span) <= 7


def test_gather_reads_storage_and_reports_what_it_cannot(tmp_path):
    from lifelong_ray.config import parse_config
    from lifelong_ray.data.logs import ModelLogs
    from lifelong_ray.events import AuditLog, Event, EventKind
    from lifelong_ray.serving.routing import RoutingTable, write_routing
    from lifelong_ray.storage import Storage

    cfg = parse_config({"model": {"name": "g", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
                        "drift": {"label_window": 20}, "storage": {"root": str(tmp_path)}})
    st = Storage(str(tmp_path))
    write_routing(st, RoutingTable(model="g", generation=2, weights={"v0001": 100.0}, champion="v0001"))
    AuditLog(st, "g").append([Event(t=5.0, kind=EventKind.DRIFT_DETECTED, model="g", reason="PSI 0.4")])
    logs = ModelLogs(st, "g")
    for k in range(3):
        n = 20
        logs.append_labeled(pa.table({
            "request_id": [f"r{k}-{i}" for i in range(n)], "t": np.arange(n, dtype=float) + 100 * k,
            "t_label": np.arange(n, dtype=float) + 100 * k + 1, "version": ["v0001"] * n,
            "prediction": np.ones(n, dtype=np.int64), "label": np.r_[np.ones(n - k, int), np.zeros(k, int)],
            "x": np.zeros(n)}), t=100.0 * k + 50)
    st.write_bytes("models/g/controller/state.json", b"{not json")
    view = ui.gather(st, cfg)
    assert view.routing["weights"] == {"v0001": 100.0} and view.versions == []
    assert [e.reason for e in view.events] == ["PSI 0.4"]
    assert [(p.accuracy, p.n) for p in view.quality] == [(1.0, 20), (0.95, 20), (0.9, 20)]
    assert view.labeled_rows == 60 and view.state is None
    assert len(view.errors) == 1 and view.errors[0].startswith("controller state unreadable")
    assert "controller state unreadable" in ui.render_page([view], now=400.0)
    # a second call reads only new files (cached by path) and sees the same
    assert ui.gather(st, cfg).quality == view.quality
