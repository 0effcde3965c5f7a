"""Ray Tune at retrain time: several trials on the same window, the best one is the candidate.

With ``training.tune.enabled`` a full retrain (:func:`lifelong_ray.training.runner.train`)
runs :func:`tune_trained` instead of one fit. The window's train rows are split once,
seeded, into trial-train and trial-validation rows (``tune.val_fraction``); every trial
fits the transform-encoded trial-train rows with one point of ``tune.search_space``
(the estimator config with those keys replaced) and reports ``val_accuracy`` and
``val_loss`` on the validation rows, with its weights as a checkpoint. ``ray.tune.Tuner``
runs ``num_samples`` trials (fractional ``cpus_per_trial``) within ``time_budget_s``;
the best trial by ``metric`` gives the candidate's weights and estimator config. The
window's holdout, which the gate scores candidate and champion on, is never seen here.

The search space is written in the config (see :class:`~lifelong_ray.config.TuneParam`)
and translated to Tune's distributions by :func:`search_space`::

    >>> from lifelong_ray.config import TuneConfig
    >>> tc = TuneConfig(search_space={"lr": {"dist": "loguniform", "low": 1e-3, "high": 1e-1},
    ...                               "hidden": {"dist": "choice", "values": [[8], [32, 16]]}})
    >>> space = search_space(tc)
    >>> type(space["lr"]).__name__, space["hidden"].categories
    ('Float', [[8], [32, 16]])

    >>> trained = tune_trained(table, transform, cfg, seed=0, name="demo-tune")   # doctest: +SKIP
    >>> trained.runner, trained.metrics["tune"]["best"]["config"]                  # doctest: +SKIP
    ('tune', {'lr': 0.021, 'hidden': [32, 16]})
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from lifelong_ray.config import Config, EstimatorConfig, TuneConfig, TuneParam
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import FeatureTransform, columns_from_table
from lifelong_ray.data.window import LABEL
from lifelong_ray.storage import Storage
from lifelong_ray.training.estimators import build_module, predict_proba
from lifelong_ray.training.loop import WEIGHTS_FILE, fit_numpy

log = logging.getLogger(__name__)

#: Metrics every trial reports.
METRICS = ("val_accuracy", "val_loss")


def to_tune(param: TuneParam) -> Any:
    """One config distribution as a Ray Tune domain (or a grid search)."""
    from ray import tune

    p = param
    if p.dist == "choice":
        return tune.choice(list(p.values or []))
    if p.dist == "grid":
        return tune.grid_search(list(p.values or []))
    lo, hi = float(p.low), float(p.high)  # type: ignore[arg-type]
    if p.dist == "uniform":
        return tune.uniform(lo, hi)
    if p.dist == "loguniform":
        return tune.loguniform(lo, hi)
    if p.dist == "quniform":
        return tune.quniform(lo, hi, float(p.q))  # type: ignore[arg-type]
    if p.dist == "randint":
        return tune.randint(int(lo), int(hi))
    if p.dist == "lograndint":
        return tune.lograndint(int(lo), int(hi))
    raise ValueError(f"unknown distribution {p.dist!r}")  # pragma: no cover - the config allows these only


def search_space(tc: TuneConfig) -> dict[str, Any]:
    """``tune.search_space`` as Tune's ``param_space``."""
    return {key: to_tune(param) for key, param in tc.search_space.items()}


def trial_estimator(base: EstimatorConfig, point: dict[str, Any]) -> EstimatorConfig:
    """The estimator config of one trial: ``base`` with the sampled keys replaced (validated)."""
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in point.items()}
    return EstimatorConfig.model_validate({**base.model_dump(mode="json"), **values})


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) row indices; each side keeps at least one row.

    >>> tr, va = split_validation(10, 0.2, seed=0)
    >>> len(tr), len(va), sorted(np.concatenate([tr, va]).tolist()) == list(range(10))
    (8, 2, True)
    """
    if n < 2:
        raise ValueError(f"Tune needs at least 2 training rows, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, int(round(n * fraction))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def score(state: dict[str, torch.Tensor], est: EstimatorConfig, n_in: int, n_classes: int,
          x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and mean cross-entropy of weights ``state`` on ``(x, y)``."""
    module = build_module(est, n_in, n_classes)
    module.load_state_dict(state, strict=True)
    probs = predict_proba(module, x)
    picked = probs[np.arange(len(y)), y]
    return {"val_accuracy": float(np.mean(probs.argmax(axis=1) == y)),
            "val_loss": float(-np.mean(np.log(np.clip(picked, 1e-12, None))))}


