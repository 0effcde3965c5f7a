"""The ``lifelong`` command (also ``python -m lifelong_ray``).

    lifelong demo [--report-dir DIR] [--seed S] [--samples N]
    lifelong up CONFIG [--port P] [--host H] [--dashboard-host H]  # Serve app + controller on the current Ray
    lifelong down [--stop-ray]
    lifelong ingest MODEL FILE [--config C]  # labeled batch -> labeled log (seeds the first version)
    lifelong quarantine MODEL [--config C] [--json]                 # quarantined rows, counts by reason
    lifelong quarantine release MODEL ID --why TEXT [--who NAME]    # release after review (audit log)
    lifelong compact CONFIG [--json]     # feed the replay reservoir, expire and compact old log partitions
    lifelong status [MODEL] [--json] [--config C]
    lifelong history MODEL [--json] [--kind K] [--since T] [--limit N] [--config C]
    lifelong simulate --kind KIND --out FILE [--n N] [--seed S] [--noise P] [--drift-at N,M]

Exit codes: 0 success; 1 a runtime failure (no Ray, no lifelong app, a controller
that does not answer); 2 a usage error (bad arguments, an invalid config); 3 a
refused data action (a batch quarantined, a release not allowed). Expected errors
print one line saying what to do next, never a traceback (``LIFELONG_DEBUG=1``
shows the traceback of an unexpected one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from lifelong_ray.config import Config, ConfigError, load_config
from lifelong_ray.events import EventKind

NO_APP = "no lifelong app running on this Ray: run `lifelong up CONFIG`"


class CliError(Exception):
    """An expected failure: ``main`` prints its message (what to do next) and exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


EXIT_RUNTIME, EXIT_USAGE = 1, 2
#: the ports `lifelong up` binds when it starts Ray itself: loopback unless told otherwise
LOOPBACK = "127.0.0.1"
DEFAULT_DASHBOARD_PORT = 8265


def _ray_cli() -> str:
    """The `ray` command of this interpreter's environment (it may not be on PATH)."""
    here = os.path.join(os.path.dirname(sys.executable), "ray")
    return here if os.path.exists(here) else "ray"


def ray_start_command(*, num_cpus: int, dashboard_host: str = LOOPBACK,
                      dashboard_port: int = DEFAULT_DASHBOARD_PORT, include_dashboard: bool = True,
                      extra: list[str] | None = None) -> list[str]:
    """The ``ray start --head`` command line `lifelong up` runs when no Ray is found.

    The dashboard (and with it the job-submission API that ``ray job submit`` talks
    to) listens on ``dashboard_host``: loopback by default, so nothing off this
    machine can submit jobs unless an operator opts in.

    >>> cmd = ray_start_command(num_cpus=4)
    >>> cmd[cmd.index("--dashboard-host") + 1], cmd[cmd.index("--include-dashboard") + 1]
    ('127.0.0.1', 'true')
    """
    return [_ray_cli(), "start", "--head", "--num-cpus", str(num_cpus),
            "--include-dashboard", "true" if include_dashboard else "false",
            "--dashboard-host", dashboard_host, "--dashboard-port", str(dashboard_port),
            "--disable-usage-stats", *(extra or [])]


def _no_ray_message() -> str:
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        return ("no Ray cluster found on this machine: run `lifelong up CONFIG` (it starts one), "
                "`ray start --head`, or set RAY_ADDRESS")
    hint = "" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else (
        "; if that cluster uses Ray token authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
        "(or RAY_AUTH_TOKEN_PATH): an explicit address never turns it on by itself (docs/runbook.md)")
    return f"no Ray cluster answered at RAY_ADDRESS={address}: check the address and that it is running{hint}"


def _connect(start_if_missing: bool = False, dashboard_host: str = LOOPBACK,
             dashboard_port: int = DEFAULT_DASHBOARD_PORT, include_dashboard: bool = True) -> bool:
    """Join RAY_ADDRESS, or the local head; optionally start a local head that
    outlives this command (dashboard bound to ``dashboard_host``). True if it started one."""
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), namespace="lifelong",
                 log_to_driver=False, configure_logging=False)
        return False
    except ConnectionError:
        if not start_if_missing or os.environ.get("RAY_ADDRESS"):
            raise CliError(_no_ray_message()) from None
    cpus = max(4, os.cpu_count() or 1)
    done = subprocess.run(ray_start_command(num_cpus=cpus, dashboard_host=dashboard_host,
                                            dashboard_port=dashboard_port, include_dashboard=include_dashboard),
                          env={**os.environ, "RAY_TRAIN_V2_ENABLED": "1"}, capture_output=True, text=True)
    if done.returncode != 0:
        raise CliError(f"`ray start --head` failed (exit {done.returncode}): "
                       f"{(done.stderr or done.stdout).strip()[-800:]}")
    ray.init(address="auto", namespace="lifelong", log_to_driver=False, configure_logging=False)
    return True


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
            raise CliError(f"{config} configures model {cfg.model.name!r}, not {model!r}", EXIT_USAGE)
        return cfg
    _connect()
    ctrls = _controllers()
    if model not in ctrls:
        raise CliError(NO_APP if not ctrls else f"model {model!r} is not served here (served: {sorted(ctrls)});"
                       f" pass --config")
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


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost")


