"""Turn served predictions and joined labels into what ``decide()`` looks at.

Pure (numpy/pandas, no Ray, no I/O): the live :class:`~lifelong_ray.control.observe.Observer`
feeds it from the parquet logs, the backtest feeds it from arrays, and both get
the same windows for the same rows — so the live loop and the backtest decide
on identical observations.

* feature windows: every ``drift.window_size`` served rows, compared with the
  champion's training reference (PSI + KS, chi² for categories);
* quality windows: every ``drift.label_window`` joined labels, the champion's
  accuracy against its reference accuracy, with the CUSUM change point of its
  correctness when the window is flagged;
* step stats: per-version traffic, errors, p95 latency and labeled accuracy
  since a time;
* SLO error budgets: every served row and joined label also goes into
  time-bucketed SLI counts (:class:`~lifelong_ray.policy.slo.SLIBuckets`, bounded
  to the SLO period) that :meth:`WindowTracker.budget` evaluates.

Window indices count from the first row ever fed, so a tracker rebuilt from the
logs after a restart numbers them as before; the controller state remembers
the next index to decide on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lifelong_ray.config import Config
from lifelong_ray.data.schema import Schema
from lifelong_ray.drift.feature import feature_drift
from lifelong_ray.drift.performance import PageHinkley, accuracy_check, change_point
from lifelong_ray.drift.reference import Reference
from lifelong_ray.policy.model import ControllerState, FeatureWindow, QualityWindow, VersionStats
from lifelong_ray.policy.slo import BudgetStatus, SLIBuckets, evaluate_budget


@dataclass
class _Chunk:
    t: np.ndarray
    version: np.ndarray
    flag: np.ndarray  # served: error; joined: correct
    latency: np.ndarray | None = None  # served: latency_ms (NaN: not measured)

    @property
    def t_max(self) -> float:
        return float(self.t.max()) if self.t.size else -np.inf


class WindowTracker:
    def __init__(self, cfg: Config, reference_for: Callable[[str], Reference]) -> None:
        self.cfg = cfg
        self.schema = Schema(cfg.model)
        self.categorical = {f.name for f in self.schema.features if f.dtype == "category"}
        self._reference_for = reference_for
        self._references: dict[str, Reference] = {}
        self._served: list[_Chunk] = []
        self._joined: list[_Chunk] = []
        self._feature_buf: list[pd.DataFrame] = []
        self._feature_buf_rows = 0
        self.feature_index = 0
        self._quality_buf: list[pd.DataFrame] = []
        self._quality_buf_rows = 0
        self.quality_index = 0
        self._ph: PageHinkley | None = None
        self._ph_version: str | None = None
        self._sli = SLIBuckets.for_config(cfg.slo)

    # -- feeding ------------------------------------------------------------------
    def add_served(self, rows: pd.DataFrame) -> None:
        """Served, non-shadow rows in time order: t, version, error (None if ok),
        latency_ms (optional: a missing column or NaN is "not measured"), request_id
        (optional: an error row whose request was answered by another row is a retried
        call, not a failure the client saw, for the error budget), features."""
        if rows.empty:
            return
        err = rows["error"].notna().to_numpy()
        t = rows["t"].to_numpy(dtype=float)
        version = rows["version"].to_numpy(dtype=object)
        latency = (rows["latency_ms"].to_numpy(dtype=float, na_value=np.nan) if "latency_ms" in rows
                   else np.full(len(rows), np.nan))
        # The instances of one request are adjacent rows sharing its latency: one sample per request.
        same = np.zeros(len(rows), dtype=bool)
        same[1:] = (latency[1:] == latency[:-1]) & (t[1:] == t[:-1]) & (version[1:] == version[:-1])
        latency = np.where(same, np.nan, latency)
        self._served.append(_Chunk(t, version, err, latency))
        # A failed canary call retried on the champion was answered: not an error the client saw.
        retried = err & rows["request_id"].isin(set(rows.loc[~err, "request_id"])).to_numpy() \
            if "request_id" in rows and err.any() else np.zeros(len(rows), dtype=bool)
        self._sli.add_served(t[~retried], err[~retried], latency[~retried])
        ok = rows[~err]
        if len(ok):
            self._feature_buf.append(ok[["t", *self.schema.names]])
            self._feature_buf_rows += len(ok)

    def add_joined(self, rows: pd.DataFrame) -> None:
        """Labeled predictions: t (prediction time), version, prediction, label, and
        optionally t_label (when the label arrived; without it, at prediction time)."""
        if rows.empty:
            return
        part = pd.DataFrame({"t": rows["t"].to_numpy(dtype=float),
                             "version": rows["version"].astype(str).to_numpy(),
                             "correct": rows["prediction"].to_numpy() == rows["label"].to_numpy()})
        self._joined.append(_Chunk(part["t"].to_numpy(), part["version"].to_numpy(dtype=object),
                                   part["correct"].to_numpy()))
        arrival = rows["t_label"].to_numpy(dtype=float) if "t_label" in rows else part["t"].to_numpy()
        self._sli.add_labels(arrival, part["t"].to_numpy(), part["correct"].to_numpy())
        self._quality_buf.append(part)
        self._quality_buf_rows += len(part)

    # -- windows --------------------------------------------------------------------
    def reference(self, version: str | None) -> Reference | None:
        if version is None:
            return None
        if version not in self._references:
            while len(self._references) >= 2:  # the champion's and one other (a replaced champion)
                self._references.pop(next(iter(self._references)))
            self._references[version] = self._reference_for(version)
        return self._references[version]

    @staticmethod
    def _cut(buf: list[pd.DataFrame], size: int) -> tuple[pd.DataFrame, list[pd.DataFrame], int]:
        whole = pd.concat(buf, ignore_index=True) if len(buf) > 1 else buf[0].reset_index(drop=True)
        rest = whole.iloc[size:]
        return whole.iloc[:size], ([rest] if len(rest) else []), len(rest)

    def feature_windows(self, state: ControllerState) -> list[FeatureWindow]:
        size, out = self.cfg.drift.window_size, []
        while self._feature_buf_rows >= size:
            window, self._feature_buf, self._feature_buf_rows = self._cut(self._feature_buf, size)
            idx, self.feature_index = self.feature_index, self.feature_index + 1
            if idx < state.feature_windows_done:
                continue
            start_t, end_t = float(window["t"].iloc[0]), float(window["t"].iloc[-1])
            ref = self.reference(state.champion)
            if ref is None:
                out.append(FeatureWindow(index=idx, start_t=start_t, end_t=end_t, drifted=False,
                                         reason="no champion reference yet"))
                continue
            cols = {n: _column(window[n], n in self.categorical) for n in self.schema.names}
            rep = feature_drift(ref, cols, self.cfg.drift)
            out.append(FeatureWindow(index=idx, start_t=start_t, end_t=end_t, drifted=rep.drifted,
                                     reason=rep.reason, champion=state.champion, n_drifted=rep.n_drifted,
                                     max_psi=max((f.psi for f in rep.features), default=0.0),
                                     feature_psi={f.feature: f.psi for f in rep.features}))
        return out

    def quality_windows(self, state: ControllerState) -> list[QualityWindow]:
        size, out = self.cfg.drift.label_window, []
        while self._quality_buf_rows >= size:
            window, self._quality_buf, self._quality_buf_rows = self._cut(self._quality_buf, size)
            idx, self.quality_index = self.quality_index, self.quality_index + 1
            mine = window[window["version"] == (state.champion or "")]
            alarm = self._sequential(state.champion, mine)  # fed for every window: same state after a restart
            if idx < state.quality_windows_done:
                continue
            start_t, end_t = float(window["t"].min()), float(window["t"].max())
            ref = state.champion_reference_accuracy
            common = dict(index=idx, start_t=start_t, end_t=end_t, champion=state.champion, reference_accuracy=ref)
            if ref is None or len(mine) < size // 2:
                out.append(QualityWindow(**common, n=len(mine), drifted=False,
                                         accuracy=float(mine["correct"].mean()) if len(mine) else None,
                                         reason=f"only {len(mine)} of {size} labels are the champion's"))
                continue
            chk = accuracy_check(mine["correct"].to_numpy(dtype=bool), ref, self.cfg.drift)
            drifted = chk.drifted or alarm
            reason = chk.reason
            if alarm:
                reason = (f"Page-Hinkley alarm on the champion's error stream (lambda {self.cfg.drift.ph_threshold:g});"
                          f" {reason}")
            out.append(QualityWindow(**common, n=chk.n, accuracy=chk.accuracy, drifted=drifted, reason=reason,
                                     sequential_alarm=alarm, change_t=self._change_t(mine) if drifted else None))
        return out

    def _sequential(self, champion: str | None, rows: pd.DataFrame) -> bool:
        """Feed the champion's errors to Page-Hinkley; True if it fired on these rows."""
        if self.cfg.drift.sequential == "none" or champion is None or rows.empty:
            return False
        if self._ph is None or self._ph_version != champion:
            d = self.cfg.drift
            self._ph, self._ph_version = PageHinkley(delta=d.ph_delta, threshold=d.ph_threshold), champion
        return bool(self._ph.update_batch((~rows["correct"].to_numpy(dtype=bool)).astype(float)))

    def _change_t(self, window: pd.DataFrame) -> float | None:
        """Prediction time where the champion's correctness shifted, searched over
        this window and as many of the champion's labeled rows just before it."""
        champ, first_t, need = window["version"].iloc[0], window["t"].min(), len(window)
        ts, flags = [], []
        for chunk in reversed(self._joined):
            keep = (chunk.version == champ) & (chunk.t < first_t)
            ts.append(chunk.t[keep])
            flags.append(chunk.flag[keep])
            if sum(len(x) for x in ts) >= need:
                break
        t = np.concatenate([*ts[::-1], window["t"].to_numpy()])
        c = np.concatenate([*flags[::-1], window["correct"].to_numpy()]).astype(float)
        order = np.argsort(t, kind="stable")[-2 * need:]
        k = change_point(c[order])
        return float(t[order][k]) if k is not None else None

    def step_stats(self, since: float) -> dict[str, VersionStats]:
        """Per-version served/error/labeled/correct counts and p95 latency (of the
        served rows with a measured latency, errors included) at or after ``since``."""
        counts: dict[str, dict[str, Any]] = defaultdict(dict)
        latencies: dict[str, list[np.ndarray]] = defaultdict(list)
        for chunks, total, flagged in ((self._served, "served", "errors"), (self._joined, "labeled", "correct")):
            for chunk in _since(chunks, since):
                keep = chunk.t >= since
                for v in np.unique(chunk.version[keep]):
                    sel = keep & (chunk.version == v)
                    c = counts[str(v)]
                    c[total] = c.get(total, 0) + int(sel.sum())
                    c[flagged] = c.get(flagged, 0) + int(chunk.flag[sel].sum())
                    if chunk.latency is not None:
                        lat = chunk.latency[sel]
                        latencies[str(v)].append(lat[np.isfinite(lat)])
        stats: dict[str, VersionStats] = {}
        for v, c in counts.items():
            lat = np.concatenate(latencies[v]) if latencies[v] else np.empty(0)
            stats[v] = VersionStats(**c, latency_samples=int(lat.size),
                                    latency_p95_ms=float(np.percentile(lat, 95)) if lat.size else None)
        return stats

    # -- bounded memory and checkpoints ---------------------------------------------------
    def prune(self, since: float, keep_joined: int) -> None:
        """Forget served and joined rows predicted before ``since`` (step stats are asked
        for no older rows), keeping at least the newest ``keep_joined`` joined rows (the
        change-point search looks that far back)."""
        self._served = [c for c in self._served if c.t_max >= since]
        kept, rows = [], 0
        for chunk in reversed(self._joined):
            if chunk.t_max >= since or rows < keep_joined:
                kept.append(chunk)
                rows += chunk.t.size
        self._joined = kept[::-1]

    def held(self) -> dict[str, int]:
        """Rows held: per-row history (served, joined) and the unfinished windows."""
        return {"served_rows": sum(c.t.size for c in self._served), "joined_rows": sum(c.t.size for c in self._joined),
                "feature_buf_rows": self._feature_buf_rows, "quality_buf_rows": self._quality_buf_rows}

    def snapshot(self) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict[str, np.ndarray]]:
        """Everything the tracker holds, as (JSON-able meta, frames, numeric arrays): the
        observer's checkpoint. :meth:`restore` takes the same back."""
        meta = {"feature_index": self.feature_index, "quality_index": self.quality_index,
                "ph": self._ph.to_json() if self._ph is not None else None, "ph_version": self._ph_version,
                "sli": {"width": self._sli.width, "keep": self._sli.keep, "start": self._sli.start,
                        "newest_label_before": self._sli.newest_label_before,
                        "first_served_t": self._sli.first_served_t}}
        frames = {"feature_buf": _concat(self._feature_buf, ["t", *self.schema.names]),
                  "quality_buf": _concat(self._quality_buf, ["t", "version", "correct"]),
                  "served": _chunks_frame(self._served), "joined": _chunks_frame(self._joined)}
        arrays = {"sli_counts": self._sli.counts, "sli_newest": self._sli.newest_label}
        return meta, frames, arrays

    def restore(self, meta: dict[str, Any], frames: dict[str, pd.DataFrame], arrays: dict[str, np.ndarray]) -> None:
        self.feature_index, self.quality_index = int(meta["feature_index"]), int(meta["quality_index"])
        if meta["ph"] is not None:
            self._ph, self._ph_version = PageHinkley.from_json(meta["ph"]), meta["ph_version"]
        sli = meta["sli"]
        if (sli["width"], sli["keep"]) == (self._sli.width, self._sli.keep):  # else the SLO config changed
            self._sli.start, self._sli.counts = int(sli["start"]), arrays["sli_counts"]
            self._sli.newest_label = arrays["sli_newest"]
            self._sli.newest_label_before = float(sli["newest_label_before"])
            self._sli.first_served_t = float(sli["first_served_t"])
        for name, buf in (("feature_buf", self._feature_buf), ("quality_buf", self._quality_buf)):
            frame = frames[name]
            buf.clear()
            if len(frame):
                buf.append(frame)
        self._feature_buf_rows, self._quality_buf_rows = len(frames["feature_buf"]), len(frames["quality_buf"])
        self._served = _frame_chunks(frames["served"], latency=True)
        self._joined = _frame_chunks(frames["joined"], latency=False)

    def budget(self, now: float) -> BudgetStatus:
        """The SLO error budgets at ``now`` from every row fed so far (within the SLO period)."""
        return evaluate_budget(self._sli, self.cfg.slo, now)


