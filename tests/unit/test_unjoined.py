"""The observer's waiting rows (control/unjoined.py) against a plain dict model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lifelong_ray.control.unjoined import EarlyLabels, Unjoined


def test_chunks_take_expire_and_compact_like_a_dict():
    rng = np.random.default_rng(0)
    u = Unjoined(["t", "prediction", "x"])
    model: dict[str, tuple[float, int, float]] = {}
    n = 0
    for tick in range(200):
        ids = [f"r{n + i}" for i in range(50)]
        n += 50
        t = float(tick) + rng.uniform(-3, 0, size=50)  # a little out of order, across chunks
        pred = rng.integers(0, 2, 50)
        x = rng.normal(size=50)
        u.add(pd.DataFrame({"request_id": ids, "t": t, "prediction": pred, "x": x}))
        model.update({r: (a, int(b), c) for r, a, b, c in zip(ids, t, pred, x)})
        want = list(rng.choice([f"r{i}" for i in range(n)], size=30, replace=False)) + ["nope"]
        got = u.take(want)
        held = [r for r in want if r in model]
        assert got["request_id"].tolist() == held
        for r, a, b, c in zip(got["request_id"], got["t"], got["prediction"], got["x"]):
            assert model.pop(r) == (a, b, c)
        cutoff = tick - 20.0
        gone = [r for r, v in model.items() if v[0] < cutoff]
        assert u.expire(cutoff) == len(gone)
        for r in gone:
            del model[r]
        assert len(u) == len(model) and all(r in u for r in model)
    frame = u.frame()
    assert sorted(frame["request_id"]) == sorted(model)
    again = Unjoined(["t", "prediction", "x"])
    again.load(frame)
    assert sorted(again.take(list(model))["request_id"]) == sorted(model) and len(again) == 0


def test_a_repeated_id_replaces_the_row_held():
    u = Unjoined(["t"])
    u.add(pd.DataFrame({"request_id": ["a", "b"], "t": [1.0, 1.0]}))
    u.add(pd.DataFrame({"request_id": ["a", "a"], "t": [2.0, 3.0]}))
    assert len(u) == 2 and u.take(["a"])["t"].tolist() == [3.0]
    assert u.expire(10.0) == 1 and len(u) == 0


def test_early_labels_keep_the_first_and_expire_by_time():
    e = EarlyLabels()
    e.add("a", 5.0, 1)
    e.add("a", 1.0, 0)  # a second label for the same id is ignored
    e.add("b", 2.0, 0)
    assert e.expire(3.0) == 1 and "b" not in e and e.pop("a") == (5.0, 1)
    for i in range(3000):
        e.add(f"k{i}", 10.0 + i, 1)
        e.pop(f"k{i}")
    assert e.expire(20.0) == 0 and len(e) == 0
    e.load(pd.DataFrame({"request_id": ["z"], "t": [1.0], "label": [1]}))
    assert e.frame().to_dict("list") == {"request_id": ["z"], "t": [1.0], "label": [1]}
