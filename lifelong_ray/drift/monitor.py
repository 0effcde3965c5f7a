"""Hysteresis over per-window drift flags.

A detector's flag on one window is noisy; the monitor fires once after
``required`` flagged windows in a row and stays quiet (active) until a clean
window resets it. Pure: the state goes in and the new state comes out.

    >>> state, fired_at = MonitorState(), []
    >>> for i, flagged in enumerate([True, False, True, True, True, True, False, True, True]):
    ...     state, fired = update_monitor(state, flagged, required=2)
    ...     if fired:
    ...         fired_at.append(i)
    >>> fired_at, state
    ([3, 8], MonitorState(consecutive=2, active=True))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

__all__ = ["MonitorState", "update_monitor"]


@dataclass(frozen=True)
class MonitorState:
    """``consecutive`` flagged windows so far; ``active`` once the monitor fired."""

    consecutive: int = 0
    active: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "MonitorState":
        return cls(consecutive=int(d["consecutive"]), active=bool(d["active"]))


def update_monitor(state: MonitorState, flagged: bool, required: int) -> tuple[MonitorState, bool]:
    """Return ``(new_state, fired)``.

    Fires exactly once, on the window where ``consecutive`` reaches ``required``;
    while active it keeps counting but does not fire again. An unflagged window
    resets to ``MonitorState(0, False)``.

    >>> update_monitor(MonitorState(consecutive=1), True, required=2)
    (MonitorState(consecutive=2, active=True), True)
    >>> update_monitor(MonitorState(consecutive=5, active=True), False, required=2)
    (MonitorState(consecutive=0, active=False), False)
    """
    if isinstance(required, bool) or int(required) != required or required < 1:
        raise ValueError(f"required must be an integer >= 1, got {required!r}")
    if not flagged:
        return MonitorState(), False
    consecutive = state.consecutive + 1
    fired = not state.active and consecutive >= required
    return MonitorState(consecutive=consecutive, active=state.active or fired), fired
