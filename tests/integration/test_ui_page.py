"""The status page ``GET /ui`` over real HTTP through Ray Serve, and rendered by headless Chromium.

The model's history is written straight to storage (no controller loop runs): three
registered versions, a routing table mid-canary, a persisted controller state, audit
events (bootstrap, drift, two retrains, a rolled-back canary, a new canary, an operator
command whose reason holds HTML) and a labeled log whose accuracy drops at the drift.
Chromium (Debian: ``apt-get install -y chromium``) takes a screenshot, kept at
``runs/artifacts/ui.png``; without it that test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import requests

from itest_helpers import eventually as _eventually

pytestmark = pytest.mark.integration

MODEL = "uitest"
ARTIFACT = Path(__file__).resolve().parents[2] / "runs" / "artifacts" / "ui.png"
WIDTH, HEIGHT = 1280, 900
EVIL = "<script>alert('x')</script>"


def _config(root: str):
    from lifelong_ray.config import parse_config

    return parse_config({
        "model": {"name": MODEL, "features": [{"name": "x", "min": -10, "max": 10},
                                              {"name": "c", "dtype": "category", "categories": ["a", "b"]}],
                  "label": {"name": "y", "classes": [0, 1]}},
        "estimator": {"kind": "logistic"},
        "drift": {"label_window": 100},
        "storage": {"root": root},
        "serving": {"routing_poll_seconds": 0.2},
    })


def build_history(cfg, now: float) -> dict:
    """Write two hours of a model's life to ``cfg.storage.root``; return what was written."""
    import torch

    from lifelong_ray.data.logs import ModelLogs
    from lifelong_ray.data.schema import Schema
    from lifelong_ray.data.transform import FeatureTransform
    from lifelong_ray.events import AuditLog, Event, EventKind
    from lifelong_ray.policy.lifecycle import RolloutStage
    from lifelong_ray.policy.model import ControllerState
    from lifelong_ray.registry.store import Registry
    from lifelong_ray.serving.routing import RoutingTable, write_routing
    from lifelong_ray.storage import Storage

    storage = Storage(cfg.storage.root)
    rng = np.random.default_rng(7)
    cols = {"x": rng.uniform(-5, 5, 200), "c": rng.choice(np.array(["a", "b"], dtype=object), 200)}
    transform = FeatureTransform.fit(cols, Schema(cfg.model))
    reg = Registry(storage, MODEL)
    versions = []
    for i, (created, acc, parent) in enumerate([(now - 7200, 0.91, None), (now - 3300, 0.78, "v0001"),
                                                (now - 1700, 0.93, "v0001")], start=1):
        torch.manual_seed(i)
        from lifelong_ray.training.estimators import build_module

        module = build_module(cfg.estimator, transform.n_out, 2)
        versions.append(reg.register(
            state_dict=module.state_dict(), transform=transform, estimator=cfg.estimator, n_in=transform.n_out,
            classes=[0, 1], reference=pa.table({"x": cols["x"], "c": list(cols["c"])}),
            metadata={"job_id": f"job-{i}", "created_at": created, "kind": "full", "parent": parent,
                      "metrics": {"holdout_accuracy": acc}}))
    v1, v2, v3 = versions
    reg.set_alias("champion", v1)
    write_routing(storage, RoutingTable(model=MODEL, generation=7, weights={v1: 75.0, v3: 25.0}, champion=v1))

    def ev(dt: float, kind: EventKind, reason: str, version: str | None = None, **data) -> Event:
        return Event(t=now - dt, kind=kind, model=MODEL, version=version, reason=reason, data=data)

    events = [
        ev(7100, EventKind.PROMOTED, f"first version {v1} takes 100% (holdout accuracy 0.910; no champion "
                                     "to compare)", v1, bootstrap=True),
        ev(3700, EventKind.DRIFT_DETECTED, "performance drift: accuracy 0.712 < reference 0.910 - 0.05 "
                                           "on 100 labels, for 2 windows", v1, drift="performance"),
        ev(3690, EventKind.RETRAIN_STARTED, "retrain job-2 on 4,000 labeled rows since the change point", None),
        ev(3300, EventKind.RETRAIN_FINISHED, f"{v2}: holdout accuracy 0.780 vs champion 0.712", v2),
        ev(3200, EventKind.CANARY_STARTED, f"canary {v2} at 10%", v2),
        ev(2800, EventKind.ROLLED_BACK, f"canary {v2} worse than the champion on labels (0.60 vs 0.72, "
                                        "p=0.003); back to 100% v0001", v2),
        ev(2000, EventKind.RETRAIN_STARTED, "settle retrain job-3 (more labels since the drift)", None),
        ev(1700, EventKind.RETRAIN_FINISHED, f"{v3}: holdout accuracy 0.930 vs champion 0.720", v3),
        ev(1500, EventKind.CANARY_STARTED, f"canary {v3} at 10%", v3),
        ev(900, EventKind.COMMAND_REJECTED, f"approve by {EVIL} not applied: no rollout waits for approval",
           v3),
        ev(600, EventKind.CANARY_STEP, f"canary {v3} 10% -> 25%: 0.91 vs 0.72 on 180 labels", v3),
    ]
    log = AuditLog(storage, MODEL)
    for e in events:
        log.append([e])

    state = ControllerState(
        model=MODEL, seq=512, last_tick_t=now - 2, champion=v1, champion_reference_accuracy=0.91,
        rollout=RolloutStage.CANARY, candidate=v3, step_index=1, weights={v1: 75.0, v3: 25.0},
        routing_generation=7, retrain_count=2, last_retrain_finished_t=now - 1700,
        budget={"exhausted": False, "alerting": True, "reason": "quality burning 3.1x over 1h",
                "slis": {"quality": {"remaining": 0.34, "burn": {"300s": 3.4, "3600s": 3.1}, "alerts": ["fast"]},
                         "latency": {"remaining": 0.97, "burn": {"300s": 0.1, "3600s": 0.2}, "alerts": []},
                         "error_rate": {"remaining": 1.0, "burn": {"300s": 0.0, "3600s": 0.0}, "alerts": []}}},
        last_feature_drift={"index": 40, "drifted": True, "reason": "PSI 0.31 > 0.20 on 1/2 features",
                            "max_psi": 0.31, "t": now - 60},
        last_quality={"index": 38, "accuracy": 0.74, "reference": 0.91, "n": 100, "drifted": True,
                      "reason": "accuracy 0.740 < 0.860", "t": now - 30},
    )
    storage.write_json(f"models/{MODEL}/controller/state.json", state.model_dump(mode="json"))

    # labeled log: v1 at ~0.92 until the drift, ~0.72 after; v2's canary at 0.6; v3's at 0.9
    logs = ModelLogs(storage, MODEL)
    t = np.sort(rng.uniform(now - 7000, now - 20, 4000))
    version = np.full(len(t), v1, dtype=object)
    canary2 = (t > now - 3200) & (t < now - 2800) & (rng.random(len(t)) < 0.10)
    canary3 = (t > now - 1500) & (rng.random(len(t)) < np.where(t > now - 600, 0.25, 0.10))
    version[canary2], version[canary3] = v2, v3
    p_ok = np.where(t < now - 4000, 0.92, 0.72)
    p_ok = np.where(version == v2, 0.60, np.where(version == v3, 0.90, p_ok))
    label = rng.integers(0, 2, len(t))
    prediction = np.where(rng.random(len(t)) < p_ok, label, 1 - label)
    x, c = rng.uniform(-5, 5, len(t)), rng.choice(np.array(["a", "b"], dtype=object), len(t))
    for chunk in np.array_split(np.arange(len(t)), 20):
        logs.append_labeled(pa.table({
            "request_id": pa.array([f"{i:032x}" for i in chunk]), "t": pa.array(t[chunk]),
            "t_label": pa.array(t[chunk] + 5.0), "version": pa.array(list(version[chunk]), pa.string()),
            "prediction": pa.array(prediction[chunk].astype(np.int64)),
            "label": pa.array(label[chunk].astype(np.int64)),
            "x": pa.array(x[chunk]), "c": pa.array(list(c[chunk]), pa.string())}), float(t[chunk][-1]) + 5.0)
    return {"storage": storage, "versions": versions, "events": events}



