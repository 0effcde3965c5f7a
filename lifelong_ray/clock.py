"""Clocks: wall time for services, a sample counter for backtests.

Pure code (``policy/``, ``drift/``) never reads the time itself; it gets ``now``
from whoever calls it, which holds one of these.

    >>> c = SampleClock()
    >>> c.advance(5); c.now()
    5.0
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class WallClock:
    """Seconds since the epoch."""

    def now(self) -> float:
        return time.time()


class SampleClock:
    """Time measured in samples seen, for deterministic replays."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)

    def advance(self, n: float = 1) -> None:
        self._t += n

    def now(self) -> float:
        return self._t
