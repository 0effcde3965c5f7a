"""AnswerLog: an answer's rows as the ingress logs them, read back by the real LogTail,
through both writers (the segment log and one parquet file per lone request)."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from lifelong_ray.config import Config
from lifelong_ray.data.answers import AnswerLog
from lifelong_ray.data.logs import LogTail
from lifelong_ray.data.segments import SegmentLog


def _cfg(root: str, **data) -> Config:
    return Config.model_validate({
        "model": {"name": "m", "features": [{"name": "x"},
                                            {"name": "c", "dtype": "category", "categories": ["a", "b"]}],
                  "label": {"name": "y", "classes": [0, 1]}},
        "storage": {"root": root}, "data": data})


COLS = {"x": np.array([0.5, np.nan, 2.0]), "c": np.array(["a", None, "b"], dtype=object)}


def _read(answers: AnswerLog, prefix: str | None = None):
    return LogTail(answers.logs.storage, prefix or answers.logs.predictions_prefix).read_new()


@pytest.mark.parametrize("segments", [True, False])
def test_an_answer_is_logged_with_its_features_predictions_and_version(tmp_path, segments):
    answers = AnswerLog.from_config(_cfg(str(tmp_path), log_segments=segments))
    assert answers.segmented is segments
    assert isinstance(answers.writer, SegmentLog) is segments
    path, t = asyncio.run(answers.append(request_ids=["r1", "r2", "r3"], version="v0002",
                                         features=answers.features(COLS), labels=[1, 0, 1],
                                         confidence=[0.9, 0.6, 0.7], latency_ms=3.5, key="user-7"))
    assert ("segments/" in path) is segments
    answers.close()
    table = _read(answers)
    assert table.num_rows == 3
    rows = table.to_pydict()
    assert rows["request_id"] == ["r1", "r2", "r3"]
    assert rows["prediction"] == [1, 0, 1] and rows["confidence"] == [0.9, 0.6, 0.7]
    assert rows["version"] == ["v0002"] * 3 and rows["key"] == ["user-7"] * 3
    assert rows["x"] == [0.5, None, 2.0] and rows["c"] == ["a", None, "b"]  # NaN features are null
    assert rows["t"] == [t] * 3 and rows["shadow"] == [False] * 3 and rows["error"] == [None] * 3


def test_a_failed_call_is_logged_with_its_error_and_no_predictions(tmp_path):
    answers = AnswerLog.from_config(_cfg(str(tmp_path)))
    asyncio.run(answers.append(request_ids=["r1", "r2"], version="v0003", features=answers.features(
        {k: v[:2] for k, v in COLS.items()}), labels=None, confidence=None, latency_ms=9.0,
        error="version v0003 timed out", shadow=True))
    answers.close()
    rows = _read(answers).to_pydict()
    assert rows["prediction"] == [-1, -1]
    assert all(math.isnan(c) for c in rows["confidence"])  # NaN, not null: no confidence was given
    assert rows["error"] == ["version v0003 timed out"] * 2 and rows["shadow"] == [True, True]


def test_a_prefix_of_its_own_keeps_the_rows_out_of_the_models_log(tmp_path):
    answers = AnswerLog.from_config(_cfg(str(tmp_path)), prefix="models/m-bench/predictions")
    asyncio.run(answers.append(request_ids=["r1"], version="v1", features=answers.features(
        {k: v[:1] for k, v in COLS.items()}), labels=[1], confidence=[0.8], latency_ms=1.0))
    answers.close()
    assert _read(answers) is None
    assert _read(answers, "models/m-bench/predictions").num_rows == 1


def test_the_config_s_pii_fields_hash_the_routing_key(tmp_path, monkeypatch):
    monkeypatch.setenv("LIFELONG_PII_SALT", "pepper")
    answers = AnswerLog.from_config(_cfg(str(tmp_path), pii_fields=["key"]))
    asyncio.run(answers.append(request_ids=["r1"], version="v1", features=answers.features(
        {k: v[:1] for k, v in COLS.items()}), labels=[1], confidence=[0.8], latency_ms=1.0, key="alice@example.com"))
    answers.close()
    (key,) = _read(answers).column("key").to_pylist()
    assert key and "alice" not in key