def _since(chunks: list[_Chunk], since: float) -> list[_Chunk]:
    """The chunks that hold rows at or after ``since`` (late files included)."""
    return [c for c in chunks if c.t_max >= since]


def _column(s: pd.Series, categorical: bool) -> np.ndarray:
    if categorical:
        return s.astype(object).where(s.notna(), None).to_numpy(dtype=object)
    return s.to_numpy(dtype=float, na_value=np.nan)


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame({c: [] for c in columns})
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)


def _chunks_frame(chunks: list[_Chunk]) -> pd.DataFrame:
    def cat(get: Callable[[_Chunk], np.ndarray | None], dtype: Any) -> np.ndarray:
        parts = [get(c) for c in chunks]
        return np.concatenate([p if p is not None else np.full(c.t.size, np.nan) for p, c in zip(parts, chunks)]) \
            if chunks else np.empty(0, dtype=dtype)
    return pd.DataFrame({"t": cat(lambda c: c.t, float), "version": cat(lambda c: c.version, object).astype(object),
                         "flag": cat(lambda c: c.flag, bool).astype(bool), "latency": cat(lambda c: c.latency, float)})


def _frame_chunks(frame: pd.DataFrame, latency: bool) -> list[_Chunk]:
    if not len(frame):
        return []
    return [_Chunk(frame["t"].to_numpy(dtype=float), frame["version"].astype(str).to_numpy(dtype=object),
                   frame["flag"].to_numpy(dtype=bool),
                   frame["latency"].to_numpy(dtype=float) if latency else None)]
