"""A retrain cannot stay RUNNING forever: a dead task or one past training.timeout_seconds
ends as retrain_failed, and the next retrain can start. No Ray: fake task states."""

from __future__ import annotations

from lifelong_ray.config import parse_config
from lifelong_ray.control.executor import Executor
from lifelong_ray.events import EventKind
from lifelong_ray.policy.decide import decide
from lifelong_ray.policy.lifecycle import RetrainStage
from lifelong_ray.policy.model import Action, ActionKind, CommandKind, ControllerState, Observations, OperatorCommand
from lifelong_ray.registry.store import Registry
from lifelong_ray.storage import Storage
from lifelong_ray.training.retrain import job_path

CFG = parse_config({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
                    "training": {"min_rows": 100, "timeout_seconds": 600}, "drift": {"cooldown_seconds": 0}})


class FakeTasks:
    """Task states by ref: "running", "done" (returns its value) or an exception (raised by get)."""

    def __init__(self) -> None:
        self.state: dict[str, object] = {}
        self.cancelled: list[str] = []

    def done(self, ref):
        return self.state[ref] != "running"

    def get(self, ref):
        v = self.state[ref]
        if isinstance(v, BaseException):
            raise v
        return v

    def cancel(self, ref):
        self.cancelled.append(ref)


def _executor(tmp_path):
    storage = Storage(str(tmp_path))
    tasks = FakeTasks()
    ex = Executor(CFG, storage, Registry(storage, "m"), tasks=tasks)
    ex._jobs["j1"] = "ref1"
    return ex, tasks, storage


def test_a_running_task_is_left_alone(tmp_path):
    ex, tasks, _ = _executor(tmp_path)
    tasks.state["ref1"] = "running"
    assert ex.retrain_failure("j1") is None and "j1" in ex._jobs


def test_a_task_that_died_is_a_failed_retrain(tmp_path):
    ex, tasks, _ = _executor(tmp_path)
    tasks.state["ref1"] = RuntimeError("The worker died unexpectedly (SIGKILL)")
    out = ex.retrain_failure("j1")
    assert out.status == "failed" and out.job_id == "j1"
    assert "the retrain task died: RuntimeError: The worker died unexpectedly" in out.error
    assert ex.retrain_failure("j1") is None  # reported once


def test_a_task_that_ended_without_its_result_file_is_a_failed_retrain(tmp_path):
    ex, tasks, _ = _executor(tmp_path)
    tasks.state["ref1"] = {"status": "ok", "warnings": ["result file not written: OSError: disk full"]}
    out = ex.retrain_failure("j1")
    assert out.status == "failed" and "without writing its result file" in out.error and "disk full" in out.error


def test_a_task_whose_result_file_exists_is_read_by_the_observer(tmp_path):
    ex, tasks, storage = _executor(tmp_path)
    tasks.state["ref1"] = {"status": "ok"}
    storage.write_json(job_path("m", "j1"), {"job_id": "j1", "status": "ok"})
    assert ex.retrain_failure("j1") is None


def test_no_task_in_this_process_means_nothing_to_say(tmp_path):
    ex, _, _ = _executor(tmp_path)
    assert ex.retrain_failure("j-other") is None


def test_cancel_retrain_cancels_the_task(tmp_path):
    ex, tasks, _ = _executor(tmp_path)
    ex.execute(Action(kind=ActionKind.CANCEL_RETRAIN, job_id="j1"))
    ex.execute(Action(kind=ActionKind.CANCEL_RETRAIN, job_id="j1"))  # idempotent
    assert tasks.cancelled == ["ref1"] and "j1" not in ex._jobs


# -- the timeout decision (pure) ---------------------------------------------------------

def _running(started=1000.0) -> ControllerState:
    return ControllerState(model="m", champion="v0001", weights={"v0001": 100.0}, retrain=RetrainStage.RUNNING,
                           retrain_job_id="m-retrain-0001", retrain_count=1, retrain_started_t=started)


def test_a_hung_retrain_is_cancelled_at_its_timeout_and_fails():
    assert decide(_running(), Observations(), CFG, 1599.0).events == []
    d = decide(_running(), Observations(), CFG, 1600.0)
    (ev,) = d.events
    assert ev.kind == EventKind.RETRAIN_FAILED and "training.timeout_seconds 600s" in ev.reason
    assert [(a.kind, a.job_id) for a in d.actions] == [(ActionKind.CANCEL_RETRAIN, "m-retrain-0001")]
    assert d.state.retrain == RetrainStage.IDLE


def test_after_a_failed_retrain_an_operator_retrain_starts():
    from lifelong_ray.policy.model import RetrainOutcome

    died = RetrainOutcome(job_id="m-retrain-0001", status="failed", error="the retrain task died: killed")
    d = decide(_running(), Observations(retrain_outcome=died), CFG, 1100.0)
    assert [e.kind for e in d.events] == [EventKind.RETRAIN_FAILED] and "killed" in d.events[0].reason
    cmd = OperatorCommand(id="c1", kind=CommandKind.RETRAIN, model="m", who="ana", why="again", t=1101.0)
    d2 = decide(d.state, Observations(commands=[cmd], labeled_total=1000), CFG, 1102.0)
    assert EventKind.RETRAIN_STARTED in [e.kind for e in d2.events]
    assert d2.state.retrain == RetrainStage.RUNNING and d2.state.retrain_job_id == "m-retrain-0002"


def test_a_job_that_reported_in_time_is_not_cancelled():
    from lifelong_ray.policy.model import RetrainOutcome

    failed = RetrainOutcome(job_id="m-retrain-0001", status="failed", error="WindowTooSmall")
    d = decide(_running(), Observations(retrain_outcome=failed), CFG, 5000.0)
    assert d.actions == [] and "WindowTooSmall" in d.events[0].reason


def test_no_timeout_when_it_is_off():
    off = CFG.with_overrides(training={"timeout_seconds": None})
    assert decide(_running(), Observations(), off, 1e9).state.retrain == RetrainStage.RUNNING


def test_the_controller_checks_the_running_task_every_tick(tmp_path, monkeypatch):
    from lifelong_ray.clock import Clock
    from lifelong_ray.control import controller as ctl
    from lifelong_ray.events import AuditLog

    class ManualClock(Clock):
        t = 1000.0

        def now(self):
            return self.t

    cfg = CFG.with_overrides(storage={"root": str(tmp_path)})
    storage = Storage(cfg.storage.root)
    storage.write_json(ctl.state_path("m"), _running().model_dump(mode="json"))
    clock = ManualClock()
    def refused(self, a):  # re-attaching needs Ray: refused here, so it is retried (even where the
        raise RuntimeError("no Ray")  # session's integration tests left a Ray running in this process)

    monkeypatch.setattr(Executor, "_start_retrain", refused)
    c = ctl.Controller(cfg, clock=clock)
    tasks = FakeTasks()
    c.executor = Executor(cfg, storage, c.registry, tasks=tasks)
    c.executor._start_retrain = lambda a: c.executor._jobs.__setitem__(a.job_id, "ref1")
    tasks.state["ref1"] = "running"
    clock.t = 1010.0
    c.tick()
    assert c.state.retrain == RetrainStage.RUNNING and c.executor._jobs == {"m-retrain-0001": "ref1"}
    tasks.state["ref1"] = RuntimeError("worker killed by SIGKILL")
    clock.t = 1011.0
    c.tick()
    assert c.state.retrain == RetrainStage.IDLE
    (ev,) = [e for e in AuditLog(storage, "m").read() if e.kind == EventKind.RETRAIN_FAILED]
    assert "SIGKILL" in ev.reason