@pytest.fixture(scope="module")
def app(serve_port, tmp_path_factory):
    from ray import serve

    from lifelong_ray.serving import deploy

    cfg = _config(str(tmp_path_factory.mktemp("ui-store")))
    history = build_history(cfg, time.time())
    deploy.deploy_ingress([cfg])  # the page needs no version app: it reads storage
    base = f"http://127.0.0.1:{serve_port}"
    assert _eventually(lambda: requests.get(f"{base}/healthz", timeout=2).status_code == 200, 60)
    yield {"base": base, **history}
    if deploy.INGRESS_APP in serve.status().applications:
        serve.delete(deploy.INGRESS_APP, _blocking=False)
    _eventually(lambda: deploy.INGRESS_APP not in serve.status().applications, 60, 0.2)


@pytest.fixture(scope="module")
def page(app) -> requests.Response:
    r = requests.get(f"{app['base']}/ui", timeout=30)
    assert r.status_code == 200, r.text[:500]
    return r


def test_ui_is_one_self_contained_html_document(page):
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    # nothing is fetched from anywhere: no external script, stylesheet, image or font
    for needle in ("<script", "<link", "<img", "src=", "@import", "url("):
        assert needle not in html, needle
    assert "<svg" in html and "<style>" in html


def test_ui_shows_versions_weights_stage_drift_budget(page, app):
    html = page.text
    v1, v2, v3 = app["versions"]
    assert MODEL in html
    for v in (v1, v2, v3):
        assert f"<b>{v}</b>" in html, v
    assert "75%" in html and "25%" in html            # traffic split
    assert ">canary<" in html                          # rollout stage badge
    assert "candidate <b>v0003</b>" in html
    assert "max PSI 0.310" in html                     # feature drift
    assert "accuracy 0.740 vs reference 0.910" in html  # quality drift
    assert ">quality<" in html and "34%" in html       # error budget remaining per SLI
    assert "0.930" in html                             # holdout accuracy from the registry


