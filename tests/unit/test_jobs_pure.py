"""The pure parts of the Ray jobs: ``jobs/retrain.py --wait`` follows its own command's
retrain (by command id, then job id); ``jobs/backfill.py`` streams a source in bounded
day chunks and gives rows without a request_id a content id."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lifelong_ray.events import Event, EventKind

JOBS = Path(__file__).parents[2] / "jobs"
sys.path.insert(0, str(JOBS))  # the jobs import their _common helper as a sibling


def _job(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_job", JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


retrain_job, backfill_job = _job("retrain"), _job("backfill")


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


DAY, BASE = 86_400.0, 1_767_225_600.0  # 2026-01-01 00:00 UTC (times under 1e8 are a sample clock)


def _stream(days_of_rows: list[list[float]]) -> list[pa.Table]:
    return [pa.table({"t": pa.array([BASE + d * DAY + i for i, d in enumerate(b)], pa.float64()),
                      "i": pa.array(np.arange(len(b)))}) for b in days_of_rows]


def test_day_chunks_keep_every_row_once_and_bound_what_is_held():
    batches = _stream([[0] * 5 + [1] * 3, [1] * 4 + [0], [2] * 7, [0, 1, 2]])
    chunks = [(day, rows.num_rows, {int((t - BASE) // DAY) for t in rows.column("t").to_pylist()})
              for day, rows in backfill_job.day_chunks(iter(batches), now=BASE, chunk_rows=4)]
    # a day is written once it holds 4 rows; when all days hold 8, all are written; the rest at the end
    assert chunks == [("2026-01-01", 5, {0}),   # batch 1
                      ("2026-01-02", 7, {1}),   # batch 2: day 2 reaches 4 (3 + 4)
                      ("2026-01-03", 7, {2}),   # batch 3
                      ("2026-01-01", 2, {0}),   # the rest at the end: batch 2's day-1 row,
                      ("2026-01-02", 1, {1}), ("2026-01-03", 1, {2})]  # and batch 4
    assert sum(n for _, n, _ in chunks) == sum(b.num_rows for b in batches)
    # three days of 3 rows each: no day reaches 4, but together they pass 2 x 4: all are written
    spread = backfill_job.day_chunks(iter(_stream([[0, 1, 2] * 3, [0]])), now=BASE, chunk_rows=4)
    assert [(d, rows.num_rows) for d, rows in spread] == \
        [("2026-01-01", 3), ("2026-01-02", 3), ("2026-01-03", 3), ("2026-01-01", 1)]


def test_day_chunks_put_rows_without_time_on_the_day_of_now():
    batch = pa.table({"t": pa.array([None, BASE], pa.float64())})
    assert [(d, c.num_rows) for d, c in backfill_job.day_chunks([batch], now=BASE + 3 * DAY)] == \
        [("2026-01-01", 1), ("2026-01-04", 1)]


def test_content_ids_are_stable_across_runs_and_differ_by_content():
    table = pa.table({"x": [1.0, 1.0, 2.0, 1.0], "c": ["a", "a", "a", "b"], "t": [5.0, 5.0, 5.0, 5.0]})
    first = backfill_job.content_ids(table, ["x", "c", "t"]).to_pylist()
    assert first == backfill_job.content_ids(table, ["x", "c", "t"]).to_pylist()
    assert first[0] == first[1] and len(set(first)) == 3 and all(i.startswith("backfill-") for i in first)


def test_the_backtest_job_checks_its_command_script_before_replaying(tmp_path):
    from _common import JobInputError

    job = _job("backtest")
    base = ["--simulate", "abrupt", "--n", "3000", "--bootstrap", "1000", "--report-dir", str(tmp_path / "r")]
    bad = tmp_path / "ops.yaml"
    bad.write_text("- {at_sample: -5, kind: pause}\n")
    with pytest.raises(JobInputError, match="command 0: at_sample"):
        job._check(job.build_parser().parse_args(base + ["--commands", str(bad)]))
    with pytest.raises(JobInputError, match="no such --commands file"):
        job._check(job.build_parser().parse_args(base + ["--commands", str(tmp_path / "none.yaml")]))
    bad.write_text("- {at_sample: 5, kind: pause, who: ana}\n")
    args = job.build_parser().parse_args(base + ["--commands", str(bad), "--approval", "never"])
    job._check(args)
    assert args.commands == str(bad.resolve()) and args.approval == "never"
