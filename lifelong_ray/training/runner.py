"""Runners: fit the transform and the estimator on a training window.

``cfg.training.runner == "ray"`` trains with Ray Train (``TorchTrainer`` over the
window's Ray Dataset, CPU or GPU workers per ``ScalingConfig``); ``"local"`` runs the
same optimisation in this process (:func:`~lifelong_ray.training.loop.fit_numpy`).
Both fit the :class:`~lifelong_ray.data.transform.FeatureTransform` on the training
rows first; the Ray runner applies it inside Ray Data ``map_batches``.

    >>> window = build_window(storage, cfg, since_t=None, seed=0)   # doctest: +SKIP
    >>> trained = train(window, cfg, seed=0)                        # doctest: +SKIP
    >>> trained.runner, round(trained.train_seconds, 1)             # doctest: +SKIP
    ('ray', 6.2)
    >>> labels = trained.predict(columns_from_table(window.holdout, Schema(cfg.model)))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from lifelong_ray.config import Config, EstimatorConfig, ModelSpec
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import FeatureTransform, columns_from_table
from lifelong_ray.data.window import LABEL, TrainingWindow, dataset_to_arrow
from lifelong_ray.registry.model import LoadedModel
from lifelong_ray.storage import Storage
from lifelong_ray.training.estimators import build_module
from lifelong_ray.training.loop import WEIGHTS_FILE, fit_numpy, loop_config, train_loop_per_worker

log = logging.getLogger(__name__)

#: How often the Ray Train controller polls its workers (seconds). Ray's default of
#: 2 s adds up to 2 s to every ``ray.train.report`` barrier and to the end of each
#: run; a run here lasts seconds, so poll faster. An explicit setting in the
#: environment wins.
HEALTH_CHECK_INTERVAL_S = "0.25"


@dataclass
class TrainedModel:
    """A fitted candidate, not yet registered."""

    state_dict: dict[str, torch.Tensor]
    transform: FeatureTransform
    n_in: int
    classes: list[int]
    train_seconds: float
    runner: str
    metrics: dict[str, Any]
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)

    def as_loaded(self) -> LoadedModel:
        """The candidate as a :class:`LoadedModel` (same predict API as registry versions)."""
        module = build_module(self.estimator, self.n_in, len(self.classes))
        module.load_state_dict(self.state_dict, strict=True)
        module.eval()
        return LoadedModel(version="candidate", transform=self.transform, module=module,
                           classes=list(self.classes), metadata={})

    def predict(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        return self.as_loaded().predict(columns)[0]


def class_indices(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    """Map labels to indices into ``classes``; an unknown label raises."""
    labels = np.asarray(labels, dtype=np.int64)
    table = np.asarray(classes, dtype=np.int64)
    order = np.argsort(table)
    pos = np.searchsorted(table[order], labels)
    pos = np.clip(pos, 0, len(table) - 1)
    idx = order[pos]
    bad = table[idx] != labels
    if bad.any():
        raise ValueError(f"labels {sorted(set(labels[bad].tolist()))[:5]} are not in classes {classes}")
    return idx


def _featurize(batch: pa.Table, spec_json: dict, transform_json: dict, classes: list[int]) -> dict[str, np.ndarray]:
    """Ray Data UDF: raw feature columns + label -> ``x`` float32 [n, n_in], ``y`` int64."""
    schema = Schema(ModelSpec.model_validate(spec_json))
    transform = FeatureTransform.from_json(transform_json)
    x = transform.apply(columns_from_table(batch, schema))
    y = class_indices(batch.column(LABEL).to_numpy(zero_copy_only=False), classes)
    return {"x": x, "y": y}


def train_storage_path(storage: Storage) -> str:
    """Where Ray Train keeps run state and checkpoints: ``<root>/ray_train``."""
    if "://" in storage.uri:
        return f"{storage.uri.rstrip('/')}/ray_train"
    return storage.path("ray_train")


def _fit_ray(ds: Any, cfg: Config, n_in: int, rows: int, seed: int, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], float]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file

    tc = cfg.training
    resources: dict[str, float] = {"CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = 1
    storage_path = train_storage_path(Storage(cfg.storage.root))
    # propagated by Ray Train from this process to its controller actor
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(cfg.estimator, n_in, len(cfg.model.label.classes), seed, rows),
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage_path),
        datasets={"train": ds},
    )
    start = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - start
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = load_file(os.path.join(d, WEIGHTS_FILE))
    metrics = dict(result.metrics or {})
    return state, metrics, seconds


def _cleanup_run(cfg: Config, name: str) -> None:
    """Drop the Ray Train run directory: the weights now live in the registry."""
    try:
        Storage(cfg.storage.root).delete_dir(f"ray_train/{name}")
    except OSError as err:  # pragma: no cover - best effort
        log.warning("could not remove Ray Train run dir %s: %s", name, err)


def _threads(cfg: Config) -> int:
    """Torch threads for an in-process fit: the CPUs one training worker is given."""
    return max(1, int(cfg.training.cpus_per_worker))


def train(window: TrainingWindow, cfg: Config, seed: int, *, name: str | None = None) -> TrainedModel:
    """Fit the transform and the estimator of ``cfg`` on ``window.train``."""
    spec = cfg.model
    schema = Schema(spec)
    classes = [int(c) for c in spec.label.classes]
    start = time.perf_counter()
    table = dataset_to_arrow(window.train)
    if table.num_rows == 0:
        raise ValueError("the training window has no training rows")
    transform = FeatureTransform.fit(columns_from_table(table, schema), schema)
    n_in = transform.n_out
    if cfg.training.tune.enabled:  # Ray Tune: the best of several trials is the candidate
        from lifelong_ray.training.tune import tune_trained

        return tune_trained(table, transform, cfg, seed, name=name and f"{name}-tune")
    runner = cfg.training.runner
    if runner == "local":
        x = transform.apply(columns_from_table(table, schema))
        y = class_indices(table.column(LABEL).to_numpy(zero_copy_only=False), classes)
        t0 = time.perf_counter()
        state, info = fit_numpy(x, y, cfg.estimator, len(classes), seed, threads=_threads(cfg))
        seconds = time.perf_counter() - t0
        metrics = {"train_loss": info["train_loss"], "losses": info["losses"], "epochs": info["epochs"]}
    elif runner == "ray":
        import ray.data

        ds = ray.data.from_arrow(table) if isinstance(window.train, pa.Table) else window.train
        ds = ds.map_batches(
            _featurize, batch_format="pyarrow",
            fn_kwargs={"spec_json": spec.model_dump(mode="json"), "transform_json": transform.to_json(),
                       "classes": classes})
        # materialized before the trainer reserves its worker CPUs: small data, and
        # nothing left to schedule for Ray Data while the workers hold the CPUs
        ds = ds.materialize()
        run_name = name or f"{spec.name}-{uuid.uuid4().hex[:8]}"
        state, result_metrics, seconds = _fit_ray(ds, cfg, n_in, table.num_rows, seed, run_name)
        _cleanup_run(cfg, run_name)
        metrics = {"train_loss": float(result_metrics.get("loss", float("nan"))),
                   "losses": [float(v) for v in result_metrics.get("losses", [])],
                   "epochs": int(result_metrics.get("epoch", cfg.estimator.epochs)),
                   "ray_train_run": run_name, "device": str(result_metrics.get("device", "cpu"))}
    else:  # pragma: no cover - the config only allows the two
        raise ValueError(f"unknown training runner {runner!r}")
    metrics.update(rows=table.num_rows, total_seconds=time.perf_counter() - start)
    return TrainedModel(state_dict=state, transform=transform, n_in=n_in, classes=classes,
                        train_seconds=seconds, runner=runner, metrics=metrics, estimator=cfg.estimator)


def finetune(window: TrainingWindow, cfg: Config, champion: LoadedModel, seed: int) -> TrainedModel:
    """An incremental step: a copy of ``champion`` (its weights and its fitted
    transform, unchanged) takes ``training.online_epochs`` epochs at
    ``training.online_lr`` on the window's rows, in this process."""
    schema = Schema(cfg.model)
    classes = [int(c) for c in cfg.model.label.classes]
    table = dataset_to_arrow(window.train)
    if table.num_rows == 0:
        raise ValueError("the incremental window has no training rows")
    # the champion's own architecture (a Tune search may have picked other hidden sizes than the config's)
    base = EstimatorConfig.model_validate(champion.metadata.get("estimator") or cfg.estimator.model_dump(mode="json"))
    est = base.model_copy(update={"epochs": cfg.training.online_epochs, "lr": cfg.training.online_lr})
    x = champion.transform.apply(columns_from_table(table, schema))
    y = class_indices(table.column(LABEL).to_numpy(zero_copy_only=False), classes)
    init = {k: v.detach().clone() for k, v in champion.module.state_dict().items()}
    t0 = time.perf_counter()
    state, info = fit_numpy(x, y, est, len(classes), seed, init_state=init, threads=_threads(cfg))
    seconds = time.perf_counter() - t0
    metrics = {"train_loss": info["train_loss"], "losses": info["losses"], "epochs": info["epochs"],
               "rows": table.num_rows, "parent": champion.version}
    return TrainedModel(state_dict=state, transform=champion.transform, n_in=champion.transform.n_out,
                        classes=classes, train_seconds=seconds, runner="online", metrics=metrics,
                        estimator=base)
