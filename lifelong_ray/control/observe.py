"""The observer: turns the durable logs into :class:`Observations` for decide().

It tails the prediction and feedback logs, joins labels to predictions by
``request_id`` (labels may arrive late, in any order, more than once: the first
one counts), appends each joined row to the ``labeled`` log once, and hands
served and joined rows to the :class:`~lifelong_ray.control.windows.WindowTracker`
that cuts them into drift and quality windows (the backtest uses the same
tracker). After a restart the observer rebuilds everything from the logs.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from lifelong_ray.config import Config
from lifelong_ray.control.commands import read_commands
from lifelong_ray.control.windows import WindowTracker
from lifelong_ray.data.logs import LABELED_META, LogTail, ModelLogs
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.segments import seal_orphans
from lifelong_ray.drift.reference import Reference
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage
from lifelong_ray.policy.model import ControllerState, Observations, RetrainOutcome, ShadowStats
from lifelong_ray.registry.store import Registry
from lifelong_ray.storage import Storage
from lifelong_ray.training.retrain import job_path

log = logging.getLogger(__name__)

_SERVED_COLS = ["request_id", "t", "version", "prediction", "error", "latency_ms"]
#: rows of served/shadow predictions and labels kept for the shadow comparison
_SHADOW_MEMORY = 100_000


class Observer:
    def __init__(self, cfg: Config, storage: Storage, registry: Registry) -> None:
        self.cfg = cfg
        self.storage = storage
        self.registry = registry
        self.schema = Schema(cfg.model)
        self.categorical = {f.name for f in self.schema.features if f.dtype == "category"}
        self.logs = ModelLogs(storage, cfg.model.name)
        self.tracker = WindowTracker(cfg, self._load_reference)
        self._pred_tail = LogTail(storage, self.logs.predictions_prefix)
        self._fb_tail = LogTail(storage, self.logs.feedback_prefix)
        self._lab_tail = LogTail(storage, self.logs.labeled_prefix)
        self._unjoined = pd.DataFrame(columns=_SERVED_COLS + self.schema.names).set_index("request_id")
        self._early_labels = pd.DataFrame(columns=["request_id", "t", "label"])
        self._labeled_ids: set[str] = set()
        self._labeled_t = np.empty(0)  # every labeled row's t (joined and batch-ingested)
        # for the shadow comparison: recent answers (served and mirrored) and labels by request_id
        self._answers = pd.DataFrame(columns=["request_id", "t", "version", "prediction", "shadow"])
        self._labels = pd.DataFrame(columns=["request_id", "label"])
        self._load_labeled_history()

    def _load_reference(self, version: str) -> Reference:
        table = self.registry.reference(version)
        cols = {n: _column(table, n, n in self.categorical) for n in self.schema.names}
        return Reference.from_columns(cols, self.schema, seed=self.cfg.training.seed)

    def _load_labeled_history(self) -> None:
        """Rebuild what was already joined (the labeled log is the source of truth)."""
        table = self._lab_tail.read_new(columns=LABELED_META)
        if table is None:
            return
        df = table.to_pandas()
        self._labeled_ids.update(df["request_id"].dropna())
        self._labeled_t = df["t"].to_numpy(dtype=float)
        self.tracker.add_joined(df[df["version"].notna()].sort_values("t", kind="stable"))

    # -- one observation ----------------------------------------------------------
    def observe(self, state: ControllerState, now: float) -> Observations:
        self._read_predictions()
        feature_windows = self.tracker.feature_windows(state)
        self._join_labels(now)
        self._pick_up_ingested()
        obs = Observations(
            feature_windows=feature_windows,
            quality_windows=self.tracker.quality_windows(state),
            labeled_total=int(self._labeled_t.size),
            labeled_since_retrain=int((self._labeled_t >= (state.retrain_since_t or -np.inf)).sum()),
            labeled_since_t=state.retrain_since_t,
        )
        if state.rollout != RolloutStage.STABLE and state.step_started_t is not None:
            obs.step_stats = self.tracker.step_stats(state.step_started_t)  # canary step or probation
        if state.retrain == RetrainStage.RUNNING and state.retrain_job_id:
            obs.retrain_outcome = self._outcome(state.retrain_job_id)
        obs.shadow_stats = self._shadow_stats(state)
        obs.budget = self.tracker.budget(now)
        obs.commands = read_commands(self.storage, self.cfg.model.name, done=set(state.commands_done))
        return obs

    def _shadow_stats(self, state: ControllerState) -> ShadowStats | None:
        """The candidate's mirrored answers against the served ones for the same requests."""
        if state.shadow_started_t is None or state.candidate is None:
            return None
        a = self._answers[self._answers["t"] >= state.shadow_started_t]
        mirrored = a[a["shadow"] & (a["version"] == state.candidate)]
        served = a[~a["shadow"]]
        both = mirrored.merge(served, on="request_id", suffixes=("_cand", "_champ"))
        labeled = both.merge(self._labels, on="request_id")
        return ShadowStats(
            compared=len(both), agree=int((both["prediction_cand"] == both["prediction_champ"]).sum()),
            labeled=len(labeled),
            candidate_correct=int((labeled["prediction_cand"] == labeled["label"]).sum()),
            champion_correct=int((labeled["prediction_champ"] == labeled["label"]).sum()))

    def _read_predictions(self) -> None:
        try:  # rows an ingress replica answered and died before sealing (data.log_segments)
            seal_orphans(self.logs, self.logs.predictions_prefix, fsync=self.cfg.data.durability.predictions != "none")
        except Exception:  # noqa: BLE001 - the next tick, or the next ingress replica, retries
            log.exception("could not seal orphaned prediction segments of %s", self.cfg.model.name)
        table = self._pred_tail.read_new()
        if table is None:
            return
        df = table.to_pandas()
        shadow = df["shadow"].fillna(False).astype(bool)
        answers = df.loc[df["error"].isna(), ["request_id", "t", "version", "prediction"]].assign(
            shadow=shadow[df["error"].isna()].to_numpy())
        self._answers = _tail(self._answers, answers)
        df = df[~shadow].sort_values("t", kind="stable")
        df = df[_SERVED_COLS + self.schema.names]
        self.tracker.add_served(df)
        fresh = df[df["error"].isna() & ~self._already_labeled(df["request_id"])].set_index("request_id")
        if not fresh.empty:
            self._unjoined = pd.concat([self._unjoined, fresh]) if not self._unjoined.empty else fresh

    def _already_labeled(self, ids: pd.Series) -> np.ndarray:
        """Which of ``ids`` were labeled before: set lookups of the new rows only
        (``Series.isin(set)`` would rebuild a table of every id ever labeled)."""
        seen = self._labeled_ids
        return np.fromiter((r in seen for r in ids), dtype=bool, count=len(ids))

    def _join_labels(self, now: float) -> None:
        table = self._fb_tail.read_new()
        labels = self._early_labels
        if table is not None:
            fresh = table.to_pandas()[["request_id", "t", "label"]]
            labels = pd.concat([labels, fresh], ignore_index=True) if not labels.empty else fresh
        if labels.empty:
            return
        labels = labels.drop_duplicates("request_id", keep="first")
        labels = labels[~self._already_labeled(labels["request_id"])]
        matched = labels["request_id"].isin(self._unjoined.index)
        self._early_labels = labels[~matched].reset_index(drop=True)
        hit = labels[matched]
        if hit.empty:
            return
        preds = self._unjoined.loc[hit["request_id"].to_numpy()]
        self._unjoined = self._unjoined.drop(index=hit["request_id"].to_numpy())
        joined = preds.reset_index()
        joined["t_label"] = hit["t"].to_numpy(dtype=float)
        joined["label"] = hit["label"].to_numpy(dtype=np.int64)
        joined = joined.sort_values("t", kind="stable")
        table = pa.table({
            "request_id": pa.array(joined["request_id"].astype(str).tolist(), pa.string()),
            "t": pa.array(joined["t"].to_numpy(dtype=float)),
            "t_label": pa.array(joined["t_label"].to_numpy(dtype=float)),
            "version": pa.array(joined["version"].astype(str).tolist(), pa.string()),
            "prediction": pa.array(joined["prediction"].to_numpy(dtype=np.int64)),
            "label": pa.array(joined["label"].to_numpy(dtype=np.int64)),
            **{n: _arrow(joined[n], n in self.categorical) for n in self.schema.names},
        })
        self._lab_tail.seen.add(self.logs.append_labeled(table, now))
        self._labeled_ids.update(joined["request_id"])
        self._labels = _tail(self._labels, joined[["request_id", "label"]])
        self._labeled_t = np.concatenate([self._labeled_t, joined["t"].to_numpy(dtype=float)])
        self.tracker.add_joined(joined)

    def _pick_up_ingested(self) -> None:
        """Batch-ingested labeled rows (no version) count toward the window sizes."""
        table = self._lab_tail.read_new(columns=["t", "version"])
        if table is not None:
            self._labeled_t = np.concatenate([self._labeled_t, table.column("t").to_numpy()])

    def _outcome(self, job_id: str) -> RetrainOutcome | None:
        path = job_path(self.cfg.model.name, job_id)
        if not self.storage.exists(path):
            return None
        data = self.storage.read_json(path)
        return RetrainOutcome.model_validate({k: data[k] for k in RetrainOutcome.model_fields if k in data})


def _tail(frame: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``new`` appended, keeping the newest ``_SHADOW_MEMORY`` rows."""
    both = pd.concat([frame, new], ignore_index=True) if not frame.empty else new.reset_index(drop=True)
    return both.iloc[-_SHADOW_MEMORY:]


def _column(table: pa.Table, name: str, categorical: bool) -> np.ndarray:
    col = table.column(name)
    if categorical:
        return np.asarray(col.to_pylist(), dtype=object)
    return col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def _arrow(s: pd.Series, categorical: bool) -> pa.Array:
    if categorical:
        return pa.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                         for v in s.tolist()], pa.string())
    return pa.array(s.to_numpy(dtype=float, na_value=np.nan), pa.float64(), from_pandas=True)
