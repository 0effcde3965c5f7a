"""Active learning: which served requests a human should label first.

``GET /v1/models/{model}/label-requests?budget=N`` and ``lifelong label-requests
MODEL --budget N`` both call :func:`label_requests`. The rule, in full:

1. **Pool**: requests the model *served* (no error, not a shadow copy) within
   ``data.label_horizon_seconds`` that have no label in the feedback log yet.
2. **Uncertainty** of each: ``u = (1 - confidence) / (1 - 1/K)`` for ``K``
   classes, where ``confidence`` is the served version's top-class probability;
   ``u`` is 1 at a coin toss (0.5 for two classes) and 0 when the model was sure.
3. **Drifted regions**: the pool's feature distribution is compared with the
   champion's training reference, bin by bin (the reference's quantile bins and
   categories, as the drift detector uses). A feature drifted when its PSI is above
   ``drift.psi_threshold``; in it, every bin that live traffic *over*-fills carries
   its PSI term ``(cur - ref) * ln(cur / ref)``. A request's drift weight ``d`` is
   the sum of those terms over the bins its values fall in, divided by the largest
   such sum in the pool (so ``d`` is in ``[0, 1]``). With fewer than
   :data:`MIN_DRIFT_ROWS` requests, no reference, or no drifted feature, ``d = 0``.
4. **Score** ``u * (1 + d)``: uncertainty first, doubled at most in the most
   drifted region. The top ``budget`` by score (newest first among ties) are
   returned, each with its score, ``u``, ``d`` and a sentence saying why.

:func:`score_label_requests` is the pure part (no I/O):

    >>> import numpy as np
    >>> pool = LabelPool(request_ids=["a", "b", "c"], t=np.array([1.0, 2.0, 3.0]),
    ...                  version=["v1"] * 3, confidence=np.array([0.99, 0.55, 0.8]),
    ...                  columns={"x": np.array([0.0, 1.0, 2.0])})
    >>> items, drifted = score_label_requests(pool, 2, n_classes=2, reference=None, psi_threshold=0.2)
    >>> [(i.request_id, round(i.score, 2)) for i in items], drifted
    ([('b', 0.9), ('c', 0.4)], {})
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from lifelong_ray.config import Config
from lifelong_ray.data.logs import ModelLogs
from lifelong_ray.data.schema import Schema
from lifelong_ray.drift.reference import Reference
from lifelong_ray.data.segments import open_segment_tables
from lifelong_ray.serving.feedback import read_log_table, served_rows
from lifelong_ray.storage import Storage

#: the most candidates one label-requests call considers (the newest served requests)
MAX_POOL_ROWS = 100_000
#: fewer pooled requests than this give no drift weight (PSI on a handful of rows is noise)
MIN_DRIFT_ROWS = 50
#: PSI terms floor both shares at this, as :func:`lifelong_ray.drift.stats.psi` does
PSI_EPS = 1e-4
RULE = ("score = u * (1 + d); u = (1 - confidence) / (1 - 1/K); d = share of the largest PSI mass, over "
        "drifted features (PSI > drift.psi_threshold) vs the champion's training reference, of the "
        "over-filled bins the request falls in")


@dataclass(frozen=True)
class LabelPool:
    """Served, unlabeled, unexpired requests: one entry per request, columns aligned."""

    request_ids: list[str]
    t: np.ndarray
    version: list[str]
    confidence: np.ndarray
    columns: dict[str, np.ndarray]  # feature -> float64 (NaN for null) or object (str/None)

    def __len__(self) -> int:
        return len(self.request_ids)


class LabelRequest(BaseModel):
    request_id: str
    score: float = Field(description="u * (1 + d)")
    uncertainty: float = Field(description="u: 1 at a coin toss, 0 when the model was sure")
    drift: float = Field(description="d in [0, 1]: how deep in a drifted region the request lies")
    confidence: float
    version: str
    t: float
    why: str


class LabelRequests(BaseModel):
    model: str
    budget: int
    candidates: int = Field(description="served, unlabeled, unexpired requests considered")
    reference_version: str | None = Field(description="the champion whose training reference defined drift")
    drifted_features: dict[str, float] = Field(description="feature -> PSI of the pool, for drifted ones")
    controller_drift: str | None = Field(description="the controller's last feature-drift verdict, if any")
    notes: list[str] = Field(default_factory=list, description="why drift weighting was off, if it was")
    rule: str = RULE
    items: list[LabelRequest]


@dataclass(frozen=True)
class _FeatureBins:
    name: str
    bins: np.ndarray       # bin index per pooled request
    terms: np.ndarray      # PSI term per bin, 0 where live traffic under-fills the bin
    psi: float
    labels: list[str]      # a readable name per bin


def _psi_terms(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    r = np.clip(ref, PSI_EPS, None)
    c = np.clip(cur, PSI_EPS, None)
    return (c - r) * np.log(c / r)


def _numeric_bins(name: str, x: np.ndarray, edges: np.ndarray, ref_props: np.ndarray) -> _FeatureBins | None:
    interior = edges[1:-1]
    if not np.isfinite(edges).all():
        return None
    idx = np.where(np.isnan(x), len(interior) + 1, np.searchsorted(interior, x, side="right"))
    cur = np.bincount(idx, minlength=ref_props.size) / max(len(x), 1)
    terms = _psi_terms(ref_props, cur)
    bounds = [-math.inf, *interior.tolist(), math.inf]
    labels = [f"{name} in [{bounds[i]:.3g}, {bounds[i + 1]:.3g})" for i in range(len(bounds) - 1)]
    return _FeatureBins(name, idx, np.where(cur > ref_props, terms, 0.0), float(terms.sum()),
                        labels + [f"{name} missing"])


def _category_bins(name: str, values: np.ndarray, categories: Sequence[str], counts: np.ndarray) -> _FeatureBins:
    index = {c: i for i, c in enumerate(categories)}
    idx = np.array([index.get(v, len(categories)) if isinstance(v, str) else len(categories) for v in values],
                   dtype=np.intp)
    ref = counts / max(counts.sum(), 1)
    cur = np.bincount(idx, minlength=ref.size) / max(len(values), 1)
    terms = _psi_terms(ref, cur)
    labels = [f"{name} = {c}" for c in categories] + [f"{name} unknown/missing"]
    return _FeatureBins(name, idx, np.where(cur > ref, terms, 0.0), float(terms.sum()), labels)


def feature_bins(pool: LabelPool, reference: Reference) -> list[_FeatureBins]:
    """Per feature of ``reference`` present in the pool: bin of each request and PSI terms."""
    out = []
    for j, name in enumerate(reference.numeric):
        if name in pool.columns:
            fb = _numeric_bins(name, np.asarray(pool.columns[name], dtype=np.float64), reference.edges[j],
                               reference.props[j])
            if fb is not None:
                out.append(fb)
    for name, cats, counts in zip(reference.categorical, reference.categories, reference.counts):
        if name in pool.columns:
            out.append(_category_bins(name, np.asarray(pool.columns[name], dtype=object), cats, counts))
    return out


def score_label_requests(pool: LabelPool, budget: int, *, n_classes: int, reference: Reference | None,
                         psi_threshold: float) -> tuple[list[LabelRequest], dict[str, float]]:
    """The ``budget`` best requests to label and the drifted features (name -> PSI)."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    n = len(pool)
    if n == 0:
        return [], {}
    conf = np.asarray(pool.confidence, dtype=np.float64)
    u = np.clip((1.0 - np.nan_to_num(conf, nan=1.0)) / (1.0 - 1.0 / n_classes), 0.0, 1.0)
    drifted: list[_FeatureBins] = []
    if reference is not None and n >= MIN_DRIFT_ROWS:
        drifted = [fb for fb in feature_bins(pool, reference) if fb.psi > psi_threshold]
    mass = np.zeros((len(drifted), n))
    for k, fb in enumerate(drifted):
        mass[k] = fb.terms[fb.bins]
    total = mass.sum(axis=0)
    d = total / total.max() if drifted and total.max() > 0 else np.zeros(n)
    score = u * (1.0 + d)
    order = np.lexsort((np.asarray(pool.request_ids), -np.asarray(pool.t, dtype=np.float64), -score))[:budget]
    items = []
    for i in order.tolist():
        why = f"uncertainty {u[i]:.2f} (confidence {conf[i]:.2f} from {pool.version[i]})"
        if d[i] > 0:
            k = int(mass[:, i].argmax())
            fb = drifted[k]
            why += (f"; drifted region {fb.labels[fb.bins[i]]} (PSI term {mass[k, i]:.3f} of "
                    f"{fb.name}'s PSI {fb.psi:.2f}), drift weight {d[i]:.2f}")
        elif drifted:
            why += "; outside the drifted regions"
        items.append(LabelRequest(request_id=pool.request_ids[i], score=float(score[i]), uncertainty=float(u[i]),
                                  drift=float(d[i]), confidence=float(conf[i]), version=pool.version[i],
                                  t=float(pool.t[i]), why=why))
    return items, {fb.name: round(fb.psi, 6) for fb in drifted}


