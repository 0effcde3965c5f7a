"""Event records and the append-only audit log.

Every decision the controller takes is an :class:`Event` with a human-readable
reason. The log stores one JSON-lines file per append under
``<root>/models/<model>/events/``; file names sort by time, so reading the log in
name order gives the events in order, on a local disk or an object store.

    >>> import tempfile
    >>> from lifelong_ray.storage import Storage
    >>> log = AuditLog(Storage(tempfile.mkdtemp()), "demo")
    >>> log.append([Event(t=1.0, kind=EventKind.DRIFT_DETECTED, model="demo",
    ...                   reason="PSI 0.31 > 0.20 on 2/4 features for 2 windows")])
    >>> [e.kind.value for e in log.read()]
    ['drift_detected']
"""

from __future__ import annotations

import json
import uuid
from enum import Enum
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field

from lifelong_ray.storage import Storage


class EventKind(str, Enum):
    DRIFT_DETECTED = "drift_detected"
    RETRAIN_REQUESTED = "retrain_requested"
    RETRAIN_DEFERRED = "retrain_deferred"
    RETRAIN_STARTED = "retrain_started"
    RETRAIN_FINISHED = "retrain_finished"
    RETRAIN_FAILED = "retrain_failed"
    CANDIDATE_REGISTERED = "candidate_registered"
    GATE_PASSED = "gate_passed"
    GATE_FAILED = "gate_failed"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVED = "approved"
    SHADOW_STARTED = "shadow_started"
    CANARY_STARTED = "canary_started"
    CANARY_STEP = "canary_step"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    BUDGET_FROZEN = "budget_frozen"
    QUARANTINED = "quarantined"
    PAUSED = "paused"
    RESUMED = "resumed"
    # Additions beyond DESIGN.md §4 (extensions, never renames):
    QUARANTINE_RELEASED = "quarantine_released"  # an operator released a quarantined batch after review
    RETENTION_APPLIED = "retention_applied"      # housekeeping expired old logs, events, commands, jobs, versions
    BUDGET_UNFROZEN = "budget_unfrozen"          # the error budget recovered; rollouts may go on
    ROLLOUT_ABORTED = "rollout_aborted"          # a candidate stopped before any canary traffic (shadow, approval)
    PROBATION_PASSED = "probation_passed"        # a new champion's late labels held up; the previous one retires
    COMMAND_REJECTED = "command_rejected"        # an operator command that did not apply now, with why
    ACTION_FAILED = "action_failed"              # an effect failed past its retries, with the error
    CHAMPION_UNAVAILABLE = "champion_unavailable"  # the champion could not be (re)deployed; the last serving stays
    SERVING_RECONCILED = "serving_reconciled"    # Serve did not match the state: a version (re)deployed or retired
    LEADER_ACQUIRED = "leader_acquired"          # this controller holds the model's lease and acts (DESIGN §4)
    LEADER_LOST = "leader_lost"                  # a controller found another one holds the lease; it stands by


class Event(BaseModel):
    """One audit record. ``data`` holds the numbers behind ``reason``."""

    model_config = ConfigDict(frozen=True)

    t: float
    kind: EventKind
    model: str
    version: str | None = None
    reason: str
    data: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class AuditLog:
    """Append-only event log of one model under a :class:`Storage`."""

    def __init__(self, storage: Storage, model: str) -> None:
        self.storage = storage
        self.model = model
        self.prefix = f"models/{model}/events"

    def append(self, events: Iterable[Event], key: str | None = None) -> None:
        """Append events as one file. With ``key`` the file name is deterministic,
        so re-appending the same batch (a controller retrying a tick) replaces it
        instead of duplicating it."""
        events = list(events)
        if not events:
            return
        if key is not None:
            name = f"{self.prefix}/{key}.jsonl"
        else:
            name = f"{self.prefix}/{int(events[0].t * 1e6):020d}-{uuid.uuid4().hex[:8]}.jsonl"
        body = "".join(json.dumps(e.to_json(), sort_keys=True) + "\n" for e in events)
        self.storage.write_bytes(name, body.encode())

    def read(self, kinds: set[EventKind] | None = None, since: float | None = None) -> list[Event]:
        out: list[Event] = []
        for path in self.storage.list(self.prefix, suffix=".jsonl"):
            for line in self.storage.read_bytes(path).decode().splitlines():
                if not line.strip():
                    continue
                ev = Event.model_validate_json(line)
                if kinds is not None and ev.kind not in kinds:
                    continue
                if since is not None and ev.t < since:
                    continue
                out.append(ev)
        out.sort(key=lambda e: e.t)
        return out
