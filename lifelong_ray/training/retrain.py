"""The retrain job: window → train → evaluate vs champion → register → result file.

:func:`run_retrain` is safe to run again with the same ``job_id`` (a retried Ray task,
a restarted controller): a finished job's result file is returned as is, and a job
that registered its version but died before writing the file reuses that version.
It never raises: any failure becomes ``status="failed"`` with the error, written to
``models/<model>/jobs/<job_id>.json`` where the controller reads it.

    >>> res = run_retrain(cfg, job_id="job-7", since_t=1.7e9, champion="v0002", seed=7)  # doctest: +SKIP
    >>> res.status, res.version, res.candidate_accuracy > res.champion_accuracy          # doctest: +SKIP
    ('ok', 'v0003', True)

From a controller, as a Ray task (``import ray`` happens on first use only)::

    >>> from lifelong_ray.training.retrain import retrain_task                           # doctest: +SKIP
    >>> ref = retrain_task.remote(cfg.model_dump(mode="json"), job_id="job-7",
    ...                           since_t=None, champion=None, seed=7)                    # doctest: +SKIP
    >>> RetrainResult.from_json(ray.get(ref)).status                                      # doctest: +SKIP
    'ok'
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lifelong_ray.config import Config, parse_config
from lifelong_ray.storage import Storage

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_FAILED = "failed"


@dataclass
class RetrainResult:
    """What one retrain job produced (the JSON the controller reads)."""

    job_id: str
    status: str
    version: str | None
    candidate_accuracy: float | None
    champion_accuracy: float | None
    holdout_rows: int
    train_rows: int
    train_seconds: float
    runner: str
    error: str | None
    finished_at: float
    champion: str | None = None
    reused: bool = False
    warnings: list[str] = field(default_factory=list)
    # accuracy on a holdout of the replay reservoir (past concepts): the gate's forgetting check
    replay_candidate_accuracy: float | None = None
    replay_champion_accuracy: float | None = None
    replay_rows: int = 0
    cpu_seconds: float | None = None  # measured by the job (Tune: its trials); None: derive from train_seconds

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RetrainResult":
        """Tolerates unknown keys (files written by a newer version)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def job_path(model: str, job_id: str) -> str:
    return f"models/{model}/jobs/{job_id}.json"


def _accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(truth))) if len(truth) else float("nan")


def _result_from_version(reg: Any, version: str, job_id: str, champion: str | None, now: float) -> "RetrainResult":
    meta = reg.metadata(version)
    metrics = meta.get("metrics", {})
    window = meta.get("window", {})
    return RetrainResult(
        job_id=job_id, status=STATUS_OK, version=version,
        candidate_accuracy=metrics.get("holdout_accuracy"),
        champion_accuracy=metrics.get("champion_holdout_accuracy"),
        replay_candidate_accuracy=metrics.get("replay_accuracy"),
        replay_champion_accuracy=metrics.get("champion_replay_accuracy"),
        replay_rows=int(window.get("replay_holdout_rows", 0)),
        holdout_rows=int(window.get("holdout_rows", 0)), train_rows=int(window.get("rows", 0)),
        train_seconds=float(meta.get("train_seconds", 0.0)), runner=str(meta.get("runner", "")),
        cpu_seconds=meta.get("cpu_seconds"),
        error=None, finished_at=now, champion=meta.get("parent", champion), reused=True,
        warnings=list(meta.get("warnings", [])),
    )


def _write(storage: Storage, path: str, result: RetrainResult) -> None:
    try:
        storage.write_json(path, result.to_json())
    except Exception as err:  # noqa: BLE001 - the caller still gets the result
        log.error("could not write retrain result %s: %s", path, err)
        result.warnings.append(f"result file not written: {type(err).__name__}: {err}")


