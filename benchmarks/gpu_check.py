"""GPU check: train one version with ``training.use_gpu: true`` through Ray Train, on a GPU machine.

    python benchmarks/gpu_check.py [--rows 20000] [--epochs 20] [--cpu-too] [--json out.json]

Writes a synthetic labeled log (a non-linear 8-feature problem) into a temporary storage
root, builds the training window with Ray Data and trains it with the real runner
(:func:`lifelong_ray.training.runner.train`: ``TorchTrainer`` with
``ScalingConfig(use_gpu=True)``; the loop moves the model with ``prepare_model`` and the
batches to ``ray.train.torch.get_device()``). Prints the device the worker trained on (as
the train loop reports it), the holdout accuracy and the training seconds; ``--cpu-too``
trains the same window on CPU for comparison. Joins ``RAY_ADDRESS`` if set, else starts a
local Ray with the GPUs torch sees.

Exit status: 0 trained on ``cuda``; 2 no usable GPU here (a CPU-only torch build, no CUDA
device, or a Ray cluster without GPU resources), with a message saying which; 1 the
training failed or did not run on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

NO_GPU = 2


def gpu_problem() -> str | None:
    """Why this machine cannot run the GPU path (None when it can)."""
    import torch

    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None): install a CUDA "
                f"build of torch==2.13.0 to use training.use_gpu")
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return "no CUDA device is visible (torch.cuda.is_available() is False): run this on a GPU machine"
    return None


def write_log(root: str, model: str, rows: int, seed: int) -> None:
    """A labeled log of a non-linear problem: y = [sin(x0) + x1*x2 - 0.5*x3^2 + noise > 0]."""
    from lifelong_ray.data.logs import ModelLogs
    from lifelong_ray.storage import Storage

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8))
    y = (np.sin(x[:, 0]) + x[:, 1] * x[:, 2] - 0.5 * x[:, 3] ** 2 + 0.3 + 0.1 * rng.normal(size=rows) > 0)
    t = 1.7e9 + np.arange(rows, dtype=float)
    cols = {"request_id": [f"g{i}" for i in range(rows)], "t": t, "t_label": t + 1,
            "version": pa.nulls(rows, pa.string()), "prediction": pa.nulls(rows, pa.int64()),
            "label": y.astype(np.int64)}
    cols.update({f"x{i}": x[:, i] for i in range(8)})
    ModelLogs(Storage(root), model).append_labeled(pa.table(cols), t=float(t[-1]))


def config(root: str, rows: int, epochs: int, use_gpu: bool):
    from lifelong_ray.config import parse_config

    return parse_config({
        "model": {"name": "gpucheck", "features": [{"name": f"x{i}"} for i in range(8)],
                  "label": {"name": "y", "classes": [0, 1]}},
        "estimator": {"kind": "mlp", "hidden": [128, 64], "epochs": epochs, "batch_size": 256, "lr": 0.003},
        "training": {"runner": "ray", "num_workers": 1, "cpus_per_worker": 1, "use_gpu": use_gpu,
                     "window_recent": rows, "window_replay": 0, "min_rows": 100, "holdout_fraction": 0.2},
        "storage": {"root": root},
    })


def train_once(root: str, rows: int, epochs: int, use_gpu: bool, seed: int) -> dict:
    from lifelong_ray.data.schema import Schema
    from lifelong_ray.data.transform import columns_from_table
    from lifelong_ray.data.window import LABEL, build_window
    from lifelong_ray.storage import Storage
    from lifelong_ray.training.runner import train

    cfg = config(root, rows, epochs, use_gpu)
    window = build_window(Storage(root), cfg, since_t=None, seed=seed)
    trained = train(window, cfg, seed, name=f"gpucheck-{'gpu' if use_gpu else 'cpu'}-{int(time.time())}")
    truth = window.holdout.column(LABEL).to_numpy(zero_copy_only=False)
    pred = trained.predict(columns_from_table(window.holdout, Schema(cfg.model)))
    return {"use_gpu": use_gpu, "device": trained.metrics.get("device"),
            "holdout_accuracy": float(np.mean(pred == truth)), "train_seconds": round(trained.train_seconds, 2),
            "rows": trained.metrics.get("rows"), "epochs": epochs, "final_loss": trained.metrics.get("train_loss")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-too", action="store_true", help="also train the same window on CPU")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    if args.rows < 500 or args.epochs < 1:
        print("gpu_check: --rows must be >= 500 and --epochs >= 1", file=sys.stderr)
        return NO_GPU
    problem = gpu_problem()
    if problem and not os.environ.get("RAY_ADDRESS"):
        print(f"gpu_check: no GPU: {problem}", file=sys.stderr)
        return NO_GPU

    import ray
    import torch

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, configure_logging=False)
    else:
        # a local instance of its own: with no address, ray.init() would join a local head left
        # up (`lifelong up`, `ray start`) and refuse num_gpus
        ray.init(address="local", num_gpus=torch.cuda.device_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < 1:
            print(f"gpu_check: no GPU: the Ray cluster has no GPU resources ({ray.cluster_resources()})",
                  file=sys.stderr)
            return NO_GPU
        root = tempfile.mkdtemp(prefix="lifelong-gpucheck-")
        write_log(root, "gpucheck", args.rows, args.seed)
        results = {"torch": torch.__version__, "cuda": torch.version.cuda, "ray": ray.__version__,
                   "cluster_gpus": gpus,
                   "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                   "runs": [train_once(root, args.rows, args.epochs, True, args.seed)]}
        if args.cpu_too:
            results["runs"].append(train_once(root, args.rows, args.epochs, False, args.seed))
    finally:
        ray.shutdown()
    for r in results["runs"]:
        print(f"use_gpu={r['use_gpu']!s:<5} device={r['device']:<8} holdout_accuracy={r['holdout_accuracy']:.4f} "
              f"train_seconds={r['train_seconds']:.1f} rows={r['rows']} epochs={r['epochs']}")
    print(json.dumps(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    gpu_run = results["runs"][0]
    if not str(gpu_run["device"]).startswith("cuda"):
        print(f"gpu_check: use_gpu=true trained on {gpu_run['device']!r}, not on a GPU", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
