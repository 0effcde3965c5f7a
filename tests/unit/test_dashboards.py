"""The Grafana dashboards under dashboards/: schema keys, and PromQL that names only exported metrics.

The metric names come from the exporter's code (:func:`lifelong_ray.serving.metrics.metric_names`),
so renaming a metric without updating a dashboard fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lifelong_ray.serving import metrics as M

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
NAMES = ("executive", "oncall", "debug")
#: identifiers that are metric names: lifelong_... outside string literals
_METRIC = re.compile(r"\blifelong_[A-Za-z0-9_]+")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
#: every other identifier PromQL allows in these expressions (functions, keywords, label names)
_IDENT = re.compile(r"(?<![\w$.])([A-Za-z_][A-Za-z0-9_]*)(?![\w])")
_PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right",
    "rate", "increase", "irate", "histogram_quantile", "clamp_min", "clamp_max", "time", "and", "or", "unless",
    "offset", "label_values",
    # label names
    "le", "model", "version", "kind", "stage", "sli", "window", "alert", "role", "rule", "outcome", "reason",
    "quota", "feature", "source", "result",
}


def _load(name: str) -> dict:
    return json.loads((DASHBOARDS / f"{name}.json").read_text())


def _exprs(board: dict) -> list[str]:
    out = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    out += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    out += [v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("definition", "")
            for v in board["templating"]["list"] if v["type"] == "query"]
    return out


def test_the_three_dashboards_exist_with_unique_uids():
    boards = [_load(n) for n in NAMES]
    assert len({b["uid"] for b in boards}) == 3
    assert sorted(p.stem for p in DASHBOARDS.glob("*.json")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_grafana_schema(name):
    board = _load(name)
    for key in ("uid", "title", "panels", "annotations", "templating", "schemaVersion", "time"):
        assert key in board, key
    assert board["uid"] and board["title"].startswith("lifelong-ray")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in board["panels"] if p["type"] != "row"]
    assert len(graphs) >= 8
    for p in graphs:
        assert p["title"] and p["type"] in {"timeseries", "stat", "bargauge", "table", "gauge"}
        assert set(p["gridPos"]) == {"h", "w", "x", "y"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["refId"] and t["expr"] and t["datasource"]["type"] == "prometheus"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "model"} <= variables


@pytest.mark.parametrize("name", NAMES)
def test_deploy_and_retrain_annotations(name):
    anns = {a["name"]: a for a in _load(name)["annotations"]["list"]}
    assert 'kind="promoted"' in anns["Deploys"]["expr"] and "lifelong_events_total" in anns["Deploys"]["expr"]
    assert "lifelong_retrains_total" in anns["Retrains"]["expr"]
    assert 'kind="rolled_back"' in anns["Rollbacks"]["expr"]
    for a in ("Deploys", "Retrains", "Rollbacks"):
        assert anns[a]["enable"] and anns[a]["datasource"]["type"] == "prometheus"


@pytest.mark.parametrize("name", NAMES)
def test_promql_names_only_exported_metrics(name):
    exported = M.metric_names()
    for expr in _exprs(_load(name)):
        bare = _STRING.sub('""', expr)
        metrics = set(_METRIC.findall(bare))
        assert metrics, f"no lifelong_ metric in {expr!r}"
        assert metrics <= exported, f"{sorted(metrics - exported)} in {expr!r} are not exported"
        rest = set(_IDENT.findall(_METRIC.sub("", bare))) - _PROMQL_WORDS
        assert not rest, f"unknown identifiers {sorted(rest)} in {expr!r} (a metric outside the exporter?)"
        assert bare.count("(") == bare.count(")") and bare.count("{") == bare.count("}"), expr


def test_dashboards_cover_the_issue_panels():
    """executive: quality, KPI, cost per retrain, burn; on-call: deploys, canary, SLIs, drift, rollbacks;
    debug: feature drift, per-version, training jobs, label freshness."""
    text = {n: json.dumps(_load(n)) for n in NAMES}
    for needle in ("lifelong_quality_accuracy_ratio", "lifelong_retrain_cpu_seconds_total",
                   "lifelong_error_budget_burn_rate", "lifelong_predictions_total"):
        assert needle in text["executive"], needle
    for needle in ("lifelong_canary_weight_percent", "lifelong_rollout_stage", "lifelong_predict_latency_seconds",
                   "lifelong_drift_detected", "rolled_back", "lifelong_slo_alert_firing"):
        assert needle in text["oncall"], needle
    for needle in ("lifelong_drift_score", "lifelong_holdout_accuracy_ratio", "lifelong_retrain_duration_seconds",
                   'sli=\\"freshness\\"', "lifelong_quarantined_rows"):
        assert needle in text["debug"], needle
