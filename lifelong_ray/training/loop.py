"""The torch optimisation of the built-in estimators, in Ray Train or in-process.

One step function (:func:`_run_epoch`) does the work for both:

* :func:`train_loop_per_worker` — the ``TorchTrainer`` function: reads the ``train``
  dataset shard (columns ``x``: float32 ``[n_in]`` tensor, ``y``: int64 class index),
  trains with AdamW + cross-entropy for ``estimator.epochs`` epochs, logs the loss
  of each epoch, and at the end reports the per-epoch ``losses`` with the weights as
  a checkpoint from rank 0 (``model.safetensors``: never pickle).
* :func:`fit_numpy` — the same optimisation on in-memory arrays (the local runner,
  backtests, tests)::

    >>> import numpy as np
    >>> from lifelong_ray.config import EstimatorConfig
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(400, 2)).astype(np.float32)
    >>> y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    >>> state, info = fit_numpy(x, y, EstimatorConfig(kind="logistic", epochs=20), 2, seed=0)
    >>> sorted(state), info["epochs"], info["losses"][-1] < info["losses"][0]
    (['0.bias', '0.weight'], 20, True)
    >>> w = state["0.weight"].numpy()
    >>> bool(((x @ w.T + state["0.bias"].numpy()).argmax(1) == y).mean() > 0.95)
    True
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lifelong_ray.config import EstimatorConfig
from lifelong_ray.training.estimators import build_module

log = logging.getLogger(__name__)

#: File name of the weights inside a Ray Train checkpoint directory.
WEIGHTS_FILE = "model.safetensors"
#: Training sets up to this many rows are held in worker memory after the first read.
CACHE_ROWS = 200_000
#: Largest local shuffle buffer used when streaming a shard (rows).
SHUFFLE_BUFFER = 2048


def make_model(est: EstimatorConfig, n_in: int, n_classes: int, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A freshly initialised module (seeded) and its optimiser."""
    torch.manual_seed(seed)
    module = build_module(est, n_in, n_classes)
    return module, make_optimizer(module, est)


def make_optimizer(module: nn.Module, est: EstimatorConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(module.parameters(), lr=est.lr, weight_decay=est.weight_decay)


def _run_epoch(module: nn.Module, optimizer: torch.optim.Optimizer,
               batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int]:
    """One pass of minibatch steps; returns (summed loss, rows seen)."""
    module.train()
    total, seen = 0.0, 0
    for xb, yb in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(module(xb), yb)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(yb)
        seen += len(yb)
    return total, seen


def _shuffled_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
                      gen: torch.Generator) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of in-memory tensors in a fresh random order."""
    for idx in torch.randperm(len(y), generator=gen).to(x.device).split(batch_size):
        yield x[idx], y[idx]


def plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached weights of ``module`` (DDP wrapper removed)."""
    inner = module.module if hasattr(module, "module") and isinstance(module.module, nn.Module) else module
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in inner.state_dict().items()}


