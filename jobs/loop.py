"""Start the lifelong loop for a config as a Ray job: the HTTP ingress and the model's controller.

    ray job submit --working-dir . -- python jobs/loop.py --config configs/demo.yaml
    ray job submit --no-wait --working-dir . -- python jobs/loop.py --config C --detach

It runs ``lifelong up CONFIG`` (:func:`lifelong_ray.cli.cmd_up`: Serve on
``serving.host:port``, :func:`~lifelong_ray.serving.deploy.deploy_ingress`,
:func:`~lifelong_ray.control.actor.start_controller`; all idempotent, so a resubmitted job
adopts the running app). The controller is a detached actor: it keeps going whether this
job stays or not. Without ``--detach`` the job stays up as the loop's watcher: every
``--interval`` seconds it prints one JSON line of the controller's status (champion,
weights, rollout, ticks), and it fails when the controller is gone. ``ray job stop``
ends the watcher; with ``--down-on-exit`` that also runs ``lifelong down``.

Exit status: 0 started (``--detach``) or stopped by a signal, 2 bad input, 1 the app did
not start or the controller went away.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import FAILED, JobInputError, fail, load  # noqa: E402

JOB = "loop.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/loop.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--config", required=True, help="the model's YAML config")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: serving.port of the config)")
    p.add_argument("--detach", action="store_true", help="exit once the app and controller run")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between status lines (default 30)")
    p.add_argument("--down-on-exit", action="store_true", help="on ray job stop, also run `lifelong down`")
    return p


def status_line(model: str) -> dict:
    """The controller's status, trimmed to what a job log needs."""
    import ray

    from lifelong_ray.control.actor import get_controller

    st = ray.get(get_controller(model).status.remote(), timeout=30)
    return {k: st.get(k) for k in ("model", "champion", "weights", "rollout", "retrain", "paused", "ticks",
                                   "tick_errors")}


def watch(model: str, interval: float, down_on_exit: bool) -> int:
    """Print a status line every ``interval`` s until a signal (0) or the controller is gone (1)."""
    from ray.exceptions import RayError

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        try:
            print(json.dumps(status_line(model)), flush=True)
        except (ValueError, RayError):
            fail(JOB, f"the controller of {model!r} is gone (`lifelong down`?); resubmit this job to start it again",
                 FAILED)
        stop.wait(interval)
    if down_on_exit:
        from lifelong_ray.cli import main as lifelong

        lifelong(["down"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        fail(JOB, f"--port must be 1-65535, got {args.port}")
    if args.interval <= 0:
        fail(JOB, f"--interval must be > 0, got {args.interval:g}")
    try:
        cfg = load(args.config)
    except JobInputError as err:
        fail(JOB, str(err))
    from lifelong_ray.cli import main as lifelong  # `lifelong up` joins RAY_ADDRESS (set under ray job submit)

    up = ["up", args.config] + (["--port", str(args.port)] if args.port is not None else [])
    try:
        code = lifelong(up)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else FAILED
    if code != 0:
        fail(JOB, f"`lifelong {' '.join(up)}` failed with status {code}", FAILED)
    if args.detach:
        return 0
    return watch(cfg.model.name, args.interval, args.down_on_exit)


if __name__ == "__main__":
    sys.exit(main())
