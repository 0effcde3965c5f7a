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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config that does not load; the message names each key and rule."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureSpec(_Frozen):
    """One input column: numeric (``float``/``int``) or ``category``."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    dtype: Literal["float", "int", "category"] = "float"
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    nullable: bool = False

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

    name: str = Field(min_length=1)
    classes: list[int] = Field(min_length=2)

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("classes must be unique")
        return v


class ModelSpec(_Frozen):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    task: Literal["classification"] = "classification"
    features: list[FeatureSpec] = Field(min_length=1)
    label: LabelSpec

    @field_validator("features")
    @classmethod
    def _unique_names(cls, v: list[FeatureSpec]) -> list[FeatureSpec]:
        names = [f.name for f in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate feature names: {dup}")
        return v


class EstimatorConfig(_Frozen):
    """Built-in torch estimator and its hyper-parameters."""

    kind: Literal["logistic", "mlp"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [32, 16])
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=0.01, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)


class TrainingConfig(_Frozen):
    """How and on what a new version is trained."""

    runner: Literal["ray", "local"] = "ray"
    num_workers: int = Field(default=1, ge=1)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    use_gpu: bool = False
    window_recent: int = Field(default=2000, ge=10, description="most recent labeled rows")
    window_replay: int = Field(default=200, ge=0, description="sampled older rows (replay)")
    min_rows: int = Field(default=400, ge=10, description="labeled rows needed to train")
    holdout_fraction: float = Field(default=0.2, gt=0, lt=0.9)
    seed: int = 0
    mode: Literal["batch", "online", "hybrid"] = Field(
        default="batch",
        description="batch: full retrains on drift; online: a challenger copy of the champion is "
                    "fine-tuned on each fresh labeled mini-batch (no full retrains after the first); "
                    "hybrid: both")
    online_batch: int = Field(default=200, ge=10, description="fresh labeled rows per incremental step")
    online_window: int = Field(default=400, ge=20, description="newest labeled rows an incremental step uses")
    online_epochs: int = Field(default=5, ge=1)
    online_lr: float = Field(default=0.005, gt=0)
    online_min_gain: float = Field(default=0.02, ge=0, lt=1,
                                   description="holdout accuracy an incremental challenger must gain to be canaried")


class DriftConfig(_Frozen):
    """Feature and performance drift detection."""

    window_size: int = Field(default=500, ge=20, description="samples per tumbling window")
    psi_threshold: float = Field(default=0.2, gt=0)
    ks_pvalue: float = Field(default=0.01, gt=0, lt=1)
    ks_min_statistic: float = Field(default=0.1, ge=0, le=1, description="effect size floor")
    min_drifted_features: int = Field(default=1, ge=1)
    consecutive_windows: int = Field(default=2, ge=1)
    accuracy_drop: float = Field(default=0.1, gt=0, lt=1, description="labeled accuracy drop vs reference")
    label_window: int = Field(default=200, ge=20, description="labeled rows per quality window")
    sequential: Literal["page_hinkley", "none"] = Field(
        default="page_hinkley", description="sequential test on the champion's labeled error stream")
    ph_delta: float = Field(default=0.05, ge=0, description="Page-Hinkley tolerance (error-rate units)")
    ph_threshold: float = Field(default=30.0, gt=0, description="Page-Hinkley alarm threshold")
    retrain_on_feature_drift: bool = False
    cooldown_seconds: float = Field(default=30.0, ge=0)


class RolloutConfig(_Frozen):
    """Gate and canary steps."""

    gate_margin: float = Field(default=0.02, ge=0, lt=1)
    canary_steps: list[int] = Field(default_factory=lambda: [10, 50, 100])
    min_labeled_per_step: int = Field(default=100, ge=1)
    min_seconds_per_step: float = Field(default=0.0, ge=0)
    quality_margin: float = Field(default=0.05, ge=0, lt=1)
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    retire_grace_seconds: float = Field(default=3.0, ge=0)

    @field_validator("canary_steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v or v[-1] != 100:
            raise ValueError("canary_steps must end at 100")
        if any(not 0 < s <= 100 for s in v) or v != sorted(set(v)):
            raise ValueError("canary_steps must be strictly increasing percentages in (0, 100]")
        return v


class SLOConfig(_Frozen):
    min_accuracy: float = Field(default=0.7, ge=0, le=1)
    p95_latency_ms: float = Field(default=250.0, gt=0)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)


class QuotaConfig(_Frozen):
    max_concurrent_retrains: int = Field(default=1, ge=1)
    max_retrains_per_hour: int = Field(default=6, ge=0)


class StorageConfig(_Frozen):
    """Where logs, registry and controller state live: a path or a pyarrow URI."""

    root: str = "runs/store"


class ServingConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    ingress_num_cpus: float = Field(default=0.1, gt=0)
    version_num_cpus: float = Field(default=0.1, gt=0)
    routing_poll_seconds: float = Field(default=0.25, gt=0)
    max_instances_per_request: int = Field(default=1000, ge=1)
    admin_token_env: str = "LIFELONG_ADMIN_TOKEN"


class ControllerConfig(_Frozen):
    tick_seconds: float = Field(default=1.0, gt=0)


class Config(_Frozen):
    """The whole configuration of one lifelong model."""

    model: ModelSpec
    estimator: EstimatorConfig = EstimatorConfig()
    training: TrainingConfig = TrainingConfig()
    drift: DriftConfig = DriftConfig()
    rollout: RolloutConfig = RolloutConfig()
    slo: SLOConfig = SLOConfig()
    quota: QuotaConfig = QuotaConfig()
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
