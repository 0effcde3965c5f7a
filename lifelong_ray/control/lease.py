"""One leader per model: a lease with a fencing generation on storage.

Two controllers can end up on one storage root (a RayService upgrade brings up a
second cluster; a controller started by hand next to a running one). Only the
holder of the model's lease acts; the other waits as a standby that observes and
writes nothing, and takes over once the lease has gone unrenewed for
``controller.lease_seconds``.

The lease is one small JSON file per generation,
``models/<model>/controller/lease/<generation, 12 digits>.json``; the highest one
is current. Taking the lease over means *creating* the next generation's file
with :meth:`~lifelong_ray.storage.Storage.create_exclusive`, so of two standbys
racing for it exactly one wins. The leader renews by rewriting its own file
(``renewals`` + 1), and checks before every durable write (state, events, routing,
aliases) that its generation is still the highest: a deposed leader's write is
refused with :class:`LeaseLost` (fencing) instead of overwriting the new
leader's. A standby judges expiry on its own clock (no renewal seen for
``lease_seconds``, counted from when it first looked), so the hosts' clocks need
not agree. A lease its holder released (a clean stop) is taken at once, and so
is one held by this same holder (a restarted actor keeps its Ray actor id).

    >>> import tempfile
    >>> from lifelong_ray.clock import SampleClock
    >>> from lifelong_ray.storage import Storage
    >>> s, clock = Storage(tempfile.mkdtemp()), SampleClock(100.0)
    >>> a = Lease(s, "m", holder="a", clock=clock, seconds=10)
    >>> b = Lease(s, "m", holder="b", clock=clock, seconds=10)
    >>> a.acquire(), b.acquire()
    (True, False)
    >>> clock.advance(11); b.acquire()          # a stopped renewing: b takes over
    True
    >>> b.generation
    2
    >>> try:
    ...     a.hold()                              # a's next write is fenced off
    ... except LeaseLost as lost:
    ...     print(lost)
    lease of m lost: generation 2 held by b (ours was 1)
"""

from __future__ import annotations

import logging
import os
import socket

from pydantic import BaseModel

from lifelong_ray.clock import Clock
from lifelong_ray.events import Event, EventKind
from lifelong_ray.storage import Storage

log = logging.getLogger(__name__)


class LeaseLost(BaseException):
    """This controller's lease generation is no longer the current one: it must not write.

    A ``BaseException``, like ``KeyboardInterrupt``: no ``except Exception`` on the way
    (an action's retry, a subsystem's error handling) may take it for a failure and
    go on writing; :meth:`Controller.tick <lifelong_ray.control.controller.Controller.tick>`
    catches it and stands by."""

    def __init__(self, message: str, generation: int = 0) -> None:
        super().__init__(message)
        self.generation = generation  # the generation that was lost


class LeaseRecord(BaseModel):
    """The content of one generation's lease file (times on the holder's clock)."""

    holder: str
    generation: int
    acquired_t: float
    renewed_t: float
    expires_t: float
    renewals: int = 0
    released: bool = False


def lease_prefix(model: str) -> str:
    return f"models/{model}/controller/lease"


def default_holder() -> str:
    """This process as a lease holder: ``<host>/pid-<pid>``."""
    return f"{socket.gethostname()}/pid-{os.getpid()}"


def read_lease(storage: Storage, model: str) -> LeaseRecord | None:
    """The current (highest generation) lease record, or None before any controller led."""
    prefix = lease_prefix(model)
    for path in reversed(storage.list(prefix, suffix=".json", recursive=False)):
        try:
            return LeaseRecord.model_validate(storage.read_json(path))
        except FileNotFoundError:  # pruned by a new leader meanwhile: look again
            return read_lease(storage, model)
    return None


