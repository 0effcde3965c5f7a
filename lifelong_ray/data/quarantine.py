"""The quarantine store: rows and whole batches that broke a rule, kept for review.

Nothing that fails a data rule is dropped: it lands here with a reason code, a
human-readable reason with the rule's numbers, where it came from and when, and
the rows themselves. Layout, one directory per entry::

    models/<model>/quarantine/<id>/rows.parquet   the rows as received (+ __row, __reason per row)
                                  meta.json      id, reason, message, source, t, rows, label, data
                                                 (written last: the commit marker)
                                  release.json   who, why, t of a release (absent until released)

Reason codes are the schema :class:`~lifelong_ray.data.schema.Rule` values
(``schema_changed``, ``above_max``, ``label_domain``, …) and the guard's
:class:`~lifelong_ray.data.guard.GuardReason` values (``label_disagreement``,
``label_shift``, ``out_of_range``). Every entry records a ``quarantined`` event in
the audit log; releasing one (:func:`lifelong_ray.data.ingest.release_quarantined`)
records ``quarantine_released`` with who and why. An entry's lifecycle is
:class:`QuarantineStatus`: ``quarantined`` → ``released``, once.

    >>> import tempfile, pyarrow as pa
    >>> from lifelong_ray.storage import Storage
    >>> q = QuarantineStore(Storage(tempfile.mkdtemp()), "m")
    >>> e = q.put(pa.table({"x": [99.0]}), reason="above_max", message="x=99 is above max 10",
    ...           source="batch.parquet", t=1.0)
    >>> [(x.reason, x.rows, x.status.value) for x in q.list()], q.counts()
    ([('above_max', 1, 'quarantined')], {'above_max': 1})
    >>> q.events.read()[0].reason
    'batch.parquet: 1 rows quarantined (above_max): x=99 is above max 10'
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lifelong_ray.data.guard import GuardReason
from lifelong_ray.data.logs import table_to_bytes
from lifelong_ray.data.schema import Rule
from lifelong_ray.events import AuditLog, Event, EventKind
from lifelong_ray.storage import Storage

#: Every reason code an entry may carry.
REASON_CODES = frozenset({r.value for r in Rule} | {g.value for g in GuardReason})
ROWS, META, RELEASE = "rows.parquet", "meta.json", "release.json"
#: Bookkeeping columns of a row-level entry: the row's index in its batch and its broken rule.
ROW_INDEX, ROW_REASON = "__row", "__reason"
_ID_RE = re.compile(r"^q\d{13}-[0-9a-f]{6}$")


class QuarantineStatus(str, Enum):
    QUARANTINED = "quarantined"
    RELEASED = "released"


#: Legal lifecycle moves; anything else raises :class:`IllegalTransition`.
TRANSITIONS: dict[QuarantineStatus, frozenset[QuarantineStatus]] = {
    QuarantineStatus.QUARANTINED: frozenset({QuarantineStatus.RELEASED}),
    QuarantineStatus.RELEASED: frozenset(),
}


class UnknownEntry(KeyError):
    """No committed quarantine entry with that id."""


class IllegalTransition(ValueError):
    """The entry cannot move to that status (e.g. released twice)."""


class NotReleasable(ValueError):
    """The rows still break the contract; the message says which rule and how to fix it."""


@dataclass(frozen=True)
class QuarantineEntry:
    id: str
    reason: str
    message: str
    source: str
    t: float
    rows: int
    label: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    status: QuarantineStatus = QuarantineStatus.QUARANTINED
    release: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "reason": self.reason, "message": self.message, "source": self.source,
                "t": self.t, "rows": self.rows, "label": self.label, "data": self.data,
                "status": self.status.value, "release": self.release}


def check_transition(current: QuarantineStatus, new: QuarantineStatus, entry_id: str) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"quarantine entry {entry_id} is {current.value}; it cannot become {new.value}")


class QuarantineStore:
    """Quarantined rows of one model under ``models/<model>/quarantine/``."""

    def __init__(self, storage: Storage, model: str) -> None:
        self.storage = storage
        self.model = model
        self.prefix = f"models/{model}/quarantine"
        self.events = AuditLog(storage, model)

    def _dir(self, entry_id: str) -> str:
        if not _ID_RE.match(entry_id):
            raise UnknownEntry(f"{entry_id!r} is not a quarantine id (like q0001700000000000-1a2b3c)")
        return f"{self.prefix}/{entry_id}"

    def put(self, rows: pa.Table, *, reason: str, message: str, source: str, t: float,
            label: str | None = None, data: dict[str, Any] | None = None) -> QuarantineEntry:
        """Store ``rows`` under a new id and record a ``quarantined`` event."""
        if reason not in REASON_CODES:
            raise ValueError(f"unknown quarantine reason {reason!r}; expected one of {sorted(REASON_CODES)}")
        entry = QuarantineEntry(id=f"q{int(t * 1000):013d}-{uuid.uuid4().hex[:6]}", reason=reason,
                                message=message, source=source, t=t, rows=rows.num_rows, label=label,
                                data=dict(data or {}))
        d = self._dir(entry.id)
        self.storage.write_bytes(f"{d}/{ROWS}", table_to_bytes(rows))
        meta = entry.to_json()
        for k in ("status", "release"):
            meta.pop(k)
        self.storage.write_json(f"{d}/{META}", meta)  # the commit marker, last
        self.events.append([Event(t=t, kind=EventKind.QUARANTINED, model=self.model,
                                  reason=f"{source}: {entry.rows} rows quarantined ({reason}): {message}",
                                  data={"id": entry.id, "reason": reason, "rows": entry.rows, "source": source,
                                        **entry.data})], key=f"quarantined-{entry.id}")
        return entry

    def get(self, entry_id: str) -> QuarantineEntry:
        d = self._dir(entry_id)
        if not self.storage.exists(f"{d}/{META}"):
            raise UnknownEntry(f"model {self.model} has no quarantine entry {entry_id}")
        meta = self.storage.read_json(f"{d}/{META}")
        release = self.storage.read_json(f"{d}/{RELEASE}") if self.storage.exists(f"{d}/{RELEASE}") else None
        done = release is not None and release.get("done", False)
        return QuarantineEntry(**meta, status=QuarantineStatus.RELEASED if done else QuarantineStatus.QUARANTINED,
                               release=release)

    def list(self) -> list[QuarantineEntry]:
        """Committed entries, oldest first."""
        return [self.get(d) for d in self.storage.list_dirs(self.prefix)
                if _ID_RE.match(d) and self.storage.exists(f"{self.prefix}/{d}/{META}")]

    def counts(self, status: QuarantineStatus = QuarantineStatus.QUARANTINED) -> dict[str, int]:
        """Rows per reason code among entries in ``status``."""
        c: Counter[str] = Counter()
        for e in self.list():
            if e.status == status:
                c[e.reason] += e.rows
        return dict(sorted(c.items()))

    def rows(self, entry_id: str) -> pa.Table:
        return pq.read_table(pa.BufferReader(self.storage.read_bytes(f"{self._dir(entry_id)}/{ROWS}")))

    def begin_release(self, entry_id: str, who: str, why: str, now: float) -> dict[str, Any]:
        """Record the intent to release (or return the pending one of an interrupted release,
        so a retry reuses its time and file name). Raises if already released."""
        entry = self.get(entry_id)
        check_transition(entry.status, QuarantineStatus.RELEASED, entry_id)
        if entry.release is not None:
            return entry.release
        intent = {"who": who, "why": why, "t": now, "done": False}
        self.storage.write_json(f"{self._dir(entry_id)}/{RELEASE}", intent)
        return intent

    def finish_release(self, entry_id: str, intent: dict[str, Any], released_rows: int, path: str) -> QuarantineEntry:
        """Record the ``quarantine_released`` event, then mark the entry released."""
        entry = self.get(entry_id)
        self.events.append([Event(t=intent["t"], kind=EventKind.QUARANTINE_RELEASED, model=self.model,
                                  reason=f"{intent['who']} released {released_rows} rows of {entry_id} "
                                         f"({entry.reason} from {entry.source}): {intent['why']}",
                                  data={"id": entry_id, "reason": entry.reason, "rows": released_rows,
                                        "who": intent["who"], "why": intent["why"], "path": path})],
                           key=f"quarantine-released-{entry_id}")
        self.storage.write_json(f"{self._dir(entry_id)}/{RELEASE}",
                                {**intent, "done": True, "rows": released_rows, "path": path})
        return self.get(entry_id)
