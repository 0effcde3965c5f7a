"""Backtest as a Ray job: replay a recorded stream through the live policy, router and trainer.

    ray job submit --working-dir . -- python jobs/backtest.py --data FILE --report-dir /abs/dir
    ray job submit --working-dir . -- python jobs/backtest.py --simulate abrupt --n 3000 --report-dir /abs/dir

It is ``lifelong backtest`` (:func:`lifelong_ray.cli.cmd_backtest`: the same
:class:`~lifelong_ray.sim.backtest.Backtest` and report writer) with its inputs checked
first, so a wrong path or label fails in a second with a message instead of a traceback.
``--simulate KIND`` first writes a seeded stream with known drift points into the report
dir (``lifelong simulate``), handy for a smoke test of a cluster. The report is
``REPORT_DIR/report.json`` (+ ``report.png``); the job's last stdout line is
``{"report": path, "summary": {...}}``.

Under ``ray job submit`` the working dir is a temporary copy: give ``--report-dir`` as an
absolute path (on shared storage on a multi-node cluster), or the report is lost with it.
Exit status: 0 done, 2 bad input, 1 the backtest failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import FAILED, JobInputError, existing_file, fail, load  # noqa: E402

JOB = "backtest.py"


def build_parser() -> argparse.ArgumentParser:
    from lifelong_ray.sim.streams import GENERATORS

    p = argparse.ArgumentParser(prog="jobs/backtest.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="recorded stream: parquet or CSV with features, a label column, optional t")
    src.add_argument("--simulate", choices=sorted(GENERATORS), metavar="KIND",
                     help=f"generate a seeded drifting stream first; one of {', '.join(sorted(GENERATORS))}")
    p.add_argument("--n", type=int, default=4000, help="--simulate: rows (default 4000)")
    p.add_argument("--seed", type=int, default=0, help="--simulate: seed")
    p.add_argument("--drift-at", default=None, help="known drift onsets N,M,... (row index)")
    p.add_argument("--config", help="the model's config (default: schema inferred from the file)")
    p.add_argument("--label", help="label column (default: the config's, the sidecar's, or y)")
    p.add_argument("--label-delay", type=int, default=200, help="samples before a row's label is revealed")
    p.add_argument("--bootstrap", type=int, default=2000, help="labeled history rows that train the first version")
    p.add_argument("--report-dir", default="runs/backtest", help="where report.json/png go (absolute under a job)")
    p.add_argument("--commands", help="YAML/JSON list of operator commands {at_sample, kind, who, why, version?}")
    p.add_argument("--approval", choices=("auto", "never"), default="auto",
                   help="a rollout held for approval: auto-approve it, or never")
    p.add_argument("--approve-after", type=int, default=0, help="samples a held candidate waits before auto-approval")
    return p


def _check(args: argparse.Namespace) -> None:
    """Raise :class:`JobInputError` for inputs the backtest would choke on."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    for name in ("label_delay", "bootstrap", "n", "approve_after"):
        if getattr(args, name) < (1 if name == "n" else 0):
            raise JobInputError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.commands:
        from lifelong_ray.sim.operators import load_commands

        args.commands = existing_file(args.commands, "--commands file", (".yaml", ".yml", ".json"))
        try:
            load_commands(args.commands)
        except ValueError as err:
            raise JobInputError(f"--commands {args.commands}: {err}") from None
    if args.config:
        cfg = load(args.config)
        args.label = args.label or cfg.model.label.name
    report_dir = Path(args.report_dir)
    if "://" in args.report_dir:
        raise JobInputError("--report-dir must be a local (or mounted) directory")
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise JobInputError(f"cannot create --report-dir {args.report_dir}: {err}") from None
    if args.data is None:
        if args.n <= args.bootstrap:
            raise JobInputError(f"--n {args.n} must be larger than --bootstrap {args.bootstrap}: nothing would be "
                                f"replayed")
        return
    args.data = existing_file(args.data, "--data file")
    if args.data.lower().endswith(".csv"):
        table = pacsv.read_csv(args.data)
        columns, rows = table.column_names, table.num_rows
    else:
        meta = pq.read_metadata(args.data)
        columns, rows = meta.schema.to_arrow_schema().names, meta.num_rows
    label = args.label
    if label is None:
        from lifelong_ray.sim.simulate import read_sidecar

        label = (read_sidecar(args.data) or {}).get("label", "y")
    if label not in columns:
        raise JobInputError(f"label column {label!r} is not in {args.data} (columns: {columns}); pass --label")
    if rows <= args.bootstrap:
        raise JobInputError(f"{args.data} has {rows} rows, not more than --bootstrap {args.bootstrap}: "
                            f"nothing would be replayed")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check(args)
    except JobInputError as err:
        fail(JOB, str(err))
    if args.simulate:
        from lifelong_ray.sim.simulate import simulate

        data = str(Path(args.report_dir).resolve() / f"{args.simulate}.parquet")
        try:
            simulate(args.simulate, data, n=args.n, seed=args.seed)
        except ValueError as err:
            fail(JOB, f"--simulate {args.simulate}: {err}")
        args.data = data

    from lifelong_ray.cli import main as lifelong

    argv_bt = ["backtest", "--data", args.data, "--label-delay", str(args.label_delay),
               "--bootstrap", str(args.bootstrap), "--report-dir", args.report_dir,
               "--approval", args.approval, "--approve-after", str(args.approve_after)]
    for flag, value in (("--config", args.config), ("--label", args.label), ("--drift-at", args.drift_at),
                        ("--commands", args.commands)):
        if value is not None:
            argv_bt += [flag, str(value)]
    try:
        code = lifelong(argv_bt)
    except SystemExit as err:  # argparse of `lifelong backtest` (e.g. a bad --drift-at)
        code = err.code if isinstance(err.code, int) else 2
    if code != 0:
        return code
    report = Path(args.report_dir).resolve() / "report.json"
    if not report.is_file():
        fail(JOB, f"the backtest ended without writing {report}", FAILED)
    print(json.dumps({"report": str(report), "summary": json.loads(report.read_text())["summary"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