class Lease:
    """The lease of one model as seen by one would-be leader (``holder``)."""

    def __init__(self, storage: Storage, model: str, *, holder: str, clock: Clock, seconds: float) -> None:
        self.storage = storage
        self.model = model
        self.holder = holder
        self.clock = clock
        self.seconds = float(seconds)
        self.record: LeaseRecord | None = None  # ours while we lead
        self.taken_from: LeaseRecord | None = None  # the record we took over (None: first leader)
        self._seen: tuple[int, int] | None = None  # a standby's last view of the lease: (generation, renewals)
        self._seen_at = 0.0  # ... and when it saw that change, on our clock

    @property
    def held(self) -> bool:
        return self.record is not None

    @property
    def generation(self) -> int | None:
        return self.record.generation if self.record is not None else None

    def _path(self, generation: int) -> str:
        return f"{lease_prefix(self.model)}/{generation:012d}.json"

    def current(self) -> LeaseRecord | None:
        return read_lease(self.storage, self.model)

    def expired(self, cur: LeaseRecord, now: float) -> bool:
        """Whether a standby may take ``cur`` over now."""
        if cur.released or cur.holder == self.holder:
            return True
        seen = (cur.generation, cur.renewals)
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
        return now - self._seen_at >= self.seconds

    def acquire(self) -> bool:
        """Try to become the leader; True if we hold the lease now."""
        if self.held:
            self.hold()
            return True
        now = self.clock.now()
        cur = self.current()
        if cur is not None and not self.expired(cur, now):
            return False
        gen = 1 if cur is None else cur.generation + 1
        rec = LeaseRecord(holder=self.holder, generation=gen, acquired_t=now, renewed_t=now,
                          expires_t=now + self.seconds)
        if not self.storage.create_exclusive(self._path(gen), rec.model_dump_json(indent=1).encode()):
            return False  # another standby took this generation first
        self.record, self.taken_from = rec, cur
        self._prune(gen)
        log.info("%s leads %s with lease generation %d", self.holder, self.model, gen)
        return True

    def hold(self) -> None:
        """Check that we still lead (raise :class:`LeaseLost` if not) and renew the lease
        when a quarter of it has passed. Call before every durable write."""
        if self.record is None:
            raise LeaseLost(f"lease of {self.model} not held by {self.holder}")
        cur = self.current()
        if cur is None or cur.generation != self.record.generation or cur.holder != self.holder or cur.released:
            ours = self.record.generation
            self.record = None
            who = f"generation {cur.generation} held by {cur.holder}" if cur is not None else "no lease on storage"
            raise LeaseLost(f"lease of {self.model} lost: {who} (ours was {ours})", ours)
        now = self.clock.now()
        if now - self.record.renewed_t >= self.seconds / 4:
            self.record = self.record.model_copy(update={"renewed_t": now, "expires_t": now + self.seconds,
                                                         "renewals": self.record.renewals + 1})
            self.storage.write_json(self._path(self.record.generation), self.record.model_dump(mode="json"))

    def release(self) -> None:
        """Give the lease up (a clean stop): a standby takes over at once."""
        if self.record is None:
            return
        try:
            self.hold()
        except LeaseLost:
            return
        now = self.clock.now()
        rec = self.record.model_copy(update={"released": True, "expires_t": now, "renewed_t": now})
        self.storage.write_json(self._path(rec.generation), rec.model_dump(mode="json"))
        self.record = None

    def _prune(self, generation: int) -> None:
        """Delete lease files two or more generations old (the folder stays a few files)."""
        for path in self.storage.list(lease_prefix(self.model), suffix=".json", recursive=False):
            name = path.rsplit("/", 1)[-1].removesuffix(".json")
            if name.isdigit() and int(name) < generation - 1:
                self.storage.delete(path)


def leader_acquired_event(lease: Lease, model: str) -> Event:
    """The ``leader_acquired`` event of a lease just taken, saying from whom and why."""
    rec, prev = lease.record, lease.taken_from
    assert rec is not None
    if prev is None:
        how = "the first controller of this model"
    elif prev.released:
        how = f"{prev.holder} released generation {prev.generation} (a clean stop)"
    elif prev.holder == rec.holder:
        how = f"the same holder restarted (it held generation {prev.generation})"
    else:
        how = (f"{prev.holder} stopped renewing generation {prev.generation} (its last renewal was at"
               f" {prev.renewed_t:.1f} on its clock; none seen for lease_seconds={lease.seconds:g})")
    return Event(t=rec.acquired_t, kind=EventKind.LEADER_ACQUIRED, model=model,
                 reason=f"{rec.holder} leads {model} with lease generation {rec.generation}: {how}",
                 data={"holder": rec.holder, "generation": rec.generation, "lease_seconds": lease.seconds,
                       "previous_holder": prev.holder if prev else None})


def leader_lost_event(lost: LeaseLost, lease: Lease, model: str) -> Event:
    """The ``leader_lost`` event of a controller that found its lease taken: it stands by."""
    return Event(t=lease.clock.now(), kind=EventKind.LEADER_LOST, model=model,
                 reason=f"{lease.holder} stands by and writes nothing: {lost}",
                 data={"holder": lease.holder, "generation": lost.generation})
