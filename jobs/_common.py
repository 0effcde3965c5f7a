"""Shared plumbing of the ``jobs/`` entrypoints: clear input errors, config loading, joining Ray.

Every job exits 0 on success, 2 on bad input (with one ``jobs/<name>: error: ...`` line on
stderr that says what to fix) and 1 when the work itself failed. Jobs run the same way
under ``ray job submit`` (``RAY_ADDRESS`` is set by the job supervisor) and as plain
``python jobs/<name>.py`` (joins ``RAY_ADDRESS``, else a local head, else starts Ray).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

#: exit status of a job whose input (arguments, config, data) is wrong
BAD_INPUT = 2
#: exit status of a job whose work failed
FAILED = 1


class JobInputError(Exception):
    """Bad arguments, config or data: the message says what to fix."""


def fail(job: str, message: str, code: int = BAD_INPUT) -> NoReturn:
    print(f"jobs/{job}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def load(config: str) -> Any:
    """The config at ``config`` with a relative local storage root made absolute."""
    from lifelong_ray.config import ConfigError, load_config
    from lifelong_ray.control.controller import resolve_storage

    try:
        return resolve_storage(load_config(config))
    except ConfigError as err:
        raise JobInputError(str(err)) from None


def existing_file(path: str, what: str = "file", suffixes: tuple[str, ...] = (".parquet", ".pq", ".csv")) -> str:
    """``path`` made absolute, if it is a readable file with one of ``suffixes``."""
    p = Path(path)
    if not p.is_file():
        raise JobInputError(f"no such {what}: {path} (under `ray job submit` relative paths are read from the "
                            f"uploaded working dir; pass an absolute path or a file inside it)")
    if p.suffix.lower() not in suffixes:
        raise JobInputError(f"{what} {path} must end in one of {', '.join(suffixes)}")
    return str(p.resolve())


def connect() -> None:
    """Join the cluster of this job (``RAY_ADDRESS``), else a running local head, else start one."""
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs = {"namespace": "lifelong", "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
        return
    try:
        ray.init(address="auto", **kwargs)
    except ConnectionError:
        ray.init(**kwargs)
