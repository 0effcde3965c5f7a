"""Built-in torch estimators: the module architecture and batch prediction.

The registry rebuilds a version's module from its :class:`EstimatorConfig` with
:func:`build_module` and loads the saved weights into it, so the architecture
here must stay a pure function of ``(est, n_in, n_classes)``; both kinds are an
``nn.Sequential`` so their state-dict keys are stable (``0.weight``, ...).

    >>> import numpy as np, torch
    >>> from lifelong_ray.config import EstimatorConfig
    >>> _ = torch.manual_seed(0)
    >>> m = build_module(EstimatorConfig(kind="mlp", hidden=[8]), n_in=3, n_classes=2)
    >>> m
    Sequential(
      (0): Linear(in_features=3, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=2, bias=True)
    )
    >>> p = predict_proba(m, np.zeros((4, 3), dtype=np.float32))
    >>> p.shape, bool(np.allclose(p.sum(axis=1), 1.0))
    ((4, 2), True)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lifelong_ray.config import EstimatorConfig


def build_module(est: EstimatorConfig, n_in: int, n_classes: int) -> nn.Module:
    """``logistic``: one Linear; ``mlp``: Linear+ReLU per hidden size, then Linear.

    The output is ``n_classes`` logits (softmax, also for two classes).
    """
    if n_in < 1 or n_classes < 2:
        raise ValueError(f"need n_in >= 1 and n_classes >= 2, got {n_in}, {n_classes}")
    if est.kind == "logistic":
        return nn.Sequential(nn.Linear(n_in, n_classes))
    if est.kind == "mlp":
        layers: list[nn.Module] = []
        width = n_in
        for h in est.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)
    raise ValueError(f"unknown estimator kind {est.kind!r}")


def predict_proba(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """Class probabilities ``[n, n_classes]`` (float64), computed without grad in
    eval mode on the module's device; the module's train/eval mode is restored."""
    try:
        device = next(module.parameters()).device
    except StopIteration:  # pragma: no cover - every built-in module has parameters
        device = torch.device("cpu")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            t = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
            probs = torch.softmax(module(t), dim=-1)
        return probs.cpu().numpy().astype(np.float64)
    finally:
        module.train(was_training)