def cmd_up(args: argparse.Namespace) -> int:
    """Start (or update) the model's Serve app and controller; return once deployed."""
    from ray import serve

    from lifelong_ray.control.actor import start_controller
    from lifelong_ray.control.controller import resolve_storage
    from lifelong_ray.serving.deploy import deploy_ingress

    cfg = resolve_storage(load_config(args.config))
    serving: dict[str, Any] = {}
    if args.port:
        serving["port"] = args.port
    if args.host:
        serving["host"] = args.host
    if serving:
        cfg = cfg.with_overrides(serving=serving)
    started = _connect(start_if_missing=True, dashboard_host=args.dashboard_host,
                       dashboard_port=args.dashboard_port, include_dashboard=not args.no_dashboard)
    if not started and args.dashboard_host != LOOPBACK:
        print("note: Ray was already running, so --dashboard-host does not apply; the dashboard keeps the host"
              " it was started with", file=sys.stderr)
    if not _is_loopback(cfg.serving.host):
        print(f"warning: Serve listens on {cfg.serving.host}: predictions and feedback are open to that network;"
              f" admin endpoints still need the bearer token in ${cfg.serving.admin_token_env}", file=sys.stderr)
    serve.start(http_options={"host": cfg.serving.host, "port": cfg.serving.port})
    deploy_ingress([cfg])
    start_controller(cfg)
    if not _wait_serving(cfg, args.wait):
        return 3
    print(f"lifelong up: model {cfg.model.name} at http://{cfg.serving.host}:{cfg.serving.port}"
          f"/v1/models/{cfg.model.name}; storage {cfg.storage.root}")
    if started and not args.no_dashboard:
        print(f"Ray started here; dashboard and job API at http://{args.dashboard_host}:{args.dashboard_port}"
              f" (`lifelong down --stop-ray` stops it)")
    return 0


def _wait_serving(cfg: Config, timeout_s: float) -> bool:
    """Wait until the model answers predictions (when it has a champion to answer with).

    After a restart the controller's first ticks redeploy what the persisted state
    routes to; ``up`` returns only once the ingress can call every weighted version."""
    from lifelong_ray.control.controller import load_state
    from lifelong_ray.serving.wait import probe_ready, wait_ready
    from lifelong_ray.storage import Storage

    state = load_state(Storage(cfg.storage.root), cfg.model.name)
    if state is None or state.champion is None:
        print(f"lifelong up: {cfg.model.name} has no version yet; predictions answer 503 until the first"
              f" one is trained and promoted", file=sys.stderr)
        return True
    host = "127.0.0.1" if cfg.serving.host in ("0.0.0.0", "::") else cfg.serving.host
    url = f"http://{host}:{cfg.serving.port}"
    ok, reason, waited = wait_ready(lambda: probe_ready(url, cfg.model.name), timeout_s)
    if not ok:
        print(f"lifelong up: {cfg.model.name} is not ready after {waited:.0f}s: {reason}. The controller keeps"
              f" reconciling; see `lifelong status {cfg.model.name}` and `lifelong history {cfg.model.name}`",
              file=sys.stderr)
    return ok


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

    import ray

    _connect()
    ctrls = _controllers()
    models = list(ctrls)
    ports = set()
    for h in ctrls.values():
        try:
            ports.add(int(ray.get(h.config.remote(), timeout=15)["serving"]["port"]))
        except Exception:  # noqa: BLE001 - a controller that does not answer is stopped all the same
            pass
    for m in models:
        stop_controller(m)
    serve.shutdown()
    # Serve's HTTP proxy listens with SO_REUSEPORT: one still exiting would share the port with the
    # proxy of a following `up` and answer part of its requests with 404s. Return once it is gone.
    for port in sorted(ports):
        if not _wait_port_closed(port):
            print(f"warning: something still listens on port {port} after Serve shut down", file=sys.stderr)
    print(f"lifelong down: stopped {models or 'nothing'} and Serve")
    if args.stop_ray:
        subprocess.run([_ray_cli(), "stop"], check=False)
    return 0


