"""Feedback labels, exactly once: which request_ids were served, which are labeled.

``POST /v1/models/{model}:feedback`` accepts a label only for a request this model
*served* (a prediction row with no error that is not a shadow copy) no longer ago
than ``data.label_horizon_seconds``, with a label among the label's classes, and
only once per request: a second label, in the same body or later, is rejected as
``duplicate``. Every rejection carries a :class:`RejectCode` and a message.

The ingress answers from memory when it can and from the logs when it must:

* :class:`IdTimes` is a bounded ``request_id -> t`` map; beyond its capacity, and
  for entries older than its ``keep_seconds``, the oldest (by ``t``) go first. It
  remembers the newest ``t`` it dropped for capacity, which tells when memory alone
  can no longer prove that an id is absent.
* :class:`LogIndex` pairs one with a log prefix (``predictions`` or ``feedback``).
  The writer records its own files as it writes them; files written by another
  replica, or before a restart, are read back on a miss (the listing is recursive,
  so the partition layout does not matter). When capacity evictions may have hidden
  an id, the files whose time span can hold it are searched for exactly the ids
  asked about, without filling memory.
* :class:`FeedbackBook` is the per-model check that the HTTP handler runs: it
  reserves the ids it accepts until their write is durable, so two concurrent
  requests for one id on one replica cannot both be accepted, and a request that
  waited for another's failed write may still take the id.

Across several ingress replicas, a replica sees another's labels on its next
listing of the feedback log (at most :data:`LABELED_RELIST_S` old); two replicas
taking the same id at the same instant can both accept it, and the controller's
join then keeps the first label only, so the training data counts it once.

    >>> ix = IdTimes(capacity=2, keep_seconds=100.0)
    >>> ix.add(["a", "b", "c"], [1.0, 3.0, 2.0], now=50.0)
    >>> ix.get("a"), ix.get("b"), ix.evicted_max_t
    (None, 3.0, 1.0)
    >>> cands, bad = check_items([{"request_id": "0" * 32, "label": 1},
    ...                           {"request_id": "0" * 32, "label": 0},
    ...                           {"request_id": "x", "label": 1}], classes=[0, 1])
    >>> [c.request_id[:4] for c in cands], [(r.index, r.code.value) for r in bad]
    (['0000'], [(1, 'duplicate'), (2, 'format')])
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lifelong_ray.data.logs import ModelLogs
from lifelong_ray.data.segments import open_segment_tables
from lifelong_ray.storage import Storage

REQUEST_ID_RE = re.compile(r"^[0-9a-f]{32}$")
#: the most seconds a replica goes without listing the feedback log before a check
LABELED_RELIST_S = 1.0
#: how far clocks of replicas may disagree (a label is never older than its prediction)
CLOCK_SKEW_S = 60.0
#: default capacity of each in-memory index (served ids, labeled ids) per model
DEFAULT_INDEX_CAPACITY = 200_000


class RejectCode(str, Enum):
    """Why one feedback item was rejected (the ``code`` of a rejection)."""

    UNEXPECTED = "unexpected"            # a key other than request_id and label
    MISSING = "missing"                  # request_id or label absent
    FORMAT = "format"                    # request_id is not 32 lowercase hex characters
    LABEL_DOMAIN = "label_domain"        # label is not one of the label's classes
    UNKNOWN_REQUEST = "unknown_request_id"  # not served by this model within the horizon
    EXPIRED = "expired"                  # served longer ago than data.label_horizon_seconds
    DUPLICATE = "duplicate"              # the request already has a label (the first one counts)
    QUARANTINED = "quarantined"          # the live label guard diverted it to the quarantine store


@dataclass(frozen=True)
class Candidate:
    """A structurally valid item: ``labels[index]``."""

    index: int
    request_id: str
    label: int


@dataclass(frozen=True)
class Rejected:
    index: int
    request_id: str | None
    code: RejectCode
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "code": self.code.value, "reason": self.message}


def _reject(index: int, rid: str | None, code: RejectCode, field: str, detail: str) -> Rejected:
    return Rejected(index, rid, code, f"labels[{index}].{field}: {code.value} ({detail})")


def _label_ok(value: Any, classes: Sequence[int]) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and float(value).is_integer() and int(value) in classes


def check_items(items: Sequence[dict[str, Any]], classes: Sequence[int]) -> tuple[list[Candidate], list[Rejected]]:
    """The checks that need no state: keys, request_id format, label domain, and a
    request_id repeated within the body (the first valid item counts)."""
    out: list[Candidate] = []
    bad: list[Rejected] = []
    first_at: dict[str, int] = {}
    for i, item in enumerate(items):
        rid = item.get("request_id")
        rid_out = rid if isinstance(rid, str) else (None if rid is None else json.dumps(rid, default=str))
        extra = sorted(set(item) - {"request_id", "label"})
        if extra:
            bad.append(_reject(i, rid_out, RejectCode.UNEXPECTED, extra[0],
                               "only request_id and label are allowed"))
        elif rid is None:
            bad.append(_reject(i, None, RejectCode.MISSING, "request_id",
                               "the request_id returned by :predict is required"))
        elif not isinstance(rid, str) or not REQUEST_ID_RE.match(rid):
            bad.append(_reject(i, rid_out, RejectCode.FORMAT, "request_id",
                               f"must be 32 lowercase hex characters as returned by :predict, got {rid_out!r}"))
        elif "label" not in item:
            bad.append(_reject(i, rid, RejectCode.MISSING, "label", "a class id is required"))
        elif not _label_ok(item["label"], classes):
            bad.append(_reject(i, rid, RejectCode.LABEL_DOMAIN, "label",
                               f"{item['label']!r} is not one of the classes {list(classes)}"))
        elif rid in first_at:
            bad.append(_reject(i, rid, RejectCode.DUPLICATE, "request_id",
                               f"labels[{first_at[rid]}] of this body already labels it; one label per request"))
        else:
            first_at[rid] = i
            out.append(Candidate(i, rid, int(item["label"])))
    return out, bad


class IdTimes:
    """A bounded ``request_id -> t`` map that keeps the first ``t`` of each id.

    Beyond ``capacity`` entries the oldest by ``t`` are dropped and the newest
    dropped ``t`` is kept in :attr:`evicted_max_t` (so a caller knows that an id
    with ``t <= evicted_max_t`` may have been forgotten); :meth:`expire` drops
    entries older than ``now - keep_seconds`` without counting them as evicted.
    """

    def __init__(self, capacity: int, keep_seconds: float) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not keep_seconds > 0:
            raise ValueError(f"keep_seconds must be > 0, got {keep_seconds}")
        self.capacity = int(capacity)
        self.keep_seconds = float(keep_seconds)
        self._t: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self.evicted_max_t = -math.inf

    def __len__(self) -> int:
        return len(self._t)

    def __contains__(self, rid: str) -> bool:
        return rid in self._t

    def get(self, rid: str) -> float | None:
        return self._t.get(rid)

    def add(self, ids: Iterable[str], ts: Iterable[float] | float, now: float) -> None:
        ids = list(ids)
        times = [float(ts)] * len(ids) if isinstance(ts, (int, float)) else [float(t) for t in ts]
        for rid, t in zip(ids, times):
            if rid not in self._t:
                self._t[rid] = t
                heapq.heappush(self._heap, (t, rid))
        self.expire(now)
        while len(self._t) > self.capacity:
            t, rid = heapq.heappop(self._heap)
            del self._t[rid]
            self.evicted_max_t = max(self.evicted_max_t, t)

    def expire(self, now: float) -> None:
        cutoff = now - self.keep_seconds
        while self._heap and self._heap[0][0] < cutoff:
            _, rid = heapq.heappop(self._heap)
            del self._t[rid]


# -- reading the logs back (blocking; run in a thread) ---------------------------------
def served_rows(table: pa.Table) -> pa.Table:
    """Rows of a predictions table that were answered (no error, not a shadow copy)."""
    mask = None
    if "error" in table.column_names:
        mask = pc.is_null(table.column("error"))
    if "shadow" in table.column_names:
        not_shadow = pc.invert(pc.fill_null(table.column("shadow"), False))
        mask = not_shadow if mask is None else pc.and_(mask, not_shadow)
    return table if mask is None else table.filter(mask)


def read_log_table(storage: Storage, path: str, columns: Sequence[str], served_only: bool) -> pa.Table:
    """``columns`` of one log file (those it has), served rows only if asked."""
    with storage.fs.open_input_file(storage.path(path)) as fh:
        pf = pq.ParquetFile(fh)
        have = set(pf.schema_arrow.names)
        want = list(dict.fromkeys([*columns, *(["error", "shadow"] if served_only else [])]))
        table = pf.read(columns=[c for c in want if c in have])
    if served_only:
        table = served_rows(table)
    return table.select([c for c in columns if c in table.column_names])


@dataclass
class FileRead:
    path: str
    ids: list[str]
    t: np.ndarray


def read_new_files(storage: Storage, prefix: str, known: set[str], served_only: bool,
                   since: float | None = None) -> list[FileRead]:
    """``request_id`` and ``t`` of each parquet file under ``prefix`` not in ``known``
    (with ``since``: only files that can hold rows at or after it, listed by partition)."""
    from lifelong_ray.serving.reads import files_in_window

    out = []
    paths = storage.list(prefix, suffix=".parquet") if since is None else files_in_window(storage, prefix, since)
    for path in paths:
        if path in known:
            continue
        table = read_log_table(storage, path, ["request_id", "t"], served_only)
        out.append(FileRead(path, table.column("request_id").to_pylist(),
                            table.column("t").to_numpy(zero_copy_only=False).astype(np.float64)))
    return out


def search_files(storage: Storage, paths: Sequence[str], ids: set[str], served_only: bool) -> dict[str, float]:
    """The first ``t`` of each of ``ids`` found in ``paths`` (nothing else is kept)."""
    found: dict[str, float] = {}
    wanted = pa.array(sorted(ids), pa.string())
    for path in paths:
        table = read_log_table(storage, path, ["request_id", "t"], served_only)
        hit = table.filter(pc.is_in(table.column("request_id"), value_set=wanted))
        for rid, t in zip(hit.column("request_id").to_pylist(), hit.column("t").to_pylist()):
            found[rid] = min(t, found.get(rid, math.inf))
    return found


def search_segments(storage: Storage, prefix: str, ids: set[str], served_only: bool) -> dict[str, float]:
    """The first ``t`` of each of ``ids`` in the open segments of the log at ``prefix``
    (rows that replicas answered but have not sealed into parquet yet)."""
    found: dict[str, float] = {}
    wanted = pa.array(sorted(ids), pa.string())
    for table in open_segment_tables(storage, prefix):
        if served_only:
            table = served_rows(table)
        hit = table.filter(pc.is_in(table.column("request_id"), value_set=wanted))
        for rid, t in zip(hit.column("request_id").to_pylist(), hit.column("t").to_pylist()):
            found[rid] = min(t, found.get(rid, math.inf))
    return found


class LogIndex:
    """What one process knows of one log: an :class:`IdTimes` plus the time span of
    every file it wrote or read (``path -> (t_min, t_max)``; a few dozen bytes per
    file, so none is read twice). Only files that can hold rows of the last
    ``keep_seconds`` are listed and read (:func:`~lifelong_ray.serving.reads.files_in_window`),
    and spans of files older than that are dropped: a lookup of an unknown id costs
    the files of that span, not of the whole history."""

    def __init__(self, storage: Storage, prefix: str, *, served_only: bool, capacity: int,
                 keep_seconds: float, segments: bool = False) -> None:
        self.storage = storage
        self.prefix = prefix
        self.served_only = served_only
        #: also search the open segments of every replica (rows not sealed into the log yet)
        self.segments = segments and storage.is_local
        self.ids = IdTimes(capacity, keep_seconds)
        self.spans: dict[str, tuple[float, float]] = {}
        self.listed_at = -math.inf  # time.monotonic() of the last listing

    def wrote(self, path: str, ids: Sequence[str], t: float, now: float) -> None:
        """Record a file this process wrote (it is not read back)."""
        self.spans[path] = (t, t)
        self.ids.add(ids, t, now)

    def merge(self, reads: Sequence[FileRead], want: set[str], now: float) -> dict[str, float]:
        """Take in files read back; return the ``t`` of the wanted ids among them."""
        hits: dict[str, float] = {}
        for r in reads:
            if r.t.size:
                self.spans[r.path] = (float(r.t.min()), float(r.t.max()))
                for rid, t in zip(r.ids, r.t.tolist()):
                    if rid in want:
                        hits[rid] = min(t, hits.get(rid, math.inf))
            else:
                self.spans[r.path] = (math.inf, -math.inf)
            self.ids.add(r.ids, r.t, now)
        return hits

    def forget_before(self, since: float) -> None:
        """Drop the spans of files that cannot hold rows at or after ``since`` (never listed again)."""
        from lifelong_ray.serving.reads import in_window

        for path in [p for p in self.spans if not in_window(p, since)]:
            del self.spans[path]

    def files_overlapping(self, lo: float, hi: float) -> list[str]:
        return [p for p, (a, b) in self.spans.items() if b >= lo and a <= hi]

    async def find(self, ids: set[str], *, since: float, max_age_s: float, now: float) -> dict[str, float]:
        """``t`` of each of ``ids`` this log holds with ``t >= since`` (older ones may be
        reported too); memory first, then the open segments of every replica (rows not
        sealed yet), then files not read yet (if the last listing is older than
        ``max_age_s``), then a search of the files that evictions hid. Segments come
        before the listing: a seal writes its parquet before it deletes the segment, so
        a row that left the segments meanwhile is in the listing."""
        hits = {rid: t for rid in ids if (t := self.ids.get(rid)) is not None}
        rest = ids - set(hits)
        if rest and self.segments:  # answered by another replica less than a seal interval ago
            hits.update(await asyncio.to_thread(search_segments, self.storage, self.prefix, rest,
                                                self.served_only))
            rest -= set(hits)
        if rest and time.monotonic() - self.listed_at >= max_age_s:
            listed = time.monotonic()
            window = now - self.ids.keep_seconds - CLOCK_SKEW_S
            self.forget_before(window)
            reads = await asyncio.to_thread(read_new_files, self.storage, self.prefix, set(self.spans),
                                            self.served_only, window)
            self.listed_at = listed
            hits.update(self.merge(reads, rest, now))
            rest -= set(hits)
        if rest and self.ids.evicted_max_t >= since:
            paths = self.files_overlapping(since, self.ids.evicted_max_t)
            hits.update(await asyncio.to_thread(search_files, self.storage, paths, rest, self.served_only))
        return hits


class FeedbackBook:
    """The exactly-once check of one model's feedback, run on the ingress's event loop.

    Use :meth:`review` to split candidates into accepted and rejected (accepted ids
    are then reserved), write the accepted labels durably, and call :meth:`settle`
    with the written file (or ``None`` when the write failed).
    """

    def __init__(self, logs: ModelLogs, *, horizon_s: float, capacity: int = DEFAULT_INDEX_CAPACITY) -> None:
        keep = 2 * horizon_s  # an expired id is reported as expired for another horizon
        self.model = logs.model
        self.horizon_s = horizon_s
        self.served = LogIndex(logs.storage, logs.predictions_prefix, served_only=True, capacity=capacity,
                               keep_seconds=keep, segments=True)
        self.labeled = LogIndex(logs.storage, logs.feedback_prefix, served_only=False, capacity=capacity,
                                keep_seconds=keep)
        self._pending: dict[str, asyncio.Future[bool]] = {}
        self._scan = asyncio.Lock()
        # ids written while a review was running, by settle number: a review started at
        # settle number k must see every write settled after k even if memory evicted it
        self._settles = 0
        self._running: Counter[int] = Counter()
        self._recent: list[tuple[int, set[str]]] = []

    @property
    def settles(self) -> int:
        """How many label writes this book has settled (a change marks new labels)."""
        return self._settles

    def served_now(self, path: str | None, ids: Sequence[str], t: float) -> None:
        """The ingress answered ``ids`` and wrote them to the log file ``path`` (None: to a
        segment, which :meth:`served_sealed` names once it is sealed)."""
        if path is None:
            self.served.ids.add(ids, t, now=t)
        else:
            self.served.wrote(path, ids, t, now=t)

    def served_sealed(self, files: Sequence[tuple[str, float, float]]) -> None:
        """Prediction files this replica's segments were sealed into, ``(path, t_min, t_max)``:
        their ids are in memory already, so a listing must not read them back."""
        for path, lo, hi in files:
            self.served.spans[path] = (lo, hi)

    async def review(self, cands: Sequence[Candidate], now: float) -> tuple[list[Candidate], list[Rejected]]:
        start = self._settles
        self._running[start] += 1
        try:
            return await self._review(cands, now, start)
        finally:
            self._running[start] -= 1
            if not self._running[start]:
                del self._running[start]
            oldest = min(self._running, default=self._settles)
            self._recent = [(k, ids) for k, ids in self._recent if k > oldest]

    async def _review(self, cands: Sequence[Candidate], now: float,
                      start: int) -> tuple[list[Candidate], list[Rejected]]:
        bad: list[Rejected] = []
        async with self._scan:
            served_t = await self.served.find({c.request_id for c in cands}, since=now - self.horizon_s,
                                              max_age_s=0.0, now=now)
        live: list[Candidate] = []
        for c in cands:
            t = served_t.get(c.request_id)
            if t is None:
                bad.append(_reject(c.index, c.request_id, RejectCode.UNKNOWN_REQUEST, "request_id",
                                   f"model {self.model!r} served no request {c.request_id} within the label "
                                   f"horizon of {self.horizon_s:g}s (data.label_horizon_seconds)"))
            elif t < now - self.horizon_s:
                bad.append(_reject(c.index, c.request_id, RejectCode.EXPIRED, "request_id",
                                   f"served {now - t:.0f}s ago; labels are accepted for {self.horizon_s:g}s "
                                   "(data.label_horizon_seconds)"))
            else:
                live.append(c)
        if live:
            since = min(served_t[c.request_id] for c in live) - CLOCK_SKEW_S
            async with self._scan:
                labeled = await self.labeled.find({c.request_id for c in live}, since=since,
                                                  max_age_s=LABELED_RELIST_S, now=now)
            live = self._drop_labeled(live, bad, labeled, start)
            live = await self._wait_pending(live, bad, start)
        for c in live:  # no await since the last check: the reservation is atomic
            self._pending[c.request_id] = asyncio.get_running_loop().create_future()
        return live, sorted(bad, key=lambda r: r.index)

    def _drop_labeled(self, live: list[Candidate], bad: list[Rejected], found: Iterable[str],
                      start: int) -> list[Candidate]:
        """Reject as duplicate the candidates found in the log, in memory, or written
        since settle number ``start``."""
        found = set(found).union(*(ids for k, ids in self._recent if k > start))
        keep = []
        for c in live:
            if c.request_id in found or c.request_id in self.labeled.ids:
                bad.append(_reject(c.index, c.request_id, RejectCode.DUPLICATE, "request_id",
                                   "this request already has a label; the first one counts"))
            else:
                keep.append(c)
        return keep

    async def _wait_pending(self, live: list[Candidate], bad: list[Rejected], start: int) -> list[Candidate]:
        """Wait for writes of the same ids by concurrent requests; drop those that landed."""
        while busy := [self._pending[c.request_id] for c in live if c.request_id in self._pending]:
            await asyncio.wait(busy)
            live = self._drop_labeled(live, bad, (), start)
        return self._drop_labeled(live, bad, (), start)

    def settle(self, accepted: Sequence[Candidate], path: str | None, t: float) -> None:
        """Release the reservations: ``path`` is the durable feedback file, or None if the write failed."""
        ids = [c.request_id for c in accepted]
        if path is not None:
            self.labeled.wrote(path, ids, t, now=t)
            self._settles += 1
            if self._running:
                self._recent.append((self._settles, set(ids)))
        for rid in ids:
            fut = self._pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(path is not None)
