"""``jobs/retrain.py --wait`` follows its own command's retrain, by command id and job id."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lifelong_ray.events import Event, EventKind

_SPEC = importlib.util.spec_from_file_location("retrain_job", Path(__file__).parents[2] / "jobs" / "retrain.py")
retrain_job = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(retrain_job)


def ev(kind: str, t: float, **data) -> Event:
    return Event(t=t, kind=EventKind(kind), model="m", version=data.pop("version", None), reason=kind, data=data)


OTHER_JOB = [ev("retrain_started", 1, job_id="m-retrain-0004", command_ids=[]),
             ev("retrain_finished", 2, job_id="m-retrain-0004", version="v0004")]


@pytest.mark.parametrize("events, expect", [
    # another retrain (a drift's) finishes first: not ours, still waiting
    (OTHER_JOB + [ev("retrain_requested", 3, command_id="c1")], None),
    (OTHER_JOB + [ev("retrain_started", 4, job_id="m-retrain-0005", command_ids=["c0", "c1"]),
                  ev("retrain_finished", 9, job_id="m-retrain-0005", version="v0005")], ("retrain_finished", "v0005")),
    ([ev("retrain_started", 4, job_id="m-retrain-0005", command_ids=["c1"]),
      ev("retrain_failed", 9, job_id="m-retrain-0005")], ("retrain_failed", None)),
    ([ev("command_rejected", 1, command_id="c9"), ev("command_rejected", 2, command_id="c1")],
     ("command_rejected", None)),
    ([ev("retrain_started", 4, job_id="m-retrain-0005", command_ids=["c1"])], None),  # still running
])
def test_command_outcome_follows_its_own_command(events, expect):
    got = retrain_job.command_outcome(events, "c1")
    assert (None if got is None else (got.kind.value, got.version)) == expect
