"""The prediction log as the ingress writes it: each answer's rows, durable before the answer.

One place turns an answer (the validated columns, the version that answered, its
predictions and confidences, or the error that stopped it) into the rows of the
prediction log (:meth:`~lifelong_ray.data.logs.ModelLogs.prediction_record`) and
appends them through the writer the ingress uses
(:func:`~lifelong_ray.data.segments.prediction_writer`: the replica's own segment
log on a local root, else one parquet file per lone request). The ingress writes
through it, and so do the benchmarks that measure what logging costs
(``benchmarks/ingest.py``, ``benchmarks/serve_overhead.py``): what they time is the
ingress's code, not a copy of it.

    >>> import asyncio, tempfile
    >>> import numpy as np
    >>> from lifelong_ray.config import Config
    >>> cfg = Config.model_validate({"model": {"name": "m", "features": [
    ...     {"name": "x"}, {"name": "c", "dtype": "category", "categories": ["a", "b"]}],
    ...     "label": {"name": "y", "classes": [0, 1]}},
    ...     "storage": {"root": tempfile.mkdtemp()}})
    >>> answers = AnswerLog.from_config(cfg)
    >>> cols = {"x": np.array([0.5, np.nan]), "c": np.array(["a", None], dtype=object)}
    >>> features = answers.features(cols)
    >>> features
    {'x': [0.5, None], 'c': ['a', None]}
    >>> path, t = asyncio.run(answers.append(request_ids=["r1", "r2"], version="v1", features=features,
    ...                                      labels=[1, 0], confidence=[0.9, 0.6], latency_ms=1.2))
    >>> answers.segmented, path.startswith("models/m/segments/predictions/")
    (True, True)
    >>> answers.close()  # seals the segment into the parquet log
    >>> from lifelong_ray.data.logs import LogTail
    >>> LogTail(answers.logs.storage, answers.logs.predictions_prefix).read_new().column("prediction").to_pylist()
    [1, 0]
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

from lifelong_ray.data.flush import GroupFlusher
from lifelong_ray.data.logs import GroupCommit, ModelLogs, feature_values
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.segments import Sealed, SegmentLog, prediction_writer
from lifelong_ray.storage import Storage

if TYPE_CHECKING:
    from lifelong_ray.config import Config, Durability


class AnswerLog:
    """The prediction log of one model, written one answer at a time (see the module
    docstring). ``prefix`` writes under another log prefix than the model's own
    (benchmarks keep their rows apart); ``on_sealed`` is the segment log's (called with
    the parquet files each seal wrote)."""

    def __init__(self, logs: ModelLogs, schema: Schema, *, segments: bool, seal_s: float, prefix: str | None = None,
                 on_sealed: Callable[[list[Sealed]], None] | None = None, durability: "Durability | None" = None,
                 flush_interval_s: float = 0.1) -> None:
        self.logs = logs
        self.names = list(schema.names)
        self.categorical = {f.name for f in schema.features if f.dtype == "category"}
        self.writer: GroupCommit | SegmentLog = prediction_writer(
            logs, segments=segments, seal_s=seal_s, prefix=prefix, on_sealed=on_sealed, durability=durability,
            flush_interval_s=flush_interval_s)

    @classmethod
    def from_config(cls, cfg: "Config", storage: Storage | None = None, *, prefix: str | None = None,
                    on_sealed: Callable[[list[Sealed]], None] | None = None) -> "AnswerLog":
        """The log as ``cfg`` says (``data.durability.predictions``, ``data.flush_interval_ms``,
        ``data.log_segments``, ``data.log_seal_seconds``, PII hashing), under ``storage``
        (default: the config's root)."""
        logs = ModelLogs.from_config(storage or Storage(cfg.storage.root), cfg)
        return cls(logs, Schema(cfg.model), segments=cfg.data.log_segments, seal_s=cfg.data.log_seal_seconds,
                   prefix=prefix, on_sealed=on_sealed, durability=cfg.data.durability.predictions,
                   flush_interval_s=cfg.data.flush_interval_ms / 1e3)

    @property
    def flusher(self) -> GroupFlusher | None:
        """The group commit of the log (durability ``group``), else None."""
        return self.writer.flusher

    @property
    def segmented(self) -> bool:
        """Whether answers go to this replica's segment (sealed later), not to a file each."""
        return isinstance(self.writer, SegmentLog)

    def features(self, columns: dict[str, Any]) -> dict[str, list[Any]]:
        """The validated feature columns as the log's values (once per request: a
        shadow call logs the same ones)."""
        return feature_values(columns, self.names, self.categorical)

    async def append(self, *, request_ids: Sequence[str], version: str, features: dict[str, list[Any]],
                     labels: Sequence[int] | None, confidence: Sequence[float] | None, latency_ms: float,
                     key: str | None = None, shadow: bool = False, error: str | None = None,
                     alone: bool = True) -> tuple[str, float]:
        """Log the rows of one answer, as durable on return as ``data.durability.predictions``
        says: ``(path, t)`` of the write.

        A failed call has no ``labels``/``confidence`` (logged as -1 and NaN) and an
        ``error``. ``alone``: no other request of this process is in flight, so the
        segment log may sync on the event loop (see
        :meth:`~lifelong_ray.data.segments.SegmentLog.append`)."""
        n = len(request_ids)
        rows = functools.partial(
            self.logs.prediction_record, request_ids=request_ids, version=version, features=features,
            categorical=self.categorical, predictions=labels if labels is not None else [-1] * n,
            confidence=confidence if confidence is not None else [math.nan] * n, latency_ms=latency_ms,
            key=key, shadow=shadow, error=error)
        return await self.writer.append(lambda t: rows(t=t), n, alone=alone)

    def close(self) -> None:
        """Seal what this replica's segment holds and sync what the group commit has
        not yet (a replica shutting down). Never raises."""
        self.writer.close()
