"""The replay reservoir: a bounded, uniform sample of every labeled row ever seen.

A training window is mostly recent rows; a few replayed old rows keep a new
version from forgetting earlier concepts, and the rows of the reservoir that are
not trained on make the **replay holdout** the gate checks forgetting on. Sliding
windows and retention forget the past, so the sample is kept apart: Vitter's
Algorithm R over the labeled log, in log order, with a seeded generator whose
state is saved with the sample. After ``n`` rows each of them is in the
reservoir with probability ``capacity / n``, whatever concept it came from.

Layout: one parquet file, written atomically::

    models/<model>/replay/reservoir.parquet   rows (request_id, t, t_label, label, features)
                                              + footer: rows seen, generator state, log files read

:meth:`ReplayReservoir.update` feeds it the labeled-log files it has not read yet
(a :class:`~lifelong_ray.data.logs.LogTail` whose seen set is saved with it, so
compaction neither re-feeds nor skips rows); rows that break the contract are not
sampled. Retention feeds it before deleting a partition. One writer at a time is
assumed; two concurrent writers leave the state of the last one, a consistent
sample either way.

    >>> import numpy as np
    >>> slots = algorithm_r(n_seen=0, m=5, capacity=3, rng=np.random.default_rng(0))
    >>> slots[:3].tolist()               # the first `capacity` rows fill the slots in order
    [0, 1, 2]
    >>> bool(((slots[3:] >= -1) & (slots[3:] < 3)).all())  # later rows replace a slot or are dropped (-1)
    True
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lifelong_ray.config import ModelSpec
from lifelong_ray.data.logs import LogTail, ModelLogs, table_to_bytes
from lifelong_ray.data.window import VALID, empty_valid, validate_batch
from lifelong_ray.storage import Storage

if TYPE_CHECKING:  # pragma: no cover
    from lifelong_ray.config import Config

STATE_KEY = b"lifelong.replay"
_FORMAT = 1


def replay_path(model: str) -> str:
    return f"models/{model}/replay/reservoir.parquet"


def algorithm_r(n_seen: int, m: int, capacity: int, rng: np.random.Generator) -> np.ndarray:
    """Slots of ``m`` new items after ``n_seen`` (Algorithm R): item ``i`` goes to slot
    ``slots[i]``, replacing what is there, or is dropped when ``slots[i] == -1``."""
    g = n_seen + np.arange(m, dtype=np.int64)   # each item's 0-based position in the stream
    slots = np.where(g < capacity, g, -1)
    full = g >= capacity
    if full.any():
        j = rng.integers(0, g[full] + 1)          # uniform in [0, g]
        slots[full] = np.where(j < capacity, j, -1)
    return slots


class ReplayReservoir:
    """A seeded reservoir of valid labeled rows of one model."""

    def __init__(self, spec: ModelSpec, capacity: int, seed: int) -> None:
        self.spec = spec
        self.capacity = capacity
        self.rows: pa.Table = empty_valid(spec)
        self.n_seen = 0
        self.seen_files: set[str] = set()
        self._rng = np.random.default_rng(seed)

    @classmethod
    def load(cls, storage: Storage, cfg: "Config") -> "ReplayReservoir":
        """The saved reservoir of ``cfg.model`` (an empty one if none was saved)."""
        res = cls(cfg.model, cfg.data.replay_capacity, cfg.training.seed)
        path = replay_path(cfg.model.name)
        if not storage.exists(path):
            return res
        table = pq.read_table(pa.BufferReader(storage.read_bytes(path)))
        state = json.loads(table.schema.metadata[STATE_KEY])
        res.rows = table.replace_schema_metadata(None)
        res.n_seen = int(state["n_seen"])
        res.seen_files = set(state["seen_files"])
        res._rng.bit_generator.state = state["rng"]
        if res.rows.num_rows > res.capacity:  # the capacity was lowered: keep a uniform subset
            keep = np.sort(res._rng.choice(res.rows.num_rows, size=res.capacity, replace=False))
            res.rows = res.rows.take(pa.array(keep))
        return res

    def add(self, valid: pa.Table) -> None:
        """Offer ``valid`` rows (columns of :func:`~lifelong_ray.data.window.empty_valid`), in order."""
        m = valid.num_rows
        if m == 0:
            return
        slots = algorithm_r(self.n_seen, m, self.capacity, self._rng)
        self.n_seen += m
        hit = np.flatnonzero(slots >= 0)
        if not len(hit):
            return
        # the last item sent to a slot wins
        rev_slots, first = np.unique(slots[hit][::-1], return_index=True)
        winners = hit[::-1][first]
        old = self.rows.num_rows
        size = max(old, int(rev_slots.max()) + 1)
        idx = np.arange(size, dtype=np.int64)
        idx[rev_slots] = old + winners
        both = pa.concat_tables([self.rows, valid.select(self.rows.column_names).cast(self.rows.schema)])
        self.rows = both.take(pa.array(idx))

    def update(self, storage: Storage) -> int:
        """Feed the labeled-log rows not read yet; returns how many valid rows were offered."""
        tail = LogTail(storage, ModelLogs(storage, self.spec.name).labeled_prefix, seen=self.seen_files)
        offered = 0
        for table in tail.iter_new_tables():  # one file at a time: the reservoir stays bounded
            checked = validate_batch(table, self.spec)
            good = checked.filter(checked.column(VALID)).select(self.rows.column_names)
            self.add(good)
            offered += good.num_rows
        self.seen_files = tail.seen
        return offered

    def save(self, storage: Storage) -> None:
        state = {"format": _FORMAT, "n_seen": self.n_seen, "capacity": self.capacity,
                 "rng": self._rng.bit_generator.state, "seen_files": sorted(self.seen_files)}
        table = self.rows.replace_schema_metadata({STATE_KEY: json.dumps(state).encode()})
        storage.write_bytes(replay_path(self.spec.name), table_to_bytes(table))


def refresh_reservoir(storage: Storage, cfg: "Config") -> ReplayReservoir:
    """Load, feed with the new labeled rows and (if any came) save the reservoir of ``cfg.model``."""
    res = ReplayReservoir.load(storage, cfg)
    before = set(res.seen_files)
    res.update(storage)
    if res.seen_files != before:
        res.save(storage)
    return res
