"""Typed configuration of one lifelong model, loaded from YAML.

Every model is frozen and forbids unknown keys, so a typo fails at load time with
the key path and the rule it broke::

    >>> from lifelong_ray.config import Config, ConfigError, parse_config
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}],
    ...                     "label": {"name": "y", "classes": [0, 1]}}})
    >>> cfg.model.features[0].dtype
    'float'
    >>> try:
    ...     parse_config({"model": {"name": "m", "featurs": []}})
    ... except ConfigError as e:
    ...     print(str(e).splitlines()[1])
      model.features: Field required
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


class ConfigError(ValueError):
    """A config that does not load; the message names each key and rule."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureSpec(_Frozen):
    """One input column: numeric (``float``/``int``) or ``category``."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                      description="column name in requests, logs and training data")
    dtype: Literal["float", "int", "category"] = Field(default="float", description="value type of the column")
    min: float | None = Field(default=None, description="numeric: smallest valid value (smaller ones are refused)")
    max: float | None = Field(default=None, description="numeric: largest valid value (larger ones are refused)")
    categories: list[str] | None = Field(default=None, description="category: the allowed values (required)")
    nullable: bool = Field(default=False, description="a missing value (null) is valid")

    @model_validator(mode="after")
    def _check(self) -> "FeatureSpec":
        if self.dtype == "category":
            if not self.categories:
                raise ValueError("a category feature needs a non-empty 'categories' list")
            if self.min is not None or self.max is not None:
                raise ValueError("'min'/'max' apply to numeric features only")
        elif self.categories is not None:
            raise ValueError("'categories' applies to dtype 'category' only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class LabelSpec(_Frozen):
    """The label column; classification labels are integer class ids."""

    name: str = Field(min_length=1, description="label column name in feedback and labeled batches")
    classes: list[int] = Field(min_length=2, description="the integer class ids, all distinct")

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("classes must be unique")
        return v


#: columns the logs own (prediction, feedback and labeled logs): no feature may take these names
RESERVED_COLUMNS: tuple[str, ...] = ("request_id", "t", "t_label", "version", "key", "shadow", "prediction",
                                     "confidence", "latency_ms", "error", "label")


class ModelSpec(_Frozen):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_-]*$",
                      description="model name: URL path, storage prefix and controller name")
    task: Literal["classification"] = Field(default="classification", description="learning task")
    features: list[FeatureSpec] = Field(min_length=1, description="the input columns (data contract)")
    label: LabelSpec = Field(description="the label column")

    @field_validator("features")
    @classmethod
    def _unique_names(cls, v: list[FeatureSpec]) -> list[FeatureSpec]:
        names = [f.name for f in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate feature names: {dup}")
        clash = [n for n in names if n in RESERVED_COLUMNS]
        if clash:
            raise ValueError(f"feature names {clash} are columns of the prediction/labeled logs; "
                             f"rename them (reserved: {', '.join(RESERVED_COLUMNS)})")
        return v

    @model_validator(mode="after")
    def _label_is_not_a_feature(self) -> "ModelSpec":
        if self.label.name in {f.name for f in self.features}:
            raise ValueError(f"the label {self.label.name!r} is also a feature name")
        return self


class EstimatorConfig(_Frozen):
    """Built-in torch estimator and its hyper-parameters."""

    kind: Literal["logistic", "mlp"] = Field(default="mlp", description="logistic regression or multi-layer perceptron")
    hidden: list[int] = Field(default_factory=lambda: [32, 16], description="mlp: units per hidden layer")
    epochs: int = Field(default=30, ge=1, description="passes over the training window per retrain")
    batch_size: int = Field(default=64, ge=1, description="rows per optimizer step (per worker)")
    lr: float = Field(default=0.01, gt=0, description="learning rate (Adam)")
    weight_decay: float = Field(default=0.0, ge=0, description="L2 weight decay")


#: Estimator hyper-parameters a Tune search space may vary.
TUNABLE: tuple[str, ...] = ("kind", "hidden", "epochs", "batch_size", "lr", "weight_decay")


class TuneParam(_Frozen):
    """One dimension of the search space, as a Ray Tune distribution written in YAML:
    ``{dist: loguniform, low: 1e-4, high: 1e-1}``, ``{dist: choice, values: [[16], [32, 16]]}``,
    ``{dist: randint, low: 5, high: 40}`` (high exclusive), ``{dist: uniform, ...}``,
    ``{dist: quniform, low, high, q}`` or ``{dist: grid, values: [...]}`` (every value, times
    ``num_samples``)."""

    dist: Literal["choice", "grid", "uniform", "loguniform", "quniform", "randint", "lograndint"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    q: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _shape(self) -> "TuneParam":
        if self.dist in ("choice", "grid"):
            if not self.values or self.low is not None or self.high is not None:
                raise ValueError(f"'{self.dist}' takes a non-empty 'values' list and no 'low'/'high'")
        else:
            if self.values is not None or self.low is None or self.high is None:
                raise ValueError(f"'{self.dist}' takes 'low' and 'high' and no 'values'")
            if self.low >= self.high:
                raise ValueError(f"low {self.low:g} must be below high {self.high:g}")
            if self.dist in ("loguniform", "lograndint") and self.low <= 0:
                raise ValueError(f"'{self.dist}' needs low > 0")
        if (self.q is not None) != (self.dist == "quniform"):
            raise ValueError("'q' is required by, and only allowed with, 'quniform'")
        return self

    def bounds(self) -> list[Any]:
        """The values a sample can take at the extremes (every value for choice/grid)."""
        if self.values is not None:
            return list(self.values)
        lo, hi = self.low, self.high
        if self.dist in ("randint", "lograndint"):
            return [int(lo), int(hi) - 1]
        return [lo, hi]


class TuneConfig(_Frozen):
    """Ray Tune over the estimator's hyper-parameters at each full retrain: ``num_samples``
    trials on the same training window (a seeded validation split of its train rows), the best
    trial by ``metric`` becomes the candidate. The gate's holdout is never seen by a trial."""

    enabled: bool = False
    search_space: dict[str, TuneParam] = Field(
        default_factory=dict, description=f"estimator key -> distribution; keys among {list(TUNABLE)}")
    num_samples: int = Field(default=4, ge=1, description="trials (times every grid value)")
    time_budget_s: float | None = Field(default=300.0, gt=0, description="wall-clock budget of the whole search")
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    val_fraction: float = Field(default=0.2, gt=0, lt=0.9, description="share of the train rows each trial validates on")
    cpus_per_trial: float = Field(default=1.0, gt=0)
    max_concurrent_trials: int | None = Field(default=None, ge=1)

    @property
    def mode(self) -> Literal["max", "min"]:
        return "max" if self.metric == "val_accuracy" else "min"

    @model_validator(mode="after")
    def _space(self) -> "TuneConfig":
        for key, param in self.search_space.items():
            if key not in TUNABLE:
                raise ValueError(f"search_space key {key!r} is not a tunable estimator field {list(TUNABLE)}")
            if key in ("epochs", "batch_size") and param.dist in ("uniform", "loguniform", "quniform"):
                raise ValueError(f"search_space.{key} is an integer: use randint, lograndint, choice or grid")
            for value in param.bounds():
                try:
                    EstimatorConfig(**{key: value})
                except ValidationError as err:
                    msg = err.errors()[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(f"search_space.{key}: value {value!r} is not a valid estimator.{key}: {msg}") \
                        from None
        if self.enabled and not self.search_space:
            raise ValueError("tune.enabled needs a non-empty search_space")
        return self


class TrainingConfig(_Frozen):
    """How and on what a new version is trained."""

    runner: Literal["ray", "local"] = Field(default="ray", description="ray: Ray Train TorchTrainer; local: in-process")
    num_workers: int = Field(default=1, ge=1, description="Ray Train workers per retrain")
    cpus_per_worker: float = Field(default=1.0, gt=0, description="CPUs each training worker reserves")
    use_gpu: bool = Field(default=False, description="train on one GPU per worker")
    window_recent: int = Field(default=2000, ge=10, description="most recent labeled rows")
    window_replay: int = Field(default=200, ge=0, description="sampled older rows (replay)")
    min_rows: int = Field(default=400, ge=10, description="labeled rows needed to train")
    holdout_fraction: float = Field(default=0.2, gt=0, lt=0.9,
                                    description="share of the recent rows held out for the gate")
    holdout_split: Literal["random", "newest"] = Field(
        default="random",
        description="which recent rows are held out: a seeded random share, or the newest (a follow-up with a "
                    "grown window always holds out its newest rows, which the champion cannot have trained on)")
    seed: int = Field(default=0, description="base random seed (each retrain adds its count)")
    mode: Literal["batch", "online", "hybrid"] = Field(
        default="batch",
        description="batch: full retrains on drift; online: a challenger copy of the champion is "
                    "fine-tuned on each fresh labeled mini-batch (no full retrains after the first); "
                    "hybrid: both")
    online_batch: int = Field(default=200, ge=10, description="fresh labeled rows per incremental step")
    online_window: int = Field(default=400, ge=20, description="newest labeled rows an incremental step uses")
    online_epochs: int = Field(default=5, ge=1, description="passes per incremental step")
    online_lr: float = Field(default=0.005, gt=0, description="learning rate of incremental steps")
    online_min_gain: float = Field(default=0.02, ge=0, lt=1,
                                   description="holdout accuracy an incremental challenger must gain to be canaried")
    settle_retrains: int = Field(
        default=1, ge=0,
        description="follow-up retrains per drift: after a drift-triggered version is promoted, retrain on "
                    "the newest window_recent rows once that many fresh labeled rows exist; canaried only "
                    "if it gains settle_min_gain; a settle retrain, promoted or refused, may be followed by "
                    "another, up to this many per drift (0: off)")
    settle_min_gain: float = Field(default=0.005, ge=0, lt=1,
                                   description="holdout accuracy a settle retrain must gain over the champion")
    settle_after_rows: int | None = Field(
        default=None, ge=1,
        description="fresh labeled rows after a promotion before its follow-up retrain (default: window_recent); "
                    "smaller follows a slow (gradual) drift more closely")
    settle_growth: float = Field(
        default=1.0, ge=1.0, le=16.0,
        description="each follow-up of a drift waits this many times the fresh labeled rows the one before it "
                    "waited (1: the same gap every time)")
    settle_window: int | None = Field(
        default=None, ge=10,
        description="when set, a follow-up trains on every labeled row since the version that began its chain "
                    "took all traffic (after bootstrap: all rows), the newest settle_window of them: the window "
                    "grows while the concept holds; default: the newest window_recent rows")
    settle_after_bootstrap: bool = Field(
        default=False,
        description="the first version (trained on whatever history exists) gets follow-ups too, like a "
                    "drift-triggered version")
    tune: TuneConfig = Field(default_factory=TuneConfig,
                             description="Ray Tune search at each full retrain (off by default)")
    timeout_seconds: float | None = Field(
        default=3600.0, gt=0,
        description="a retrain job running longer than this is cancelled and ends as `retrain_failed` (the next "
                    "one may start); null: no limit")


class DriftConfig(_Frozen):
    """Feature and performance drift detection."""

    window_size: int = Field(default=500, ge=20, description="samples per tumbling window")
    psi_threshold: float = Field(default=0.2, gt=0, description="a feature drifts when its PSI exceeds this")
    ks_pvalue: float = Field(default=0.01, gt=0, lt=1, description="numeric features: KS test significance level")
    ks_min_statistic: float = Field(default=0.1, ge=0, le=1, description="effect size floor")
    min_drifted_features: int = Field(default=1, ge=1, description="drifted features that make a drifted window")
    consecutive_windows: int = Field(default=2, ge=1, description="drifted windows in a row before drift is declared")
    accuracy_drop: float = Field(default=0.1, gt=0, lt=1, description="labeled accuracy drop vs reference")
    label_window: int = Field(default=200, ge=20, description="labeled rows per quality window")
    sequential: Literal["page_hinkley", "none"] = Field(
        default="page_hinkley", description="sequential test on the champion's labeled error stream")
    ph_delta: float = Field(default=0.05, ge=0, description="Page-Hinkley tolerance (error-rate units)")
    ph_threshold: float = Field(default=30.0, gt=0, description="Page-Hinkley alarm threshold")
    retrain_on_feature_drift: bool = Field(
        default=False, description="feature drift alone requests a (non-urgent) retrain; false: it is only recorded")
    cooldown_seconds: float = Field(default=30.0, ge=0, description="least time from a retrain's end to the next")


class RolloutConfig(_Frozen):
    """Gate, shadow, canary steps, approvals and probation."""

    gate_margin: float = Field(default=0.02, ge=0, lt=1,
                               description="the gate passes if holdout accuracy >= the champion's - this")
    forgetting_margin: float = Field(
        default=0.05, ge=0, lt=1,
        description="the gate refuses a candidate whose replay-holdout accuracy is below the "
                    "champion's by more than this (catastrophic forgetting)")
    shadow_fraction: float = Field(default=0.0, ge=0, le=1,
                                   description="share of requests mirrored to the candidate before its canary")
    shadow_min_samples: int = Field(default=200, ge=1, description="shadowed requests needed to leave shadow")
    shadow_min_agreement: float = Field(default=0.0, ge=0, le=1,
                                        description="candidate/champion agreement below this aborts in shadow")
    require_approval: list[Literal["canary", "full"]] = Field(
        default_factory=list,
        description="'canary': hold before the first canary step; 'full': hold before 100%")
    confidence: float = Field(default=0.95, gt=0.5, lt=1,
                              description="confidence of the canary-vs-champion accuracy interval")
    max_latency_ratio: float = Field(default=3.0, gt=1,
                                     description="canary p95 latency above this multiple of the champion's fails")
    probation_labels: int = Field(default=0, ge=0,
                                  description="late labels a new champion is watched for after promotion (0: off)")
    probation_margin: float = Field(default=0.03, ge=0, lt=1,
                                    description="probation rolls back when realized accuracy < previous - margin")
    canary_steps: list[int] = Field(default_factory=lambda: [10, 50, 100],
                                    description="traffic percentages of the canary steps, ending at 100")
    urgent_canary_steps: list[int] | None = Field(
        default=None,
        description="canary steps of an urgent candidate (retrained for a performance drift or at an operator's "
                    "request), whose champion is already failing: a larger first step leaves fewer requests on "
                    "it while the step gathers its labels (default: canary_steps)")
    min_labeled_per_step: int = Field(default=100, ge=1, description="labeled canary rows a step needs for a verdict")
    min_seconds_per_step: float = Field(default=0.0, ge=0, description="minimum time a canary step runs")
    quality_margin: float = Field(default=0.05, ge=0, lt=1,
                                  description="canary or shadow accuracy below the champion's - this fails")
    max_error_rate: float = Field(default=0.05, ge=0, le=1,
                                  description="canary or probation request error rate above this fails")
    retire_grace_seconds: float = Field(default=3.0, ge=0,
                                        description="a version without traffic is undeployed after this long")
    step_timeout_seconds: float | None = Field(
        default=21600.0, gt=0,
        description="a shadow, canary step or probation without a verdict this long after it began (too few "
                    "compared answers, labels or seconds) is rolled back, with the missing evidence as the reason; "
                    "not while paused or awaiting approval; null: hold until the evidence arrives")

    @model_validator(mode="after")
    def _deadline_after_minimum(self) -> "RolloutConfig":
        if self.step_timeout_seconds is not None and self.step_timeout_seconds <= self.min_seconds_per_step:
            raise ValueError(f"step_timeout_seconds ({self.step_timeout_seconds:g}) must exceed min_seconds_per_step"
                             f" ({self.min_seconds_per_step:g}): every canary step would time out")
        return self

    @field_validator("canary_steps", "urgent_canary_steps")
    @classmethod
    def _steps(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if v is None:
            return v
        if not v or v[-1] != 100:
            raise ValueError(f"{info.field_name} must end at 100")
        if any(not 0 < s <= 100 for s in v) or v != sorted(set(v)):
            raise ValueError(f"{info.field_name} must be strictly increasing percentages in (0, 100]")
        return v


class BurnWindow(_Frozen):
    """A multi-window burn-rate alert: fires when the burn rate over both the long
    and the short window exceeds ``burn_rate`` (Google SRE workbook, ch. 5)."""

    long_seconds: float = Field(gt=0, description="long alert window")
    short_seconds: float = Field(gt=0, description="short alert window")
    burn_rate: float = Field(gt=0, description="burn-rate threshold on both windows")

    @model_validator(mode="after")
    def _windows(self) -> "BurnWindow":
        if self.short_seconds >= self.long_seconds:
            raise ValueError(f"short_seconds {self.short_seconds:g} must be less than long_seconds"
                             f" {self.long_seconds:g}")
        return self


class SLOConfig(_Frozen):
    """Service level objectives; each SLI's error budget is ``1 - objective`` over ``period_seconds``."""

    min_accuracy: float = Field(default=0.7, ge=0, lt=1,
                                description="labeled quality objective (below 1: a 100% objective has no budget)")
    p95_latency_ms: float = Field(default=250.0, gt=0, description="latency objective: a slower request is a bad event")
    max_error_rate: float = Field(default=0.01, gt=0, le=1, description="error budget: 1 - max_error_rate objective")
    max_label_age_seconds: float = Field(default=3600.0, gt=0, description="data freshness objective")
    objective: float = Field(default=0.99, gt=0, lt=1,
                             description="freshness objective: share of time buckets with traffic whose newest "
                                         "label is younger than max_label_age_seconds (budget: 1 - objective)")
    period_seconds: float = Field(default=30 * 86400.0, gt=0, description="error-budget period")
    fast: BurnWindow = Field(default=BurnWindow(long_seconds=3600.0, short_seconds=300.0, burn_rate=14.4),
                             description="fast-burn alert (pages): 2% of a 30-day budget in one hour")
    slow: BurnWindow = Field(default=BurnWindow(long_seconds=6 * 3600.0, short_seconds=1800.0, burn_rate=6.0),
                             description="slow-burn alert: 5% of a 30-day budget in six hours")
    freeze_when_exhausted: bool = Field(default=True,
                                        description="spent budget freezes non-urgent rollouts (budget_frozen)")


class QuotaConfig(_Frozen):
    """Compute quotas for retraining; a blocked retrain waits in an impact-ordered queue."""

    max_concurrent_retrains: int = Field(
        default=1, ge=1,
        description="retrain jobs running at once across the models sharing this storage root (one model runs "
                    "at most one); a pending retrain waits while this many run")
    max_retrains_per_hour: int = Field(default=6, ge=0, description="full retrains started per rolling hour")
    cpu_seconds_per_day: float | None = Field(default=None, gt=0, description="training CPU-seconds per 24 h")
    gpu_seconds_per_day: float | None = Field(default=None, gt=0, description="training GPU-seconds per 24 h")
    allowed_hours: list[int] | None = Field(
        default=None, description="UTC hours (0-23) in which non-urgent retrains may start; None: any")

    @field_validator("allowed_hours")
    @classmethod
    def _hours(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(not 0 <= h <= 23 for h in v)):
            raise ValueError("allowed_hours must be a non-empty list of hours 0-23")
        return v


#: How durable an accepted record is when its request is answered 2xx (``data.durability``).
Durability = Literal["fsync", "group", "none"]


class DurabilityConfig(_Frozen):
    """Durability of each log, the guarantee a 2xx gives about its record. ``fsync``: on the device before
    the 2xx; survives a power loss or kernel crash. ``group``: written to the OS before the 2xx, so it
    survives a crash of the process or the replica; flushed to the device by a group commit (one flusher per
    log, off the request path) at most ``data.flush_interval_ms`` later, so a power loss or kernel crash loses
    at most that window of records, never tears or duplicates one. ``none``: written to the OS, never
    flushed by us (the OS writes it back within about 30 s): benchmarks and throwaway runs. On an object-store
    root every mode is ``fsync`` (a finished PUT is durable)."""

    predictions: Durability = Field(
        default="group", description="the prediction log (high volume; a lost answer's client can retry)")
    feedback: Durability = Field(default="fsync", description="the feedback (label) log")
    commands: Durability = Field(default="fsync",
                                 description="operator commands (lifelong approve|rollback|..., admin HTTP)")


class DataConfig(_Frozen):
    """Data contracts, feedback, quarantine guards, replay, retention and privacy."""

    label_horizon_seconds: float = Field(default=7 * 86400.0, gt=0,
                                         description="a label for a prediction older than this is rejected; the controller forgets "
                                                     "predictions still unlabeled this long (counted as expired)")
    guard_label_shift: float = Field(
        default=0.25, gt=0, le=1,
        description="a labeled batch whose label distribution departs from recent history by more than this "
                    "total-variation distance (and significantly, see guard_pvalue) is quarantined")
    guard_disagreement_margin: float = Field(
        default=0.1, gt=0, le=1,
        description="a labeled batch whose labels disagree with the champion's predictions this much more "
                    "often than the champion's recent live error (and significantly) is quarantined")
    guard_pvalue: float = Field(default=0.001, gt=0, lt=1,
                                description="significance level of the label guard's tests")
    guard_min_rows: int = Field(
        default=50, ge=1,
        description="the label guard judges at least this many rows: a smaller batch is judged together with "
                    "the rows before it (batch ingest: the newest batch-ingested rows; live feedback: the "
                    "rolling window), never skipped")
    guard_live: Literal["quarantine", "alert", "off"] = Field(
        default="alert",
        description="live :feedback label guard (the rolling disagreement check below). 'quarantine': a stream "
                    "whose labels collapse against the served predictions is diverted to the quarantine store "
                    "until an operator releases it; 'alert': the same check only warns (log, "
                    "lifelong_feedback_total{outcome=\"flagged\"}) and the labels flow on; 'off'. A sudden real "
                    "concept change looks exactly like a label flip to this check, and quarantining it stops the "
                    "model from adapting until someone releases the labels: 'alert' is the default, 'quarantine' "
                    "is for feedback from untrusted sources")
    guard_live_window_rows: int = Field(
        default=200, ge=1,
        description="live :feedback labels: the rolling window (per model, in the ingress) of the newest "
                    "labels vs the served predictions that the disagreement check judges on every request")
    guard_live_baseline_rows: int = Field(
        default=2000, ge=1,
        description="live :feedback labels: older accepted labels (those that left the window) whose "
                    "disagreement is the baseline; until it holds guard_min_rows, the champion's holdout "
                    "accuracy is the baseline")
    guard_out_of_range_fraction: float = Field(
        default=0.05, gt=0, le=1,
        description="a batch with more than this share of rows far outside the training range is quarantined")
    guard_range_widths: float = Field(default=0.5, gt=0,
                                      description="'far outside' = beyond min/max by this many training ranges")
    replay_capacity: int = Field(default=5000, ge=0, description="reservoir of past labeled rows across concepts")
    pii_fields: list[str] = Field(
        default_factory=list,
        description="request fields hashed (salted sha256) before anything is written; allowed: 'key' "
                    "(the routing key). Features are never hashed: that would make serving differ from training")
    pii_salt_env: str = Field(default="LIFELONG_PII_SALT",
                              description="environment variable holding the PII salt (required when pii_fields is set)")
    retention_days: float | None = Field(
        default=30.0, gt=0,
        description="days kept: the controller's housekeeping drops older log partitions, audit events, handled "
                    "operator commands, finished retrain job files and registry versions (never the champion, the "
                    "previous champion, a version in rollout or serving, or one an alias names). null: keep "
                    "everything (logs are still compacted)")
    compact_min_files: int = Field(default=32, ge=2, description="compact a day's partition above this many files")
    compaction_interval_seconds: float | None = Field(
        default=3600.0, gt=0,
        description="how often the controller runs housekeeping (retention, then compaction of past days' log "
                    "files); null: never (run `lifelong compact CONFIG` yourself)")
    durability: DurabilityConfig = Field(
        default_factory=DurabilityConfig,
        description="how durable a record of each log is when its request is answered 2xx: 'fsync', 'group' "
                    "or 'none' per log (data.durability below; what each loses, in docs/runbook.md)")
    flush_interval_ms: float = Field(
        default=100.0, gt=0, le=60_000,
        description="a log with durability 'group' is flushed to the device (fdatasync) at most this long after "
                    "a record was written, by one flusher thread per log, off the request path: the most a "
                    "power loss or kernel crash can lose of that log")
    log_segments: bool = Field(
        default=True,
        description="on a local storage root, each ingress replica appends its prediction rows to one open "
                    "segment file (a JSON line per request: one write, synced as data.durability.predictions "
                    "says) and seals it into the parquet log every log_seal_seconds; readers see a prediction that much later. "
                    "false, or an object-store root: one parquet file per request (group commit)")
    log_seal_seconds: float = Field(
        default=0.25, gt=0, le=60,
        description="how often an ingress replica seals its prediction segment into the parquet log "
                    "(data.log_segments): the most a prediction waits before the controller can see it")
    log_late_seconds: float = Field(
        default=3600.0, gt=0,
        description="the controller reads a log file only if its name's time is at most this much older than the "
                    "newest file it read (writers name files by when they write them); older names count as read. "
                    "Bounds what the controller remembers of the logs and lists per tick")

    @model_validator(mode="before")
    @classmethod
    def _no_log_fsync(cls, v: Any) -> Any:
        if isinstance(v, dict) and "log_fsync" in v:
            raise ValueError("data.log_fsync was replaced by data.durability (per log: fsync | group | none); "
                             "log_fsync: true is durability {predictions: fsync, feedback: fsync}, "
                             "false is {predictions: none, feedback: none}")
        return v

    @field_validator("pii_fields")
    @classmethod
    def _pii(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if f not in PII_FIELDS]
        if bad:
            raise ValueError(f"{bad} cannot be hashed: only {list(PII_FIELDS)} may be (a feature is never "
                             "hashed: the model would see hashes when serving but raw values when training, "
                             "a train/serve skew)")
        return v


#: Request fields that :attr:`DataConfig.pii_fields` may name.
PII_FIELDS: tuple[str, ...] = ("key",)


class StorageConfig(_Frozen):
    """Where logs, registry and controller state live: a path or a pyarrow URI."""

    root: str = Field(default="runs/store", description="local path (relative: to the working directory) or "
                                                      "a pyarrow URI such as s3://bucket/prefix")


class ServingConfig(_Frozen):
    host: str = Field(default="127.0.0.1", description="Serve HTTP host; loopback unless set (lifelong up --host)")
    port: int = Field(default=8000, ge=1, le=65535, description="Serve HTTP port (lifelong up --port)")
    ingress_num_cpus: float = Field(default=0.1, gt=0, description="CPUs the HTTP ingress replica reserves")
    version_num_cpus: float = Field(default=0.1, gt=0, description="CPUs each model-version replica reserves")
    version_placement: Literal["deployment", "ingress"] = Field(
        default="deployment",
        description="where versions run: 'deployment' = each its own Serve app, called through a handle "
                    "(isolation, GPUs, own replicas); 'ingress' = loaded into the ingress replica and called "
                    "in-line (no second hop; for small CPU models)")
    routing_poll_seconds: float = Field(default=0.25, gt=0,
                                        description="how often the ingress re-reads the routing table")
    gil_switch_interval_ms: float | None = Field(
        default=0.5, gt=0,
        description="the ingress replica's sys.setswitchinterval, in ms (Python's default: 5). The durable log's "
                    "fdatasync releases the GIL; with 5 ms, getting it back from Serve's threads cost a request "
                    "about 1 ms more than the sync itself (benchmarks/ingest.py). null: leave Python's")
    max_instances_per_request: int = Field(default=1000, ge=1, description="larger predict requests get 413")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    max_key_chars: int = Field(default=256, ge=1, description="a predict request's routing key longer than this "
                                                              "gets 422 (field key, rule max_length)")
    max_who_chars: int = Field(default=128, ge=1, description="an admin command's who longer than this gets 422")
    max_why_chars: int = Field(default=2000, ge=1, description="an admin command's why longer than this gets 422")
    admin_token_env: str = Field(default="LIFELONG_ADMIN_TOKEN",
                                 description="env var holding the bearer token of the admin endpoints")
    admin_token_file: str | None = Field(
        default=None, description="file holding the admin bearer token (read by the ingress; wins over the env var)")


class ControllerConfig(_Frozen):
    tick_seconds: float = Field(default=1.0, gt=0, description="controller loop period (observe, decide, act)")
    action_retries: int = Field(
        default=3, ge=0,
        description="retries of a failing action (deploy, routing, alias, retrain start) before it is abandoned "
                    "with an `action_failed` event and the policy reacts (a candidate is rolled back)")
    action_backoff_seconds: float = Field(
        default=2.0, ge=0,
        description="wait before the first retry of a failing action; doubles per retry (2, 4, 8 s: abandoned "
                    "about 14 s after the first failure by default)")
    checkpoint_ticks: int = Field(
        default=60, ge=1,
        description="every this many ticks the observer writes a checkpoint (log read positions, counters, window "
                    "buffers, the predictions still waiting for a label); a restart loads it and reads only the "
                    "log files written since")
    command_skew_seconds: float = Field(
        default=60.0, ge=0,
        description="an operator command written up to this long before the newest one taken in (a writer whose "
                    "clock is behind) is still applied, once; an older one never taken in is refused "
                    "(command_rejected)")
    lease_seconds: float | None = Field(
        default=None, gt=0,
        description="leader lease: a standby controller on the same storage takes over when the leader has not "
                    "renewed it for this long (the leader renews it as it ticks and writes: make it longer than "
                    "the longest tick, which deploys versions). null: max(30, 3 x tick_seconds)")

    @model_validator(mode="after")
    def _lease_outlasts_a_tick(self) -> "ControllerConfig":
        if self.lease_seconds is not None and self.lease_seconds < 2 * self.tick_seconds:
            raise ValueError(f"lease_seconds ({self.lease_seconds:g}) must be at least 2 x tick_seconds "
                             f"({self.tick_seconds:g}): the leader renews its lease once a tick")
        return self

    @property
    def lease_period(self) -> float:
        """``lease_seconds``, or its default."""
        return self.lease_seconds if self.lease_seconds is not None else max(30.0, 3 * self.tick_seconds)


class Config(_Frozen):
    """The whole configuration of one lifelong model."""

    model: ModelSpec
    estimator: EstimatorConfig = EstimatorConfig()
    training: TrainingConfig = TrainingConfig()
    drift: DriftConfig = DriftConfig()
    rollout: RolloutConfig = RolloutConfig()
    slo: SLOConfig = SLOConfig()
    quota: QuotaConfig = QuotaConfig()
    data: DataConfig = DataConfig()
    storage: StorageConfig = StorageConfig()
    serving: ServingConfig = ServingConfig()
    controller: ControllerConfig = ControllerConfig()

    def config_hash(self) -> str:
        """A short, stable hash of the config (recorded in every version's lineage)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_overrides(self, **sections: dict[str, Any]) -> "Config":
        """A copy with some keys of some sections replaced, validated again.

        >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}],
        ...                     "label": {"name": "y", "classes": [0, 1]}}})
        >>> cfg.with_overrides(storage={"root": "/tmp/s"}).storage.root
        '/tmp/s'
        """
        data = self.model_dump(mode="json")
        for section, values in sections.items():
            data[section] = {**data.get(section, {}), **values}
        return parse_config(data)


def _format_errors(err: ValidationError) -> str:
    lines = ["invalid config:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any]) -> Config:
    """Validate a mapping into a :class:`Config`, raising :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config: the top level must be a mapping, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_config(path: str | Path) -> Config:
    """Load and validate a YAML config file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {p} is not valid YAML: {err}") from None
    try:
        return parse_config(data)
    except ConfigError as err:
        raise ConfigError(f"{p}: {err}") from None