# -- reading the pool and the reference (blocking I/O) ---------------------------------
def _as_column(col: pa.ChunkedArray, categorical: bool) -> np.ndarray:
    if categorical:
        return np.asarray(col.to_pylist(), dtype=object)
    return col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def load_label_pool(storage: Storage, schema: Schema, *, now: float, horizon_s: float,
                    max_rows: int = MAX_POOL_ROWS) -> LabelPool:
    """Served requests of the last ``horizon_s`` seconds that have no label yet: the
    newest ``max_rows`` of them at most. Only the log files of that span are read
    (:func:`~lifelong_ray.serving.reads.files_in_window`), newest first, so the cost
    does not grow with the history kept."""
    from lifelong_ray.serving.feedback import CLOCK_SKEW_S
    from lifelong_ray.serving.reads import files_in_window

    logs = ModelLogs(storage, schema.spec.name)
    categorical = {f.name for f in schema.features if f.dtype == "category"}
    cols = ["request_id", "t", "version", "confidence", *schema.names]
    since = now - horizon_s
    # the open segments first (answers of the last data.log_seal_seconds), then the log: a seal
    # in between puts a row in both, and the first copy is kept
    tables = [served_rows(t).select([c for c in cols if c in t.column_names])
              for t in open_segment_tables(storage, logs.predictions_prefix)]
    rows = sum(t.num_rows for t in tables)
    for path in reversed(files_in_window(storage, logs.predictions_prefix, since)):
        if rows >= max_rows:
            break
        table = read_log_table(storage, path, cols, served_only=True)
        table = table.filter(pc.greater_equal(table.column("t"), since))
        tables.append(table)
        rows += table.num_rows
    tables = [t for t in (t.filter(pc.greater_equal(t.column("t"), since)) for t in tables) if t.num_rows]
    oldest = min((pc.min(t.column("t")).as_py() for t in tables), default=now)
    labeled: set[str] = set()  # a label is written after its prediction: newer files only
    for path in files_in_window(storage, logs.feedback_prefix, oldest - CLOCK_SKEW_S):
        labeled.update(read_log_table(storage, path, ["request_id"], served_only=False)
                       .column("request_id").to_pylist())
    if not tables:
        return LabelPool([], np.empty(0), [], np.empty(0), {n: np.empty(0) for n in schema.names})
    table = pa.concat_tables(tables, promote_options="permissive")
    ids = table.column("request_id").to_pylist()
    keep = np.zeros(len(ids), dtype=bool)
    taken = set(labeled)
    for i, rid in enumerate(ids):
        if rid not in taken:
            keep[i] = True
            taken.add(rid)
    table = table.filter(pa.array(keep))
    return LabelPool(
        request_ids=table.column("request_id").to_pylist(),
        t=table.column("t").to_numpy(zero_copy_only=False).astype(np.float64),
        version=[str(v) for v in table.column("version").to_pylist()],
        confidence=_as_column(table.column("confidence"), False),
        columns={n: _as_column(table.column(n), n in categorical) for n in schema.names if n in table.column_names},
    )


