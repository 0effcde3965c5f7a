"""Bounded, cached reads for the ingress's unauthenticated read endpoints.

``GET /v1/models/{m}``, ``/ui``, ``label-requests`` and feedback for request ids the
ingress does not hold in memory must not cost more as history grows. The helpers
here read a bounded part of what is stored:

* :func:`files_in_window` lists a log's files that can hold rows at or after a
  time: only the ``date=`` partitions from that day on are listed (every row of a
  partition has a ``t`` of its day, also in sealed and compacted files). Cost: the
  partitions of the window, not of the history.
* :func:`event_tail` reads the newest events of the audit log from the newest
  files of each file-name family (``<t_us>-…``, ``tick-<seq>``,
  ``quarantined-q<t_ms>…``; names within a family sort by time), never the whole log.
* :func:`shown_versions` picks the versions a status shows: the newest few plus
  every version an alias or the routing table names.
* :class:`TTLCache` keeps a computed snapshot for a second or two, so a burst of
  status or UI reads costs one read of storage (the clock is injected).

    >>> shown_versions([f"v{i:04d}" for i in range(1, 101)], keep={"v0003"}, limit=3)
    ['v0003', 'v0098', 'v0099', 'v0100']
    >>> in_window("models/m/predictions/date=2023-11-14/01700000000000000000-ab.parquet", since=1.7e9 + 1)
    True
    >>> in_window("models/m/predictions/date=2023-11-14/compacted-0a1b.parquet", since=1.7e9 + 86400)
    False
    >>> c = TTLCache(ttl_s=1.0, clock=iter([0.0, 0.5, 1.5]).__next__)
    >>> c.put("k", "a"); c.get("k"), c.get("k")
    ('a', None)
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Awaitable, Callable, Iterable, Sequence

from lifelong_ray.data.logs import day_of
from lifelong_ray.events import AuditLog, Event
from lifelong_ray.storage import Storage

#: seconds a status or UI snapshot is served from memory
SNAPSHOT_TTL_S = 1.0
#: versions a status lists besides those an alias or the routing table names (the newest)
MAX_SHOWN_VERSIONS = 20

_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_FAMILY = re.compile(r"^(\D*)")


def in_window(path: str, since: float) -> bool:
    """Whether the log file ``path`` can hold rows with ``t >= since`` (by its ``date=`` partition)."""
    for part in path.split("/"):
        m = _DATE_DIR.match(part)
        if m:
            return m.group(1) >= day_of(since)
    return True


def files_in_window(storage: Storage, prefix: str, since: float, suffix: str = ".parquet") -> list[str]:
    """Files under ``prefix`` that can hold rows with ``t >= since`` (see the module doc), sorted."""
    out: list[str] = []
    first_day = day_of(since)
    for d in storage.list_dirs(prefix):
        m = _DATE_DIR.match(d)
        if m and m.group(1) < first_day:
            continue
        out.extend(storage.list(f"{prefix}/{d}", suffix=suffix))
    out.extend(storage.list(prefix, suffix=suffix, recursive=False))
    return sorted(p for p in out if in_window(p, since))


def event_tail(storage: Storage, model: str, n: int) -> list[Event]:
    """The newest ``n`` events of ``model``'s audit log, oldest first (reads at most
    ``n`` files per file-name family)."""
    if n <= 0:
        return []
    prefix = AuditLog(storage, model).prefix
    families: dict[str, list[str]] = {}
    for path in storage.list(prefix, suffix=".jsonl"):
        families.setdefault(_FAMILY.match(path.rsplit("/", 1)[-1]).group(1), []).append(path)
    events: list[Event] = []
    for paths in families.values():
        for path in paths[-n:]:
            for line in storage.read_bytes(path).decode().splitlines():
                if line.strip():
                    events.append(Event.model_validate(json.loads(line)))
    events.sort(key=lambda e: e.t)
    return events[-n:]


def shown_versions(versions: Sequence[str], keep: Iterable[str], limit: int = MAX_SHOWN_VERSIONS) -> list[str]:
    """The newest ``limit`` of ``versions`` (oldest first) plus those of ``keep`` that exist."""
    wanted = set(versions[-limit:]) | (set(keep) & set(versions))
    return [v for v in versions if v in wanted]


class TTLCache:
    """Values kept for ``ttl_s`` seconds of ``clock`` (a monotonic clock, injected in tests)."""

    def __init__(self, ttl_s: float = SNAPSHOT_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._items: dict[Any, tuple[float, Any]] = {}
        self._locks: dict[Any, asyncio.Lock] = {}

    def get(self, key: Any) -> Any:
        item = self._items.get(key)
        if item is None or self.clock() - item[0] >= self.ttl_s:
            return None
        return item[1]

    def put(self, key: Any, value: Any) -> None:
        now = self.clock()
        self._items = {k: v for k, v in self._items.items() if now - v[0] < self.ttl_s}  # bounded: live keys only
        self._items[key] = (now, value)

    async def get_or_compute(self, key: Any, compute: Callable[[], Awaitable[Any]]) -> Any:
        """The cached value, or ``await compute()`` once for all callers waiting on ``key``."""
        hit = self.get(key)
        if hit is not None:
            return hit
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self.get(key)
            if hit is None:
                hit = await compute()
                self.put(key, hit)
        return hit
