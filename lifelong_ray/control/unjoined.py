"""What the observer holds while it waits for a label: amortized O(new rows) per tick.

:class:`Unjoined` keeps the predictions still waiting for their label as chunks (one
per batch of rows read, so roughly time-ordered), each a set of numpy columns with an
``alive`` mask, plus an id -> (chunk, row) map. A tick appends its new rows as a chunk,
looks up only the labels that came in, takes the matched rows from the chunks they live
in, drops a chunk once it is fully joined or expired, and compacts a chunk only when
most of its rows are gone. Expiry pops chunks off a heap ordered by their oldest row, so
a tick touches only the chunks that cross the cutoff.

:class:`EarlyLabels` keeps the labels that came before (or without) their prediction:
an id -> (t, label) map and a heap by time for expiry.

    >>> import pandas as pd
    >>> u = Unjoined(["t", "prediction"])
    >>> u.add(pd.DataFrame({"request_id": ["a", "b", "c"], "t": [1.0, 1.0, 2.0], "prediction": [0, 1, 1]}))
    >>> u.take(["c", "a", "zz"])["request_id"].tolist()
    ['c', 'a']
    >>> len(u), u.expire(cutoff=5.0), len(u)
    (1, 1, 0)
    >>> e = EarlyLabels()
    >>> e.add("x", 3.0, 1)
    >>> e.pop("x"), e.expire(cutoff=10.0)
    ((3.0, 1), 0)
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

import numpy as np
import pandas as pd

#: rows per chunk when a whole frame (a checkpoint) is loaded at once
_RESTORE_CHUNK_ROWS = 2_000


class _Chunk:
    __slots__ = ("ids", "cols", "t", "alive", "n_alive")

    def __init__(self, ids: np.ndarray, cols: dict[str, np.ndarray]) -> None:
        self.ids = ids
        self.cols = cols
        self.t = cols["t"].astype(float)
        self.alive = np.ones(len(ids), dtype=bool)
        self.n_alive = len(ids)


class Unjoined:
    """Predictions waiting for a label: ``columns`` (``t`` among them) by ``request_id``."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = list(columns)
        self._chunks: dict[int, _Chunk] = {}
        self._where: dict[str, tuple[int, int]] = {}
        self._heap: list[tuple[float, int]] = []  # (oldest alive t, chunk) for expiry
        self._seq = 0

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._where

    def add(self, df: pd.DataFrame) -> None:
        """Append rows (a ``request_id`` column and :attr:`columns`); a repeated id replaces the
        row held for it."""
        if df.empty:
            return
        if df["request_id"].duplicated().any():
            df = df.drop_duplicates("request_id", keep="last")
        ids = df["request_id"].to_numpy(dtype=object)
        self.discard(ids)
        chunk = _Chunk(ids, {c: df[c].to_numpy() for c in self.columns})
        seq = self._seq
        self._seq += 1
        self._chunks[seq] = chunk
        self._where.update(zip(ids.tolist(), ((seq, i) for i in range(len(ids)))))
        heapq.heappush(self._heap, (float(chunk.t.min()), seq))

    def discard(self, ids: Iterable[object]) -> None:
        """Forget these ids (those held), without gathering their rows."""
        self._remove(ids, gather=False)

    def take(self, ids: Iterable[object]) -> pd.DataFrame:
        """Remove and return the rows of those ``ids`` that are held, in the order given."""
        return self._remove(ids, gather=True)

    def _remove(self, ids: Iterable[object], gather: bool) -> pd.DataFrame | None:
        where = self._where
        found = [w for w in (where.pop(r, None) for r in ids) if w is not None]
        if not found:
            return self._empty() if gather else None
        seqs = np.fromiter((w[0] for w in found), dtype=np.int64, count=len(found))
        rows = np.fromiter((w[1] for w in found), dtype=np.int64, count=len(found))
        order = np.argsort(seqs, kind="stable")
        seqs, rows = seqs[order], rows[order]
        bounds = np.flatnonzero(np.diff(seqs)) + 1
        parts: dict[str, list[np.ndarray]] = {c: [] for c in ["request_id", *self.columns]} if gather else {}
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(seqs)]):
            seq = int(seqs[lo])
            chunk = self._chunks[seq]
            r = rows[lo:hi]
            if gather:
                parts["request_id"].append(chunk.ids[r])
                for c in self.columns:
                    parts[c].append(chunk.cols[c][r])
            chunk.alive[r] = False
            chunk.n_alive -= len(r)
            self._settle(seq, chunk)
        if not gather:
            return None
        out = pd.DataFrame({c: np.concatenate(v) for c, v in parts.items()})
        return out.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)

    def _settle(self, seq: int, chunk: _Chunk) -> None:
        """Drop an empty chunk; compact one that is mostly garbage."""
        if chunk.n_alive == 0:
            del self._chunks[seq]
        elif chunk.n_alive * 4 < len(chunk.ids):
            keep = chunk.alive
            chunk.ids = chunk.ids[keep]
            chunk.cols = {c: v[keep] for c, v in chunk.cols.items()}
            chunk.t = chunk.t[keep]
            chunk.alive = np.ones(len(chunk.ids), dtype=bool)
            self._where.update(zip(chunk.ids.tolist(), ((seq, i) for i in range(len(chunk.ids)))))

    def expire(self, cutoff: float) -> int:
        """Forget the rows predicted before ``cutoff``; returns how many."""
        n = 0
        heap = self._heap
        while heap and heap[0][0] < cutoff:
            _, seq = heapq.heappop(heap)
            chunk = self._chunks.get(seq)
            if chunk is None:
                continue
            old = chunk.alive & (chunk.t < cutoff)
            k = int(old.sum())
            if k:
                for rid in chunk.ids[old].tolist():
                    del self._where[rid]
                chunk.alive &= ~old
                chunk.n_alive -= k
                n += k
            self._settle(seq, chunk)
            if seq in self._chunks:
                heapq.heappush(heap, (float(chunk.t[chunk.alive].min()), seq))
        return n

    def frame(self) -> pd.DataFrame:
        """Every row held (``request_id`` and :attr:`columns`), in chunk order (for the checkpoint)."""
        chunks = list(self._chunks.values())
        if not chunks:
            return self._empty()
        cols = {"request_id": np.concatenate([c.ids[c.alive] for c in chunks])}
        for name in self.columns:
            cols[name] = np.concatenate([c.cols[name][c.alive] for c in chunks])
        return pd.DataFrame(cols)

    def load(self, df: pd.DataFrame) -> None:
        """Add a whole frame (a checkpoint's), in chunks of rows close in time."""
        df = df.sort_values("t", kind="stable")
        for lo in range(0, len(df), _RESTORE_CHUNK_ROWS):
            self.add(df.iloc[lo:lo + _RESTORE_CHUNK_ROWS])

    def _empty(self) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series(dtype=object if c != "t" else float) for c in ["request_id", *self.columns]})


