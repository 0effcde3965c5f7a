"""The ``lifelong`` command (also ``python -m lifelong_ray``).

    lifelong demo [--report-dir DIR] [--seed S] [--samples N]
    lifelong up CONFIG [--port P]        # Serve app + controller on the current Ray
    lifelong down [--stop-ray]
    lifelong ingest MODEL FILE [--config C]  # labeled batch -> labeled log (seeds the first version)
    lifelong quarantine MODEL [--config C] [--json]                 # quarantined rows, counts by reason
    lifelong quarantine release MODEL ID --why TEXT [--who NAME]    # release after review (audit log)
    lifelong compact CONFIG [--json]     # feed the replay reservoir, expire and compact old log partitions
    lifelong status [MODEL] [--json]
    lifelong history MODEL [--json] [--kind K]
    lifelong simulate --kind KIND --out FILE [--n N] [--seed S] [--noise P] [--drift-at N,M]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
import sys
from typing import Any

from lifelong_ray.config import ConfigError, load_config
from lifelong_ray.events import EventKind

NO_APP = "no lifelong app running on this Ray: run `lifelong up CONFIG`"


def _ray_cli() -> str:
    """The `ray` command of this interpreter's environment (it may not be on PATH)."""
    here = os.path.join(os.path.dirname(sys.executable), "ray")
    return here if os.path.exists(here) else "ray"


def _connect(start_if_missing: bool = False) -> None:
    """Join RAY_ADDRESS, or the local head; optionally start a local head that
    outlives this command (dashboard bound to loopback)."""
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), namespace="lifelong",
                 log_to_driver=False, configure_logging=False)
        return
    except ConnectionError:
        if not start_if_missing or os.environ.get("RAY_ADDRESS"):
            raise SystemExit("no Ray cluster found: start one with `ray start --head` or set RAY_ADDRESS")
    cpus = str(max(4, os.cpu_count() or 1))
    subprocess.run([_ray_cli(), "start", "--head", "--num-cpus", cpus, "--dashboard-host", "127.0.0.1",
                    "--include-dashboard", "false", "--disable-usage-stats"], check=True,
                   env={**os.environ, "RAY_TRAIN_V2_ENABLED": "1"})
    ray.init(address="auto", namespace="lifelong", log_to_driver=False, configure_logging=False)


