"""The observer: turns the durable logs into :class:`Observations` for decide().

It tails the prediction and feedback logs, joins labels to predictions by
``request_id`` (labels may arrive late, in any order, more than once: the first
one counts), appends each joined row to the ``labeled`` log once, and cuts the
streams into tumbling windows:

* feature windows: every ``drift.window_size`` served rows, compared with the
  champion's training reference (PSI + KS);
* quality windows: every ``drift.label_window`` joined labels, the champion's
  accuracy against its reference accuracy.

Window indices are stable across restarts (the observer rebuilds its buffers
from the logs), so the controller state only needs the index of the next
window it has not decided on yet.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from lifelong_ray.config import Config
from lifelong_ray.data.logs import LABELED_META, LogTail, ModelLogs
from lifelong_ray.data.schema import Schema
from lifelong_ray.drift.feature import feature_drift
from lifelong_ray.drift.performance import accuracy_check, change_point
from lifelong_ray.drift.reference import Reference
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage
from lifelong_ray.policy.model import (
    ControllerState,
    FeatureWindow,
    Observations,
    QualityWindow,
    RetrainOutcome,
    VersionStats,
)
from lifelong_ray.registry.store import Registry
from lifelong_ray.storage import Storage
from lifelong_ray.training.retrain import job_path

log = logging.getLogger(__name__)

_SERVED_COLS = ["request_id", "t", "version", "prediction", "error"]


class Observer:
    def __init__(self, cfg: Config, storage: Storage, registry: Registry) -> None:
        self.cfg = cfg
        self.storage = storage
        self.registry = registry
        self.schema = Schema(cfg.model)
        self.logs = ModelLogs(storage, cfg.model.name)
        self._pred_tail = LogTail(storage, self.logs.predictions_prefix)
        self._fb_tail = LogTail(storage, self.logs.feedback_prefix)
        self._lab_tail = LogTail(storage, self.logs.labeled_prefix)
        self._served = pd.DataFrame(columns=_SERVED_COLS)          # all non-shadow predictions
        self._unjoined = pd.DataFrame(columns=_SERVED_COLS + self.schema.names).set_index("request_id")
        self._early_labels = pd.DataFrame(columns=["request_id", "t", "label"])
        self._labeled_ids: set[str] = set()
        self._labeled_t = np.empty(0)                              # every labeled row's t
        self._joined = pd.DataFrame(columns=["t", "version", "correct"])  # served + labeled
        self._feature_buf: list[pd.DataFrame] = []
        self._feature_buf_rows = 0
        self._feature_index = 0
        self._quality_buf: list[pd.DataFrame] = []
        self._quality_buf_rows = 0
        self._quality_index = 0
        self._references: dict[str, Reference] = {}
        self._load_labeled_history()

    # -- start-up ---------------------------------------------------------------
    def _load_labeled_history(self) -> None:
        """Rebuild what was already joined (the labeled log is the source of truth)."""
        table = self._lab_tail.read_new(columns=LABELED_META)
        if table is None:
            return
        df = table.to_pandas()
        self._labeled_ids.update(df["request_id"].dropna())
        self._labeled_t = df["t"].to_numpy(dtype=float)
        served = df[df["version"].notna()]
        self._append_joined(served)

    # -- one observation ----------------------------------------------------------
    def observe(self, state: ControllerState, now: float) -> Observations:
        new_preds = self._read_predictions()
        feature_windows = self._feature_windows(new_preds, state)
        self._join_labels(now)
        self._pick_up_ingested()
        quality_windows = self._quality_windows(state)
        obs = Observations(
            feature_windows=feature_windows,
            quality_windows=quality_windows,
            labeled_total=int(self._labeled_t.size),
            labeled_since_retrain=int((self._labeled_t >= (state.retrain_since_t or -np.inf)).sum()),
            labeled_since_t=state.retrain_since_t,
        )
        if state.rollout == RolloutStage.CANARY and state.step_started_t is not None:
            obs.step_stats = self._step_stats(state.step_started_t)
        if state.retrain == RetrainStage.RUNNING and state.retrain_job_id:
            obs.retrain_outcome = self._outcome(state.retrain_job_id)
        return obs

    def _read_predictions(self) -> pd.DataFrame:
        table = self._pred_tail.read_new()
        if table is None:
            return pd.DataFrame(columns=_SERVED_COLS + self.schema.names)
        df = table.to_pandas()
        df = df[~df["shadow"].fillna(False).astype(bool)].sort_values("t", kind="stable")
        df = df[_SERVED_COLS + self.schema.names]
        if not df.empty:
            self._served = pd.concat([self._served, df[_SERVED_COLS]], ignore_index=True) \
                if not self._served.empty else df[_SERVED_COLS].reset_index(drop=True)
            ok = df[df["error"].isna() & ~df["request_id"].isin(self._labeled_ids)]
            fresh = ok.set_index("request_id")
            self._unjoined = pd.concat([self._unjoined, fresh]) if not self._unjoined.empty else fresh
        return df

    # -- feature drift --------------------------------------------------------------
    def _reference(self, version: str | None) -> Reference | None:
        if version is None:
            return None
        if version not in self._references:
            table = self.registry.reference(version)
            cols = {name: _column(table, name, name in self._categorical) for name in self.schema.names}
            self._references[version] = Reference.from_columns(cols, self.schema, seed=self.cfg.training.seed)
        return self._references[version]

    @property
    def _categorical(self) -> set[str]:
        return {f.name for f in self.schema.features if f.dtype == "category"}

    def _feature_windows(self, new_preds: pd.DataFrame, state: ControllerState) -> list[FeatureWindow]:
        rows = new_preds[new_preds["error"].isna()]
        if not rows.empty:
            self._feature_buf.append(rows)
            self._feature_buf_rows += len(rows)
        size = self.cfg.drift.window_size
        out: list[FeatureWindow] = []
        while self._feature_buf_rows >= size:
            buf = pd.concat(self._feature_buf, ignore_index=True)
            window, rest = buf.iloc[:size], buf.iloc[size:]
            self._feature_buf, self._feature_buf_rows = ([rest] if len(rest) else []), len(rest)
            idx = self._feature_index
            self._feature_index += 1
            if idx < state.feature_windows_done:
                continue
            start_t, end_t = float(window["t"].iloc[0]), float(window["t"].iloc[-1])
            ref = self._reference(state.champion)
            if ref is None:
                out.append(FeatureWindow(index=idx, start_t=start_t, end_t=end_t, drifted=False,
                                         reason="no champion reference yet"))
                continue
            cols = {n: _series(window[n], n in self._categorical) for n in self.schema.names}
            rep = feature_drift(ref, cols, self.cfg.drift)
            out.append(FeatureWindow(index=idx, start_t=start_t, end_t=end_t, drifted=rep.drifted,
                                     reason=rep.reason, champion=state.champion, n_drifted=rep.n_drifted,
                                     max_psi=max((f.psi for f in rep.features), default=0.0)))
        return out

    # -- labels ---------------------------------------------------------------------
    def _join_labels(self, now: float) -> None:
        table = self._fb_tail.read_new()
        labels = self._early_labels
        if table is not None:
            fresh = table.to_pandas()[["request_id", "t", "label"]]
            labels = pd.concat([labels, fresh], ignore_index=True) if not labels.empty else fresh
        if labels.empty:
            return
        labels = labels.drop_duplicates("request_id", keep="first")
        labels = labels[~labels["request_id"].isin(self._labeled_ids)]
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
            **{n: _arrow(joined[n], n in self._categorical) for n in self.schema.names},
        })
        self._lab_tail.seen.add(self.logs.append_labeled(table, now))
        self._labeled_ids.update(joined["request_id"])
        self._labeled_t = np.concatenate([self._labeled_t, joined["t"].to_numpy(dtype=float)])
        self._append_joined(joined)

    def _pick_up_ingested(self) -> None:
        """Batch-ingested labeled rows (no version) count toward the window sizes."""
        table = self._lab_tail.read_new(columns=["t", "version"])
        if table is not None:
            df = table.to_pandas()
            self._labeled_t = np.concatenate([self._labeled_t, df["t"].to_numpy(dtype=float)])

    def _append_joined(self, rows: pd.DataFrame) -> None:
        if rows.empty:
            return
        part = pd.DataFrame({"t": rows["t"].to_numpy(dtype=float),
                             "version": rows["version"].astype(str).to_numpy(),
                             "correct": (rows["prediction"].to_numpy() == rows["label"].to_numpy())})
        self._joined = pd.concat([self._joined, part], ignore_index=True) if not self._joined.empty else part
        self._quality_buf.append(part)
        self._quality_buf_rows += len(part)

    def _quality_windows(self, state: ControllerState) -> list[QualityWindow]:
        size = self.cfg.drift.label_window
        out: list[QualityWindow] = []
        while self._quality_buf_rows >= size:
            buf = pd.concat(self._quality_buf, ignore_index=True)
            window, rest = buf.iloc[:size], buf.iloc[size:]
            self._quality_buf, self._quality_buf_rows = ([rest] if len(rest) else []), len(rest)
            idx = self._quality_index
            self._quality_index += 1
            if idx < state.quality_windows_done:
                continue
            start_t, end_t = float(window["t"].min()), float(window["t"].max())
            mine = window[window["version"] == (state.champion or "")]
            ref = state.champion_reference_accuracy
            if ref is None or len(mine) < size // 2:
                out.append(QualityWindow(index=idx, start_t=start_t, end_t=end_t, n=len(mine),
                                         champion=state.champion,
                                         accuracy=float(mine["correct"].mean()) if len(mine) else None,
                                         reference_accuracy=ref, drifted=False,
                                         reason=f"only {len(mine)} of {size} labels are the champion's"))
                continue
            chk = accuracy_check(mine["correct"].to_numpy(dtype=bool), ref, self.cfg.drift)
            out.append(QualityWindow(index=idx, start_t=start_t, end_t=end_t, n=chk.n, champion=state.champion,
                                     change_t=self._change_t(mine) if chk.drifted else None,
                                     accuracy=chk.accuracy,
                                     reference_accuracy=ref, drifted=chk.drifted, reason=chk.reason))
        return out

    def _change_t(self, window: pd.DataFrame) -> float | None:
        """Prediction time where the champion's correctness shifted, searched over
        this window and the champion's labeled rows just before it."""
        champ = window["version"].iloc[0]
        before = self._joined[(self._joined["version"] == champ) & (self._joined["t"] < window["t"].min())]
        rows = pd.concat([before.tail(len(window)), window]).sort_values("t", kind="stable")
        k = change_point(rows["correct"].to_numpy(dtype=float))
        return float(rows["t"].iloc[k]) if k is not None else None

    # -- canary step stats --------------------------------------------------------------
    def _step_stats(self, since: float) -> dict[str, VersionStats]:
        stats: dict[str, VersionStats] = {}
        served = self._served[self._served["t"] >= since]
        for version, grp in served.groupby("version"):
            stats[str(version)] = VersionStats(served=len(grp), errors=int(grp["error"].notna().sum()))
        joined = self._joined[self._joined["t"] >= since]
        for version, grp in joined.groupby("version"):
            st = stats.setdefault(str(version), VersionStats())
            st.labeled, st.correct = len(grp), int(grp["correct"].sum())
        return stats

    def _outcome(self, job_id: str) -> RetrainOutcome | None:
        path = job_path(self.cfg.model.name, job_id)
        if not self.storage.exists(path):
            return None
        data = self.storage.read_json(path)
        return RetrainOutcome.model_validate({k: data.get(k) for k in RetrainOutcome.model_fields if k in data})


def _column(table: pa.Table, name: str, categorical: bool) -> np.ndarray:
    col = table.column(name)
    if categorical:
        return np.asarray(col.to_pylist(), dtype=object)
    return col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def _series(s: pd.Series, categorical: bool) -> np.ndarray:
    if categorical:
        return s.astype(object).where(s.notna(), None).to_numpy(dtype=object)
    return s.to_numpy(dtype=float, na_value=np.nan)


def _arrow(s: pd.Series, categorical: bool) -> pa.Array:
    if categorical:
        return pa.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                         for v in s.tolist()], pa.string())
    return pa.array(s.to_numpy(dtype=float, na_value=np.nan), pa.float64(), from_pandas=True)
