"""The data that flows through :func:`lifelong_ray.policy.decide.decide`.

``ControllerState`` is what the controller persists (JSON, with a schema
version); ``Observations`` is what the observer saw since the last tick;
``Action`` is an idempotent effect for the executor. All are pydantic models so
they round-trip through JSON unchanged.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lifelong_ray.drift.monitor import MonitorState
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage
from lifelong_ray.policy.quota import RetrainRecord, RetrainRequest
from lifelong_ray.policy.slo import BudgetStatus

STATE_SCHEMA_VERSION = 1


class ActionKind(str, Enum):
    START_RETRAIN = "start_retrain"    # launch (or re-attach to) retrain job `job_id`
    DEPLOY_VERSION = "deploy_version"  # make `version` servable (its own Serve app)
    SET_ALIAS = "set_alias"            # registry alias `alias` -> `version` (None removes)
    SET_ROUTING = "set_routing"        # write routing table `weights`, generation `generation`
    RETIRE_VERSION = "retire_version"  # stop serving `version`
    CANCEL_RETRAIN = "cancel_retrain"  # stop retrain job `job_id` (past training.timeout_seconds)


class CommandKind(str, Enum):
    """What an operator can ask of the controller (CLI or admin HTTP)."""

    APPROVE = "approve"    # let a rollout held for approval go on (`version` names it)
    ROLLBACK = "rollback"  # abort the canary, or go back to the previous champion
    RETRAIN = "retrain"    # request a full retrain now (quota still applies)
    PAUSE = "pause"        # no new retrains or rollout steps; traffic stays as it is
    RESUME = "resume"


class OperatorCommand(BaseModel):
    """One operator command, written to storage by the CLI or the admin endpoint and
    taken in by the controller exactly once (by ``id``); who and why go to the audit log."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: CommandKind
    model: str
    version: str | None = None
    who: str = "unknown"
    why: str = ""
    t: float = 0.0
    key: str = ""  # "<ms timestamp, 15 digits>-<id>": its file name, the order commands are taken in


class CommandLedger(BaseModel):
    """Which operator commands were taken in, bounded however many there were.

    ``mark`` is the key of the newest command taken in; ``recent`` holds the keys
    taken in within ``controller.command_skew_seconds`` of it (a command written a
    little late, by a writer whose clock is behind, is still taken in once) and those
    whose file has not been archived yet. A command older than the window that was
    never taken in is refused (``command_rejected``), never applied late."""

    mark: str = ""
    recent: list[str] = Field(default_factory=list)
    taken: int = 0  # commands taken in, all time


