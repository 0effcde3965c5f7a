"""training.tune: config parsing, validation messages, and translation to Ray Tune domains."""

from __future__ import annotations

import numpy as np
import pytest
from ray import tune
from ray.tune.search.sample import Categorical, Float, Integer, Quantized

from lifelong_ray.config import ConfigError, EstimatorConfig, TuneConfig, load_config, parse_config
from lifelong_ray.training.tune import search_space, split_validation, trial_estimator

BASE = {"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}}}


def _cfg(tune_section: dict):
    return parse_config({**BASE, "training": {"tune": tune_section}})


def test_defaults_are_off_and_the_demo_config_still_loads():
    assert parse_config(BASE).training.tune.enabled is False
    assert load_config("configs/demo.yaml").training.tune == TuneConfig()


def test_a_full_search_space_parses_and_translates():
    cfg = _cfg({"enabled": True, "num_samples": 6, "time_budget_s": 60, "metric": "val_loss",
                "search_space": {
                    "lr": {"dist": "loguniform", "low": 1e-4, "high": 0.1},
                    "hidden": {"dist": "choice", "values": [[8], [32, 16]]},
                    "epochs": {"dist": "randint", "low": 5, "high": 30},
                    "weight_decay": {"dist": "quniform", "low": 0.0, "high": 0.01, "q": 0.001},
                    "batch_size": {"dist": "grid", "values": [32, 128]}}})
    tc = cfg.training.tune
    assert (tc.num_samples, tc.time_budget_s, tc.metric, tc.mode) == (6, 60.0, "val_loss", "min")
    space = search_space(tc)
    assert isinstance(space["lr"], Float) and (space["lr"].lower, space["lr"].upper) == (1e-4, 0.1)
    assert isinstance(space["lr"].get_sampler(), Float._LogUniform)
    assert isinstance(space["hidden"], Categorical) and space["hidden"].categories == [[8], [32, 16]]
    assert isinstance(space["epochs"], Integer) and (space["epochs"].lower, space["epochs"].upper) == (5, 30)
    assert isinstance(space["weight_decay"].get_sampler(), Quantized) and space["weight_decay"].get_sampler().q == 0.001
    assert space["batch_size"] == tune.grid_search([32, 128])
    # every sampled point is a valid estimator config
    for _ in range(20):
        point = {k: v.sample() for k, v in space.items() if k != "batch_size"}
        est = trial_estimator(EstimatorConfig(), point)
        assert 1e-4 <= est.lr <= 0.1 and 5 <= est.epochs < 30 and est.hidden in ([8], [32, 16])


@pytest.mark.parametrize("section, message", [
    ({"enabled": True}, "needs a non-empty search_space"),
    ({"search_space": {"momentum": {"dist": "uniform", "low": 0, "high": 1}}}, "not a tunable estimator field"),
    ({"search_space": {"lr": {"dist": "loguniform", "low": 0.0, "high": 1}}}, "needs low > 0"),
    ({"search_space": {"lr": {"dist": "uniform", "low": 0.5, "high": 0.1}}}, "must be below high"),
    ({"search_space": {"lr": {"dist": "choice", "values": []}}}, "non-empty 'values'"),
    ({"search_space": {"lr": {"dist": "uniform", "values": [1]}}}, "takes 'low' and 'high'"),
    ({"search_space": {"lr": {"dist": "uniform", "low": 0.1, "high": 1, "q": 0.1}}}, "'q' is required by"),
    ({"search_space": {"epochs": {"dist": "uniform", "low": 1, "high": 9}}}, "is an integer"),
    ({"search_space": {"hidden": {"dist": "choice", "values": [32]}}}, "search_space.hidden: value 32"),
    ({"search_space": {"lr": {"dist": "uniform", "low": -1, "high": 1}}}, "search_space.lr: value -1"),
    ({"metric": "auc"}, "training.tune.metric"),
    ({"num_samples": 0}, "training.tune.num_samples"),
    ({"search_space": {"lr": {"dist": "gaussian", "low": 0, "high": 1}}}, "training.tune.search_space.lr.dist"),
])
def test_bad_sections_name_the_key_and_the_rule(section, message):
    with pytest.raises(ConfigError) as err:
        _cfg(section)
    assert message in str(err.value)


def test_validation_split_is_seeded_disjoint_and_complete():
    tr, va = split_validation(101, 0.2, seed=3)
    tr2, va2 = split_validation(101, 0.2, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert len(va) == 20 and not set(tr) & set(va) and len(tr) + len(va) == 101
    assert not np.array_equal(va, split_validation(101, 0.2, seed=4)[1])
    with pytest.raises(ValueError, match="at least 2"):
        split_validation(1, 0.2, seed=0)
