"""Group commit by interval: one flusher per log syncs what was written since its last flush.

A log with durability ``group`` (``data.durability``) answers a request once its
record is written to the OS (it survives a crash of the process) and leaves the
sync to the device to its log's :class:`GroupFlusher`: the request path only
*marks* what it wrote (no system call, no thread hop); one background thread per
log flushes everything marked at most ``interval_s`` after the oldest unflushed
write. A power loss or kernel crash therefore loses at most that window of the
log's records. Records are whole lines (segments) or whole files (renamed into
place), so what survives is never a torn record: a torn tail line or an unreadable
file is skipped by the readers, and nothing is ever written twice.

What is marked is any object with ``flush_to_device()`` (a segment, a file by path,
a directory by path: :class:`PathSync`); marking one twice before a flush syncs it
once. The lag (:meth:`GroupFlusher.unflushed_seconds`: how long the oldest record
not yet on the device has waited) is exported as ``lifelong_log_unflushed_seconds``.

    >>> class File:
    ...     synced = 0
    ...     def flush_to_device(self): self.synced += 1
    >>> now = [0.0]
    >>> flusher = GroupFlusher("demo", 0.1, clock=lambda: now[0], start=False)
    >>> f = File()
    >>> flusher.mark(f); flusher.mark(f)       # the request path: nothing synced yet
    >>> f.synced, flusher.step()               # not due: wait 0.1 s more
    (0, 0.1)
    >>> now[0] = 0.1
    >>> flusher.step(), f.synced, flusher.unflushed_seconds()   # one sync for both writes
    (None, 1, 0.0)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Protocol

log = logging.getLogger(__name__)


class Flushable(Hashable, Protocol):
    def flush_to_device(self) -> None:
        """Make what was written to it so far durable on the device."""


@dataclass(frozen=True)
class PathSync:
    """A file (or, with ``directory``, a directory: the names in it) to sync by path. A
    file that vanished before its flush (compacted, expired) has nothing left to sync."""

    path: str
    directory: bool = False

    def flush_to_device(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            if self.directory:
                os.fsync(fd)
            else:
                os.fdatasync(fd)
        finally:
            os.close(fd)


def file_and_directory(full: str) -> tuple[PathSync, PathSync]:
    """What a file renamed into place needs to survive a power loss: its data, then its name."""
    return PathSync(full), PathSync(os.path.dirname(full), directory=True)


class GroupFlusher:
    """The group commit of one log: :meth:`mark` on the request path, a sync of
    everything marked at most ``interval_s`` (by ``clock``) after the oldest mark, in
    one background thread (started at the first mark; ``start=False``: none, the
    owner calls :meth:`step` or :meth:`flush`). A failed sync is logged and counted
    (:attr:`failures`); its records were acknowledged already, so it is not retried
    as if nothing happened: the target decides (a segment stops taking appends)."""

    def __init__(self, name: str, interval_s: float, *, clock: Callable[[], float] = time.monotonic,
                 start: bool = True) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.name = name
        self.interval_s = interval_s
        self.clock = clock
        self.flushes = 0
        self.failures = 0
        self._start = start
        self._cond = threading.Condition()
        self._pending: dict[Flushable, None] = {}
        self._oldest: float | None = None      # clock time of the oldest mark not flushed
        self._in_flight: float | None = None   # the oldest mark of the flush running now
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- the request path ----------------------------------------------------------
    def mark(self, *targets: Flushable) -> None:
        """``targets`` were written to: sync them within ``interval_s``. No system call."""
        with self._cond:
            for target in targets:
                self._pending[target] = None
            if self._oldest is None:
                self._oldest = self.clock()
                self._cond.notify()
            if self._thread is None and self._start and not self._stopped:
                self._thread = threading.Thread(target=self._run, name=f"log-flusher-{self.name}", daemon=True)
                self._thread.start()

    # -- the flusher ---------------------------------------------------------------
    def _wait_s(self, now: float) -> float | None:
        """Seconds until the next flush is due (0: now), None when nothing is marked."""
        return None if self._oldest is None else max(0.0, self._oldest + self.interval_s - now)

    def step(self) -> float | None:
        """Flush if due; then the seconds until the next flush is due (None: nothing marked)."""
        with self._cond:
            wait = self._wait_s(self.clock())
        if wait == 0.0:
            self.flush()
            with self._cond:
                wait = self._wait_s(self.clock())
        return wait

    def flush(self) -> int:
        """Sync everything marked so far, now; the number of targets synced."""
        with self._cond:
            batch, self._pending = list(self._pending), {}
            self._in_flight, self._oldest = self._oldest, None
        try:
            for target in batch:
                try:
                    target.flush_to_device()
                except Exception:  # noqa: BLE001 - acknowledged already: say so loudly, go on with the rest
                    self.failures += 1
                    log.exception("log %s: group commit could not sync %s", self.name, target)
            if batch:
                self.flushes += 1
            return len(batch)
        finally:
            with self._cond:
                self._in_flight = None

    def unflushed_seconds(self, now: float | None = None) -> float:
        """How long the oldest record not yet synced has waited (0 when all are synced)."""
        now = self.clock() if now is None else now
        with self._cond:
            oldest = [t for t in (self._oldest, self._in_flight) if t is not None]
        return max(0.0, now - min(oldest)) if oldest else 0.0

    def _run(self) -> None:
        while True:
            wait = self.step()
            with self._cond:
                if self._stopped:
                    return
                if self._oldest is None:
                    self._cond.wait()
                elif wait:
                    self._cond.wait(wait)

    def close(self) -> None:
        """Stop the thread and sync what is left. Idempotent."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.flush()