def _wait_port_closed(port: int, timeout_s: float = 60.0) -> bool:
    """Wait until nothing accepts connections on 127.0.0.1:``port``."""
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


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
                         why=args.why, now=time.time(), durability=cfg.data.durability.commands)
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


# -- status and history: documents built from storage (no Ray needed), then rendered ------

#: version of the ``lifelong status --json`` document; bumped only on an incompatible change
STATUS_FORMAT = 1
#: how many of the latest audit events ``status`` shows as "last decisions"
LAST_DECISIONS = 5

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_since(text: str, now: float) -> float:
    """``--since``: an ISO-8601 time (UTC when it has no offset) or a span back from
    ``now`` such as ``90s``, ``30m``, ``1h``, ``2d``, ``1h30m``; returns epoch seconds.

    >>> parse_since("30m", now=10_000.0), parse_since("1h30m", now=10_000.0)
    (8200.0, 4600.0)
    >>> parse_since("1970-01-01T01:00:00Z", now=0.0), parse_since("1970-01-01T01:00:00", now=0.0)
    (3600.0, 3600.0)
    """
    from datetime import datetime, timezone

    t = text.strip()
    if t and _DURATION.sub("", t).strip() == "" and _DURATION.search(t):
        return now - sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in _DURATION.findall(t))
    try:
        when = datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(f"--since {text!r} is neither a span like 30m, 1h, 2d, 1h30m nor an ISO-8601 time"
                         " like 2026-01-31T12:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def event_kinds(text: str) -> list[EventKind]:
    """An argparse type for ``--kind``: one kind or a comma-separated list, checked
    against :class:`EventKind` with every valid kind listed on a mistake."""
    out = []
    for word in (w.strip() for w in text.split(",")):
        try:
            out.append(EventKind(word))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"unknown event kind {word!r}; valid kinds: {', '.join(k.value for k in EventKind)}") from None
    return out


def _iso(t: float | None) -> str | None:
    from datetime import datetime, timezone

    return None if t is None else datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


def _event_doc(e: Any) -> dict[str, Any]:
    return {"t": e.t, "time": _iso(e.t), "kind": e.kind.value, "model": e.model, "version": e.version,
            "reason": e.reason, "data": e.data}