class EarlyLabels:
    """Labels waiting for their prediction: id -> (t, label), expired by ``t``."""

    def __init__(self) -> None:
        self._by_id: dict[str, tuple[float, int]] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._by_id

    def add(self, request_id: str, t: float, label: int) -> None:
        """Keep the first label of an id (a later one for the same id is ignored)."""
        if request_id in self._by_id:
            return
        self._by_id[request_id] = (t, label)
        heapq.heappush(self._heap, (t, request_id))

    def pop(self, request_id: str) -> tuple[float, int] | None:
        return self._by_id.pop(request_id, None)

    def expire(self, cutoff: float) -> int:
        """Forget the labels that came before ``cutoff``; returns how many."""
        n = 0
        heap = self._heap
        while heap and heap[0][0] < cutoff:
            t, rid = heapq.heappop(heap)
            held = self._by_id.get(rid)
            if held is not None and held[0] == t:
                del self._by_id[rid]
                n += 1
        if len(heap) > 2 * len(self._by_id) + 1000:  # entries of popped labels
            self._heap = [(t, rid) for rid, (t, _) in self._by_id.items()]
            heapq.heapify(self._heap)
        return n

    def frame(self) -> pd.DataFrame:
        items = list(self._by_id.items())
        return pd.DataFrame({"request_id": pd.Series([k for k, _ in items], dtype=object),
                             "t": np.fromiter((v[0] for _, v in items), float, len(items)),
                             "label": np.fromiter((v[1] for _, v in items), np.int64, len(items))})

    def load(self, df: pd.DataFrame) -> None:
        for rid, t, y in zip(df["request_id"].tolist(), df["t"].astype(float).tolist(), df["label"].tolist()):
            self.add(rid, t, int(y))