# ---------------------------------------------------------------------------
# in-process
# ---------------------------------------------------------------------------
def fit_numpy(x: np.ndarray, y: np.ndarray, est: EstimatorConfig, n_classes: int,
              seed: int, init_state: dict[str, torch.Tensor] | None = None, threads: int | None = None,
              ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train on arrays in this process: ``x`` float ``[n, n_in]``, ``y`` class indices
    in ``[0, n_classes)``; start from ``init_state`` (an incremental step) if given.
    ``threads`` caps torch's intra-op pool for the fit (then restores it): the small
    models here train several times faster on one thread than on an oversubscribed pool.
    Returns the state dict and ``{"train_loss", "losses", "epochs", "rows", "seconds"}``."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    try:
        return _fit(x, y, est, n_classes, seed, init_state)
    finally:
        torch.set_num_threads(before)


def _fit(x: np.ndarray, y: np.ndarray, est: EstimatorConfig, n_classes: int, seed: int,
         init_state: dict[str, torch.Tensor] | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    x_t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    y_t = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if x_t.ndim != 2 or len(x_t) != len(y_t) or len(y_t) == 0:
        raise ValueError(f"need x [n, n_in] and y [n] with n > 0, got {tuple(x_t.shape)} and {tuple(y_t.shape)}")
    if int(y_t.min()) < 0 or int(y_t.max()) >= n_classes:
        raise ValueError(f"class indices must lie in [0, {n_classes}), got [{int(y_t.min())}, {int(y_t.max())}]")
    start = time.perf_counter()
    module, optimizer = make_model(est, x_t.shape[1], n_classes, seed)
    if init_state is not None:
        module.load_state_dict(init_state, strict=True)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    for _ in range(est.epochs):
        total, seen = _run_epoch(module, optimizer, _shuffled_batches(x_t, y_t, est.batch_size, gen))
        losses.append(total / seen)
    return plain_state_dict(module), {"train_loss": losses[-1], "losses": losses, "epochs": est.epochs,
                                      "rows": len(y_t), "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------
# Ray Train
# ---------------------------------------------------------------------------
def loop_config(est: EstimatorConfig, n_in: int, n_classes: int, seed: int, rows: int,
                report_every: int = 0) -> dict[str, Any]:
    """The ``train_loop_config`` that :func:`train_loop_per_worker` expects.

    ``report_every`` > 0 also calls ``ray.train.report`` every that many epochs; by
    default only the last epoch reports (with the whole per-epoch ``losses`` curve and
    the checkpoint): each report is a barrier through the Ray Train controller, which
    costs up to its health-check interval (2 s by default) per call.
    """
    return {"estimator": est.model_dump(mode="json"), "n_in": int(n_in), "n_classes": int(n_classes),
            "seed": int(seed), "rows": int(rows), "report_every": int(report_every)}


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)  # NCCL needs CUDA tensors
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """``TorchTrainer`` entry point; ``config`` comes from :func:`loop_config`."""
    import ray.train
    import ray.train.torch
    from safetensors.torch import save_file

    est = EstimatorConfig.model_validate(config["estimator"])
    seed = int(config["seed"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    # each rank seeded differently; DDP broadcasts rank 0's initial weights
    module, _ = make_model(est, int(config["n_in"]), int(config["n_classes"]), seed + rank)
    module = ray.train.torch.prepare_model(module)
    device = ray.train.torch.get_device()
    optimizer = make_optimizer(module, est)
    shard = ray.train.get_dataset_shard("train")
    report_every = int(config.get("report_every", 0))
    buffer = max(est.batch_size, min(SHUFFLE_BUFFER, int(config.get("rows", SHUFFLE_BUFFER))))
    # A small shard (the usual retrain window) is read from Ray Data once and then
    # reshuffled in memory each epoch, exactly like fit_numpy; a big one streams
    # through Ray Data every epoch with a local shuffle buffer.
    cached: tuple[torch.Tensor, torch.Tensor] | None = None
    gen = torch.Generator().manual_seed(seed * 100_003 + rank)
    losses: list[float] = []
    for epoch in range(est.epochs):
        if cached is not None:
            batches = _shuffled_batches(*cached, est.batch_size, gen)
        elif int(config.get("rows", 0)) <= int(config.get("cache_rows", CACHE_ROWS)):
            xs, ys = [], []
            for b in shard.iter_torch_batches(batch_size=4096, dtypes={"x": torch.float32, "y": torch.int64},
                                              device=device):
                xs.append(b["x"])
                ys.append(b["y"])
            cached = (torch.cat(xs), torch.cat(ys))
            batches = _shuffled_batches(*cached, est.batch_size, gen)
        else:
            batches = (
                (b["x"], b["y"])
                for b in shard.iter_torch_batches(
                    batch_size=est.batch_size, dtypes={"x": torch.float32, "y": torch.int64}, device=device,
                    local_shuffle_buffer_size=buffer,
                    local_shuffle_seed=seed * 100_003 + epoch * 101 + rank)
            )
        total, seen = _all_reduce_sum(list(_run_epoch(module, optimizer, batches)), device)
        losses.append(total / max(seen, 1))
        metrics = {"epoch": epoch + 1, "loss": losses[-1], "rows": int(seen)}
        log.info("epoch %d/%d loss %.4f (%d rows, rank %d)", epoch + 1, est.epochs, losses[-1], seen, rank)
        if epoch + 1 < est.epochs:
            if report_every and (epoch + 1) % report_every == 0:
                ray.train.report(metrics)
            continue
        # the last report carries the loss curve and the weights (rank 0; every rank reports)
        metrics["losses"] = losses
        metrics["device"] = str(device)  # cuda:N with training.use_gpu, else cpu
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_file(plain_state_dict(module), os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
