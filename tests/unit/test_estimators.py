"""Built-in torch estimators: shapes and probabilities."""

import numpy as np
import pytest
import torch

from lifelong_ray.config import EstimatorConfig
from lifelong_ray.training.estimators import build_module, predict_proba


def test_logistic_is_one_linear():
    m = build_module(EstimatorConfig(kind="logistic"), n_in=5, n_classes=3)
    linears = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 5 and linears[0].out_features == 3
    assert m(torch.zeros(4, 5)).shape == (4, 3)


def test_mlp_layers():
    m = build_module(EstimatorConfig(kind="mlp", hidden=[16, 8]), n_in=4, n_classes=2)
    kinds = [type(l).__name__ for l in m]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [(l.in_features, l.out_features) for l in m if isinstance(l, torch.nn.Linear)] == [(4, 16), (16, 8), (8, 2)]
    assert m(torch.zeros(7, 4)).shape == (7, 2)


def test_mlp_without_hidden_layers_is_linear():
    m = build_module(EstimatorConfig(kind="mlp", hidden=[]), n_in=3, n_classes=2)
    assert len(m) == 1


def test_same_architecture_same_state_dict_keys():
    est = EstimatorConfig(kind="mlp", hidden=[8])
    a, b = build_module(est, 3, 2), build_module(est, 3, 2)
    b.load_state_dict(a.state_dict(), strict=True)


def test_bad_sizes():
    with pytest.raises(ValueError):
        build_module(EstimatorConfig(), n_in=0, n_classes=2)
    with pytest.raises(ValueError):
        build_module(EstimatorConfig(), n_in=3, n_classes=1)


def test_predict_proba():
    torch.manual_seed(0)
    m = build_module(EstimatorConfig(kind="mlp", hidden=[8]), 3, 4)
    m.train()
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    p = predict_proba(m, x)
    assert p.shape == (10, 4) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert (p >= 0).all()
    assert m.training  # mode restored
    np.testing.assert_array_equal(predict_proba(m, x), p)  # deterministic
    assert predict_proba(m, np.zeros((0, 3), dtype=np.float32)).shape == (0, 4)
