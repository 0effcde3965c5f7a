"""Operator commands on durable storage: the one channel from people to the controller.

The CLI (``lifelong approve|rollback|retrain|pause|resume``) and the admin HTTP
endpoints write a command file; the controller's observer reads the ones it has
not taken in yet and ``decide()`` applies each exactly once (the state's command
ledger: a mark plus the keys near it, see :mod:`lifelong_ray.policy.operator`),
recording who and why in the audit log. Once the state that took a command in is
saved, the controller moves its file to ``commands/archive/``, so the folder the
controller lists each tick holds only commands still to take in. Storage is the
channel (not an actor call) so a command survives a controller restart and works
against any storage root.

Layout: ``models/<model>/controller/commands/<ms timestamp>-<id>.json``, taken in
oldest first; archived ones in ``models/<model>/controller/commands/archive/``.

    >>> import tempfile
    >>> from lifelong_ray.storage import Storage
    >>> s = Storage(tempfile.mkdtemp())
    >>> c = submit_command(s, "m", "pause", who="ana", why="investigating", now=10.0)
    >>> [(x.kind.value, x.who, x.key[:15]) for x in read_commands(s, "m")]
    [('pause', 'ana', '000000000010000')]
    >>> archive_commands(s, "m", [c.key])
    1
    >>> read_commands(s, "m"), len(read_commands(s, "m", archived=True))
    ([], 1)
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from lifelong_ray.policy.model import CommandKind, CommandLedger, OperatorCommand
from lifelong_ray.policy.operator import command_key, is_taken
from lifelong_ray.storage import Storage

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^\d{15}-[0-9A-Za-z_-]{1,64}$")

if TYPE_CHECKING:  # pragma: no cover
    from lifelong_ray.config import Durability
    from lifelong_ray.data.flush import GroupFlusher


def commands_prefix(model: str) -> str:
    return f"models/{model}/controller/commands"


def archive_prefix(model: str) -> str:
    return f"{commands_prefix(model)}/archive"


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
    cid = uuid.uuid4().hex
    cmd = OperatorCommand(id=cid, kind=k, model=model, version=version, who=who, why=why, t=now,
                          key=command_key(now, cid))
    rel = f"{commands_prefix(model)}/{cmd.key}.json"
    grouped = durability == "group" and flusher is not None and storage.is_local
    storage.write_json(rel, cmd.model_dump(mode="json"), fsync=durability == "fsync" or
                       (durability == "group" and not grouped))
    if grouped:
        from lifelong_ray.data.flush import file_and_directory

        flusher.mark(*file_and_directory(storage.path(rel)))
    return cmd


def pending_keys(storage: Storage, model: str) -> list[str]:
    """Keys of the command files not archived yet, oldest first (one listing of one folder)."""
    prefix = commands_prefix(model)
    return [p[len(prefix) + 1:].removesuffix(".json") for p in storage.list(prefix, suffix=".json", recursive=False)]


def _read(storage: Storage, path: str, key: str) -> OperatorCommand:
    cmd = OperatorCommand.model_validate(storage.read_json(path))
    return cmd if cmd.key == key else cmd.model_copy(update={"key": key})  # the file name is the key


def read_commands(storage: Storage, model: str, done: Collection[str] = (), *,
                  archived: bool = False) -> list[OperatorCommand]:
    """Commands waiting in the folder (with ``archived``, the archived ones instead)
    whose id is not in ``done``, oldest first."""
    prefix = archive_prefix(model) if archived else commands_prefix(model)
    out = []
    for path in storage.list(prefix, suffix=".json", recursive=False):
        key = path[len(prefix) + 1:].removesuffix(".json")
        if key.rsplit("-", 1)[-1] in done:
            continue
        out.append(_read(storage, path, key))
    return sorted(out, key=lambda c: c.key)


def read_new_commands(storage: Storage, model: str, ledger: CommandLedger,
                      skew_seconds: float) -> tuple[list[OperatorCommand], list[str]]:
    """What the controller sees in one tick: the commands not taken in yet (parsed),
    and the keys that were taken in but whose file is still to be archived (not parsed).
    Costs one listing of the pending folder, which archiving keeps short. A file that
    is not a command (a foreign name, bad JSON) moves to ``commands/invalid/``."""
    skew_ms = int(skew_seconds * 1000)
    new, unarchived = [], []
    prefix = commands_prefix(model)
    for key in pending_keys(storage, model):
        try:
            if not _KEY_RE.match(key):
                raise ValueError("the name is not <15-digit ms timestamp>-<id>.json")
            if is_taken(ledger, key, skew_ms):
                unarchived.append(key)
                continue
            new.append(_read(storage, f"{prefix}/{key}.json", key))
        except (ValueError, OSError) as err:  # pydantic's ValidationError and bad JSON are ValueErrors
            if isinstance(err, FileNotFoundError):
                continue  # archived meanwhile
            log.error("command file %s/%s.json is not a command (%s): moved to %s/invalid/", prefix, key, err, prefix)
            storage.move(f"{prefix}/{key}.json", f"{prefix}/invalid/{key}.json")
    return new, unarchived


def archive_commands(storage: Storage, model: str, keys: Iterable[str]) -> int:
    """Move taken-in command files to the archive (idempotent); how many were moved.
    Call only after the state that took them in is saved."""
    n = 0
    for key in keys:
        storage.move(f"{commands_prefix(model)}/{key}.json", f"{archive_prefix(model)}/{key}.json")
        n += 1
    return n
