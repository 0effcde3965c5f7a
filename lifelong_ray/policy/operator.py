"""Operator commands (approve, rollback, retrain, pause, resume), applied exactly once.

Each :class:`~lifelong_ray.policy.model.OperatorCommand` is taken in once (its id is
remembered in the state) and always leaves an audit event with who and why: the
event of what it did, or ``command_rejected`` saying why it did not apply now.
"""

from __future__ import annotations

from lifelong_ray.events import EventKind
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage
from lifelong_ray.policy.model import CommandKind, Observations, OperatorCommand
from lifelong_ray.policy.retraining import pend
from lifelong_ray.policy.rollout import approve, operator_rollback
from lifelong_ray.policy.tick import Tick

#: ids of taken-in commands remembered in the state (commands are read newest-unseen first)
COMMANDS_REMEMBERED = 1000


def take_commands(tick: Tick, obs: Observations) -> None:
    s = tick.s
    done = set(s.commands_done)
    for cmd in obs.commands:
        if cmd.id in done or cmd.model != s.model:
            continue
        done.add(cmd.id)
        s.commands_done = (s.commands_done + [cmd.id])[-COMMANDS_REMEMBERED:]
        why_not = _HANDLERS[cmd.kind](tick, cmd)
        if why_not:
            tick.emit(EventKind.COMMAND_REJECTED, f"{cmd.kind.value} by {cmd.who} not applied: {why_not}",
                      cmd.version, who=cmd.who, why=cmd.why, command=cmd.kind.value, command_id=cmd.id)


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
