"""One retrain of a model now, as a Ray job, through the real training path.

    ray job submit --working-dir . -- python jobs/retrain.py --config configs/demo.yaml --why "new labels"

``--mode auto`` (the default) asks the model's controller when one runs on this Ray:
it writes the operator ``retrain`` command (exactly what ``lifelong retrain MODEL`` does),
so the controller's quota, gate and canary apply and the audit log records who and why;
``--wait S`` then follows the audit log until the retrain that answers this command (its
``retrain_started`` lists the command id) finishes or fails. Without a
controller (or with ``--mode direct``) it runs the controller's own retrain task
(:data:`lifelong_ray.training.retrain.retrain_task`: Ray Data window → Ray Train, or Ray
Tune with ``training.tune.enabled`` → evaluation against the champion → registry) and
registers a candidate version; nothing is deployed, a controller started later finds it
in the registry. The last stdout line is JSON: the command, or the retrain result.

Exit status: 0 done (or queued), 2 bad input, 1 the retrain failed, was rejected, or
did not finish within ``--wait``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import FAILED, JobInputError, connect, fail, load  # noqa: E402

JOB = "retrain.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/retrain.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--config", required=True, help="the model's YAML config")
    p.add_argument("--mode", choices=("auto", "command", "direct"), default="auto",
                   help="auto: through the running controller if any, else direct (default)")
    p.add_argument("--why", default="retrain requested by a Ray job", help="the reason (audit log)")
    p.add_argument("--who", default=None, help="who asks (default: the current user)")
    p.add_argument("--since", type=float, default=None, help="direct: train on labeled rows with t >= SINCE (unix s)")
    p.add_argument("--seed", type=int, default=None, help="direct: seed (default: training.seed)")
    p.add_argument("--wait", type=float, default=0.0,
                   help="command: seconds to follow the audit log for the outcome (0: just queue it)")
    return p


def controller_running(model: str) -> bool:
    import ray

    from lifelong_ray.control.actor import NAMESPACE, controller_name

    try:
        ray.get_actor(controller_name(model), namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def command_outcome(events, command_id: str):
    """The event that ends operator command ``command_id``'s retrain, or None while it runs:
    its rejection, or the ``retrain_finished``/``retrain_failed`` of the job whose
    ``retrain_started`` lists it (one retrain may answer several queued requests)."""
    from lifelong_ray.events import EventKind

    job_id = None
    for ev in events:
        data = ev.data or {}
        if ev.kind == EventKind.COMMAND_REJECTED and data.get("command_id") == command_id:
            return ev
        if ev.kind == EventKind.RETRAIN_STARTED and command_id in data.get("command_ids", ()):
            job_id = data.get("job_id")
        elif job_id is not None and data.get("job_id") == job_id and \
                ev.kind in (EventKind.RETRAIN_FINISHED, EventKind.RETRAIN_FAILED):
            return ev
    return None


def via_controller(cfg, who: str, why: str, wait: float) -> int:
    """Queue the operator ``retrain`` command; optionally wait for its outcome in the audit log."""
    from lifelong_ray.control.commands import submit_command
    from lifelong_ray.events import AuditLog, EventKind
    from lifelong_ray.storage import Storage

    storage = Storage(cfg.storage.root)
    cmd = submit_command(storage, cfg.model.name, "retrain", who=who, why=why, now=time.time())
    out = {"mode": "command", "command_id": cmd.id, "model": cfg.model.name, "who": who}
    if wait <= 0:
        print(json.dumps({**out, "status": "queued"}))
        return 0
    audit = AuditLog(storage, cfg.model.name)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        ev = command_outcome(audit.read(since=cmd.t), cmd.id)
        if ev is not None:
            print(json.dumps({**out, "status": ev.kind.value, "version": ev.version, "reason": ev.reason}))
            return 0 if ev.kind == EventKind.RETRAIN_FINISHED else FAILED
        time.sleep(1.0)
    print(json.dumps({**out, "status": "waiting"}))
    fail(JOB, f"no retrain outcome within --wait {wait:g}s; follow it with `lifelong history {cfg.model.name}`",
         FAILED)


def direct(cfg, since: float | None, seed: int) -> int:
    """Run the controller's retrain task once; the candidate is registered, not deployed."""
    import ray

    from lifelong_ray.registry.store import Registry
    from lifelong_ray.storage import Storage
    from lifelong_ray.training.retrain import RetrainResult, retrain_task

    champion = Registry(Storage(cfg.storage.root), cfg.model.name).aliases().get("champion")
    job_id = f"job-manual-{uuid.uuid4().hex[:12]}"
    ref = retrain_task.remote(cfg.model_dump(mode="json"), job_id=job_id, since_t=since, champion=champion,
                              seed=seed, kind="full")
    res = RetrainResult.from_json(ray.get(ref))
    print(json.dumps({"mode": "direct", **res.to_json()}))
    if res.status != "ok":
        fail(JOB, f"retrain {job_id} of {cfg.model.name} failed: {res.error}", FAILED)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.wait < 0:
        fail(JOB, f"--wait must be >= 0, got {args.wait:g}")
    try:
        cfg = load(args.config)
    except JobInputError as err:
        fail(JOB, str(err))
    connect()
    running = controller_running(cfg.model.name)
    if args.mode == "command" and not running:
        fail(JOB, f"no controller for {cfg.model.name!r} on this Ray: start it with `python jobs/loop.py --config "
                  f"{args.config}` (or `lifelong up`), or use --mode direct")
    if args.mode == "command" or (args.mode == "auto" and running):
        if args.since is not None or args.seed is not None:
            fail(JOB, "--since/--seed apply to --mode direct only; the controller picks its own window and seed")
        return via_controller(cfg, args.who or os.environ.get("USER") or "unknown", args.why, args.wait)
    return direct(cfg, args.since, cfg.training.seed if args.seed is None else args.seed)


if __name__ == "__main__":
    sys.exit(main())
