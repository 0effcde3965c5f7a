"""Active learning without Ray: the scoring rule, and label_requests() on real logs,
a real registry (an untrained module is enough: only its reference matters) and a
routing table in a temporary storage root."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pytest

from lifelong_ray.config import parse_config
from lifelong_ray.data.logs import ModelLogs, feature_arrays
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import FeatureTransform
from lifelong_ray.drift.reference import Reference
from lifelong_ray.drift.stats import bin_proportions, psi
from lifelong_ray.registry.store import Registry
from lifelong_ray.serving.active import (
    MIN_DRIFT_ROWS,
    LabelPool,
    feature_bins,
    label_requests,
    score_label_requests,
)
from lifelong_ray.serving.routing import RoutingTable, write_routing
from lifelong_ray.storage import Storage
from lifelong_ray.training.estimators import build_module

CFG = parse_config({
    "model": {"name": "al", "features": [{"name": "x"}, {"name": "c", "dtype": "category", "categories": ["a", "b"]}],
              "label": {"name": "y", "classes": [0, 1]}},
    "data": {"label_horizon_seconds": 1000},
})
SCHEMA = Schema(CFG.model)


def _train_cols(n: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.uniform(0, 1, n), "c": rng.choice(np.array(["a", "b"], dtype=object), n)}


def _pool(x: np.ndarray, c: np.ndarray, conf: np.ndarray) -> LabelPool:
    n = len(x)
    return LabelPool(request_ids=[f"r{i:04d}" for i in range(n)], t=np.arange(n, dtype=float),
                     version=["v0001"] * n, confidence=conf, columns={"x": x, "c": c})


def test_uncertainty_only_without_a_reference():
    pool = _pool(np.zeros(4), np.array(["a"] * 4, dtype=object), np.array([0.9, 0.5, 0.7, 0.5]))
    items, drifted = score_label_requests(pool, 3, n_classes=2, reference=None, psi_threshold=0.2)
    assert drifted == {}
    # coin tosses first, newest first among ties; u = (1 - conf) / (1 - 1/2)
    assert [i.request_id for i in items] == ["r0003", "r0001", "r0002"]
    assert [i.uncertainty for i in items] == pytest.approx([1.0, 1.0, 0.6])
    assert all(i.drift == 0 and i.score == i.uncertainty for i in items)
    assert "confidence 0.50 from v0001" in items[0].why


def test_drifted_region_is_weighted_up():
    ref = Reference.from_columns(_train_cols(), SCHEMA)
    rng = np.random.default_rng(1)
    n = 400
    x = np.concatenate([rng.uniform(0, 1, n // 2), rng.uniform(3, 4, n // 2)])  # half in a new region
    c = rng.choice(np.array(["a", "b"], dtype=object), n)
    conf = np.full(n, 0.75)
    items, drifted = score_label_requests(_pool(x, c, conf), 10, n_classes=2, reference=ref, psi_threshold=0.2)
    assert set(drifted) == {"x"} and drifted["x"] > 0.2
    assert all(i.drift == pytest.approx(1.0) and i.score == pytest.approx(0.5 * 2) for i in items)
    assert all(int(i.request_id[1:]) >= n // 2 for i in items)  # all from the new region
    assert "drifted region x in [" in items[0].why and "x's PSI" in items[0].why


def test_uncertainty_still_counts_inside_and_outside_drift():
    ref = Reference.from_columns(_train_cols(), SCHEMA)
    n = 200
    x = np.concatenate([np.full(n // 2, 0.5), np.full(n // 2, 5.0)])
    c = np.array(["a"] * n, dtype=object)
    conf = np.concatenate([np.full(n // 2, 0.5), np.full(n // 2, 0.99)])  # sure in the drifted region
    items, _ = score_label_requests(_pool(x, c, conf), 1, n_classes=2, reference=ref, psi_threshold=0.2)
    assert int(items[0].request_id[1:]) < n // 2  # the coin toss beats the sure drifted one (1.0 > 0.04)


def test_psi_terms_add_up_to_the_detectors_psi():
    ref = Reference.from_columns(_train_cols(), SCHEMA)
    rng = np.random.default_rng(2)
    x = rng.normal(0.7, 0.2, 500)
    c = rng.choice(np.array(["a", "b", "zz"], dtype=object), 500)
    pool = _pool(x, c, np.full(500, 0.6))
    by_name = {fb.name: fb for fb in feature_bins(pool, ref)}
    cur = bin_proportions(x[:, None], ref.interior_edges[:1])
    assert by_name["x"].psi == pytest.approx(float(psi(ref.props[0], cur[0])))
    assert by_name["c"].bins.max() == 2  # "zz" is the unknown bucket


def test_small_pools_get_no_drift_weight():
    ref = Reference.from_columns(_train_cols(), SCHEMA)
    k = MIN_DRIFT_ROWS - 1
    items, drifted = score_label_requests(_pool(np.full(k, 9.0), np.array(["a"] * k, dtype=object),
                                                np.full(k, 0.6)), 5, n_classes=2, reference=ref, psi_threshold=0.2)
    assert drifted == {} and all(i.drift == 0 for i in items)


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="budget"):
        score_label_requests(_pool(np.zeros(1), np.array(["a"], dtype=object), np.ones(1)), 0, n_classes=2,
                             reference=None, psi_threshold=0.2)


def test_label_requests_reads_logs_registry_and_routing(tmp_path):
    storage = Storage(str(tmp_path))
    train = _train_cols()
    transform = FeatureTransform.fit(train, SCHEMA)
    module = build_module(CFG.estimator, transform.n_out, 2)
    v = Registry(storage, "al").register(state_dict=module.state_dict(), transform=transform,
                                         estimator=CFG.estimator, n_in=transform.n_out, classes=[0, 1],
                                         reference=pa.table({"x": train["x"], "c": list(train["c"])}),
                                         metadata={})
    write_routing(storage, RoutingTable(model="al", generation=1, weights={v: 100}, champion=v))
    logs = ModelLogs(storage, "al")
    now = 1_000_000.0
    rng = np.random.default_rng(3)

    def serve(x: np.ndarray, conf: float, t: float, **kw) -> list[str]:
        ids = [uuid.uuid4().hex for _ in x]
        cols = {"x": x, "c": np.array(["a"] * len(x), dtype=object)}
        logs.append_predictions(request_ids=ids, t=t, version=v, features=feature_arrays(cols, SCHEMA.names, {"c"}),
                                predictions=[1] * len(x), confidence=[conf] * len(x), latency_ms=1.0, **kw)
        return ids

    serve(rng.uniform(0, 0.8, 60), 0.7, now - 10)  # below the top reference bin
    drifted = serve(rng.uniform(5, 6, 60), 0.7, now - 10)
    expired = serve(np.full(5, 0.5), 0.5, now - 2000)          # past the horizon
    serve(np.full(5, 0.5), 0.5, now - 10, shadow=True)          # shadow copies are not served
    labeled = drifted[:10]
    logs.append_feedback(labeled, [1] * 10, now - 5)

    out = label_requests(CFG, 20, now=now, storage=storage)
    assert out.candidates == 110 and out.reference_version == v and set(out.drifted_features) >= {"x"}
    got = [i.request_id for i in out.items]
    assert len(got) == 20 and set(got) <= set(drifted[10:]) and not set(got) & set(expired)
    assert out.notes == [] and out.rule.startswith("score = u * (1 + d)")