def _versions(storage: Any, model: str, state: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """Every committed version with its role and weight (newest last)."""
    from lifelong_ray.registry.store import Registry

    weights = state.get("weights") or {}
    roles = {state.get("champion"): "champion", state.get("candidate"): "candidate",
             state.get("previous_champion"): "previous"}
    out = []
    try:
        reg = Registry(storage, model)
        names = reg.list_versions()
    except Exception as err:  # noqa: BLE001 - status answers even with a broken registry
        return [], f"{type(err).__name__}: {err}"
    for v in names:
        item: dict[str, Any] = {"version": v, "weight": float(weights.get(v, 0.0)),
                                "role": roles.get(v) or ("retiring" if v in (state.get("retiring") or {}) else None),
                                "created_at": None, "job_id": None, "kind": None, "holdout_accuracy": None}
        try:
            md = reg.metadata(v)
            item.update(created_at=md.get("created_at"), job_id=md.get("job_id"), kind=md.get("kind"),
                        holdout_accuracy=(md.get("metrics") or {}).get("holdout_accuracy"))
        except Exception as err:  # noqa: BLE001
            item["error"] = f"metadata unreadable: {err}"
        out.append(item)
    return out, None


def status_document(cfg: Config, state: dict[str, Any] | None, *, live: dict[str, Any] | None = None,
                    last: int = LAST_DECISIONS) -> dict[str, Any]:
    """The status of one model, as ``lifelong status --json`` prints it (one entry of
    ``models``). Built from storage: the controller state (``state``; None before the
    controller first saved one), the registry and the audit log; ``live`` adds the
    running controller's counters. Keys are documented in docs/runbook.md and only
    ever added, never renamed."""
    from lifelong_ray.events import AuditLog
    from lifelong_ray.storage import Storage

    storage = Storage(cfg.storage.root)
    model = cfg.model.name
    st = dict(state or {})
    versions, registry_error = _versions(storage, model, st)
    events = AuditLog(storage, model).read()
    history = st.get("retrain_history") or []
    q = cfg.quota
    budget = st.get("budget") or {}
    doc: dict[str, Any] = {
        "model": model,
        "champion": st.get("champion"),
        "candidate": st.get("candidate"),
        "stage": st.get("rollout", "stable"),
        "approval_for": st.get("approval_for"),
        "paused": bool(st.get("paused", False)),
        "weights": {v: float(w) for v, w in sorted((st.get("weights") or {}).items())},
        "versions": versions,
        "retrain": {"stage": st.get("retrain", "idle"), "job_id": st.get("retrain_job_id"),
                    "kind": st.get("retrain_kind"), "purpose": st.get("retrain_purpose"),
                    "reason": st.get("retrain_reason") or None,
                    "deferred_reason": (st.get("retrain_deferred_reason") or "").split("|")[-1] or None,
                    "queue": [{"kind": r.get("kind"), "reason": r.get("reason"), "urgent": r.get("urgent")}
                              for r in st.get("retrain_queue") or []]},
        "drift": {"feature": st.get("last_feature_drift"), "quality": st.get("last_quality")},
        "budget": {"frozen": bool(st.get("budget_frozen", False)),
                   "reason": st.get("budget_reason") or budget.get("reason"),
                   "exhausted": budget.get("exhausted"), "slis": budget.get("slis", {})},
        "quota": {"retrains_24h": len(history),
                  "cpu_seconds_24h": round(sum(r.get("cpu_seconds", 0.0) for r in history), 3),
                  "gpu_seconds_24h": round(sum(r.get("gpu_seconds", 0.0) for r in history), 3),
                  "max_retrains_per_hour": q.max_retrains_per_hour,
                  "max_concurrent_retrains": q.max_concurrent_retrains,
                  "cpu_seconds_per_day": q.cpu_seconds_per_day, "gpu_seconds_per_day": q.gpu_seconds_per_day,
                  "allowed_hours": q.allowed_hours},
        "last_decisions": [_event_doc(e) for e in events[-last:]] if last > 0 else [],
        "controller": {"source": "live" if live is not None else ("storage" if state is not None else "none"),
                       "seq": st.get("seq", 0), "last_tick_t": st.get("last_tick_t"),
                       "last_tick_time": _iso(st.get("last_tick_t")),
                       "ticks": (live or {}).get("ticks"), "tick_errors": (live or {}).get("tick_errors"),
                       "restored": (live or {}).get("restored"), "serving": (live or {}).get("serving"),
                       "role": (live or {}).get("role"), "holder": (live or {}).get("lease_holder"),
                       "lease": _lease_doc(storage, model)},
        "storage": cfg.storage.root,
    }
    if registry_error:
        doc["registry_error"] = registry_error
    return doc


def _lease_doc(storage: Any, model: str) -> dict[str, Any] | None:
    """The model's leader lease as stored: who leads, which generation, when it expires."""
    from lifelong_ray.control.lease import read_lease

    rec = read_lease(storage, model)
    if rec is None:
        return None
    return {"holder": rec.holder, "generation": rec.generation, "renewed_t": rec.renewed_t,
            "expires_t": rec.expires_t, "expires_time": _iso(rec.expires_t), "released": rec.released}


def status_payload(docs: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """The whole ``lifelong status --json`` document."""
    return {"format": STATUS_FORMAT, "generated_at": now, "generated_time": _iso(now), "models": docs}


def status_table(docs: list[dict[str, Any]]) -> Any:
    """One row per model: versions and weights, stage, drift, budget, quota, last decisions."""
    from rich.table import Table

    table = Table(title="lifelong status", show_lines=True)
    for col in ("model", "versions (weight)", "stage", "retrain", "drift", "budget", "quota", "last decisions"):
        table.add_column(col, overflow="fold")
    for d in docs:
        versions = "\n".join(f"{v['version']} {v['weight']:g}%" + (f" {v['role']}" if v["role"] else "")
                             + (f" acc {v['holdout_accuracy']:.3f}" if v["holdout_accuracy"] is not None else "")
                             for v in d["versions"] if v["weight"] > 0 or v["role"]) or "no version yet"
        serving = d["controller"].get("serving") or {}
        stage = d["stage"] + (f" ({d['approval_for']})" if d["approval_for"] else "") + \
            (f"\ncandidate {d['candidate']}" if d["candidate"] else "") + ("\nPAUSED" if d["paused"] else "") + \
            "".join(f"\nNOT SERVING {v}: {serving.get('errors', {}).get(v, 'deploying')}"
                    for v in serving.get("missing") or []) + \
            ("\nSTANDBY (another controller leads)" if d["controller"].get("role") == "standby" else "")
        r = d["retrain"]
        retrain = r["stage"] + (f" {r['job_id']}" if r["stage"] != "idle" and r["job_id"] else "") + \
            (f"\n{r['deferred_reason']}" if r["deferred_reason"] else "")
        drift = "\n".join(f"{k}: {v.get('reason', '-')}" for k, v in d["drift"].items() if v) or "not measured yet"
        b = d["budget"]
        budget = ("FROZEN: " if b["frozen"] else "") + (b["reason"] or "not measured yet")
        q = d["quota"]
        quota = f"{q['retrains_24h']} retrains in 24h (max {q['max_retrains_per_hour']}/h)" + \
            (f"\ncpu {q['cpu_seconds_24h']:g}/{q['cpu_seconds_per_day']:g}s" if q["cpu_seconds_per_day"] else "") + \
            (f"\nqueued: {', '.join(x['kind'] for x in r['queue'])}" if r["queue"] else "")
        last = "\n".join(f"{(e['time'] or '')[11:19]} {e['kind']}: {e['reason']}"
                         for e in reversed(d["last_decisions"])) or "-"
        table.add_row(d["model"], versions, stage, retrain, drift, budget, quota, last)
    return table


def history_table(model: str, events: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=f"history of {model} ({len(events)} events)")
    for col in ("time (UTC)", "kind", "version", "reason"):
        table.add_column(col, overflow="fold")
    for e in events:
        table.add_row(e["time"], e["kind"], e["version"] or "-", e["reason"])
    return table


def _print(renderable: Any) -> None:
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 200).print(renderable)


def _sources(model: str | None, config: str | None) -> list[tuple[Config, dict[str, Any] | None, dict[str, Any] | None]]:
    """(config, saved state, live counters) per model: from --config and storage (no
    Ray), else from the controllers running on this Ray."""
    import ray

    from lifelong_ray.config import parse_config
    from lifelong_ray.control.controller import load_state, resolve_storage
    from lifelong_ray.storage import Storage

    if config:
        cfg = resolve_storage(load_config(config))
        if model and cfg.model.name != model:
            raise CliError(f"{config} configures model {cfg.model.name!r}, not {model!r}", EXIT_USAGE)
        state = load_state(Storage(cfg.storage.root), cfg.model.name)
        return [(cfg, state.model_dump(mode="json") if state else None, None)]
    _connect()
    ctrls = _controllers()
    if not ctrls:
        raise CliError(NO_APP)
    if model and model not in ctrls:
        raise CliError(f"model {model!r} is not served here; served: {sorted(ctrls)} (or pass --config to read"
                       f" its storage)")
    out = []
    for m, h in sorted(ctrls.items()):
        if model and m != model:
            continue
        try:
            live = ray.get(h.status.remote(), timeout=30)
            cfg = parse_config(ray.get(h.config.remote(), timeout=30))
        except ray.exceptions.GetTimeoutError:
            raise CliError(f"the controller of {m} did not answer in 30 s: check `ray status` and its log"
                           f" (`ray logs actor --id <id>`), or read storage with --config") from None
        counters = {k: live.pop(k, None) for k in ("ticks", "tick_errors", "restored", "serving", "role",
                                                   "lease_holder", "lease_generation")}
        out.append((cfg, live, counters))
    return out


def cmd_status(args: argparse.Namespace) -> int:
    import time

    docs = [status_document(cfg, state, live=live) for cfg, state, live in _sources(args.model, args.config)]
    if args.json:
        print(json.dumps(status_payload(docs, time.time()), indent=1, sort_keys=True))
    else:
        _print(status_table(docs))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    import time

    from lifelong_ray.events import AuditLog
    from lifelong_ray.storage import Storage

    try:
        since = parse_since(args.since, time.time()) if args.since else None
    except ValueError as err:
        raise CliError(str(err), EXIT_USAGE) from None
    (cfg, _, _), = _sources(args.model, args.config)
    kinds = {k for group in args.kind for k in group} if args.kind else None
    events = AuditLog(Storage(cfg.storage.root), args.model).read(kinds=kinds, since=since)
    if args.limit:
        events = events[-args.limit:]
    docs = [_event_doc(e) for e in events]
    if args.json:
        print(json.dumps(docs, indent=1))
    else:
        _print(history_table(args.model, docs))
    return 0


def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


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
    from lifelong_ray.sim.operators import load_commands
    from lifelong_ray.sim.report import print_summary, write_report
    from lifelong_ray.sim.simulate import read_sidecar

    try:
        commands = load_commands(args.commands) if args.commands else []
    except (OSError, ValueError) as err:
        print(f"lifelong backtest: --commands {args.commands}: {err}", file=sys.stderr)
        return 2
    table = read_stream(args.data)
    side = read_sidecar(args.data) or {}
    label = args.label or (load_config(args.config).model.label.name if args.config else side.get("label", "y"))
    cfg = load_config(args.config) if args.config else infer_config(table, label)
    drift_at = args.drift_at if args.drift_at is not None else side.get("drift_points", [])
    drift_at = [drift_at] if isinstance(drift_at, int) else list(drift_at)
    s = BacktestSettings(label_delay=args.label_delay, bootstrap=args.bootstrap, drift_at=drift_at,
                         approval=args.approval, approve_after=args.approve_after, commands=commands)
    out_dir = Path(args.report_dir)
    report = Backtest(cfg, table, label, s, storage_root=str(out_dir / "store")).run()
    json_path, png_path = write_report(report, out_dir)
    print_summary(report, f"lifelong backtest of {args.data}",
                  ("false_alarms", "mean_detection_delay", "runner", "engine_samples_per_second"))
    held = report["summary"].get("held")
    if held:
        print(f"held at the end: {held['reason']}")
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
    b.add_argument("--commands", help="YAML/JSON list of operator commands {at_sample, kind, who, why, version?}"
                                      " played at their sample")
    b.add_argument("--approval", choices=("auto", "never"), default="auto",
                   help="a rollout held for approval: auto-approve it (after --approve-after samples) or never")
    b.add_argument("--approve-after", type=int, default=0, metavar="N",
                   help="samples a held candidate waits before --approval auto approves it (default 0)")
    b.set_defaults(func=cmd_backtest)
    u = sub.add_parser("up", help="start the Serve app and controller on the current Ray (or start a local Ray)")
    u.add_argument("config")
    u.add_argument("--port", type=int, default=None, help="Serve HTTP port (default: the config's serving.port)")
    u.add_argument("--host", default=None, help="Serve HTTP host (default: the config's serving.host, 127.0.0.1)")
    u.add_argument("--dashboard-host", default=LOOPBACK,
                   help="when `up` starts Ray: the host of its dashboard and job API (default 127.0.0.1; "
                        "0.0.0.0 opens it to the network: enable Ray token auth first, see docs/runbook.md)")
    u.add_argument("--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT)
    u.add_argument("--no-dashboard", action="store_true",
                   help="when `up` starts Ray: no dashboard (and no `ray job submit`)")
    u.add_argument("--wait", type=float, default=300.0,
                   help="seconds to wait for the model to answer (its routed versions deployed); exit 3 if not")
    u.set_defaults(func=cmd_up)
    dn = sub.add_parser("down", help="stop the Serve app and controllers")
    dn.add_argument("--stop-ray", action="store_true",
                    help="also run `ray stop` (stops every Ray started on this machine by this user)")
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
    st = sub.add_parser("status", help="versions, weights, stage, drift, budget, quota, last decisions")
    st.add_argument("model", nargs="?")
    st.add_argument("--json", action="store_true", help="the machine-readable document (keys: docs/runbook.md)")
    st.add_argument("--config", help="read the model's storage instead of asking its running controller (no Ray)")
    st.set_defaults(func=cmd_status)
    h = sub.add_parser("history", help="the audit log of a model")
    h.add_argument("model")
    h.add_argument("--json", action="store_true")
    h.add_argument("--kind", action="append", type=event_kinds, metavar="K[,K...]",
                   help="only these event kinds (repeatable)")
    h.add_argument("--since", metavar="T", help="ISO-8601 time (UTC if no offset) or a span back: 30m, 1h, 2d")
    h.add_argument("--limit", type=_positive_int, default=None,
                   help="only the newest N events")
    h.add_argument("--config", help="read the model's storage instead of asking its running controller (no Ray)")
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
    """Run one command; expected errors print one line and give exit code 1 or 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as err:
        print(f"lifelong {args.command}: {err}", file=sys.stderr)
        return err.code
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - an operator gets one line, not a traceback
        if os.environ.get("LIFELONG_DEBUG"):
            raise
        print(f"lifelong {args.command}: {type(err).__name__}: {err} (set LIFELONG_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
