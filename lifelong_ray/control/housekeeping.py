"""Housekeeping: the controller's scheduled retention and compaction pass.

Every ``data.compaction_interval_seconds`` (default one hour) the controller runs
:meth:`Housekeeper.maybe_run` at the end of a tick. With ``data.retention_days``
set (default 30; ``null`` keeps everything) it

1. feeds the replay reservoir, drops log partitions older than the retention and
   compacts past days' small files (:func:`lifelong_ray.data.retention.apply_retention`;
   compaction runs even with retention off);
2. deletes audit-event files whose newest event is older than the retention;
3. deletes operator-command files older than the retention that a later tick
   has taken in (applied or rejected);
4. deletes finished retrain job files older than the retention (never the job
   that runs now, nor one a pending action names);
5. retires registry versions created before the retention, except the ones
   :func:`protected_versions` keeps: the champion, the previous champion, the
   candidate in rollout (shadow, approval, canary, probation), any version with
   routing weight or still being retired from serving, any version an alias
   names or a pending action mentions. A retired version keeps its directory with
   a ``RETIRED.json`` tombstone (so its name is never reused) and loses its
   manifest first, then its artifacts.

Each deletion decision is a pure function of names, times and the controller
state (no I/O; tested alone); :func:`take_inventory` reads what exists and
:func:`apply_plan` deletes. What was removed is recorded as one
``retention_applied`` audit event and in ``models/<model>/controller/housekeeping.json``
(which also carries the schedule across controller restarts). A failing step is
logged and the others still run; nothing here ever raises into the tick.

    >>> DAY = 86400.0
    >>> expired_command_files([("c/0000001000000-a.json", 1000.0), ("c/0000009000000-b.json", 9000.0)],
    ...                       cutoff=5000.0, last_tick_t=9500.0)
    ['c/0000001000000-a.json']
    >>> from lifelong_ray.policy.model import ControllerState
    >>> st = ControllerState(model="m", champion="v0003", previous_champion="v0002")
    >>> versions_to_retire([("v0001", 0.0), ("v0002", 0.0), ("v0003", 0.0), ("v0004", 40 * DAY)],
    ...                    cutoff=30 * DAY, protected=protected_versions(st, {"champion": "v0003"}))
    {'v0001': 'created 1970-01-01, before the retention cutoff 1970-01-31'}
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from lifelong_ray.events import Event, EventKind
from lifelong_ray.policy.serving_target import required_versions

if TYPE_CHECKING:  # pragma: no cover
    from lifelong_ray.config import Config
    from lifelong_ray.events import AuditLog
    from lifelong_ray.policy.model import ControllerState
    from lifelong_ray.registry.store import Registry
    from lifelong_ray.storage import Storage

log = logging.getLogger(__name__)

_DAY = 86400.0
#: the tombstone a retired version's directory keeps (its name is never reused)
RETIRED = "RETIRED.json"
_EVENT_TIME_NAME = re.compile(r"^(\d{20})-")        # AuditLog.append without a key: µs time first
_COMMAND_NAME = re.compile(r"^(\d{15})-([0-9a-zA-Z]+)\.json$")  # commands.submit_command: ms time first


def report_path(model: str) -> str:
    return f"models/{model}/controller/housekeeping.json"


# -- pure decisions ------------------------------------------------------------------
def retention_cutoff(now: float, retention_days: float | None) -> float | None:
    """The time before which data expires; None when retention is off.

    >>> retention_cutoff(31 * 86400.0, 30), retention_cutoff(1.0, None)
    (86400.0, None)
    """
    return None if retention_days is None else now - retention_days * _DAY


def is_due(last_run: float | None, now: float, interval: float | None) -> bool:
    """Whether housekeeping runs now: never with no interval; at once when it never ran.

    >>> is_due(None, 5.0, 3600.0), is_due(0.0, 3599.0, 3600.0), is_due(0.0, 3600.0, 3600.0), is_due(None, 5.0, None)
    (True, False, True, False)
    """
    if interval is None:
        return False
    return last_run is None or now - last_run >= interval or now < last_run


def expired_event_files(files: Iterable[tuple[str, float | None]], cutoff: float | None) -> list[str]:
    """Event files ``(path, newest event time)`` whose newest event is before ``cutoff``.
    A file whose time is unknown (None: unreadable) is kept for an operator to look at.

    >>> expired_event_files([("e/a", 10.0), ("e/b", 99.0), ("e/c", None)], cutoff=50.0)
    ['e/a']
    """
    if cutoff is None:
        return []
    return [p for p, t in files if t is not None and t < cutoff]


def expired_command_files(files: Iterable[tuple[str, float]], cutoff: float | None,
                          last_tick_t: float | None) -> list[str]:
    """Command files ``(path, written at)`` older than ``cutoff`` that a tick after them
    took in (every tick reads the commands not taken in yet and applies or rejects each,
    so ``written at < last_tick_t`` means handled). A command no tick saw is kept."""
    if cutoff is None or last_tick_t is None:
        return []
    return [p for p, t in files if t < cutoff and t < last_tick_t]


def expired_job_files(jobs: Iterable[tuple[str, str, float | None]], cutoff: float | None,
                      active: set[str]) -> list[str]:
    """Job result files ``(path, job id, finished at)`` finished before ``cutoff``; never
    a job in ``active`` (the running one, or one a pending action names) nor one with no
    finish time (unreadable: kept).

    >>> expired_job_files([("j/a.json", "a", 1.0), ("j/b.json", "b", 1.0), ("j/c.json", "c", 90.0)],
    ...                   cutoff=50.0, active={"b"})
    ['j/a.json']
    """
    if cutoff is None:
        return []
    return [p for p, job, t in jobs if job not in active and t is not None and t < cutoff]


def active_jobs(state: "ControllerState") -> set[str]:
    """Job ids the controller may still read: the current one and any a pending action names."""
    out = {a.job_id for a in state.pending_actions if a.job_id}
    if state.retrain_job_id:
        out.add(state.retrain_job_id)
    return out


def protected_versions(state: "ControllerState", aliases: dict[str, str]) -> dict[str, str]:
    """Versions housekeeping never retires, each with why.

    >>> from lifelong_ray.policy.model import ControllerState
    >>> s = ControllerState(model="m", champion="v2", previous_champion="v1", candidate="v3",
    ...                     rollout="canary", weights={"v2": 90, "v3": 10})
    >>> sorted(protected_versions(s, {"shadow": "v4"}).items())
    [('v1', 'the previous champion'), ('v2', 'the champion'), ('v3', 'in rollout (canary)'), ('v4', 'alias shadow')]
    """
    keep: dict[str, str] = {}

    def add(version: str | None, why: str) -> None:
        if version and version not in keep:
            keep[version] = why

    add(state.champion, "the champion")
    add(state.previous_champion, "the previous champion")
    add(state.candidate, f"in rollout ({state.rollout.value})")
    for v, w in state.weights.items():
        if w > 0:
            add(v, "serves traffic")
    for v in state.retiring:
        add(v, "being retired from serving")
    for v in sorted(required_versions(state)):
        add(v, "Serve must run it")
    for alias, v in sorted(aliases.items()):
        add(v, f"alias {alias}")
    for a in state.pending_actions:
        for v in (a.version, a.champion, a.shadow, *a.weights):
            add(v, f"named by a pending {a.kind.value} action")
    return keep


def _day(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d")


def versions_to_retire(versions: Iterable[tuple[str, float | None]], cutoff: float | None,
                       protected: dict[str, str]) -> dict[str, str]:
    """Versions ``(name, created at)`` created before ``cutoff`` and not protected, with
    the reason. A version with no creation time (unreadable metadata) is kept."""
    if cutoff is None:
        return {}
    return {v: f"created {_day(t)}, before the retention cutoff {_day(cutoff)}"
            for v, t in versions if v not in protected and t is not None and t < cutoff}


@dataclass
class Inventory:
    """What exists on storage, with the times the decisions need."""

    event_files: list[tuple[str, float | None]] = field(default_factory=list)
    command_files: list[tuple[str, float]] = field(default_factory=list)
    job_files: list[tuple[str, str, float | None]] = field(default_factory=list)
    versions: list[tuple[str, float | None]] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass
class Plan:
    """What one housekeeping pass deletes (besides the log partitions)."""

    event_files: list[str] = field(default_factory=list)
    command_files: list[str] = field(default_factory=list)
    job_files: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)  # version -> reason

    def empty(self) -> bool:
        return not (self.event_files or self.command_files or self.job_files or self.versions)


def plan_housekeeping(inv: Inventory, state: "ControllerState", retention_days: float | None, now: float) -> Plan:
    """The pure decision of one pass: what expires (see the module doc)."""
    cut = retention_cutoff(now, retention_days)
    return Plan(
        event_files=expired_event_files(inv.event_files, cut),
        command_files=expired_command_files(inv.command_files, cut, state.last_tick_t),
        job_files=expired_job_files(inv.job_files, cut, active_jobs(state)),
        versions=versions_to_retire(inv.versions, cut, protected_versions(state, inv.aliases)))


# -- effects -------------------------------------------------------------------------
def _event_file_time(storage: "Storage", path: str) -> float | None:
    """Newest event time in an audit-log file (from its name when it starts with one)."""
    m = _EVENT_TIME_NAME.match(path.rsplit("/", 1)[-1])
    if m:
        return int(m.group(1)) / 1e6
    try:
        times = [json.loads(line)["t"] for line in storage.read_bytes(path).decode().splitlines() if line.strip()]
        return float(max(times)) if times else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def take_inventory(storage: "Storage", registry: "Registry", model: str) -> Inventory:
    """Read what the decisions need: names and times of events, commands, jobs, versions."""
    from lifelong_ray.control.commands import commands_prefix

    inv = Inventory()
    for path in storage.list(f"models/{model}/events", suffix=".jsonl"):
        inv.event_files.append((path, _event_file_time(storage, path)))
    for path in storage.list(commands_prefix(model), suffix=".json"):
        m = _COMMAND_NAME.match(path.rsplit("/", 1)[-1])
        if m:
            inv.command_files.append((path, int(m.group(1)) / 1000.0))
    for path in storage.list(f"models/{model}/jobs", suffix=".json", recursive=False):
        job = path.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            finished = storage.read_json(path).get("finished_at")
            inv.job_files.append((path, job, float(finished) if finished is not None else None))
        except (OSError, ValueError, TypeError, AttributeError):
            inv.job_files.append((path, job, None))
    for v in registry.list_versions():
        try:
            created = registry.metadata(v).get("created_at")
            inv.versions.append((v, float(created) if created is not None else None))
        except Exception:  # noqa: BLE001 - a version whose metadata cannot be read is kept
            inv.versions.append((v, None))
    inv.aliases = registry.aliases()
    return inv


def retire_version_files(storage: "Storage", model: str, version: str, reason: str, now: float) -> None:
    """Tombstone first, then the manifest (the version is no longer committed, nothing
    loads it), then the artifacts. Safe to repeat."""
    from lifelong_ray.registry.store import ARTIFACT_FILES, CLAIM, MANIFEST

    vdir = f"models/{model}/versions/{version}"
    storage.write_json(f"{vdir}/{RETIRED}", {"version": version, "retired_at": now, "reason": reason})
    for name in (MANIFEST, *ARTIFACT_FILES, CLAIM):  # the tombstone keeps the name taken
        _delete(storage, f"{vdir}/{name}")


def _delete(storage: "Storage", path: str) -> None:
    try:
        storage.fs.delete_file(storage.path(path))
    except FileNotFoundError:
        pass


def apply_plan(storage: "Storage", model: str, plan: Plan, now: float) -> None:
    for path in (*plan.event_files, *plan.command_files, *plan.job_files):
        _delete(storage, path)
    for version, reason in sorted(plan.versions.items()):
        retire_version_files(storage, model, version, reason, now)


@dataclass
class HousekeepingReport:
    t: float
    partitions_deleted: list[str] = field(default_factory=list)
    files_compacted: int = 0
    days_compacted: int = 0
    event_files: int = 0
    command_files: int = 0
    job_files: int = 0
    versions_retired: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "partitions_deleted": self.partitions_deleted, "files_compacted": self.files_compacted,
                "days_compacted": self.days_compacted, "event_files": self.event_files,
                "command_files": self.command_files, "job_files": self.job_files,
                "versions_retired": self.versions_retired, "errors": self.errors}

    def removed_anything(self) -> bool:
        return bool(self.partitions_deleted or self.event_files or self.command_files or self.job_files
                    or self.versions_retired)

    def reason(self, retention_days: float | None) -> str:
        parts = [f"{len(self.partitions_deleted)} log partitions", f"{self.event_files} event files",
                 f"{self.command_files} command files", f"{self.job_files} job files"]
        days = "off" if retention_days is None else f"{retention_days:g} days"
        text = f"retention {days}: expired " + ", ".join(parts)
        if self.versions_retired:
            text += "; retired " + ", ".join(f"{v} ({why})" for v, why in sorted(self.versions_retired.items()))
        return text


def run_housekeeping(storage: "Storage", cfg: "Config", registry: "Registry", state: "ControllerState",
                     now: float) -> HousekeepingReport:
    """One pass (see the module doc). Each step's failure is recorded; the others still run."""
    from lifelong_ray.data.retention import apply_retention

    rep = HousekeepingReport(t=now)
    model = cfg.model.name
    try:
        ret = apply_retention(storage, cfg, now)
        rep.partitions_deleted = ret.deleted
        rep.days_compacted = len(ret.compacted)
        rep.files_compacted = sum(n for _, n in ret.compacted)
    except Exception as err:  # noqa: BLE001 - the other steps still run
        log.exception("housekeeping of %s: log retention/compaction failed", model)
        rep.errors.append(f"logs: {type(err).__name__}: {err}")
    if cfg.data.retention_days is None:
        return rep
    try:
        plan = plan_housekeeping(take_inventory(storage, registry, model), state, cfg.data.retention_days, now)
        apply_plan(storage, model, plan, now)
        rep.event_files, rep.command_files = len(plan.event_files), len(plan.command_files)
        rep.job_files, rep.versions_retired = len(plan.job_files), plan.versions
    except Exception as err:  # noqa: BLE001
        log.exception("housekeeping of %s: expiring events/commands/jobs/versions failed", model)
        rep.errors.append(f"expiry: {type(err).__name__}: {err}")
    return rep