def run_retrain(cfg: Config, *, job_id: str, since_t: float | None, champion: str | None,
                seed: int, kind: str = "full", window_rows: int | None = None) -> RetrainResult:
    """Run (or finish, or look up) retrain job ``job_id``; see the module doc.
    ``window_rows``: train on at most this many newest rows (since ``since_t``)
    instead of ``training.window_recent`` (a follow-up retrain's grown window)."""
    from lifelong_ray.registry.store import Registry

    model = cfg.model.name
    path = job_path(model, job_id)
    runner = cfg.training.runner
    try:
        storage = Storage(cfg.storage.root)
    except Exception as err:  # noqa: BLE001
        return RetrainResult(job_id, STATUS_FAILED, None, None, None, 0, 0, 0.0, runner,
                             f"storage unavailable: {type(err).__name__}: {err}", time.time(), champion)
    try:
        if storage.exists(path):
            return RetrainResult.from_json(storage.read_json(path))
        reg = Registry(storage, model)
        existing = reg.find_by_job(job_id)
        if existing is not None:
            result = _result_from_version(reg, existing, job_id, champion, time.time())
        else:
            result = _train_and_register(cfg, storage, reg, job_id=job_id, since_t=since_t,
                                         champion=champion, seed=seed, kind=kind, window_rows=window_rows)
    except Exception as err:  # noqa: BLE001 - the controller reads the failure from the file
        log.warning("retrain %s of %s failed: %s\n%s", job_id, model, err, traceback.format_exc())
        result = RetrainResult(job_id, STATUS_FAILED, None, None, None, 0, 0, 0.0, runner,
                               f"{type(err).__name__}: {err}", time.time(), champion)
    _write(storage, path, result)
    return result


def window_config(cfg: Config, kind: str, window_rows: int | None = None) -> Config:
    """The config a job's window is cut with: an incremental ("online") step uses the
    newest ``online_window`` labeled rows, no replay, and a larger holdout. A full
    retrain given ``window_rows`` (a follow-up's grown window, which reaches back over
    rows the champion trained on) uses that many recent rows and holds out the newest
    of them, so the gate compares both versions on rows neither has seen.

        >>> from lifelong_ray.config import load_config
        >>> cfg = load_config("configs/demo.yaml")
        >>> grown = window_config(cfg, "full", window_rows=6000).training
        >>> grown.window_recent, grown.holdout_split
        (6000, 'newest')
        >>> window_config(cfg, "full") is cfg
        True
    """
    if kind != "online":
        return cfg if window_rows is None else \
            cfg.with_overrides(training={"window_recent": window_rows, "holdout_split": "newest"})
    tc = cfg.training
    return cfg.with_overrides(training={"window_recent": tc.online_window, "window_replay": 0,
                                        "min_rows": min(tc.online_batch, tc.online_window),
                                        "holdout_fraction": 0.3})


def _train_and_register(cfg: Config, storage: Storage, reg: Any, *, job_id: str, since_t: float | None,
                        champion: str | None, seed: int, kind: str = "full",
                        window_rows: int | None = None) -> RetrainResult:
    from lifelong_ray.data.window import build_window

    window = build_window(storage, window_config(cfg, kind, window_rows), since_t=since_t, seed=seed)
    return train_and_register(cfg, reg, window, job_id=job_id, champion=champion, seed=seed, kind=kind)


