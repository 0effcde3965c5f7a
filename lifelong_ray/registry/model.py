"""A model version loaded from the registry, ready to predict on raw columns.

It holds the transform saved with the version, so serving applies exactly the
preprocessing used in training (rule 6).

    >>> import numpy as np, torch
    >>> from lifelong_ray.config import EstimatorConfig, FeatureSpec, LabelSpec, ModelSpec
    >>> from lifelong_ray.data.schema import Schema
    >>> from lifelong_ray.data.transform import FeatureTransform
    >>> from lifelong_ray.training.estimators import build_module
    >>> schema = Schema(ModelSpec(name="m", features=[FeatureSpec(name="x")],
    ...                           label=LabelSpec(name="y", classes=[3, 7])))
    >>> cols = {"x": np.array([-1.0, 1.0])}
    >>> module = build_module(EstimatorConfig(kind="logistic"), 1, 2)
    >>> with torch.no_grad():
    ...     _ = module[0].weight.copy_(torch.tensor([[-5.0], [5.0]]))
    ...     _ = module[0].bias.zero_()
    >>> m = LoadedModel("v0001", FeatureTransform.fit(cols, schema), module, [3, 7], {})
    >>> labels, conf = m.predict(cols)
    >>> labels.tolist(), bool((conf > 0.99).all())
    ([3, 7], True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lifelong_ray.data.transform import FeatureTransform
from lifelong_ray.training.estimators import predict_proba


@dataclass
class LoadedModel:
    version: str
    transform: FeatureTransform
    module: torch.nn.Module
    classes: list[int]
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities ``[n, len(classes)]`` in the order of :attr:`classes`."""
        return predict_proba(self.module, self.transform.apply(columns))

    def predict(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(class labels int64, confidence float64 = the top probability)."""
        probs = self.predict_proba(columns)
        idx = probs.argmax(axis=1)
        labels = np.asarray(self.classes, dtype=np.int64)[idx]
        return labels, probs.max(axis=1, initial=0.0).astype(np.float64)
