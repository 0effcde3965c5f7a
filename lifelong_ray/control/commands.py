"""Operator commands on durable storage: the one channel from people to the controller.

The CLI (``lifelong approve|rollback|retrain|pause|resume``) and the admin HTTP
endpoints write a command file; the controller's observer reads the ones it has
not taken in yet and ``decide()`` applies each exactly once (by id), recording
who and why in the audit log. Storage is the channel (not an actor call) so a
command survives a controller restart and works against any storage root.

Layout: ``models/<model>/controller/commands/<ms timestamp>-<id>.json``.

    >>> import tempfile
    >>> from lifelong_ray.storage import Storage
    >>> s = Storage(tempfile.mkdtemp())
    >>> c = submit_command(s, "m", "pause", who="ana", why="investigating", now=10.0)
    >>> [(x.kind.value, x.who) for x in read_commands(s, "m")]
    [('pause', 'ana')]
    >>> read_commands(s, "m", done={c.id})
    []
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import TYPE_CHECKING

from lifelong_ray.policy.model import CommandKind, OperatorCommand
from lifelong_ray.storage import Storage

if TYPE_CHECKING:  # pragma: no cover
    from lifelong_ray.config import Durability
    from lifelong_ray.data.flush import GroupFlusher


def commands_prefix(model: str) -> str:
    return f"models/{model}/controller/commands"


def submit_command(storage: Storage, model: str, kind: str | CommandKind, *, version: str | None = None,
                   who: str = "unknown", why: str = "", now: float, durability: "Durability" = "fsync",
                   flusher: "GroupFlusher | None" = None) -> OperatorCommand:
    """Write one command and return it, as durable as ``durability`` says
    (``data.durability.commands``): ``fsync``, on the device on return; ``group``, in
    the OS on return and synced by ``flusher`` within its interval (with no flusher, a
    one-shot process such as the CLI, synced now); ``none``, in the OS.
    ``kind`` must be a :class:`CommandKind` value."""
    try:
        k = CommandKind(kind)
    except ValueError:
        allowed = ", ".join(c.value for c in CommandKind)
        raise ValueError(f"unknown command {kind!r}; expected one of: {allowed}") from None
    cmd = OperatorCommand(id=uuid.uuid4().hex, kind=k, model=model, version=version, who=who, why=why, t=now)
    rel = f"{commands_prefix(model)}/{int(now * 1000):015d}-{cmd.id}.json"
    grouped = durability == "group" and flusher is not None and storage.is_local
    storage.write_json(rel, cmd.model_dump(mode="json"), fsync=durability == "fsync" or
                       (durability == "group" and not grouped))
    if grouped:
        from lifelong_ray.data.flush import file_and_directory

        flusher.mark(*file_and_directory(storage.path(rel)))
    return cmd


def read_commands(storage: Storage, model: str, done: Collection[str] = ()) -> list[OperatorCommand]:
    """Commands not in ``done``, oldest first."""
    out = []
    for path in storage.list(commands_prefix(model), suffix=".json"):
        cid = path.rsplit("-", 1)[-1].removesuffix(".json")
        if cid in done:
            continue
        out.append(OperatorCommand.model_validate(storage.read_json(path)))
    return sorted(out, key=lambda c: (c.t, c.id))
