"""Lifecycles of a model's rollout and of its retrain job, as enums with a
transition table. :func:`transition` is the only way the policy changes them, so
an illegal move raises instead of corrupting persisted state.

    >>> transition(RolloutStage.STABLE, RolloutStage.CANARY)
    <RolloutStage.CANARY: 'canary'>
    >>> transition(RetrainStage.IDLE, RetrainStage.IDLE)
    Traceback (most recent call last):
    ...
    lifelong_ray.policy.lifecycle.IllegalTransition: retrain stage cannot go from idle to idle
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar


class IllegalTransition(RuntimeError):
    """A lifecycle move that the transition table does not allow."""


class RolloutStage(str, Enum):
    """Where the model's candidate stands on its way to taking all traffic.

    ``STABLE`` -> [``SHADOW``] -> [``APPROVAL``] -> ``CANARY`` steps -> [``APPROVAL``]
    -> champion (``PROBATION`` when configured, then ``STABLE``); a rollback or an
    abort returns to ``STABLE`` from any stage.
    """

    STABLE = "stable"        # the champion (if any) takes all traffic; no candidate
    SHADOW = "shadow"        # the candidate answers mirrored requests; its answers are logged, never returned
    APPROVAL = "approval"    # held for an operator's approval (before the canary, or before 100%)
    CANARY = "canary"        # the candidate takes a growing share, step by step
    PROBATION = "probation"  # a new champion at 100%, the previous one kept ready, watched on late labels


class RetrainStage(str, Enum):
    """Where the model's retrain job stands."""

    IDLE = "idle"        # nothing requested
    PENDING = "pending"  # requested; waiting for labeled rows, cooldown or quota
    RUNNING = "running"  # a job is training; its result file ends it


ROLLOUT_TRANSITIONS: dict[RolloutStage, frozenset[RolloutStage]] = {
    RolloutStage.STABLE: frozenset({RolloutStage.SHADOW, RolloutStage.APPROVAL, RolloutStage.CANARY}),
    # SHADOW -> STABLE: aborted (disagreement, worse on labels, operator)
    RolloutStage.SHADOW: frozenset({RolloutStage.APPROVAL, RolloutStage.CANARY, RolloutStage.STABLE}),
    # APPROVAL -> CANARY: approved for canary; -> PROBATION/STABLE: approved for 100%; -> STABLE: rolled back
    RolloutStage.APPROVAL: frozenset({RolloutStage.CANARY, RolloutStage.PROBATION, RolloutStage.STABLE}),
    # CANARY -> CANARY is a step up; -> APPROVAL holds before 100%; -> PROBATION/STABLE: promoted or rolled back
    RolloutStage.CANARY: frozenset({RolloutStage.CANARY, RolloutStage.APPROVAL, RolloutStage.PROBATION,
                                    RolloutStage.STABLE}),
    # PROBATION -> STABLE: passed, or rolled back to the previous champion
    RolloutStage.PROBATION: frozenset({RolloutStage.STABLE}),
}

RETRAIN_TRANSITIONS: dict[RetrainStage, frozenset[RetrainStage]] = {
    RetrainStage.IDLE: frozenset({RetrainStage.PENDING, RetrainStage.RUNNING}),
    RetrainStage.PENDING: frozenset({RetrainStage.RUNNING, RetrainStage.IDLE}),
    RetrainStage.RUNNING: frozenset({RetrainStage.IDLE}),
}

S = TypeVar("S", RolloutStage, RetrainStage)


def transition(current: S, target: S) -> S:
    table = ROLLOUT_TRANSITIONS if isinstance(current, RolloutStage) else RETRAIN_TRANSITIONS
    if target not in table[current]:
        what = "rollout" if isinstance(current, RolloutStage) else "retrain"
        raise IllegalTransition(f"{what} stage cannot go from {current.value} to {target.value}")
    return target
