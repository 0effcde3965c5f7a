"""Operator commands (approve, rollback, retrain, pause, resume), applied exactly once.

Commands are taken in in key order (``<ms timestamp>-<id>``, the file name they
were written under). The state's :class:`~lifelong_ray.policy.model.CommandLedger`
remembers the newest key taken in (the mark) and the keys near it, so each command
is taken in once however many there are; the controller then archives its file.
Each leaves an audit event with who and why: the event of what it did, or
``command_rejected`` saying why it did not apply now.

    >>> from lifelong_ray.config import parse_config
    >>> from lifelong_ray.policy.decide import decide
    >>> from lifelong_ray.policy.model import ControllerState, Observations, OperatorCommand
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}],
    ...                     "label": {"name": "y", "classes": [0, 1]}}})
    >>> pause = OperatorCommand(id="a", kind="pause", model="m", t=10.0, key=command_key(10.0, "a"))
    >>> d = decide(ControllerState(model="m"), Observations(commands=[pause]), cfg, now=11.0)
    >>> [e.kind.value for e in d.events], d.state.command_ledger.mark
    (['paused'], '000000000010000-a')
    >>> [e.kind.value for e in decide(d.state, Observations(commands=[pause]), cfg, now=12.0).events]
    []
"""

from __future__ import annotations

from lifelong_ray.events import EventKind
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage
from lifelong_ray.policy.model import CommandKind, CommandLedger, Observations, OperatorCommand
from lifelong_ray.policy.retraining import pend
from lifelong_ray.policy.rollout import approve, operator_rollback
from lifelong_ray.policy.tick import Tick


def command_key(t: float, command_id: str) -> str:
    """The key (and file name, less ``.json``) of a command written at ``t``: sorts by time, then id."""
    return f"{int(t * 1000):015d}-{command_id}"


def key_ms(key: str) -> int:
    """The millisecond timestamp of a command key (-1 for the empty mark)."""
    return int(key.split("-", 1)[0]) if key else -1


def is_taken(ledger: CommandLedger, key: str, skew_ms: int) -> bool | None:
    """True if the command ``key`` was taken in, False if not, None if it is older
    than the skew window and was not (it is refused, not applied)."""
    if key in ledger.recent:
        return True
    if ledger.mark and key_ms(key) < key_ms(ledger.mark) - skew_ms:
        return None
    return False


def take_commands(tick: Tick, obs: Observations) -> None:
    s = tick.s
    led = s.command_ledger
    skew_ms = int(tick.cfg.controller.command_skew_seconds * 1000)
    commands = sorted(obs.commands, key=lambda c: c.key or command_key(c.t, c.id))
    legacy = _legacy_mark(s.commands_done, commands)
    recent = set(led.recent)
    for cmd in commands:
        key = cmd.key or command_key(cmd.t, cmd.id)
        if key in recent:
            continue
        late_s = (key_ms(led.mark) - key_ms(key)) / 1000 if led.mark else 0.0
        recent.add(key)
        led.recent.append(key)
        led.taken += 1
        led.mark = max(led.mark, key)
        if legacy and key <= legacy:  # taken in before the ledger existed (it kept ids only)
            continue
        if cmd.model != s.model:
            why_not = f"it is for model {cmd.model}"
        elif late_s * 1000 > skew_ms:
            why_not = (f"it was written {late_s:.1f}s before the newest command already taken in, more than"
                       f" controller.command_skew_seconds={tick.cfg.controller.command_skew_seconds:g} (the"
                       f" writer's clock is behind, or the write was held up); submit it again if it still applies")
        else:
            why_not = _HANDLERS[cmd.kind](tick, cmd)
        if why_not:
            tick.emit(EventKind.COMMAND_REJECTED, f"{cmd.kind.value} by {cmd.who} not applied: {why_not}",
                      cmd.version, who=cmd.who, why=cmd.why, command=cmd.kind.value, command_id=cmd.id)
    s.commands_done = []
    # keep the keys near the mark (late commands) and those whose file is still to be archived
    waiting = set(obs.commands_unarchived) | {c.key for c in commands}
    floor = key_ms(led.mark) - skew_ms
    led.recent = [k for k in led.recent if key_ms(k) >= floor or k in waiting]


def _legacy_mark(done: list[str], commands: list[OperatorCommand]) -> str:
    """A state written before the ledger lists only the ids it took in: every command up
    to the newest of those was taken in then (that code took all unseen ones each tick)."""
    if not done:
        return ""
    ids = set(done)
    return max((c.key or command_key(c.t, c.id) for c in commands if c.id in ids), default="")


def _pause(tick: Tick, cmd: OperatorCommand) -> str:
    if tick.s.paused:
        return "already paused"
    tick.s.paused = True
    tick.emit(EventKind.PAUSED, f"paused by {cmd.who}: {cmd.why or 'no reason given'}; no retrain starts and no"
                                f" rollout step advances until resumed (failing canaries are still rolled back)",
              None, who=cmd.who, why=cmd.why, command_id=cmd.id)
    return ""


def _resume(tick: Tick, cmd: OperatorCommand) -> str:
    if not tick.s.paused:
        return "not paused"
    tick.s.paused = False
    tick.emit(EventKind.RESUMED, f"resumed by {cmd.who}: {cmd.why or 'no reason given'}", None,
              who=cmd.who, why=cmd.why, command_id=cmd.id)
    return ""


def _retrain(tick: Tick, cmd: OperatorCommand) -> str:
    s = tick.s
    if s.retrain == RetrainStage.RUNNING:
        return f"retrain job {s.retrain_job_id} is already running"
    if s.rollout != RolloutStage.STABLE:
        return f"{s.candidate or s.champion} is in rollout stage {s.rollout.value}; retry when it ends"
    s.settles_left, s.settle_due_labeled = 0, None
    # urgent: it goes ahead of a refresh waiting on budget or quota (urgent requests still respect quotas)
    pend(tick, None, f"requested by {cmd.who}: {cmd.why or 'no reason given'}", purpose="operator", urgent=True,
         who=cmd.who, why=cmd.why, command_id=cmd.id)
    return ""


_HANDLERS = {
    CommandKind.PAUSE: _pause,
    CommandKind.RESUME: _resume,
    CommandKind.RETRAIN: _retrain,
    CommandKind.APPROVE: approve,
    CommandKind.ROLLBACK: operator_rollback,
}