def _trial(point: dict[str, Any], *, data: dict[str, np.ndarray], base: dict[str, Any], n_classes: int,
           seed: int, threads: int) -> None:
    """The Tune function trainable: one fit, one report (metrics + weights checkpoint)."""
    from ray import tune
    from safetensors.torch import save_file

    est = trial_estimator(EstimatorConfig.model_validate(base), point)
    start = time.perf_counter()
    state, info = fit_numpy(data["x_train"], data["y_train"], est, n_classes, seed, threads=threads)
    metrics = score(state, est, data["x_train"].shape[1], n_classes, data["x_val"], data["y_val"])
    metrics.update(train_loss=float(info["train_loss"]), train_seconds=time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        save_file(state, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def tune_storage_path(storage: Storage) -> str:
    """Where Tune keeps trial state and checkpoints: ``<root>/ray_tune``."""
    if "://" in storage.uri:
        return f"{storage.uri.rstrip('/')}/ray_tune"
    return storage.path("ray_tune")


def run_trials(x: np.ndarray, y: np.ndarray, cfg: Config, seed: int, name: str) -> tuple[Any, list[dict[str, Any]]]:
    """Run the search on encoded rows ``x`` / class indices ``y``; returns
    (the best ``ray.tune.Result``, one row per trial: config, metrics, error)."""
    from ray import tune
    from ray.tune import RunConfig
    from ray.tune import TuneConfig as RayTuneConfig
    from ray.tune.search import BasicVariantGenerator

    tc = cfg.training.tune
    tr, va = split_validation(len(y), tc.val_fraction, seed)
    data = {"x_train": x[tr], "y_train": y[tr], "x_val": x[va], "y_val": y[va]}
    trainable = tune.with_resources(
        tune.with_parameters(_trial, data=data, base=cfg.estimator.model_dump(mode="json"),
                             n_classes=len(cfg.model.label.classes), seed=seed,
                             threads=max(1, int(tc.cpus_per_trial))),
        {"cpu": tc.cpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(tc),
        tune_config=RayTuneConfig(num_samples=tc.num_samples, time_budget_s=tc.time_budget_s, metric=tc.metric,
                                  mode=tc.mode, max_concurrent_trials=tc.max_concurrent_trials,
                                  search_alg=BasicVariantGenerator(random_state=seed)),
        run_config=RunConfig(name=name, storage_path=tune_storage_path(Storage(cfg.storage.root)), verbose=0),
    )
    grid = tuner.fit()
    rows = []
    for r in grid:
        rows.append({"config": dict(r.config or {}),
                     **{m: (r.metrics or {}).get(m) for m in (*METRICS, "train_seconds")},
                     "error": None if r.error is None else f"{type(r.error).__name__}: {r.error}"})
    finished = [r for r in grid if r.error is None and (r.metrics or {}).get(tc.metric) is not None]
    if not finished:
        errors = "; ".join(row["error"] for row in rows if row["error"]) or "none reported"
        raise RuntimeError(f"no Tune trial of {name} finished (time_budget_s={tc.time_budget_s}); errors: {errors}")
    best = grid.get_best_result(metric=tc.metric, mode=tc.mode, scope="last")
    return best, rows


def tune_trained(table: pa.Table, transform: FeatureTransform, cfg: Config, seed: int,
                 name: str | None = None) -> Any:
    """Tune on ``table`` (the window's train rows, with ``label``) encoded by the fitted
    ``transform``; the best trial as a :class:`~lifelong_ray.training.runner.TrainedModel`."""
    from safetensors.torch import load_file

    from lifelong_ray.training.runner import TrainedModel, class_indices

    start = time.perf_counter()
    schema = Schema(cfg.model)
    classes = [int(c) for c in cfg.model.label.classes]
    x = transform.apply(columns_from_table(table, schema))
    y = class_indices(table.column(LABEL).to_numpy(zero_copy_only=False), classes)
    run_name = name or f"{cfg.model.name}-tune-{uuid.uuid4().hex[:8]}"
    try:
        best, rows = run_trials(x, y, cfg, seed, run_name)
        if best.checkpoint is None:
            raise RuntimeError(f"the best Tune trial of {run_name} has no checkpoint")
        with best.checkpoint.as_directory() as d:
            state = load_file(os.path.join(d, WEIGHTS_FILE))
    finally:  # a failed search leaves no run dir behind either
        try:
            Storage(cfg.storage.root).delete_dir(f"ray_tune/{run_name}")
        except OSError as err:  # pragma: no cover - best effort
            log.warning("could not remove Tune run dir %s: %s", run_name, err)
    est = trial_estimator(cfg.estimator, best.config)
    seconds = time.perf_counter() - start
    tc = cfg.training.tune
    best_row = {"config": dict(best.config), **{m: best.metrics.get(m) for m in METRICS}}
    log.info("tune %s: %d trials, best %s=%.4f with %s", run_name, len(rows), tc.metric,
             best.metrics[tc.metric], best.config)
    # the quota is charged with what the trials used, not with the search's wall time
    cpu_seconds = sum(float(r.get("train_seconds") or 0.0) for r in rows) * tc.cpus_per_trial
    metrics = {"train_loss": float(best.metrics.get("train_loss", float("nan"))), "losses": [],
               "epochs": est.epochs, "rows": table.num_rows, "total_seconds": seconds, "cpu_seconds": cpu_seconds,
               "tune": {"run": run_name, "metric": tc.metric, "mode": tc.mode, "trials": rows, "best": best_row}}
    return TrainedModel(state_dict=state, transform=transform, n_in=transform.n_out, classes=classes,
                        train_seconds=seconds, runner="tune", metrics=metrics, estimator=est)
