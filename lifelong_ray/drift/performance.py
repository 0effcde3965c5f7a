"""Performance drift on the labeled error stream.

Two detectors: :func:`accuracy_check` compares a window of labeled predictions
with the accuracy the version had at training time; :class:`PageHinkley` watches
the error stream (1 = wrong, 0 = right) sample by sample for a rise in its mean.

    >>> import numpy as np
    >>> from lifelong_ray.config import DriftConfig
    >>> accuracy_check(np.arange(200) % 25 != 0, 0.91, DriftConfig()).reason
    'accuracy 0.96 on 200 labeled >= reference 0.91 - 0.10'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

import numpy as np

from lifelong_ray.config import DriftConfig

__all__ = ["QualityCheck", "accuracy_check", "change_point", "PageHinkley", "PAGE_HINKLEY_FORMAT"]

PAGE_HINKLEY_FORMAT = 1


@dataclass(frozen=True)
class QualityCheck:
    """Accuracy of one labeled window against the reference accuracy."""

    n: int
    accuracy: float
    reference_accuracy: float
    drifted: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy"] = None if math.isnan(self.accuracy) else self.accuracy
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "QualityCheck":
        acc = d["accuracy"]
        return cls(n=int(d["n"]), accuracy=math.nan if acc is None else float(acc),
                   reference_accuracy=float(d["reference_accuracy"]), drifted=bool(d["drifted"]),
                   reason=d["reason"])


def accuracy_check(correct: np.ndarray, reference_accuracy: float, cfg: DriftConfig) -> QualityCheck:
    """Drifted when ``reference_accuracy - accuracy > cfg.accuracy_drop``.

    ``correct`` is a boolean array, one entry per labeled prediction. An empty
    window is never drifted (accuracy NaN).

    >>> from lifelong_ray.config import DriftConfig
    >>> q = accuracy_check(np.arange(200) < 104, 0.91, DriftConfig())
    >>> q.drifted, q.reason
    (True, 'accuracy 0.52 on 200 labeled < reference 0.91 - 0.10')
    """
    if not 0.0 <= reference_accuracy <= 1.0:
        raise ValueError(f"reference_accuracy must be in [0, 1], got {reference_accuracy}")
    c = np.asarray(correct).ravel()
    n = int(c.size)
    floor = f"reference {reference_accuracy:.2f} - {cfg.accuracy_drop:.2f}"
    if n == 0:
        return QualityCheck(0, math.nan, float(reference_accuracy), False,
                            f"no labeled rows to compare with {floor}")
    acc = float(np.count_nonzero(c)) / n
    drifted = reference_accuracy - acc > cfg.accuracy_drop
    op = "<" if drifted else ">="
    return QualityCheck(n, acc, float(reference_accuracy), bool(drifted),
                        f"accuracy {acc:.2f} on {n} labeled {op} {floor}")


def change_point(correct: np.ndarray) -> int | None:
    """Where the mean of a 0/1 (or real) sequence most likely shifted: the CUSUM
    argmax, i.e. the split that maximises the weighted difference of the two means.
    Returns the index of the first sample after the change, or None when the
    sequence is too short or constant.

    >>> x = np.r_[np.ones(120), np.zeros(80)]
    >>> change_point(x)
    120
    >>> change_point(np.ones(50)) is None
    True
    """
    x = np.asarray(correct, dtype=float)
    if x.size < 4 or np.all(x == x[0]):
        return None
    s = np.cumsum(x - x.mean())[:-1]
    return int(np.argmax(np.abs(s))) + 1


@dataclass
class _PHState:
    n: int = 0
    total: float = 0.0
    sum_inc: float = 0.0
    min_inc: float = math.inf
    sum_dec: float = 0.0
    max_dec: float = -math.inf


class PageHinkley:
    """Page-Hinkley test for a change in the mean of a stream (River-style).

    With ``d_t = x_t - mean_t`` (running mean of the samples since the last
    reset), ``U_t = alpha * U_{t-1} + d_t - delta`` and
    ``L_t = alpha * L_{t-1} + d_t + delta``; drift fires on the sample where
    ``U_t - min(U) > threshold`` (``mode="up"``: the mean rose, e.g. the error
    rate), ``max(L) - L_t > threshold`` (``"down"``) or either (``"both"``), once
    at least ``min_instances`` samples were seen. The detector resets itself
    right after firing; no flag stays set.

    Parameters
    ----------
    min_instances
        Samples needed (since the last reset) before drift can fire.
    delta
        Tolerated change of the mean (magnitude of changes to ignore).
    threshold
        Detection threshold (lambda); larger means fewer, later alarms.

    The defaults ``delta=0.05, threshold=30`` suit a 0/1 error stream (River's
    generic defaults are ``delta=0.005, threshold=50``, which on error streams
    alarm more often on stationary data and later on real changes).
    alpha
        Forgetting factor of the cumulative sums, in (0, 1].
    mode
        ``"up"`` (default, for error streams), ``"down"`` or ``"both"``.

    A seeded error stream whose error rate steps from 10% to 50% at sample 1000:

    >>> import numpy as np
    >>> rng = np.random.default_rng(42)
    >>> errors = np.r_[rng.random(1000) < 0.1, rng.random(1000) < 0.5].astype(float)
    >>> ph = PageHinkley()
    >>> for i, x in enumerate(errors):
    ...     if ph.update(x):
    ...         print(f"drift at {i}")
    drift at 1093
    >>> PageHinkley().update_many(errors)
    1093
    >>> state = PageHinkley.from_json(ph.to_json())   # persisted and restored
    >>> state.to_json() == ph.to_json()
    True
    """

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.05,
        threshold: float = 30.0,
        alpha: float = 1 - 0.0001,
        mode: Literal["up", "down", "both"] = "up",
    ) -> None:
        if isinstance(min_instances, bool) or int(min_instances) != min_instances or min_instances < 1:
            raise ValueError(f"min_instances must be an integer >= 1, got {min_instances!r}")
        if not (math.isfinite(delta) and delta >= 0):
            raise ValueError(f"delta must be finite and >= 0, got {delta!r}")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be finite and > 0, got {threshold!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if mode not in ("up", "down", "both"):
            raise ValueError(f"mode must be 'up', 'down' or 'both', got {mode!r}")
        self.min_instances = int(min_instances)
        self.delta = float(delta)
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.mode = mode
        self._reset()

    def _reset(self) -> None:
        self._s = _PHState()

    @property
    def n(self) -> int:
        """Samples seen since the last reset."""
        return self._s.n

    @property
    def statistic(self) -> float:
        """The current test value compared with ``threshold`` (0 before any sample)."""
        s = self._s
        if s.n == 0:
            return 0.0
        up, down = s.sum_inc - s.min_inc, s.max_dec - s.sum_dec
        return {"up": up, "down": down, "both": max(up, down)}[self.mode]

    # -- one sample ----------------------------------------------------------
    def update(self, x: float) -> bool:
        """Add one sample; True on the sample where drift fires (then it resets)."""
        x = float(x)
        s = self._s
        s.n += 1
        s.total += x
        dev = x - s.total / s.n
        s.sum_inc = self.alpha * s.sum_inc + (dev - self.delta)
        s.sum_dec = self.alpha * s.sum_dec + (dev + self.delta)
        s.min_inc = min(s.min_inc, s.sum_inc)
        s.max_dec = max(s.max_dec, s.sum_dec)
        if s.n < self.min_instances:
            return False
        up = self.mode != "down" and s.sum_inc - s.min_inc > self.threshold
        down = self.mode != "up" and s.max_dec - s.sum_dec > self.threshold
        if up or down:
            self._reset()
            return True
        return False

    # -- many samples --------------------------------------------------------
    def update_many(self, xs: np.ndarray) -> int | None:
        """Add every sample of ``xs`` (same end state as calling :meth:`update` on
        each); return the index of the first firing, or None."""
        fired = self.update_batch(xs)
        return fired[0] if fired else None

    def update_batch(self, xs: np.ndarray) -> list[int]:
        """Add every sample of ``xs``; return the indices of all firings.

        Vectorized per chunk; with ``alpha == 1`` it is bit-for-bit the same as
        :meth:`update` in a loop, otherwise equal up to float rounding.
        """
        x = np.asarray(xs, dtype=np.float64).ravel()
        if self.alpha == 1.0:
            chunk = 8192
        else:  # keep alpha**-i below 2**10 inside a chunk, for precision
            chunk = int(max(1, min(8192, math.floor(10 * math.log(2) / -math.log(self.alpha)))))
        fired: list[int] = []
        pos = 0
        while pos < x.size:
            part = x[pos: pos + chunk]
            j = self._run(part)
            if j is None:
                pos += part.size
            else:
                fired.append(pos + j)
                self._reset()
                pos += j + 1
        return fired

    def _run(self, x: np.ndarray) -> int | None:
        """Advance the state over ``x``; stop at (and return) the first firing."""
        s = self._s
        m = x.size
        nt = s.n + np.arange(1, m + 1)
        total = np.cumsum(np.concatenate(([s.total], x)))[1:]
        dev = x - total / nt
        sum_inc = self._ewsum(s.sum_inc, dev - self.delta)
        sum_dec = self._ewsum(s.sum_dec, dev + self.delta)
        min_inc = np.minimum.accumulate(np.concatenate(([s.min_inc], sum_inc)))[1:]
        max_dec = np.maximum.accumulate(np.concatenate(([s.max_dec], sum_dec)))[1:]
        fire = np.zeros(m, dtype=bool)
        if self.mode != "down":
            fire |= sum_inc - min_inc > self.threshold
        if self.mode != "up":
            fire |= max_dec - sum_dec > self.threshold
        fire &= nt >= self.min_instances
        if fire.any():
            return int(np.argmax(fire))
        s.n, s.total = int(nt[-1]), float(total[-1])
        s.sum_inc, s.min_inc = float(sum_inc[-1]), float(min_inc[-1])
        s.sum_dec, s.max_dec = float(sum_dec[-1]), float(max_dec[-1])
        return None

    def _ewsum(self, s0: float, d: np.ndarray) -> np.ndarray:
        """``s_t = alpha * s_{t-1} + d_t`` for every t, from ``s0``."""
        if self.alpha == 1.0:
            return np.cumsum(np.concatenate(([s0], d)))[1:]
        i = np.arange(d.size + 1, dtype=np.float64)
        w = self.alpha ** i
        return (np.cumsum(np.concatenate(([s0], d)) / w) * w)[1:]

    # -- persistence ---------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Parameters and state as a JSON-ready dict (infinities as null)."""
        st = asdict(self._s)
        for key in ("min_inc", "max_dec"):
            if math.isinf(st[key]):
                st[key] = None
        return {
            "format": PAGE_HINKLEY_FORMAT,
            "params": {"min_instances": self.min_instances, "delta": self.delta,
                       "threshold": self.threshold, "alpha": self.alpha, "mode": self.mode},
            "state": st,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "PageHinkley":
        """Rebuild a detector written by :meth:`to_json`."""
        if d.get("format") != PAGE_HINKLEY_FORMAT:
            raise ValueError(f"unsupported PageHinkley format {d.get('format')!r}")
        ph = cls(**d["params"])
        st = dict(d["state"])
        st["min_inc"] = math.inf if st["min_inc"] is None else float(st["min_inc"])
        st["max_dec"] = -math.inf if st["max_dec"] is None else float(st["max_dec"])
        ph._s = _PHState(n=int(st["n"]), total=float(st["total"]), sum_inc=float(st["sum_inc"]),
                         min_inc=st["min_inc"], sum_dec=float(st["sum_dec"]), max_dec=st["max_dec"])
        return ph

    def __repr__(self) -> str:
        return (f"PageHinkley(min_instances={self.min_instances}, delta={self.delta}, "
                f"threshold={self.threshold}, alpha={self.alpha}, mode={self.mode!r})")