class Action(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: ActionKind
    version: str | None = None
    alias: str | None = None
    weights: dict[str, float] = Field(default_factory=dict)
    generation: int = 0
    shadow: str | None = None  # SET_ROUTING: the version mirrored requests go to
    shadow_fraction: float = 0.0
    job_id: str | None = None
    job_kind: str = "full"  # "full" retrain or "online" incremental step
    since_t: float | None = None
    window_rows: int | None = None  # START_RETRAIN: newest rows to train on (None: training.window_recent)
    seed: int = 0
    champion: str | None = None


class ControllerState(BaseModel):
    """Everything the controller must remember across restarts."""

    schema_version: int = STATE_SCHEMA_VERSION
    model: str
    seq: int = 0
    last_tick_t: float | None = None
    paused: bool = False

    champion: str | None = None
    champion_reference_accuracy: float | None = None
    previous_champion: str | None = None

    rollout: RolloutStage = RolloutStage.STABLE
    candidate: str | None = None
    step_index: int = -1
    step_started_t: float | None = None
    gate: dict[str, Any] = Field(default_factory=dict)
    weights: dict[str, float] = Field(default_factory=dict)
    routing_generation: int = 0
    approval_for: str | None = None  # in APPROVAL: "canary" or "full"
    shadow_started_t: float | None = None
    probation_baseline: float | None = None  # the previous champion's accuracy a new champion must hold
    previous_reference_accuracy: float | None = None
    budget_frozen: bool = False
    budget_reason: str = ""
    budget: dict[str, Any] = Field(default_factory=dict)  # the last budget seen: remaining and burn per SLI
    commands_done: list[str] = Field(default_factory=list)  # legacy (before command_ledger): ids taken in
    command_ledger: CommandLedger = Field(default_factory=CommandLedger)  # which operator commands were taken in

    retrain: RetrainStage = RetrainStage.IDLE
    retrain_count: int = 0
    retrain_job_id: str | None = None
    retrain_kind: str = "full"
    retrain_purpose: str = "drift"  # why the current/last job runs: bootstrap | drift | settle | operator
    settles_left: int = 0  # follow-up (settle) retrains still allowed for the current drift
    settle_due_labeled: int | None = None  # labeled_total at which the next settle retrain is due
    settle_gap: int | None = None  # fresh labeled rows the pending follow-up waited for (grows per follow-up)
    settle_since_t: float | None = None  # the follow-ups' window starts here (training.settle_window set)
    retrain_urgent: bool = True  # the pending/running retrain fixes a quality problem (budget freeze lets it run)
    online_labeled_mark: int = 0  # labeled rows seen when the last incremental step started
    queued_retrain: dict[str, Any] | None = None  # a full retrain asked for while an incremental step ran
    retrain_since_t: float | None = None
    retrain_reason: str = ""
    retrain_deferred_reason: str = ""
    retrain_started_t: float | None = None
    last_retrain_finished_t: float | None = None  # of the last full retrain (cooldown)
    retrain_history: list[RetrainRecord] = Field(default_factory=list)  # full retrains started, last 24 h
    retrain_queue: list[RetrainRequest] = Field(default_factory=list)  # deferred requests, highest priority first

    feature_windows_done: int = 0
    quality_windows_done: int = 0
    feature_monitor: MonitorState = Field(default_factory=MonitorState)
    quality_monitor: MonitorState = Field(default_factory=MonitorState)
    quality_streak_start_t: float | None = None
    last_feature_drift: dict[str, Any] | None = None
    last_quality: dict[str, Any] | None = None

    retiring: dict[str, float] = Field(default_factory=dict)
    pending_actions: list[Action] = Field(default_factory=list)


class VersionStats(BaseModel):
    """Traffic, latency and labeled quality of one version over a span of time."""

    served: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    labeled: int = Field(default=0, ge=0)
    correct: int = Field(default=0, ge=0)
    latency_p95_ms: float | None = Field(default=None, ge=0)  # None: no measured latency
    latency_samples: int = Field(default=0, ge=0)  # served rows with a measured latency

    @model_validator(mode="after")
    def _consistent(self) -> "VersionStats":
        if self.errors > self.served:
            raise ValueError(f"errors ({self.errors}) cannot exceed served ({self.served})")
        if self.correct > self.labeled:
            raise ValueError(f"correct ({self.correct}) cannot exceed labeled ({self.labeled})")
        if self.latency_samples > self.served:
            raise ValueError(f"latency_samples ({self.latency_samples}) cannot exceed served ({self.served})")
        return self

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labeled if self.labeled else None

    @property
    def error_rate(self) -> float:
        return self.errors / self.served if self.served else 0.0


class FeatureWindow(BaseModel):
    """One tumbling window of served inputs, compared with the champion's reference."""

    index: int
    start_t: float
    end_t: float
    drifted: bool
    reason: str
    champion: str | None = None  # the version whose reference it was compared with
    n_drifted: int = 0
    max_psi: float = 0.0
    feature_psi: dict[str, float] = Field(default_factory=dict)  # PSI per feature (the metrics exporter shows it)


class QualityWindow(BaseModel):
    """One window of labeled predictions of the champion."""

    index: int
    start_t: float
    end_t: float
    n: int
    champion: str | None = None  # the version whose labeled accuracy it measured
    accuracy: float | None
    reference_accuracy: float | None
    drifted: bool
    reason: str
    change_t: float | None = None  # where the champion's accuracy most likely shifted (CUSUM)
    sequential_alarm: bool = False  # the sequential test (Page-Hinkley) fired within this window


class ShadowStats(BaseModel):
    """The candidate's mirrored answers compared with the champion's on the same requests."""

    compared: int = 0           # requests both answered
    agree: int = 0              # ... with the same prediction
    labeled: int = 0            # compared requests whose label has arrived
    candidate_correct: int = 0
    champion_correct: int = 0

    @property
    def agreement(self) -> float | None:
        return self.agree / self.compared if self.compared else None


class RetrainOutcome(BaseModel):
    """What a finished retrain job reported (read from its result file)."""

    job_id: str
    status: str  # "ok" | "failed"
    version: str | None = None
    candidate_accuracy: float | None = None
    champion_accuracy: float | None = None
    holdout_rows: int = 0
    train_rows: int = 0
    train_seconds: float = 0.0
    # CPU-seconds the job really used when it says so (a Ray Tune search: its trials);
    # None: train_seconds x workers x CPUs per worker
    cpu_seconds: float | None = None
    runner: str = ""
    error: str | None = None
    # accuracy on a holdout of the replay reservoir (past concepts): the forgetting check
    replay_candidate_accuracy: float | None = None
    replay_champion_accuracy: float | None = None
    replay_rows: int = 0


class FailedAction(BaseModel):
    """An action the executor gave up on after its retries (``controller.action_retries``),
    with the queued actions skipped with it because they name the same version."""

    action: Action
    error: str
    attempts: int = 1
    skipped: list[Action] = Field(default_factory=list)
    t: float = 0.0  # when it was abandoned


class Observations(BaseModel):
    """What the observer saw; everything decide() may look at besides its state."""

    feature_windows: list[FeatureWindow] = Field(default_factory=list)
    quality_windows: list[QualityWindow] = Field(default_factory=list)
    step_stats: dict[str, VersionStats] = Field(default_factory=dict)
    labeled_total: int = 0
    labeled_since_retrain: int = 0
    labeled_since_t: float | None = None  # the retrain_since_t that labeled_since_retrain counts from
    retrain_outcome: RetrainOutcome | None = None
    candidate_reference_accuracy: float | None = None
    commands: list[OperatorCommand] = Field(default_factory=list)  # operator commands not yet taken in
    commands_unarchived: list[str] = Field(default_factory=list)  # keys taken in whose files are not archived yet
    shadow_stats: ShadowStats | None = None  # since the shadow started
    budget: BudgetStatus | None = None  # SLO error budgets (WindowTracker.budget); None: not measured
    failed_actions: list[FailedAction] = Field(default_factory=list)  # abandoned since the last tick
    serving_weights: dict[str, float] | None = None  # the routing table last written (None: not known)
    # retrain jobs running now for other models on the same storage root (quota.max_concurrent_retrains);
    # counted only while this model's retrain is pending
    retrains_running: int = Field(default=0, ge=0)
