"""``lifelong backtest``: what would the policy have done on this stream?

A recorded stream (parquet or CSV: feature columns, a label column, optionally a
time column) is replayed through the SAME pieces as the live system: the router's
:func:`~lifelong_ray.serving.routing.choose_version`, the observer's
:class:`~lifelong_ray.control.windows.WindowTracker`, :func:`~lifelong_ray.policy.decide.decide`,
the registry and :func:`~lifelong_ray.training.retrain.train_and_register`. Only the
clock (a sample clock) and the effects (in-process instead of Ray Serve) differ.

Evaluation is prequential: each row is predicted by the version that served it
before its label is used, and its label is revealed ``label_delay`` samples later.
The first ``bootstrap`` rows are labeled history that trains the first version.

Time: the policy's seconds (cooldown, seconds per canary step, quota per hour)
are read on a clock that runs at ``rate`` samples per second, as if the stream
had been served at that rate; delays in the report are given in samples.

Shadow, approvals and operators are played too, so any live config replays without
stalling: a shadow version (``rollout.shadow_fraction``) answers the mirrored share of
requests (:func:`~lifelong_ray.serving.routing.should_shadow`, as the live router), its
answers are discarded and compared with the served ones as the live observer does
(:class:`~lifelong_ray.policy.model.ShadowStats`); a rollout held for approval is
approved by the settings' approval policy (``auto`` after ``approve_after`` samples,
or ``never``), and scripted operator commands reach ``decide()`` at their sample
(:mod:`lifelong_ray.sim.operators`). A rollout still held when the stream ends is in
the report's ``summary.held`` with why.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lifelong_ray.clock import SampleClock
from lifelong_ray.config import Config, parse_config
from lifelong_ray.control.windows import WindowTracker
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import columns_from_table
from lifelong_ray.data.window import LABEL, WindowTooSmall, window_from_table
from lifelong_ray.drift.reference import Reference
from lifelong_ray.events import Event, EventKind
from lifelong_ray.policy.decide import decide
from lifelong_ray.policy.lifecycle import RolloutStage
from lifelong_ray.policy.model import (Action, ActionKind, ControllerState, Observations, OperatorCommand,
                                       RetrainOutcome, ShadowStats)
from lifelong_ray.registry.model import LoadedModel
from lifelong_ray.registry.store import Registry
from lifelong_ray.serving.routing import RoutingTable, choose_version, should_shadow
from lifelong_ray.sim.operators import ApprovalPolicy, CommandScript, ScriptedCommand
from lifelong_ray.sim.report import build_report, summarize_events
from lifelong_ray.storage import Storage
from lifelong_ray.training.retrain import STATUS_FAILED, train_and_register, window_config

TIME_COLUMNS = ("t", "time", "timestamp")


@dataclass
class BacktestSettings:
    label_delay: int = 200       # samples between a prediction and its label
    batch: int = 20              # samples per routing decision (one "request")
    tick_every: int = 100        # samples between controller ticks
    bootstrap: int = 2000        # labeled history rows that train the first version
    rate: float = 250.0          # samples per second of policy time
    drift_at: list[int] = field(default_factory=list)  # known drift onsets (stream row index)
    series_window: int = 500
    approval: str = "auto"       # a rollout held for approval: "auto" (approve) or "never"
    approve_after: int = 0       # samples a held candidate waits before "auto" approves it
    commands: list[ScriptedCommand] = field(default_factory=list)  # scripted operator commands


def infer_config(table: pa.Table, label: str, name: str = "backtest") -> Config:
    """A config whose schema is inferred from the file: every column but the
    label (and a time column) is a feature; strings are categories."""
    if label not in table.column_names:
        raise ValueError(f"label column {label!r} not in {table.column_names}")
    features: list[dict[str, Any]] = []
    for f in table.schema:
        if f.name == label or f.name in TIME_COLUMNS:
            continue
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_dictionary(f.type):
            cats = sorted({str(v) for v in table.column(f.name).to_pylist() if v is not None})
            features.append({"name": f.name, "dtype": "category", "categories": cats, "nullable": True})
        elif pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type):
            features.append({"name": f.name, "dtype": "float", "nullable": True})
        else:
            raise ValueError(f"column {f.name!r} has type {f.type}: backtest handles numbers and strings")
    classes = sorted({int(v) for v in table.column(label).to_pylist() if v is not None})
    return parse_config({"model": {"name": name, "features": features, "label": {"name": label, "classes": classes}},
                         "training": {"runner": "local"}})


class Backtest:
    def __init__(self, cfg: Config, table: pa.Table, label: str, s: BacktestSettings,
                 storage_root: str | None = None) -> None:
        self.cfg, self.s, self.label = cfg, s, label
        self.schema = Schema(cfg.model)
        self.model = cfg.model.name
        root = storage_root or tempfile.mkdtemp(prefix="lifelong-backtest-")
        self.storage = Storage(root)
        self.registry = Registry(self.storage, self.model)
        self.tracker = WindowTracker(cfg, self._reference)
        self.clock = SampleClock()
        self.state = ControllerState(model=self.model)
        self.routing = RoutingTable(model=self.model)
        self.models: dict[str, LoadedModel] = {}
        self.events: list[Event] = []
        self.cols = columns_from_table(table, self.schema)
        self.y = table.column(label).to_numpy(zero_copy_only=False).astype(np.int64)
        self.n = len(self.y)
        self.served_version = np.full(self.n, "", dtype=object)
        self.prediction = np.full(self.n, -1, dtype=np.int64)
        self.t = np.arange(self.n, dtype=float) / s.rate     # policy time of each row
        self._labeled: list[pa.Table] = []
        self._labeled_t: list[np.ndarray] = []
        self._outcomes: dict[str, tuple[int, RetrainOutcome]] = {}
        self.train_seconds = 0.0
        self.runners: set[str] = set()
        # the shadow's mirrored answers (discarded, compared) and which rows' labels arrived
        self.shadow_version = np.full(self.n, "", dtype=object)
        self.shadow_prediction = np.full(self.n, -1, dtype=np.int64)
        self.revealed = np.zeros(self.n, dtype=bool)
        self.script = CommandScript(s.commands, self.model)
        self.approval = ApprovalPolicy(s.approval, s.approve_after)  # type: ignore[arg-type]
        self._held_since: tuple[str, str | None, int] | None = None  # (candidate, approval_for, sample)
        self._shadow_stats: ShadowStats | None = None

    # -- the pieces the live system has as I/O -------------------------------------
    def _reference(self, version: str) -> Reference:
        table = self.registry.reference(version)
        cols = columns_from_table(table, self.schema)
        return Reference.from_columns(cols, self.schema, seed=self.cfg.training.seed)

    def _rows(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        return {k: v[lo:hi] for k, v in self.cols.items()}

    def _add_labeled(self, idx: np.ndarray) -> None:
        if idx.size == 0:
            return
        cols = {"request_id": pa.array([f"row-{i}" for i in idx], pa.string()), "t": pa.array(self.t[idx]),
                "t_label": pa.array(np.full(idx.size, self._label_t(idx))),
                LABEL: pa.array(self.y[idx])}
        for f, af in zip(self.schema.features, self.schema.arrow_fields()):
            vals = self.cols[f.name][idx]
            cols[f.name] = pa.array(vals.tolist() if f.dtype == "category" else vals, af.type, from_pandas=True)
        self._labeled.append(pa.table(cols))
        self._labeled_t.append(self.t[idx])

    def _label_t(self, idx: np.ndarray) -> float:
        """When the labels of rows ``idx`` arrive: ``label_delay`` samples after the last of them."""
        return float(self.t[min(int(idx.max()) + self.s.label_delay, self.n - 1)])

    # -- effects ------------------------------------------------------------------------
    def _execute(self, a: Action, i: int) -> None:
        if a.kind == ActionKind.START_RETRAIN:
            self._retrain(a, i)
        elif a.kind == ActionKind.DEPLOY_VERSION:
            self.models[a.version] = self.registry.load(a.version)
        elif a.kind == ActionKind.SET_ALIAS:
            self.registry.set_alias(a.alias, a.version)
        elif a.kind == ActionKind.SET_ROUTING:
            self.routing = RoutingTable(model=self.model, generation=a.generation, weights=a.weights,
                                        champion=a.champion, shadow=a.shadow, shadow_fraction=a.shadow_fraction)
        elif a.kind == ActionKind.RETIRE_VERSION:
            self.models.pop(a.version or "", None)

    def _retrain(self, a: Action, i: int) -> None:
        assert a.job_id is not None
        labeled = pa.concat_tables(self._labeled) if self._labeled else None
        try:
            if labeled is None:
                raise WindowTooSmall("no labeled rows yet")
            window = window_from_table(labeled, window_config(self.cfg, a.job_kind, a.window_rows),
                                       since_t=a.since_t, seed=a.seed)
            res = train_and_register(self.cfg, self.registry, window, job_id=a.job_id, champion=a.champion,
                                     seed=a.seed, kind=a.job_kind)
            self.train_seconds += res.train_seconds
            self.runners.add(res.runner)
            out = RetrainOutcome.model_validate({k: getattr(res, k) for k in RetrainOutcome.model_fields})
        except Exception as err:  # noqa: BLE001 - a failed job is an outcome, as in the live system
            out = RetrainOutcome(job_id=a.job_id, status=STATUS_FAILED, error=f"{type(err).__name__}: {err}")
        self._outcomes[a.job_id] = (i, out)

    # -- the loop ---------------------------------------------------------------------------
    def _tick(self, i: int) -> None:
        now = self.t[min(i, self.n - 1)] if self.n else 0.0
        st = self.state
        labeled_t = np.concatenate(self._labeled_t) if self._labeled_t else np.empty(0)
        obs = Observations(
            feature_windows=self.tracker.feature_windows(st),
            quality_windows=self.tracker.quality_windows(st),
            labeled_total=int(labeled_t.size),
            labeled_since_retrain=int((labeled_t >= (st.retrain_since_t or -np.inf)).sum()),
            labeled_since_t=st.retrain_since_t,
            budget=self.tracker.budget(now),
        )
        if st.step_started_t is not None:
            obs.step_stats = self.tracker.step_stats(st.step_started_t)
        if st.retrain_job_id in self._outcomes:
            obs.retrain_outcome = self._outcomes[st.retrain_job_id][1]
        obs.shadow_stats = self._shadow_stats = self._shadow_compare(st, i)
        obs.commands = self._commands(i, now)
        d = decide(st, obs, self.cfg, now)
        for e in d.events:
            self.events.append(e.model_copy(update={"data": {**e.data, "sample": i}}))
        self.state = d.state
        for a in d.actions:
            self._execute(a, i)
        self.state = self.state.model_copy(update={"pending_actions": []})
        self._track_hold(i)

    # -- the people and the shadow, as the live observer sees them ---------------------------
    def _commands(self, i: int, now: float) -> list[OperatorCommand]:
        """Scripted commands due at sample ``i``, and the approval policy's approval."""
        cmds = self.script.due(i, now)
        if self._held_since is not None:
            cand, what, since = self._held_since
            auto = self.approval.approve(cand, what, since, i, model=self.model, t=now)
            if auto is not None:
                cmds.append(auto)
        return cmds

    def _track_hold(self, i: int) -> None:
        st = self.state
        if st.rollout != RolloutStage.APPROVAL or st.candidate is None:
            self._held_since = None
        elif self._held_since is None or self._held_since[:2] != (st.candidate, st.approval_for):
            self._held_since = (st.candidate, st.approval_for, i)

    def _shadow_compare(self, st: ControllerState, i: int) -> ShadowStats | None:
        """The candidate's mirrored answers against the served ones since the shadow
        started (the live observer's ``ShadowStats``, counted per row)."""
        if st.shadow_started_t is None or st.candidate is None:
            return None
        lo = int(np.searchsorted(self.t, st.shadow_started_t, side="left"))
        hi = min(i, self.n)
        both = (self.shadow_version[lo:hi] == st.candidate) & (self.served_version[lo:hi] != "")
        cand, champ, y = self.shadow_prediction[lo:hi][both], self.prediction[lo:hi][both], self.y[lo:hi][both]
        labeled = self.revealed[lo:hi][both]
        return ShadowStats(compared=int(both.sum()), agree=int((cand == champ).sum()), labeled=int(labeled.sum()),
                           candidate_correct=int((cand == y)[labeled].sum()),
                           champion_correct=int((champ == y)[labeled].sum()))

    def _held(self) -> dict[str, Any] | None:
        """What a rollout still waits for when the stream ends (None: nothing held)."""
        st = self.state
        if st.rollout == RolloutStage.STABLE or st.candidate is None:
            return None
        out: dict[str, Any] = {"version": st.candidate, "stage": st.rollout.value, "approval_for": st.approval_for}
        if st.rollout == RolloutStage.APPROVAL:
            since = self._held_since[2] if self._held_since else None
            out["since_sample"] = since
            out["reason"] = self.approval.held_reason(st.candidate, st.approval_for, since if since is not None else -1)
        elif st.rollout == RolloutStage.SHADOW:
            got = self._shadow_stats.compared if self._shadow_stats else 0
            out["reason"] = (f"{st.candidate} still in shadow: {got}/{self.cfg.rollout.shadow_min_samples} compared"
                             f" answers when the stream ended")
        else:
            out["reason"] = f"{st.candidate} still in stage {st.rollout.value} when the stream ended"
        return out

    def run(self) -> dict[str, Any]:
        s = self.s
        t_start = time.perf_counter()
        boot = min(s.bootstrap, self.n)
        self._add_labeled(np.arange(boot))
        self._tick(boot)  # trains the first version
        self._tick(boot)  # takes its outcome in: first promotion
        pending: list[tuple[int, np.ndarray]] = []  # (due sample, row indices)
        served_buf: list[pd.DataFrame] = []
        next_tick = boot + s.tick_every
        for lo in range(boot, self.n, s.batch):
            hi = min(lo + s.batch, self.n)
            while pending and pending[0][0] <= lo:
                self._reveal(pending.pop(0)[1], served_buf)
            request_id = f"{self.model}-{lo}"
            version = choose_version(self.routing, None, request_id)
            if version is not None and version in self.models:
                pred, _ = self.models[version].predict(self._rows(lo, hi))
                self.prediction[lo:hi] = pred
                self.served_version[lo:hi] = version
                served_buf.append(self._served_frame(lo, hi, version, pred))
                mirror = self.routing.shadow
                if mirror and mirror != version and mirror in self.models and should_shadow(self.routing, request_id):
                    self.shadow_prediction[lo:hi] = self.models[mirror].predict(self._rows(lo, hi))[0]
                    self.shadow_version[lo:hi] = mirror
                pending.append((hi + s.label_delay, np.arange(lo, hi)))
            else:  # nothing serves yet: the rows still become labeled history later
                pending.append((hi + s.label_delay, np.arange(lo, hi)))
            if hi >= next_tick:
                self._flush(served_buf)
                self._tick(hi)
                next_tick += s.tick_every
        self._flush(served_buf)
        engine_seconds = time.perf_counter() - t_start
        return self._report(engine_seconds)

    def _served_frame(self, lo: int, hi: int, version: str, pred: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame(self._rows(lo, hi))
        df.insert(0, "t", self.t[lo:hi])
        df.insert(1, "version", version)
        df.insert(2, "error", None)
        df.insert(3, "prediction", pred)
        return df

    def _flush(self, buf: list[pd.DataFrame]) -> None:
        if buf:
            self.tracker.add_served(pd.concat(buf, ignore_index=True))
            buf.clear()

    def _reveal(self, idx: np.ndarray, served_buf: list[pd.DataFrame]) -> None:
        self._flush(served_buf)  # a label never reaches the tracker before its prediction
        self._add_labeled(idx)
        self.revealed[idx] = True
        served = idx[self.served_version[idx] != ""]
        if served.size:
            self.tracker.add_joined(pd.DataFrame({"t": self.t[served], "version": self.served_version[served],
                                                  "prediction": self.prediction[served],
                                                  "label": self.y[served], "t_label": self._label_t(idx)}))

    # -- report -------------------------------------------------------------------------------
    def _report(self, engine_seconds: float) -> dict[str, Any]:
        s, boot = self.s, min(self.s.bootstrap, self.n)
        served = self.served_version != ""
        correct = (self.prediction == self.y) & served
        ev = [e.to_json() for e in self.events]
        drift_points = sorted(d for d in s.drift_at if boot <= d < self.n)
        delays, false_alarms = _detections(ev, drift_points, boot)
        first = self.registry.list_versions()[0] if self.registry.list_versions() else None
        static = np.zeros(self.n, dtype=bool)
        if first is not None and self.n > boot:
            static_pred, _ = self.registry.load(first).predict(self._rows(boot, self.n))
            static[boot:] = static_pred == self.y[boot:]
        d0 = drift_points[0] if drift_points else None
        promos = [e for e in ev if e["kind"] == EventKind.PROMOTED.value and not e["data"].get("bootstrap")
                  and d0 is not None and e["data"]["sample"] >= d0]
        rec = promos[0]["data"]["sample"] if promos else None
        after = slice(rec, self.n) if rec is not None else slice(max(boot, self.n - (self.n - boot) // 5), self.n)

        def acc(sl: slice, arr: np.ndarray = correct) -> float | None:
            m = served[sl]
            return float(arr[sl][m].mean()) if m.any() else None

        w = s.series_window
        idx = list(range(boot + w, self.n + 1, w))
        first_mask = self.served_version == first
        summary = {
            "samples": int(served.sum()),
            "prequential_accuracy": acc(slice(boot, self.n)),
            **summarize_events(ev),
            "detection_delays": delays,
            "accuracy_before_drift": acc(slice(boot, d0)) if d0 is not None else acc(slice(boot, self.n)),
            "accuracy_after_drift_static": acc(slice(d0, self.n), static) if d0 is not None else None,
            "accuracy_after_recovery": acc(after) if d0 is not None else None,
            "seconds_to_recover": float(rec - d0) if rec is not None and d0 is not None else None,
            "train_seconds": self.train_seconds,
            "wall_seconds": engine_seconds,
            # extras
            "seconds_unit": "samples",
            "false_alarms": false_alarms,
            "mean_detection_delay": float(np.mean(delays)) if delays else None,
            "runner": sorted(self.runners),
            "label_delay": s.label_delay,
            "bootstrap": boot,
            "drift_points": drift_points,
            "engine_samples_per_second": (self.n - boot) / max(1e-9, engine_seconds - self.train_seconds),
            "versions": self.registry.list_versions(),
            "approval_policy": self.approval.describe(),
            "commands_scripted": len(self.s.commands),
            "rollout_stage_at_end": self.state.rollout.value,
            "held": self._held(),
        }
        series = {
            "sample": idx,
            "accuracy": [acc(slice(i - w, i)) for i in idx],
            "static_accuracy": [acc(slice(i - w, i), static) for i in idx],
            "canary_weight": [float(100 * (~first_mask[i - w:i] & served[i - w:i]).mean()) for i in idx],
            "t": [float(self.t[i - 1]) for i in idx],
            "drift_points": drift_points,
        }
        return build_report(events=ev, series=series, summary=summary)


def _detections(events: list[dict], drift_points: list[int], start: int,
                horizon: int = 5000) -> tuple[list[int], int]:
    """Detection delay of each known drift (its first ``drift_detected`` in
    ``[onset, min(next onset, onset + horizon))``) and the number of false alarms
    (``drift_detected`` outside every such interval; several detections of one
    drift, feature and performance, are not false alarms).

    >>> ev = [{"kind": "drift_detected", "data": {"sample": s}} for s in (500, 1300, 1400, 2600)]
    >>> _detections(ev, [1000, 2000], start=0)
    ([300, 600], 1)
    """
    detections = sorted(e["data"]["sample"] for e in events if e["kind"] == EventKind.DRIFT_DETECTED.value)
    bounds = drift_points + [float("inf")]
    delays: list[int] = []
    true_hits: set[int] = set()
    for dp, nxt in zip(drift_points, bounds[1:]):
        hits = [k for k, smp in enumerate(detections) if dp <= smp < min(nxt, dp + horizon)]
        if hits:
            delays.append(int(detections[hits[0]] - dp))
            true_hits.update(hits)
    return delays, len(detections) - len(true_hits)


def read_stream(path: str) -> pa.Table:
    from lifelong_ray.data.ingest import read_batch

    return read_batch(path)