def train_and_register(cfg: Config, reg: Any, window: Any, *, job_id: str, champion: str | None,
                       seed: int, kind: str = "full") -> RetrainResult:
    """Train on ``window`` (``kind="online"``: fine-tune a copy of the champion),
    evaluate candidate and champion on its holdout, register the candidate with
    its lineage. Shared by the live job and the backtest."""
    from lifelong_ray.data.schema import Schema
    from lifelong_ray.training.runner import finetune, train

    schema = Schema(cfg.model)
    if kind == "online":
        if champion is None:
            raise ValueError("an incremental step needs a champion to start from")
        trained = finetune(window, cfg, reg.load(champion), seed)
    else:
        trained = train(window, cfg, seed, name=f"{cfg.model.name}-{job_id}-{int(time.time())}")

    candidate = trained.as_loaded()
    warnings: list[str] = []
    champ_model = None
    if champion is not None:
        try:
            champ_model = reg.load(champion)
        except Exception as err:  # noqa: BLE001 - a broken champion must not block a fix
            warnings.append(f"champion {champion} could not be loaded: {type(err).__name__}: {err}")
            log.warning("retrain %s: %s", job_id, warnings[-1])
    cand_acc, champ_acc = _scores(window.holdout, schema, candidate, champ_model)
    # The forgetting check: both on a holdout of the replay reservoir (past rows, never trained on).
    replay = getattr(window, "replay_holdout", None)
    replay_rows = replay.num_rows if replay is not None else 0
    replay_cand, replay_champ = _scores(replay, schema, candidate, champ_model) if replay_rows else (None, None)
    if window.quarantined_rows:
        warnings.append(f"{window.quarantined_rows} labeled rows quarantined: {window.quarantine_reasons}")

    metadata = {
        "metrics": {"holdout_accuracy": cand_acc, "champion_holdout_accuracy": champ_acc,
                    "replay_accuracy": replay_cand, "champion_replay_accuracy": replay_champ,
                    "train_loss": trained.metrics.get("train_loss")},
        "window": window.summary(),
        "parent": champion,
        "config_hash": cfg.config_hash(),
        "seed": seed,
        "job_id": job_id,
        "runner": trained.runner,
        "kind": kind,
        "train_seconds": trained.train_seconds,
        "cpu_seconds": trained.metrics.get("cpu_seconds"),
        "reference_accuracy": cand_acc,
        "warnings": warnings,
    }
    if "tune" in trained.metrics:  # the trials and the best one's config (lineage)
        metadata["tune"] = trained.metrics["tune"]
    reference = window.reference if window.reference is not None else window.holdout.drop_columns(["t"])
    version = reg.register(state_dict=trained.state_dict, transform=trained.transform, estimator=trained.estimator,
                           n_in=trained.n_in, classes=trained.classes, reference=reference, metadata=metadata)
    return RetrainResult(
        job_id=job_id, status=STATUS_OK, version=version, candidate_accuracy=cand_acc,
        champion_accuracy=champ_acc, holdout_rows=window.holdout_rows, train_rows=window.rows,
        train_seconds=trained.train_seconds, cpu_seconds=trained.metrics.get("cpu_seconds"),
        runner=trained.runner, error=None, finished_at=time.time(),
        champion=champion, warnings=warnings, replay_candidate_accuracy=replay_cand,
        replay_champion_accuracy=replay_champ, replay_rows=replay_rows,
    )


def _scores(table: Any, schema: Any, candidate: Any, champion: Any) -> tuple[float, float | None]:
    """Accuracy of the candidate and (when loaded) the champion on a labeled table."""
    from lifelong_ray.data.transform import columns_from_table
    from lifelong_ray.data.window import LABEL

    cols = columns_from_table(table, schema)
    truth = table.column(LABEL).to_numpy(zero_copy_only=False)
    cand = _accuracy(candidate.predict(cols)[0], truth)
    return cand, (_accuracy(champion.predict(cols)[0], truth) if champion is not None else None)


def _retrain_task_impl(cfg_dict: dict[str, Any], *, job_id: str, since_t: float | None,
                       champion: str | None, seed: int, kind: str = "full",
                       window_rows: int | None = None) -> dict[str, Any]:
    try:
        cfg = parse_config(cfg_dict)
    except Exception as err:  # noqa: BLE001 - nowhere to write: the model name is unknown
        return RetrainResult(job_id, STATUS_FAILED, None, None, None, 0, 0, 0.0, "", f"{type(err).__name__}: {err}",
                             time.time(), champion).to_json()
    return run_retrain(cfg, job_id=job_id, since_t=since_t, champion=champion, seed=seed, kind=kind,
                       window_rows=window_rows).to_json()


_TASK: Any = None


def __getattr__(name: str) -> Any:
    """``retrain_task`` is built on first access, so importing this module needs no Ray."""
    global _TASK
    if name == "retrain_task":
        if _TASK is None:
            import ray

            _TASK = ray.remote(num_cpus=0, max_retries=1)(_retrain_task_impl)
        return _TASK
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