class Housekeeper:
    """Runs :func:`run_housekeeping` when due; :meth:`maybe_run` never raises.

    The last run's time is read from (and written to) ``housekeeping.json``, so a
    controller that restarts often does not run it on every start."""

    def __init__(self, cfg: "Config", storage: "Storage", registry: "Registry", audit: "AuditLog") -> None:
        self.cfg, self.storage, self.registry, self.audit = cfg, storage, registry, audit
        self.last_run: float | None = None
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            self.last_run = self.storage.read_json(report_path(self.cfg.model.name), default={}).get("t")
        except Exception:  # noqa: BLE001 - an unreadable report just means "never ran"
            self.last_run = None

    def maybe_run(self, state: "ControllerState", now: float) -> HousekeepingReport | None:
        try:
            self._load()
            if not is_due(self.last_run, now, self.cfg.data.compaction_interval_seconds):
                return None
            self.last_run = now
            rep = run_housekeeping(self.storage, self.cfg, self.registry, state, now)
            if rep.removed_anything():
                self.audit.append([Event(t=now, kind=EventKind.RETENTION_APPLIED, model=self.cfg.model.name,
                                         reason=rep.reason(self.cfg.data.retention_days), data=rep.to_json())],
                                  key=f"housekeeping-{int(now * 1000):015d}")
            self.storage.write_json(report_path(self.cfg.model.name), rep.to_json())
            return rep
        except Exception:  # noqa: BLE001 - housekeeping must never stop the tick
            log.exception("housekeeping of %s failed; next try in %s s", self.cfg.model.name,
                          self.cfg.data.compaction_interval_seconds)
            return None