def champion_reference(storage: Storage, schema: Schema, seed: int = 0) -> tuple[str | None, Reference | None, str | None]:
    """``(champion, its training reference, why not)`` from the routing table, else the registry alias."""
    from lifelong_ray.registry.store import Registry
    from lifelong_ray.serving.routing import read_routing

    model = schema.spec.name
    try:
        registry = Registry(storage, model)
        champion = read_routing(storage, model).champion or registry.aliases().get("champion")
        if champion is None:
            return None, None, "no champion yet: drift weighting off"
        table = registry.reference(champion)
    except Exception as err:  # noqa: BLE001 - fall back to pure uncertainty, and say so
        return None, None, f"champion reference unreadable ({type(err).__name__}: {err}): drift weighting off"
    categorical = {f.name for f in schema.features if f.dtype == "category"}
    missing = [n for n in schema.names if n not in table.column_names]
    if missing or table.num_rows == 0:
        return champion, None, f"reference of {champion} lacks {missing or 'rows'}: drift weighting off"
    cols = {n: _as_column(table.column(n), n in categorical) for n in schema.names}
    return champion, Reference.from_columns(cols, schema, seed=seed), None


def _controller_drift(storage: Storage, model: str) -> str | None:
    path = f"models/{model}/controller/state.json"
    try:
        state: Any = storage.read_json(path) if storage.exists(path) else None
    except (OSError, ValueError):
        return None
    last = (state or {}).get("last_feature_drift") if isinstance(state, dict) else None
    return str(last.get("reason")) if isinstance(last, dict) and last.get("reason") else None


def label_requests(cfg: Config, budget: int, *, now: float, storage: Storage | None = None) -> LabelRequests:
    """The ``budget`` served requests whose labels would help ``cfg``'s model most.

    Reads the prediction and feedback logs, the routing table and the champion's
    training reference from ``storage`` (default: ``cfg.storage.root``); runs
    without Ray, so the CLI can call it against any storage root."""
    storage = storage or Storage(cfg.storage.root)
    schema = Schema(cfg.model)
    pool = load_label_pool(storage, schema, now=now, horizon_s=cfg.data.label_horizon_seconds)
    notes: list[str] = []
    champion, reference, why_not = champion_reference(storage, schema, seed=cfg.training.seed)
    if why_not:
        notes.append(why_not)
    if reference is not None and len(pool) < MIN_DRIFT_ROWS:
        notes.append(f"{len(pool)} candidates < {MIN_DRIFT_ROWS}: too few to measure drift, weighting off")
    items, drifted = score_label_requests(pool, budget, n_classes=len(cfg.model.label.classes),
                                          reference=reference, psi_threshold=cfg.drift.psi_threshold)
    return LabelRequests(model=cfg.model.name, budget=budget, candidates=len(pool), reference_version=champion,
                         drifted_features=drifted, controller_drift=_controller_drift(storage, cfg.model.name),
                         notes=notes, items=items)