def cmd_demo(args: argparse.Namespace) -> int:
    from lifelong_ray.sim.demo import DemoSettings, run_demo

    s = DemoSettings(report_dir=args.report_dir, seed=args.seed, config=args.config, port=args.port)
    if args.samples:
        s.samples = args.samples
        s.drift_at = min(s.drift_at, args.samples // 4)
    return run_demo(s)


def _config_of(model: str, config: str | None):
    """The model's config: from --config, else from its running controller."""
    import ray

    from lifelong_ray.config import parse_config

    if config:
        cfg = load_config(config)
        if cfg.model.name != model:
            raise SystemExit(f"{config} configures model {cfg.model.name!r}, not {model!r}")
        return cfg
    _connect()
    ctrls = _controllers()
    if model not in ctrls:
        raise SystemExit(NO_APP if not ctrls else f"model {model!r} is not served here; pass --config")
    return parse_config(ray.get(ctrls[model].config.remote(), timeout=30))


def cmd_ingest(args: argparse.Namespace) -> int:
    import time

    from lifelong_ray.control.controller import resolve_storage
    from lifelong_ray.data.ingest import ingest_table, read_batch
    from lifelong_ray.storage import Storage

    cfg = resolve_storage(_config_of(args.model, args.config))
    rep = ingest_table(Storage(cfg.storage.root), cfg, read_batch(args.file), time.time(), label=args.label,
                       source=Path(args.file).name)
    print(json.dumps(rep.to_json()))
    if rep.batch_reason is not None:
        print(f"quarantined {args.file} whole ({rep.batch_reason}): {rep.message}; review it with "
              f"`lifelong quarantine {args.model}`", file=sys.stderr)
        return 3
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    import getpass
    import time

    from lifelong_ray.control.controller import resolve_storage
    from lifelong_ray.data.ingest import release_quarantined
    from lifelong_ray.data.quarantine import IllegalTransition, NotReleasable, QuarantineStore, UnknownEntry
    from lifelong_ray.storage import Storage

    words = args.words
    if len(words) not in (1, 3) or (len(words) == 3 and words[0] != "release"):
        print("usage: lifelong quarantine MODEL | lifelong quarantine release MODEL ID --why TEXT", file=sys.stderr)
        return 2
    model = words[0] if len(words) == 1 else words[1]
    cfg = resolve_storage(_config_of(model, args.config))
    storage = Storage(cfg.storage.root)
    if len(words) == 3:
        if not args.why:
            print("a release needs --why: the review's conclusion goes into the audit log", file=sys.stderr)
            return 2
        try:
            entry = release_quarantined(storage, cfg, words[2], who=args.who or getpass.getuser(), why=args.why,
                                        now=time.time())
        except (UnknownEntry, IllegalTransition, NotReleasable) as err:
            print(f"not released: {err}", file=sys.stderr)
            return 3
        print(json.dumps(entry.to_json()) if args.json else
              f"released {entry.release['rows']} rows of {entry.id} into the labeled log ({entry.release['path']})")
        return 0
    store = QuarantineStore(storage, model)
    entries = store.list()
    if args.json:
        print(json.dumps({"counts": store.counts(), "entries": [e.to_json() for e in entries]}, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"quarantine of {model}: {store.counts() or 'empty'}")
    for col in ("id", "status", "reason", "rows", "source", "why"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(e.id, e.status.value, e.reason, str(e.rows), e.source, e.message)
    Console().print(table)
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    import time

    from lifelong_ray.control.controller import resolve_storage
    from lifelong_ray.data.retention import apply_retention
    from lifelong_ray.storage import Storage

    cfg = resolve_storage(load_config(args.config))
    rep = apply_retention(Storage(cfg.storage.root), cfg, time.time())
    if args.json:
        print(json.dumps(rep.to_json()))
    else:
        print(f"{cfg.model.name}: {len(rep.deleted)} partitions expired, {len(rep.compacted)} days compacted "
              f"({sum(n for _, n in rep.compacted)} files merged), {rep.replay_rows_fed} rows offered to the replay "
              f"reservoir")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ray import serve

    from lifelong_ray.control.actor import start_controller
    from lifelong_ray.control.controller import resolve_storage
    from lifelong_ray.serving.deploy import deploy_ingress

    cfg = resolve_storage(load_config(args.config))
    if args.port:
        cfg = cfg.with_overrides(serving={"port": args.port})
    _connect(start_if_missing=True)
    serve.start(http_options={"host": cfg.serving.host, "port": cfg.serving.port})
    deploy_ingress([cfg])
    start_controller(cfg)
    print(f"lifelong up: model {cfg.model.name} at http://{cfg.serving.host}:{cfg.serving.port}"
          f"/v1/models/{cfg.model.name}; storage {cfg.storage.root}")
    return 0


def _controllers() -> dict[str, Any]:
    import ray

    from lifelong_ray.control.actor import NAMESPACE

    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["namespace"] == NAMESPACE and a["name"].startswith("lifelong-controller-"):
            out[a["name"].removeprefix("lifelong-controller-")] = ray.get_actor(a["name"], namespace=NAMESPACE)
    return out


def cmd_down(args: argparse.Namespace) -> int:
    from ray import serve

    from lifelong_ray.control.actor import stop_controller

    _connect()
    models = list(_controllers())
    for m in models:
        stop_controller(m)
    serve.shutdown()
    print(f"lifelong down: stopped {models or 'nothing'} and Serve")
    if args.stop_ray:
        subprocess.run([_ray_cli(), "stop"], check=False)
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    """approve / rollback / retrain / pause / resume: write an operator command the
    controller applies exactly once (who and why go to the audit log)."""
    import getpass
    import time

    from lifelong_ray.control.commands import submit_command
    from lifelong_ray.control.controller import resolve_storage
    from lifelong_ray.storage import Storage

    if not (args.why or "").strip():
        print(f"--why is required: say why you {args.command} (it goes to the audit log)", file=sys.stderr)
        return 2
    cfg = resolve_storage(_config_of(args.model, args.config))
    cmd = submit_command(Storage(cfg.storage.root), args.model, args.command,
                         version=getattr(args, "version", None), who=args.who or getpass.getuser(),
                         why=args.why, now=time.time())
    print(json.dumps({"command_id": cmd.id, "command": cmd.kind.value, "model": args.model,
                      "version": cmd.version, "who": cmd.who}))
    print(f"queued; the controller applies it on its next tick: `lifelong history {args.model} --kind "
          f"{_EVENT_OF[cmd.kind.value]} --kind command_rejected` shows the outcome", file=sys.stderr)
    return 0


_EVENT_OF = {"approve": "approved", "rollback": "rolled_back", "retrain": "retrain_requested",
             "pause": "paused", "resume": "resumed"}


def cmd_label_requests(args: argparse.Namespace) -> int:
    import time

    from lifelong_ray.control.controller import resolve_storage
    from lifelong_ray.serving.active import label_requests

    cfg = resolve_storage(_config_of(args.model, args.config))
    try:
        out = label_requests(cfg, args.budget, now=time.time())
    except ValueError as err:
        print(str(err), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out.model_dump(mode="json"), indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"label requests for {args.model} (most useful first)")
    for col in ("request_id", "score", "uncertainty", "drift", "version", "why"):
        table.add_column(col, overflow="fold")
    for it in out.items:
        table.add_row(it.request_id, f"{it.score:.3f}", f"{it.uncertainty:.3f}", f"{it.drift:.3f}",
                      str(it.version), it.why)
    Console().print(table)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import ray

    _connect()
    ctrls = _controllers()
    if not ctrls:
        print(NO_APP, file=sys.stderr)
        return 2
    if args.model and args.model not in ctrls:
        print(f"model {args.model!r} is not served here; served: {sorted(ctrls)}", file=sys.stderr)
        return 2
    states = {m: ray.get(h.status.remote(), timeout=30) for m, h in ctrls.items()
              if not args.model or m == args.model}
    if args.json:
        print(json.dumps(states, indent=1, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lifelong status")
    for col in ("model", "champion", "weights", "rollout", "retrain", "paused", "budget", "quota",
                "last drift", "last quality"):
        table.add_column(col, overflow="fold")
    for m, st in states.items():
        weights = " ".join(f"{v}:{w:g}%" for v, w in sorted(st["weights"].items()))
        rollout = st["rollout"] + (f" ({st['approval_for']})" if st.get("approval_for") else "")
        budget = st.get("budget") or {}
        budget_txt = ("FROZEN: " if st.get("budget_frozen") else "") + budget.get("reason", "not measured yet")
        queue = [r["kind"] for r in st.get("retrain_queue", [])]
        quota = f"{len(st.get('retrain_history', []))} retrains in 24h" + (f"; queued {queue}" if queue else "") + \
            (f"; {st['retrain_deferred_reason'].split('|')[-1]}" if st.get("retrain_deferred_reason") else "")
        table.add_row(m, str(st["champion"]), weights, rollout, st["retrain"], str(st["paused"]), budget_txt, quota,
                      (st.get("last_feature_drift") or {}).get("reason", "-"),
                      (st.get("last_quality") or {}).get("reason", "-"))
    Console().print(table)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    import ray

    from lifelong_ray.events import AuditLog
    from lifelong_ray.storage import Storage

    _connect()
    ctrls = _controllers()
    if args.model not in ctrls:
        print(NO_APP if not ctrls else f"model {args.model!r} is not served here", file=sys.stderr)
        return 2
    cfg = ray.get(ctrls[args.model].config.remote(), timeout=30)
    kinds = {EventKind(k) for k in args.kind} if args.kind else None
    events = AuditLog(Storage(cfg["storage"]["root"]), args.model).read(kinds=kinds)
    if args.json:
        print(json.dumps([e.to_json() for e in events], indent=1))
    else:
        for e in events:
            print(f"{e.t:.3f}  {e.kind.value:<22} {e.version or '-':<7} {e.reason}")
    return 0


def _number_list(cast: type, example: str):
    """An argparse type: ``"3000"`` -> 3000, ``"1000,2000"`` -> [1000, 2000]."""
    def parse(text: str):
        try:
            vals = [cast(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {example}, got {text!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"expected {example}")
        return vals[0] if len(vals) == 1 else vals
    return parse


_int_list = _number_list(int, "sample indices like 3000 or 1000,2000")
_float_list = _number_list(float, "numbers like 0.2 or 0.8,0.1")


def cmd_simulate(args: argparse.Namespace) -> int:
    from lifelong_ray.sim.simulate import sidecar_path, simulate

    try:
        meta = simulate(args.kind, args.out, n=args.n, seed=args.seed, noise=args.noise,
                        drift_at=args.drift_at, period=args.period, width=args.width,
                        shift=args.shift, prior_after=args.prior_after)
    except ValueError as err:
        print(f"lifelong simulate: {err}", file=sys.stderr)
        return 2
    print(f"wrote {meta['n']} rows of a {meta['kind']} stream ({meta['generator']}, seed {meta['seed']}, "
          f"noise {meta['noise']:g}) to {args.out}")
    print(f"drift points: {meta['drift_points']}")
    print(f"sidecar: {sidecar_path(args.out)}")
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from lifelong_ray.sim.backtest import Backtest, BacktestSettings, infer_config, read_stream
    from lifelong_ray.sim.report import print_summary, write_report
    from lifelong_ray.sim.simulate import read_sidecar

    table = read_stream(args.data)
    side = read_sidecar(args.data) or {}
    label = args.label or (load_config(args.config).model.label.name if args.config else side.get("label", "y"))
    cfg = load_config(args.config) if args.config else infer_config(table, label)
    drift_at = args.drift_at if args.drift_at is not None else side.get("drift_points", [])
    drift_at = [drift_at] if isinstance(drift_at, int) else list(drift_at)
    s = BacktestSettings(label_delay=args.label_delay, bootstrap=args.bootstrap, drift_at=drift_at)
    out_dir = Path(args.report_dir)
    report = Backtest(cfg, table, label, s, storage_root=str(out_dir / "store")).run()
    json_path, png_path = write_report(report, out_dir)
    print_summary(report, f"lifelong backtest of {args.data}",
                  ("false_alarms", "mean_detection_delay", "runner", "engine_samples_per_second"))
    print(f"report: {json_path}  plot: {png_path}")
    return 0


CONFIG_HELP = "the model's config (default: ask its running controller)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lifelong", description="Keep production models current on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="the whole loop on one machine, over HTTP")
    d.add_argument("--report-dir", default="runs/demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--samples", type=int, default=None)
    d.add_argument("--config", default="configs/demo.yaml")
    d.add_argument("--port", type=int, default=None)
    d.set_defaults(func=cmd_demo)
    b = sub.add_parser("backtest", help="replay a stream file through the same policy, router and trainer")
    b.add_argument("--data", required=True, help="parquet or CSV: features, a label column, optional t")
    b.add_argument("--config", help="the model's config (default: schema inferred, default policy)")
    b.add_argument("--label", help="label column (default: the config's, the sidecar's, or y)")
    b.add_argument("--drift-at", type=_int_list, default=None, help="known drift onsets N,M,... (row index)")
    b.add_argument("--label-delay", type=int, default=200)
    b.add_argument("--bootstrap", type=int, default=2000, help="labeled history rows before traffic")
    b.add_argument("--report-dir", default="runs/backtest")
    b.set_defaults(func=cmd_backtest)
    u = sub.add_parser("up", help="start the Serve app and controller on the current Ray")
    u.add_argument("config")
    u.add_argument("--port", type=int, default=None)
    u.set_defaults(func=cmd_up)
    dn = sub.add_parser("down", help="stop the Serve app and controllers")
    dn.add_argument("--stop-ray", action="store_true", help="also stop the local Ray head")
    dn.set_defaults(func=cmd_down)
    ig = sub.add_parser("ingest", help="append a labeled parquet/CSV batch to a model's labeled log")
    ig.add_argument("model")
    ig.add_argument("file")
    ig.add_argument("--config", help=CONFIG_HELP)
    ig.add_argument("--label", help="label column (default: the config's label name)")
    ig.set_defaults(func=cmd_ingest)
    qa = sub.add_parser("quarantine", help="list quarantined rows (MODEL) or release an entry (release MODEL ID)")
    qa.add_argument("words", nargs="+", metavar="MODEL | release MODEL ID")
    qa.add_argument("--config", help=CONFIG_HELP)
    qa.add_argument("--why", help="release: the review's conclusion (recorded in the audit log)")
    qa.add_argument("--who", help="release: who reviewed it (default: the current user)")
    qa.add_argument("--json", action="store_true")
    qa.set_defaults(func=cmd_quarantine)
    cp = sub.add_parser("compact", help="feed the replay reservoir, expire and compact old log partitions")
    cp.add_argument("config")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_compact)
    for name, helptext in (("approve", "let a rollout held for approval go on"),
                           ("rollback", "abort the candidate in rollout, or go back to the previous champion"),
                           ("retrain", "request a full retrain now (quota still applies)"),
                           ("pause", "no new retrains or rollout steps until resumed"),
                           ("resume", "undo pause")):
        op = sub.add_parser(name, help=helptext)
        op.add_argument("model")
        if name == "approve":
            op.add_argument("version", nargs="?", help="the candidate waiting for approval (default: whichever)")
        op.add_argument("--why", required=True, help="the reason, recorded in the audit log")
        op.add_argument("--who", help="who is acting (default: the current user)")
        op.add_argument("--config", help=CONFIG_HELP)
        op.set_defaults(func=cmd_operator, command=name)
    lr = sub.add_parser("label-requests", help="served request ids whose labels would help most")
    lr.add_argument("model")
    lr.add_argument("--budget", type=int, default=20)
    lr.add_argument("--config", help=CONFIG_HELP)
    lr.add_argument("--json", action="store_true")
    lr.set_defaults(func=cmd_label_requests)
    st = sub.add_parser("status", help="versions, weights, stage, drift")
    st.add_argument("model", nargs="?")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    h = sub.add_parser("history", help="the audit log of a model")
    h.add_argument("model")
    h.add_argument("--json", action="store_true")
    h.add_argument("--kind", action="append", choices=[k.value for k in EventKind])
    h.set_defaults(func=cmd_history)
    from lifelong_ray.sim.simulate import DEFAULT_N
    from lifelong_ray.sim.streams import GENERATORS

    sm = sub.add_parser("simulate", help="write a seeded drifting stream (parquet/CSV) and its known drift points")
    sm.add_argument("--kind", required=True, choices=list(GENERATORS))
    sm.add_argument("--out", required=True, help="output file: .parquet, .pq or .csv (+ FILE.drift.json)")
    sm.add_argument("--n", type=int, default=DEFAULT_N, help=f"rows (default {DEFAULT_N})")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--noise", type=float, default=None, help="label-flip rate (default: the kind's own)")
    sm.add_argument("--drift-at", type=_int_list, default=None,
                    help="drift onsets, e.g. 5000 or 2000,6000 (default depends on the kind)")
    sm.add_argument("--period", type=int, default=None, help="recurring: rows per concept (default n/4)")
    sm.add_argument("--width", type=int, default=None, help="gradual: rows each blend takes (default n/6)")
    sm.add_argument("--shift", type=float, default=None, help="covariate: mean shift in standard deviations")
    sm.add_argument("--prior-after", type=_float_list, default=None,
                    help="prior: P(y=1) after the drift, or one value per drift point")
    sm.set_defaults(func=cmd_simulate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
