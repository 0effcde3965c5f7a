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
    """Where the model's traffic split stands."""

    STABLE = "stable"   # the champion (if any) takes all traffic
    CANARY = "canary"   # a candidate takes a growing share, step by step


class RetrainStage(str, Enum):
    """Where the model's retrain job stands."""

    IDLE = "idle"        # nothing requested
    PENDING = "pending"  # requested; waiting for labeled rows, cooldown or quota
    RUNNING = "running"  # a job is training; its result file ends it


ROLLOUT_TRANSITIONS: dict[RolloutStage, frozenset[RolloutStage]] = {
    RolloutStage.STABLE: frozenset({RolloutStage.CANARY}),
    # CANARY -> CANARY is a step up; -> STABLE is promotion or rollback.
    RolloutStage.CANARY: frozenset({RolloutStage.CANARY, RolloutStage.STABLE}),
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
