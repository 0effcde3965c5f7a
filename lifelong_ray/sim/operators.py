"""The people in a backtest: scripted operator commands and an approval policy.

A live config may hold rollouts for an operator (``rollout.require_approval``) and
operators pause, resume, roll back, retrain and approve by hand. A backtest plays
them so any live config can be replayed without stalling:

* a **command script** (``lifelong backtest --commands FILE``): a YAML or JSON list of
  ``{at_sample, kind, who, why, version?}``; each command is handed to ``decide()``
  once, at the first controller tick at or after ``at_sample`` (a stream row index),
  exactly like a command the live controller reads from storage;
* an **approval policy** (``--approval auto|never``, ``--approve-after N``): ``auto``
  approves a candidate held for approval (before its canary, or before 100%) once it
  has waited ``N`` samples, as ``who: backtest``; ``never`` leaves it held, and the
  report's ``summary.held`` says what waits and why. A rollout held by a spent error
  budget is not approved by the policy (it resumes when the budget recovers, or by a
  scripted ``approve``).

    >>> script = parse_commands([{"at_sample": 3000, "kind": "pause", "who": "ana", "why": "migration"},
    ...                          {"at_sample": 2500, "kind": "rollback", "why": "bad labels"}])
    >>> [(c.at_sample, c.kind.value, c.who) for c in script]
    [(2500, 'rollback', 'backtest'), (3000, 'pause', 'ana')]
    >>> due = CommandScript(script, model="m")
    >>> [c.kind.value for c in due.due(2600, t=10.4)], due.due(2700, t=10.8)
    (['rollback'], [])
    >>> p = ApprovalPolicy("auto", after=500)
    >>> p.approve("v0002", "canary", requested_at=1000, now=1400), p.approve("v0002", "canary", 1000, 1500) is not None
    (None, True)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lifelong_ray.policy.model import CommandKind, OperatorCommand

APPROVAL_POLICIES = ("auto", "never")


class ScriptedCommand(BaseModel):
    """One line of a backtest's command script."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at_sample: int = Field(ge=0, description="stream row index at or after which the command is given")
    kind: CommandKind
    who: str = Field(default="backtest", max_length=200)
    why: str = Field(default="", max_length=2000)
    version: str | None = None


def parse_commands(items: Any) -> list[ScriptedCommand]:
    """Validate a list of command dicts (sorted by ``at_sample``, stable); a bad one
    raises ``ValueError`` naming its index and field."""
    if not isinstance(items, list):
        raise ValueError(f"a command script is a list of {{at_sample, kind, who, why, version?}}, got "
                         f"{type(items).__name__}")
    out = []
    for k, item in enumerate(items):
        try:
            out.append(ScriptedCommand.model_validate(item))
        except ValidationError as err:
            e = err.errors()[0]
            loc = ".".join(str(p) for p in e["loc"]) or "<item>"
            raise ValueError(f"command {k}: {loc}: {e['msg']}") from None
    return sorted(out, key=lambda c: c.at_sample)


def load_commands(path: str | Path) -> list[ScriptedCommand]:
    """Read a command script from a ``.json`` or YAML file (``{"commands": [...]}`` also accepted)."""
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if isinstance(data, dict) and "commands" in data:
        data = data["commands"]
    return parse_commands(data if data is not None else [])


class CommandScript:
    """Hands out each scripted command once, when its sample is reached."""

    def __init__(self, commands: list[ScriptedCommand], model: str) -> None:
        self.commands = sorted(commands, key=lambda c: c.at_sample)
        self.model = model
        self._next = 0

    def due(self, sample: int, t: float) -> list[OperatorCommand]:
        out = []
        while self._next < len(self.commands) and self.commands[self._next].at_sample <= sample:
            c = self.commands[self._next]
            out.append(OperatorCommand(id=f"script-{self._next:04d}", kind=c.kind, model=self.model,
                                       version=c.version, who=c.who, why=c.why, t=t))
            self._next += 1
        return out


class ApprovalPolicy:
    """``auto`` (approve after ``after`` samples of waiting) or ``never``."""

    def __init__(self, mode: Literal["auto", "never"] = "auto", after: int = 0) -> None:
        if mode not in APPROVAL_POLICIES:
            raise ValueError(f"approval policy {mode!r}: expected one of {', '.join(APPROVAL_POLICIES)}")
        if after < 0:
            raise ValueError(f"approve-after must be >= 0 samples, got {after}")
        self.mode, self.after = mode, after

    def describe(self) -> str:
        return f"auto-approve after {self.after} samples" if self.mode == "auto" else "never approve"

    def approve(self, candidate: str, approval_for: str | None, requested_at: int, now: int,
                model: str = "", t: float = 0.0) -> OperatorCommand | None:
        """The approval to give now, or None (not yet, never, or a budget hold)."""
        if self.mode != "auto" or approval_for not in ("canary", "full") or now - requested_at < self.after:
            return None
        return OperatorCommand(id=f"auto-approve-{candidate}-{approval_for}", kind=CommandKind.APPROVE, model=model,
                               version=candidate, who="backtest",
                               why=f"backtest approval policy: {self.describe()} (waited {now - requested_at})", t=t)

    def held_reason(self, candidate: str, approval_for: str | None, requested_at: int) -> str:
        target = "its canary" if approval_for == "canary" else "100%" if approval_for == "full" else approval_for
        if approval_for == "budget":
            return (f"{candidate} held since sample {requested_at}: the error budget is spent; it goes on when "
                    f"the budget recovers (the approval policy does not approve budget holds)")
        return (f"{candidate} waits for approval before {target} since sample {requested_at}: "
                f"backtest approval policy is '{self.mode}'"
                + ("" if self.mode == "never" else f" ({self.describe()}; the stream ended first)"))