def test_ui_charts_quality_with_events_and_lists_decisions(page, app):
    html = page.text
    chart = html[html.index("<svg"):html.index("</svg>")]
    # windowed accuracy points per version, derived from the labeled log
    assert chart.count("<circle") >= 30
    assert "labels (window ending" in chart
    for kind in ("drift_detected", "retrain_started", "rolled_back", "canary_started", "promoted"):
        assert f"{kind}" in chart, kind   # markers carry the event in their tooltip
    # the accuracy drop after the drift shows in the points of v0001
    import re

    accs = [float(a) for a in re.findall(r"v0001 (0\.\d+) on \d+ labels", chart)]
    assert len(accs) >= 20 and max(accs[:10]) > 0.85 and min(accs[-10:]) < 0.8
    # latest decisions, newest first, with their reasons, escaped
    decisions = html[html.index('class="decisions"'):]
    assert decisions.index("canary_step") < decisions.index("rolled_back")
    assert "worse than the champion on labels" in decisions
    assert EVIL not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html


def test_ui_follows_new_events(app, page):
    from lifelong_ray.events import AuditLog, Event, EventKind

    AuditLog(app["storage"], MODEL).append([Event(
        t=time.time(), kind=EventKind.PAUSED, model=MODEL, reason="paused by ana: investigating the canary")])
    # the page's data is a snapshot at most serving/reads.SNAPSHOT_TTL_S old
    assert _eventually(lambda: "paused by ana: investigating the canary" in requests.get(
        f"{app['base']}/ui", timeout=30).text, 10, 0.2)


def _chromium() -> str | None:
    return next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)


def _png_pixels(path: Path) -> np.ndarray:
    """RGB bytes of a PNG, (height, width, 3) uint8 (matplotlib's reader: a pinned dependency)."""
    import matplotlib.image

    rgba = matplotlib.image.imread(str(path))
    return np.round(rgba[..., :3] * 255).astype(np.uint8)


def test_headless_chromium_renders_the_page(app, page, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    out = tmp_path / "ui.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={out}",
           f"--window-size={WIDTH},{HEIGHT}", f"{app['base']}/ui"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0 and out.exists(), proc.stderr[-2000:]
    pixels = _png_pixels(out)
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    assert pixels.std() > 20  # not blank
    # the dark header band is at the top, and the chart's colours are on the page
    assert pixels[:30].mean() < 90
    assert len({tuple(p) for p in pixels.reshape(-1, 3)[::7]}) > 50
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out, ARTIFACT)
