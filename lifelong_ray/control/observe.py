"""The observer: turns the durable logs into :class:`Observations` for decide().

It tails the prediction and feedback logs, joins labels to predictions by
``request_id`` (labels may arrive late, in any order, more than once: the first
one counts), appends each joined row to the ``labeled`` log once, and hands
served and joined rows to the :class:`~lifelong_ray.control.windows.WindowTracker`
that cuts them into drift and quality windows (the backtest uses the same
tracker).

Its memory is bounded by time, not by history, and a tick costs what came in, not what
waits (:mod:`lifelong_ray.control.unjoined`): a prediction still unlabeled after
``data.label_horizon_seconds`` is forgotten (counted in :attr:`Observer.expired_predictions`;
a label that comes for it later waits a horizon for a prediction it never finds and is
counted in :attr:`Observer.expired_labels`), the ids of labeled predictions are kept for a
horizon, the labeled rows are a count plus the newest few prediction times, the tracker's
per-row history reaches back to the current rollout step (at most a horizon), the shadow
comparison's answers and labels back to the shadow's start (at most a horizon), and the log
tails remember ``data.log_late_seconds`` of file names. Every ``controller.checkpoint_ticks``
ticks it writes all of that to a checkpoint (:mod:`lifelong_ray.control.checkpoint`); a
restart loads the checkpoint and reads only the log files written since. With no
checkpoint (a first start) it rebuilds from the logs, a file batch at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from lifelong_ray.config import Config
from lifelong_ray.control.checkpoint import read_checkpoint, write_checkpoint
from lifelong_ray.control.commands import read_new_commands
from lifelong_ray.control.unjoined import EarlyLabels, Unjoined
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
#: prediction rows handed to the window tracker at once when catching up on a log
_READ_BATCH_ROWS = 200_000


class Observer:
    def __init__(self, cfg: Config, storage: Storage, registry: Registry) -> None:
        self.cfg = cfg
        self.storage = storage
        self.registry = registry
        self.schema = Schema(cfg.model)
        self.categorical = {f.name for f in self.schema.features if f.dtype == "category"}
        self.logs = ModelLogs(storage, cfg.model.name)
        self.tracker = WindowTracker(cfg, self._load_reference)
        lag = cfg.data.log_late_seconds
        self._pred_tail = LogTail(storage, self.logs.predictions_prefix, lag_s=lag)
        self._fb_tail = LogTail(storage, self.logs.feedback_prefix, lag_s=lag)
        self._lab_tail = LogTail(storage, self.logs.labeled_prefix, lag_s=lag)
        self.horizon = cfg.data.label_horizon_seconds
        self._unjoined = Unjoined(_SERVED_COLS[1:] + self.schema.names)  # predictions waiting for a label
        self._early_labels = EarlyLabels()  # labels waiting for their prediction
        self._new_ids: list[list[str]] = []  # ids of the predictions taken in since the last join
        self._labeled_ids: dict[str, float] = {}  # labeled request id -> its prediction time (one horizon)
        self._ids_kept = 0  # len(_labeled_ids) after the last pruning
        self.labeled_total = 0  # labeled rows ever (joined and batch-ingested)
        # the newest prediction times of labeled rows: labeled_since_retrain is exact up to this many
        self._recent_cap = max(10 * cfg.training.min_rows, 10_000)
        self._recent_t = np.empty(0)
        self.expired_predictions = 0
        self.expired_labels = 0
        # for the shadow comparison: recent answers (served and mirrored) and labels by request_id
        self._answers = pd.DataFrame(columns=["request_id", "t", "version", "prediction", "shadow"])
        self._labels = pd.DataFrame(columns=["request_id", "t", "label"])
        self._last_seq: int | None = None
        self.restored = self._restore()
        self._ticks = 0 if self.restored else cfg.controller.checkpoint_ticks  # ticks since the last checkpoint
        self._pick_up_labeled(history=True)

    def _load_reference(self, version: str) -> Reference:
        table = self.registry.reference(version)
        cols = {n: _column(table, n, n in self.categorical) for n in self.schema.names}
        return Reference.from_columns(cols, self.schema, seed=self.cfg.training.seed)

    def _count_labeled(self, t: np.ndarray) -> None:
        self.labeled_total += int(t.size)
        recent = np.concatenate([self._recent_t, t[np.isfinite(t)]])
        if recent.size > 2 * self._recent_cap:
            recent = np.partition(recent, recent.size - self._recent_cap)[-self._recent_cap:]
        self._recent_t = recent

    def _labeled_since(self, since: float | None) -> int:
        """Labeled rows predicted at or after ``since``: exact below ``_recent_cap``, else that cap
        (the policy only compares it with ``training.min_rows``)."""
        if since is None:
            return min(self.labeled_total, self._recent_cap)
        return min(int((self._recent_t >= since).sum()), self._recent_cap)

    def _pick_up_labeled(self, history: bool = False) -> None:
        """New files of the labeled log: batch-ingested rows (no version) count toward the
        window sizes. With ``history`` (at start: the whole log, or what a checkpoint has
        not seen) joined rows are taken in too: their ids, counts and windows."""
        for table in _batches(self._lab_tail, LABELED_META if history else ["t", "version"]):
            t = table.column("t").to_numpy(zero_copy_only=False).astype(float)
            self._count_labeled(t)
            if not history:
                continue
            df = table.to_pandas()
            ids = df["request_id"].dropna()
            self._labeled_ids.update(zip(ids.tolist(), df.loc[ids.index, "t"].astype(float).tolist()))
            joined = df[df["version"].notna()]
            if len(joined) and len(self._unjoined):
                self._unjoined.discard(joined["request_id"].tolist())
            self.tracker.add_joined(joined.sort_values("t", kind="stable"))

    def held(self) -> dict[str, int]:
        """How much the observer holds, in rows or names (each bounded by time, not history)."""
        return {"unjoined": len(self._unjoined), "early_labels": len(self._early_labels),
                "labeled_ids": len(self._labeled_ids), "recent_labeled_t": int(self._recent_t.size),
                "answers": len(self._answers), "labels": len(self._labels), **self.tracker.held(),
                "tail_names": len(self._pred_tail.seen) + len(self._fb_tail.seen) + len(self._lab_tail.seen)}

    # -- checkpoint -----------------------------------------------------------------
    def _restore(self) -> bool:
        ckpt = read_checkpoint(self.storage, self.cfg.model.name)
        if ckpt is None:
            return False
        meta, frames, arrays = ckpt
        if meta.get("features") != self.schema.names:
            log.warning("observer checkpoint of %s has other features; rebuilding from the logs", self.cfg.model.name)
            return False
        self.tracker.restore(meta["tracker"], {k.removeprefix("tracker_"): v for k, v in frames.items()
                                               if k.startswith("tracker_")},
                             {k.removeprefix("tracker_"): v for k, v in arrays.items() if k.startswith("tracker_")})
        for tail, pos in ((self._pred_tail, meta["tails"]["predictions"]), (self._fb_tail, meta["tails"]["feedback"]),
                          (self._lab_tail, meta["tails"]["labeled"])):
            tail.seen, tail.newest = set(pos["seen"]), float(pos["newest"])
        if len(frames["unjoined"]):
            self._unjoined.load(_object_ids(frames["unjoined"]))
        if len(frames["early_labels"]):
            self._early_labels.load(_object_ids(frames["early_labels"]))
        ids = frames["labeled_ids"]
        self._labeled_ids = dict(zip(ids["request_id"].tolist(), ids["t"].astype(float).tolist()))
        self._ids_kept = len(self._labeled_ids)
        for name in ("answers", "labels"):
            if len(frames[name]):
                setattr(self, f"_{name}", frames[name])
        self._recent_t = arrays["recent_t"]
        self.labeled_total = int(meta["labeled_total"])
        self.expired_predictions, self.expired_labels = int(meta["expired_predictions"]), int(meta["expired_labels"])
        log.info("observer of %s restored from its checkpoint of tick %s", self.cfg.model.name, meta.get("seq"))
        return True

    def checkpoint(self, seq: int) -> None:
        """Write what the observer holds (see :mod:`lifelong_ray.control.checkpoint`)."""
        t_meta, t_frames, t_arrays = self.tracker.snapshot()
        meta = {"seq": seq, "features": self.schema.names, "tracker": t_meta,
                "tails": {"predictions": self._pred_tail.position(), "feedback": self._fb_tail.position(),
                          "labeled": self._lab_tail.position()},
                "labeled_total": self.labeled_total, "expired_predictions": self.expired_predictions,
                "expired_labels": self.expired_labels}
        unjoined = self._unjoined.frame()
        unjoined["error"] = unjoined["error"].astype(object)
        frames = {"unjoined": unjoined, "early_labels": self._early_labels.frame(),
                  "labeled_ids": pd.DataFrame({"request_id": list(self._labeled_ids),
                                               "t": np.fromiter(self._labeled_ids.values(), float,
                                                                len(self._labeled_ids))}),
                  "answers": self._answers.reset_index(drop=True), "labels": self._labels.reset_index(drop=True),
                  **{f"tracker_{k}": v for k, v in t_frames.items()}}
        arrays = {"recent_t": self._recent_t, **{f"tracker_{k}": v for k, v in t_arrays.items()}}
        write_checkpoint(self.storage, self.cfg.model.name, meta, frames, arrays)

    def _expire(self, state: ControllerState, now: float) -> None:
        """Forget what is older than the label horizon (and the tracker's rows no step needs)."""
        cutoff = now - self.horizon
        self.expired_predictions += self._unjoined.expire(cutoff)
        self.expired_labels += self._early_labels.expire(cutoff)
        if len(self._labeled_ids) > 2 * self._ids_kept + 1000:  # amortized: a pass when it doubled
            self._labeled_ids = {k: t for k, t in self._labeled_ids.items() if t >= cutoff}
            self._ids_kept = len(self._labeled_ids)
        # the shadow comparison needs the answers and labels of requests since the shadow started
        shadow_since = max(state.shadow_started_t if state.shadow_started_t is not None else now, cutoff)
        for name in ("_answers", "_labels"):
            frame = getattr(self, name)
            if len(frame) and float(frame["t"].min()) < shadow_since:
                setattr(self, name, frame[frame["t"].to_numpy(dtype=float) >= shadow_since].reset_index(drop=True))
        step = state.step_started_t if state.rollout != RolloutStage.STABLE else None
        self.tracker.prune(max(step if step is not None else now, cutoff), keep_joined=2 * self.cfg.drift.label_window)

    # -- one observation ----------------------------------------------------------
    def observe(self, state: ControllerState, now: float) -> Observations:
        # Checkpoint what the last persisted decision saw (its state is the one passed in); an
        # observer that rebuilt from the logs checkpoints at once, so the next restart need not.
        if self._ticks >= self.cfg.controller.checkpoint_ticks and self._last_seq is not None \
                and state.seq != self._last_seq:
            try:
                self.checkpoint(state.seq)
                self._ticks = 0
            except Exception:  # noqa: BLE001 - a restart without it reads more of the logs, nothing is lost
                log.exception("could not write the observer checkpoint of %s", self.cfg.model.name)
        self._ticks += 1
        self._last_seq = state.seq
        self._read_predictions()
        feature_windows = self.tracker.feature_windows(state)
        self._join_labels(now)
        self._pick_up_labeled()
        self._expire(state, now)
        obs = Observations(
            feature_windows=feature_windows,
            quality_windows=self.tracker.quality_windows(state),
            labeled_total=self.labeled_total,
            labeled_since_retrain=self._labeled_since(state.retrain_since_t),
            labeled_since_t=state.retrain_since_t,
        )
        if state.rollout != RolloutStage.STABLE and state.step_started_t is not None:
            obs.step_stats = self.tracker.step_stats(state.step_started_t)  # canary step or probation
        if state.retrain == RetrainStage.RUNNING and state.retrain_job_id:
            obs.retrain_outcome = self._outcome(state.retrain_job_id)
        obs.shadow_stats = self._shadow_stats(state)
        obs.budget = self.tracker.budget(now)
        obs.commands, obs.commands_unarchived = read_new_commands(
            self.storage, self.cfg.model.name, state.command_ledger, self.cfg.controller.command_skew_seconds)
        return obs

    def _shadow_stats(self, state: ControllerState) -> ShadowStats | None:
        """The candidate's mirrored answers against the served ones for the same requests."""
        if state.shadow_started_t is None or state.candidate is None:
            return None
        a = self._answers[self._answers["t"] >= state.shadow_started_t]
        mirrored = a[a["shadow"] & (a["version"] == state.candidate)]
        served = a[~a["shadow"]]
        both = mirrored.merge(served, on="request_id", suffixes=("_cand", "_champ"))
        labeled = both.merge(self._labels[["request_id", "label"]], on="request_id")
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
        for table in _batches(self._pred_tail):
            self._take_predictions(table)

    def _take_predictions(self, table: pa.Table) -> None:
        df = _object_ids(table.to_pandas())
        shadow = df["shadow"].fillna(False).astype(bool)
        answers = df.loc[df["error"].isna(), ["request_id", "t", "version", "prediction"]].assign(
            shadow=shadow[df["error"].isna()].to_numpy())
        self._answers = _tail(self._answers, answers)
        df = df[~shadow].sort_values("t", kind="stable")
        df = df[_SERVED_COLS + self.schema.names]
        self.tracker.add_served(df)
        fresh = df[df["error"].isna() & ~self._already_labeled(df["request_id"])]
        if not fresh.empty:
            self._unjoined.add(fresh)
            if len(self._early_labels):
                self._new_ids.append(fresh["request_id"].tolist())

    def _already_labeled(self, ids: pd.Series) -> np.ndarray:
        """Which of ``ids`` were labeled before: set lookups of the new rows only
        (``Series.isin(set)`` would rebuild a table of every id ever labeled)."""
        seen = self._labeled_ids
        return np.fromiter((r in seen for r in ids), dtype=bool, count=len(ids))

    def _join_labels(self, now: float) -> None:
        """Join the labels that came in, and the labels held for predictions that just came in.
        The first label of a request counts; the cost is that of the new rows, not of what waits."""
        hit_ids: list[str] = []
        hit_t: list[float] = []
        hit_y: list[int] = []
        early, unjoined, labeled = self._early_labels, self._unjoined, self._labeled_ids
        for ids in self._new_ids:  # predictions whose label came first
            for rid in ids:
                if rid in early and rid in unjoined:
                    t, y = early.pop(rid)
                    hit_ids.append(rid)
                    hit_t.append(t)
                    hit_y.append(y)
        self._new_ids = []
        table = self._fb_tail.read_new()
        if table is not None:
            fresh = table.select(["request_id", "t", "label"]).to_pydict()
            seen = set(hit_ids)
            for rid, t, y in zip(fresh["request_id"], fresh["t"], fresh["label"]):
                if rid in seen or rid in labeled or rid in early:
                    continue
                seen.add(rid)
                if rid in unjoined:
                    hit_ids.append(rid)
                    hit_t.append(float(t))
                    hit_y.append(int(y))
                else:
                    early.add(rid, float(t), int(y))
        if not hit_ids:
            return
        joined = unjoined.take(hit_ids)
        joined["t_label"] = np.asarray(hit_t, dtype=float)
        joined["label"] = np.asarray(hit_y, dtype=np.int64)
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
        self._lab_tail.mark_read(self.logs.append_labeled(table, now))
        self._labeled_ids.update(zip(joined["request_id"].tolist(), joined["t"].astype(float).tolist()))
        self._labels = _tail(self._labels, joined[["request_id", "t", "label"]])
        self._count_labeled(joined["t"].to_numpy(dtype=float))
        self.tracker.add_joined(joined)

    def _outcome(self, job_id: str) -> RetrainOutcome | None:
        path = job_path(self.cfg.model.name, job_id)
        if not self.storage.exists(path):
            return None
        data = self.storage.read_json(path)
        return RetrainOutcome.model_validate({k: data[k] for k in RetrainOutcome.model_fields if k in data})


def _object_ids(df: pd.DataFrame) -> pd.DataFrame:
    """``request_id`` as Python strings: hashed lookups (``isin``, ``.loc``) on them are
    C loops, on Arrow-backed strings a Python loop per value."""
    df["request_id"] = df["request_id"].astype(object)
    return df


def _batches(tail: LogTail, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The tail's new rows in tables of about ``_READ_BATCH_ROWS`` (catching up on a long
    log holds a batch, not the whole log)."""
    batch: list[pa.Table] = []
    rows = 0
    for table in tail.iter_new_tables(columns):
        batch.append(table)
        rows += table.num_rows
        if rows >= _READ_BATCH_ROWS:
            yield pa.concat_tables(batch, promote_options="permissive")
            batch, rows = [], 0
    if batch:
        yield pa.concat_tables(batch, promote_options="permissive")


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
