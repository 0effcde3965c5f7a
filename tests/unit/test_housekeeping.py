"""Housekeeping: retention is on by default and scheduled by the controller; what
expires is decided by pure functions (tested alone), the effects on a real storage
with an injected clock; the champion, the previous champion and a version in rollout
are never retired, and a retired version's name is never reused."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from lifelong_ray.clock import Clock
from lifelong_ray.config import EstimatorConfig, parse_config
from lifelong_ray.control import controller as ctl
from lifelong_ray.control import housekeeping as hk
from lifelong_ray.control.commands import commands_prefix, submit_command
from lifelong_ray.data.logs import ModelLogs
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import FeatureTransform, columns_from_table
from lifelong_ray.events import AuditLog, Event, EventKind
from lifelong_ray.policy.lifecycle import RolloutStage
from lifelong_ray.policy.model import Action, ActionKind, ControllerState
from lifelong_ray.registry.store import Registry
from lifelong_ray.storage import Storage
from lifelong_ray.training.retrain import job_path

DAY = 86400.0
T0 = 1.7e9             # 2023-11-14
NOW = T0 + 60 * DAY    # the injected "now": T0 is 60 days old


class FixedClock(Clock):
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def _cfg(root: str, **data):
    return parse_config({
        "model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
        "training": {"runner": "local"}, "storage": {"root": root}, "data": {"replay_capacity": 0, **data}})


def _register(reg: Registry, cfg, created: list[float]) -> None:
    schema = Schema(cfg.model)
    ref = pa.table({"x": np.linspace(-1, 1, 16)})
    transform = FeatureTransform.fit(columns_from_table(ref, schema), schema)
    est = EstimatorConfig(kind="logistic")
    for i, t in enumerate(created):
        torch.manual_seed(0)
        from lifelong_ray.training.estimators import build_module

        reg.register(state_dict=build_module(est, transform.n_out, 2).state_dict(), transform=transform,
                     estimator=est, n_in=transform.n_out, classes=[0, 1], reference=ref,
                     metadata={"job_id": f"reg-{i}-{t}", "created_at": t})


def _event(t: float) -> Event:
    return Event(t=t, kind=EventKind.PAUSED, model="m", reason="test")


# -- defaults --------------------------------------------------------------------------
def test_retention_is_on_by_default_and_null_disables_it():
    cfg = _cfg("/tmp/x")
    assert cfg.data.retention_days == 30 and cfg.data.compaction_interval_seconds == 3600
    off = cfg.with_overrides(data={"retention_days": None, "compaction_interval_seconds": None})
    assert off.data.retention_days is None and off.data.compaction_interval_seconds is None
    assert hk.plan_housekeeping(hk.Inventory(event_files=[("e", 0.0)], versions=[("v0001", 0.0)]),
                                ControllerState(model="m", last_tick_t=NOW), None, NOW).empty()


# -- pure decisions --------------------------------------------------------------------
def test_protected_versions_cover_every_version_in_use():
    s = ControllerState(model="m", champion="v0005", previous_champion="v0004", candidate="v0006",
                        rollout=RolloutStage.SHADOW, weights={"v0005": 100.0, "v0001": 0.0},
                        retiring={"v0003": T0},
                        pending_actions=[Action(kind=ActionKind.RETIRE_VERSION, version="v0002")])
    keep = hk.protected_versions(s, {"pinned": "v0007"})
    assert keep == {"v0005": "the champion", "v0004": "the previous champion", "v0006": "in rollout (shadow)",
                    "v0003": "being retired from serving", "v0007": "alias pinned",
                    "v0002": "named by a pending retire_version action"}
    versions = [(f"v{i:04d}", T0) for i in range(1, 9)] + [("v0009", NOW - DAY), ("v0010", None)]
    retire = hk.versions_to_retire(versions, cutoff=NOW - 30 * DAY, protected=keep)
    # v0001 (weight 0) and v0008 go; new (v0009) and unreadable (v0010) versions stay
    assert sorted(retire) == ["v0001", "v0008"]
    assert retire["v0001"] == "created 2023-11-14, before the retention cutoff 2023-12-14"


def test_every_rollout_stage_protects_its_candidate():
    for stage in (RolloutStage.SHADOW, RolloutStage.APPROVAL, RolloutStage.CANARY, RolloutStage.PROBATION):
        s = ControllerState(model="m", champion="v0002", candidate="v0001", rollout=stage)
        assert hk.versions_to_retire([("v0001", 0.0)], cutoff=T0, protected=hk.protected_versions(s, {})) == {}


def test_commands_expire_only_once_old_and_taken_in_by_a_later_tick():
    files = [("old", T0), ("recent", NOW - DAY)]
    cut = NOW - 30 * DAY
    assert hk.expired_command_files(files, cut, last_tick_t=NOW) == ["old"]
    assert hk.expired_command_files(files, cut, last_tick_t=None) == []   # no tick ever read them
    assert hk.expired_command_files(files, cut, last_tick_t=T0 - 1) == []  # written after the last tick
    assert hk.expired_command_files(files, None, last_tick_t=NOW) == []


def test_the_running_job_and_pending_jobs_never_expire():
    s = ControllerState(model="m", retrain_job_id="run",
                        pending_actions=[Action(kind=ActionKind.START_RETRAIN, job_id="queued")])
    jobs = [("j/run.json", "run", T0), ("j/queued.json", "queued", T0), ("j/old.json", "old", T0),
            ("j/new.json", "new", NOW), ("j/bad.json", "bad", None)]
    assert hk.expired_job_files(jobs, NOW - 30 * DAY, hk.active_jobs(s)) == ["j/old.json"]


def test_event_files_expire_by_their_newest_event():
    assert hk.expired_event_files([("a", T0), ("b", NOW), ("c", None)], NOW - 30 * DAY) == ["a"]
    assert hk.expired_event_files([("a", T0)], None) == []


# -- effects on storage, with an injected clock -------------------------------------------
def _populated(tmp_path):
    cfg = _cfg(str(tmp_path), compact_min_files=2)
    st = Storage(cfg.storage.root)
    reg = Registry(st, "m")
    # v0001 old, v0002 old (previous champion), v0003 old (champion), v0004 new, v0005 old and the newest name
    _register(reg, cfg, [T0, T0, T0, NOW - DAY, T0])
    reg.set_alias("champion", "v0003")
    audit = AuditLog(st, "m")
    audit.append([_event(T0)], key="tick-000000000001")
    audit.append([_event(T0 + 1)])                        # unkeyed: the time is in the name
    audit.append([_event(NOW - DAY)], key="tick-000000000002")
    old_cmd = submit_command(st, "m", "pause", who="ana", why="old", now=T0)
    new_cmd = submit_command(st, "m", "resume", who="ana", why="new", now=NOW - DAY)
    for job, t in (("old", T0), ("running", T0), ("new", NOW - DAY)):
        st.write_json(job_path("m", job), {"job_id": job, "status": "ok", "finished_at": t})
    logs = ModelLogs(st, "m")
    for i in range(3):
        logs.append_feedback([f"old{i}"], [1], t=T0 + i)          # expires
        logs.append_feedback([f"mid{i}"], [1], t=NOW - 5 * DAY + i)  # compacted (3 files > 2)
    state = ControllerState(model="m", champion="v0003", previous_champion="v0002", weights={"v0003": 100.0},
                            retrain_job_id="running", last_tick_t=NOW - 1)
    return cfg, st, reg, audit, state, (old_cmd, new_cmd)


def test_housekeeping_expires_old_data_and_keeps_what_is_in_use(tmp_path):
    cfg, st, reg, audit, state, (old_cmd, new_cmd) = _populated(tmp_path)
    rep = hk.Housekeeper(cfg, st, reg, audit).maybe_run(state, NOW)
    assert rep is not None and rep.errors == []
    # logs: the old day is gone, the recent past day is compacted into one file
    assert [p.rsplit("/", 1)[-1] for p in rep.partitions_deleted] == ["date=2023-11-14"]
    assert rep.days_compacted == 1 and rep.files_compacted == 3
    assert len(st.list(ModelLogs(st, "m").feedback_prefix)) == 1
    # events: only the recent one is left (plus the retention_applied record)
    kinds = [(e.kind, e.t) for e in audit.read()]
    assert (EventKind.PAUSED, NOW - DAY) in kinds and (EventKind.PAUSED, T0) not in kinds
    assert (EventKind.PAUSED, T0 + 1) not in kinds and rep.event_files == 2
    # commands: the old handled one went, the recent one stays
    names = [p.rsplit("/", 1)[-1] for p in st.list(commands_prefix("m"))]
    assert len(names) == 1 and new_cmd.id in names[0] and old_cmd.id not in names[0]
    # jobs: the old finished one went; the running one stays however old
    assert sorted(p.rsplit("/", 1)[-1] for p in st.list("models/m/jobs")) == ["new.json", "running.json"]
    # versions: the champion, the previous champion and the new one stay
    assert reg.list_versions() == ["v0002", "v0003", "v0004"]
    assert sorted(rep.versions_retired) == ["v0001", "v0005"]
    assert st.list("models/m/versions/v0005") == ["models/m/versions/v0005/RETIRED.json"]
    # the audit log says what went and why
    (ev,) = audit.read(kinds={EventKind.RETENTION_APPLIED})
    assert "v0001 (created 2023-11-14" in ev.reason and "1 log partitions" in ev.reason
    assert ev.data["versions_retired"].keys() == {"v0001", "v0005"}
    # a retired name is never reused
    _register(reg, cfg, [NOW])
    assert reg.list_versions()[-1] == "v0006"


def test_retention_off_keeps_everything_but_still_compacts(tmp_path):
    cfg, st, reg, audit, state, _ = _populated(tmp_path)
    cfg = cfg.with_overrides(data={"retention_days": None})
    rep = hk.Housekeeper(cfg, st, reg, audit).maybe_run(state, NOW)
    assert not rep.removed_anything() and rep.days_compacted == 2
    assert reg.list_versions() == ["v0001", "v0002", "v0003", "v0004", "v0005"]
    assert len(st.list(commands_prefix("m"))) == 2 and len(st.list("models/m/jobs")) == 3
    assert audit.read(kinds={EventKind.RETENTION_APPLIED}) == []


def test_housekeeping_runs_on_its_interval_across_restarts(tmp_path):
    cfg, st, reg, audit, state, _ = _populated(tmp_path)
    keeper = hk.Housekeeper(cfg, st, reg, audit)
    assert keeper.maybe_run(state, NOW) is not None
    assert keeper.maybe_run(state, NOW + 3599) is None
    assert hk.Housekeeper(cfg, st, reg, audit).maybe_run(state, NOW + 60) is None  # a restart: not due yet
    assert keeper.maybe_run(state, NOW + 3600) is not None
    off = cfg.with_overrides(data={"compaction_interval_seconds": None})
    assert hk.Housekeeper(off, st, reg, audit).maybe_run(state, NOW + 10 * DAY) is None


def test_a_failing_step_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    cfg, st, reg, audit, state, _ = _populated(tmp_path)

    def boom(*a, **k):
        raise OSError("disk on fire")

    monkeypatch.setattr("lifelong_ray.data.retention.apply_retention", boom)
    rep = hk.Housekeeper(cfg, st, reg, audit).maybe_run(state, NOW)
    assert rep.errors == ["logs: OSError: disk on fire"] and sorted(rep.versions_retired) == ["v0001", "v0005"]
    assert st.read_json(hk.report_path("m"))["errors"] == rep.errors
    monkeypatch.setattr(hk, "take_inventory", boom)
    monkeypatch.setattr(st, "write_json", boom)
    assert hk.Housekeeper(cfg, st, reg, audit).maybe_run(state, NOW + 2 * DAY) is None  # never raises


def test_the_controller_tick_runs_housekeeping_on_its_injected_clock(tmp_path):
    cfg, st, reg, audit, state, (old_cmd, _) = _populated(tmp_path)
    state = state.model_copy(update={"seq": 3, "paused": True, "last_tick_t": T0 - 10})
    st.write_json(ctl.state_path("m"), state.model_dump(mode="json"))
    c = ctl.Controller(cfg, clock=FixedClock(NOW))
    c.tick()  # takes the old command in (rejected: already paused), then housekeeping expires it
    assert [e.data.get("command_id") for e in audit.read(kinds={EventKind.COMMAND_REJECTED})] == [old_cmd.id]
    assert old_cmd.id not in "".join(st.list(commands_prefix("m")))
    assert "v0001" not in reg.list_versions() and "v0003" in reg.list_versions()
    assert st.read_json(hk.report_path("m"))["t"] == NOW
