"""Write generated streams to disk, with their known drift points beside them.

``lifelong simulate`` is a thin wrapper over :func:`simulate`. The file is
parquet (``.parquet``/``.pq``) or CSV (``.csv``): the feature columns, the label
column ``y`` and an integer ``t`` column holding the sample index, which is
what ``lifelong backtest`` replays and ``lifelong ingest`` accepts. Next to it,
``<file>.drift.json`` records the ground truth::

    {"kind": "abrupt", "generator": "abrupt_concept_drift", "drift_points": [5000],
     "n": 10000, "seed": 0, "noise": 0.03, "label": "y", "time": "t",
     "features": ["x0", ...], "params": {...}, "concept_runs": [[0, 0], [5000, 1]]}

``concept_runs`` lists ``[first row, concept]`` for each run of rows from one
concept (or regime), so :func:`read_stream` restores ``Stream.concept``.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> meta = simulate("prior", d / "prior.csv", n=2000, seed=3)
    >>> meta["kind"], meta["drift_points"], meta["n"], meta["seed"], meta["noise"]
    ('prior', [1000], 2000, 3, 0.03)
    >>> sorted(p.name for p in d.iterdir())
    ['prior.csv', 'prior.csv.drift.json']
    >>> s = read_stream(d / "prior.csv")
    >>> len(s), s.kind, s.drift_points, [int(s.concept[i]) for i in (999, 1000)]
    (2000, 'label_prior_shift', [1000], [0, 1])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lifelong_ray.sim.streams import GENERATOR_KINDS, Stream, make_stream

__all__ = ["DEFAULT_N", "read_sidecar", "read_stream", "sidecar_path", "simulate", "write_stream"]

DEFAULT_N = 10_000
"""Rows ``lifelong simulate`` writes when ``--n`` is not given."""

TIME_COLUMN = "t"
_PARQUET = (".parquet", ".pq")
_CSV = (".csv",)


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _PARQUET:
        return "parquet"
    if suffix in _CSV:
        return "csv"
    raise ValueError(f"cannot tell the format of {str(path)!r}: use a .parquet, .pq or .csv file name")


def sidecar_path(path: str | Path) -> Path:
    """Where the drift sidecar of data file ``path`` lives: ``<path>.drift.json``.

        >>> sidecar_path("runs/s.parquet").name
        's.parquet.drift.json'
    """
    return Path(str(path) + ".drift.json")


def _concept_runs(concept: np.ndarray | None) -> list[list[int]] | None:
    if concept is None or len(concept) == 0:
        return None
    starts = np.concatenate([[0], np.flatnonzero(np.diff(concept)) + 1])
    return [[int(i), int(concept[i])] for i in starts]


def write_stream(stream: Stream, path: str | Path, *, label: str = "y",
                 seed: int | None = None, noise: float | None = None) -> dict[str, Any]:
    """Write ``stream`` to ``path`` (parquet or CSV by suffix) plus its drift sidecar.

    Columns: the features, ``label``, then ``t`` (int64 sample index). ``seed``
    and ``noise`` default to the generator's (``stream.params``). Parent
    folders are created. Returns the sidecar's content.

        >>> import tempfile, pathlib, pyarrow.parquet as pq
        >>> from lifelong_ray.sim.streams import abrupt_concept_drift
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "out" / "s.parquet"
        >>> meta = write_stream(abrupt_concept_drift(500, drift_at=200, seed=1), p)
        >>> meta["kind"], meta["drift_points"], meta["seed"], meta["concept_runs"]
        ('abrupt', [200], 1, [[0, 0], [200, 1]])
        >>> pq.read_table(p).column_names
        ['x0', 'x1', 'x2', 'x3', 'x4', 'segment', 'y', 't']
    """
    path = Path(path)
    fmt = _format(path)
    if label in stream.features or label == TIME_COLUMN:
        raise ValueError(f"label column {label!r} clashes with a feature or the time column")
    table = stream.to_table(label=label)
    table = table.append_column(TIME_COLUMN, pa.array(np.arange(len(stream), dtype=np.int64), type=pa.int64()))
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    meta = {
        "kind": GENERATOR_KINDS.get(stream.kind, stream.kind),
        "generator": stream.kind,
        "drift_points": [int(p) for p in stream.drift_points],
        "n": len(stream),
        "seed": stream.params.get("seed") if seed is None else seed,
        "noise": stream.params.get("noise") if noise is None else noise,
        "label": label,
        "time": TIME_COLUMN,
        "features": stream.feature_names,
        "params": stream.params,
        "concept_runs": _concept_runs(stream.concept),
    }
    sidecar_path(path).write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The drift sidecar of data file ``path``, or ``None`` when there is none."""
    side = sidecar_path(path)
    return json.loads(side.read_text()) if side.exists() else None


def read_stream(path: str | Path, label: str | None = None) -> Stream:
    """Read a file written by :func:`write_stream` back into a :class:`Stream`.

    Drift points, kind and ``concept`` come from the sidecar when there is one
    (otherwise: no drift points, kind ``"recorded"``). ``label`` defaults to
    the sidecar's label column, else ``y``. String columns become categorical
    features, every other column a float feature; ``t`` is dropped.
    """
    path = Path(path)
    table = pq.read_table(path) if _format(path) == "parquet" else pacsv.read_csv(path)
    meta = read_sidecar(path) or {}
    label = label or meta.get("label", "y")
    if label not in table.column_names:
        raise ValueError(f"{str(path)!r} has no label column {label!r}; columns: {table.column_names}")
    time = meta.get("time", TIME_COLUMN)
    if time in table.column_names:
        table = table.sort_by(time)
    features: dict[str, np.ndarray] = {}
    for name in table.column_names:
        if name in (label, time):
            continue
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            features[name] = np.array(col.to_pylist(), dtype=object)
        else:
            features[name] = col.to_numpy().astype(np.float64)
    labels = table.column(label).to_numpy().astype(np.int64)
    concept = None
    if meta.get("concept_runs"):
        runs = meta["concept_runs"]
        concept = np.empty(len(labels), dtype=np.int64)
        for (start, c), (stop, _) in zip(runs, [*runs[1:], [len(labels), None]]):
            concept[start:stop] = c
    return Stream(features=features, labels=labels, drift_points=list(meta.get("drift_points", [])),
                  kind=meta.get("generator", "recorded"), concept=concept, params=meta.get("params", {}))


def simulate(kind: str, out: str | Path, n: int = DEFAULT_N, seed: int = 0,
             noise: float | None = None, **kw: Any) -> dict[str, Any]:
    """Generate a stream with :func:`~lifelong_ray.sim.streams.make_stream` and write it to ``out``.

    ``kw`` are the generator's drift arguments (``drift_at``, ``period``,
    ``width``, ``shift``, ``prior_after``, …); ``None`` values take the
    defaults. Returns the sidecar's content.

        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "sea.parquet"
        >>> simulate("sea", out, n=4000, drift_at=[1000, 3000])["drift_points"]
        [1000, 3000]
    """
    _format(Path(out))  # refuse a bad suffix before generating anything
    return write_stream(make_stream(kind, n, seed=seed, noise=noise, **kw), out)
