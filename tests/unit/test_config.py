"""Config: the demo config loads; a bad config fails at load naming the key and the rule."""

from __future__ import annotations

import pytest

from lifelong_ray.config import ConfigError, load_config, parse_config

BASE = {"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}}}


def test_demo_config_loads():
    cfg = load_config("configs/demo.yaml")
    assert cfg.model.name == "demo" and cfg.training.runner == "ray"
    assert cfg.rollout.canary_steps[-1] == 100
    assert len(cfg.config_hash()) == 16


@pytest.mark.parametrize("patch, key, rule", [
    ({"training": {"num_workerz": 2}}, "training.num_workerz", "Extra inputs are not permitted"),
    ({"training": {"num_workers": 0}}, "training.num_workers", "greater than or equal to 1"),
    ({"rollout": {"canary_steps": [10, 50]}}, "rollout.canary_steps", "must end at 100"),
    ({"rollout": {"canary_steps": [50, 10, 100]}}, "rollout.canary_steps", "strictly increasing"),
    ({"estimator": {"kind": "xgboost"}}, "estimator.kind", "'logistic' or 'mlp'"),
    ({"model": {"name": "m", "features": [{"name": "c", "dtype": "category"}],
                "label": {"name": "y", "classes": [0, 1]}}}, "model.features.0", "non-empty 'categories'"),
    ({"model": {"name": "m", "features": [{"name": "x", "min": 3, "max": 1}],
                "label": {"name": "y", "classes": [0, 1]}}}, "model.features.0", "min 3.0 is greater than max 1.0"),
    ({"model": {"name": "m", "features": [{"name": "x"}, {"name": "x"}],
                "label": {"name": "y", "classes": [0, 1]}}}, "model.features", "duplicate feature names"),
    ({"model": {"name": "m", "features": [{"name": "x"}, {"name": "t"}],
                "label": {"name": "y", "classes": [0, 1]}}}, "model.features", "feature names ['t'] are columns"),
    ({"model": {"name": "m", "features": [{"name": "x"}, {"name": "y"}],
                "label": {"name": "y", "classes": [0, 1]}}}, "model", "the label 'y' is also a feature name"),
    ({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [1]}}},
     "model.label.classes", "at least 2"),
])
def test_bad_config_names_key_and_rule(patch, key, rule):
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, **patch})
    msg = str(err.value)
    assert f"{key}:" in msg and rule in msg, msg


def test_config_is_frozen():
    cfg = parse_config(BASE)
    with pytest.raises(Exception):
        cfg.training.seed = 3  # type: ignore[misc]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_column_the_logs_own_is_reserved_from_feature_names():
    from lifelong_ray.config import RESERVED_COLUMNS
    from lifelong_ray.data.logs import FEEDBACK_COLUMNS, LABELED_META, PREDICTION_META

    assert set(PREDICTION_META) | set(FEEDBACK_COLUMNS) | set(LABELED_META) <= set(RESERVED_COLUMNS)
