"""Compute quotas for retraining and the impact-ordered queue of deferred retrains.

:func:`quota_blocker` says whether a retrain may start now under
:class:`~lifelong_ray.config.QuotaConfig`: concurrent retrains, retrains started in
the last hour, training CPU- and GPU-seconds in the last 24 h (rolling windows
over :class:`RetrainRecord` starts), and the allowed UTC hours. An urgent retrain
(a performance drift on a model that is burning its error budget) may start
outside the allowed hours, never beyond the other limits. Each blocking reason ends
with the setting that blocks, e.g. ``(max_retrains_per_hour)``. The cooldown after a
retrain is drift policy, not quota: it stays in :mod:`lifelong_ray.policy.decide`.

    >>> from lifelong_ray.config import QuotaConfig
    >>> cfg = QuotaConfig(max_retrains_per_hour=2, allowed_hours=[22, 23, 0, 1])
    >>> hist = [RetrainRecord(start_t=t) for t in (79_500.0, 82_000.0)]
    >>> v = quota_blocker(hist, running=0, cfg=cfg, now=82_600.0)   # 22:56 UTC on day 0
    >>> v.allowed, v.reason, v.retry_at
    (False, 'quota: 2/2 retrains in the last hour; next slot in 500s (max_retrains_per_hour)', 83100.0)
    >>> v = quota_blocker(hist[:1], running=0, cfg=cfg, now=10_800.0)   # 03:00 UTC
    >>> print(v.reason)
    quota: hour 03 UTC is outside the allowed hours [0, 1, 22, 23]; next window at 22:00 UTC in 68400s (allowed_hours)
    >>> quota_blocker(hist[:1], running=0, cfg=cfg, now=10_800.0, urgent=True).allowed
    True

A retrain that is blocked waits in a queue of :class:`RetrainRequest`, highest
impact first (:func:`push`, :func:`pop_highest`).
"""

from __future__ import annotations

import math
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from lifelong_ray.config import DriftConfig, QuotaConfig

HOUR = 3600.0
DAY = 86400.0


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class RetrainRecord(_Frozen):
    """One started retrain, as the quota meters it: when it started and what it
    used (0 until it has finished and reported its usage)."""

    start_t: float
    cpu_seconds: float = Field(default=0.0, ge=0)
    gpu_seconds: float = Field(default=0.0, ge=0)


class Blocker(str, Enum):
    CONCURRENCY = "concurrency"
    PER_HOUR = "per_hour"
    CPU_DAY = "cpu_day"
    GPU_DAY = "gpu_day"
    HOURS = "hours"


class QuotaVerdict(_Frozen):
    """``allowed``, or what blocks (``blockers``, ``reason`` with numbers) and
    ``retry_at``: the earliest time every time-based blocker has cleared (a lower
    bound: check again then; a running retrain must also have finished when
    ``concurrency`` blocks); None when only a running retrain finishing can
    unblock it, or retrains are disabled."""

    allowed: bool
    reason: str
    retry_at: float | None = None
    blockers: list[Blocker] = Field(default_factory=list)


def quota_blocker(history: list[RetrainRecord], running: int, cfg: QuotaConfig, now: float,
                  urgent: bool = False) -> QuotaVerdict:
    """May a retrain start at ``now``? ``history``: retrains started (older than a
    day may be left out); ``running``: retrains in flight now.

    >>> from lifelong_ray.config import QuotaConfig
    >>> cfg = QuotaConfig(max_concurrent_retrains=1, cpu_seconds_per_day=1000)
    >>> v = quota_blocker([RetrainRecord(start_t=0, cpu_seconds=1200)], running=1, cfg=cfg, now=600)
    >>> v.blockers, v.retry_at
    ([<Blocker.CONCURRENCY: 'concurrency'>, <Blocker.CPU_DAY: 'cpu_day'>], 86400.0)
    >>> for part in v.reason.split("; quota: "): print(part)
    quota: 1/1 retrains running; next slot when one finishes (max_concurrent_retrains)
    1200/1000 CPU-seconds in the last 24h; next slot in 85800s (cpu_seconds_per_day)
    >>> print(quota_blocker([], running=0, cfg=cfg, now=600).reason)
    quota: ok: 0/1 running, 0/6 in the last hour, 0/1000 CPU-seconds in the last 24h
    """
    blocks: list[tuple[Blocker, str, float | None]] = []
    if running >= cfg.max_concurrent_retrains:
        blocks.append((Blocker.CONCURRENCY, f"{running}/{cfg.max_concurrent_retrains} retrains running;"
                                            f" next slot when one finishes (max_concurrent_retrains)", None))
    recent = sorted(r.start_t for r in history if 0 <= now - r.start_t < HOUR)
    if cfg.max_retrains_per_hour == 0:
        blocks.append((Blocker.PER_HOUR, "max_retrains_per_hour is 0: retrains are disabled", None))
    elif len(recent) >= cfg.max_retrains_per_hour:
        at = recent[len(recent) - cfg.max_retrains_per_hour] + HOUR  # enough starts have left the hour
        blocks.append((Blocker.PER_HOUR, f"{len(recent)}/{cfg.max_retrains_per_hour} retrains in the last hour;"
                                         f" next slot in {at - now:.0f}s (max_retrains_per_hour)", at))
    usage = []
    for blocker, name, key, limit, used_of in (
            (Blocker.CPU_DAY, "CPU", "cpu_seconds_per_day", cfg.cpu_seconds_per_day, _cpu),
            (Blocker.GPU_DAY, "GPU", "gpu_seconds_per_day", cfg.gpu_seconds_per_day, _gpu)):
        if limit is None:
            continue
        used, at = _daily(history, used_of, limit, now)
        usage.append(f"{used:.0f}/{limit:.0f} {name}-seconds in the last 24h")
        if at is not None:
            blocks.append((blocker, f"{usage[-1]}; next slot in {at - now:.0f}s ({key})", at))
    hours = _hours_blocker(cfg.allowed_hours, now)
    if hours is not None and not urgent:
        blocks.append((Blocker.HOURS, *hours))
    if blocks:
        times = [at for _, _, at in blocks if at is not None]
        disabled = any(b == Blocker.PER_HOUR and at is None for b, _, at in blocks)
        return QuotaVerdict(allowed=False, reason="; ".join(f"quota: {why}" for _, why, _ in blocks),
                            retry_at=max(times) if times and not disabled else None,
                            blockers=[b for b, _, _ in blocks])
    parts = [f"{running}/{cfg.max_concurrent_retrains} running",
             f"{len(recent)}/{cfg.max_retrains_per_hour} in the last hour", *usage]
    if hours is not None:
        parts.append("urgent: allowed hours waived")
    return QuotaVerdict(allowed=True, reason="quota: ok: " + ", ".join(parts))


def _cpu(r: RetrainRecord) -> float:
    return r.cpu_seconds


def _gpu(r: RetrainRecord) -> float:
    return r.gpu_seconds


def _daily(history: list[RetrainRecord], used_of, limit: float, now: float) -> tuple[float, float | None]:
    """Seconds used by retrains started in the last 24 h, and (if at or over
    ``limit``) when enough of them will have left the window to be under it."""
    day = sorted((r for r in history if 0 <= now - r.start_t < DAY), key=lambda r: r.start_t)
    used = sum(used_of(r) for r in day)
    if used < limit:
        return used, None
    left = used
    for r in day:
        left -= used_of(r)
        if left < limit:
            return used, r.start_t + DAY
    raise AssertionError("unreachable: usage falls to 0 < limit")  # pragma: no cover


def _hours_blocker(allowed: list[int] | None, now: float) -> tuple[str, float] | None:
    """Why ``now`` is outside the allowed UTC hours and when the next one starts; None if inside."""
    if allowed is None:
        return None
    hour_index = math.floor(now / HOUR)
    hour = hour_index % 24
    if hour in allowed:
        return None
    ahead = next(k for k in range(1, 25) if (hour + k) % 24 in allowed)
    at = (hour_index + ahead) * HOUR
    return (f"hour {hour:02d} UTC is outside the allowed hours {sorted(allowed)};"
            f" next window at {(hour + ahead) % 24:02d}:00 UTC in {at - now:.0f}s (allowed_hours)", at)


# -- the queue of deferred retrains -------------------------------------------------

class RetrainRequest(_Frozen):
    """A retrain waiting for quota. ``kind`` names why it was asked for
    ("performance_drift", "feature_drift", "manual", "settle", ...): the queue
    holds one request per kind."""

    kind: str = Field(min_length=1)
    reason: str
    requested_t: float
    since_t: float | None = None  # train on labeled rows from here on; None: all of them
    impact: float = Field(default=0.0, ge=0)
    urgent: bool = False
    purpose: str = "drift"  # bootstrap | drift | settle | operator: what the retrain is for (the gate uses it)
    command_ids: list[str] = Field(default_factory=list)  # operator commands this request answers


def impact_score(*, accuracy_drop: float | None = None, max_psi: float | None = None,
                 burn_rate: float = 0.0, cfg: DriftConfig) -> float:
    """How much a retrain matters, in multiples of the thresholds: the drift size
    (the accuracy drop over ``cfg.accuracy_drop``, or the max PSI over
    ``cfg.psi_threshold``, whichever is larger) plus the error budget's burn
    rate (1.0 spends the budget exactly over its period).

    >>> from lifelong_ray.config import DriftConfig
    >>> impact_score(accuracy_drop=0.25, max_psi=0.3, burn_rate=2.0, cfg=DriftConfig())
    4.5
    """
    size = max((accuracy_drop or 0.0) / cfg.accuracy_drop, (max_psi or 0.0) / cfg.psi_threshold)
    return max(0.0, size) + max(0.0, burn_rate)


def push(queue: list[RetrainRequest], request: RetrainRequest) -> list[RetrainRequest]:
    """The queue with ``request`` added, highest priority first.

    One request per kind: a newer request of a kind already queued replaces its
    reason, impact and urgency (the newest evidence) but keeps the earlier
    ``requested_t`` (its place in line among equals) and the earlier ``since_t``
    (the first onset: the re-detected drift is taken as the same one going on;
    None, all rows, is the earliest).

    >>> q = push([], RetrainRequest(kind="feature_drift", reason="PSI 0.3", requested_t=5, since_t=4, impact=1.5))
    >>> q = push(q, RetrainRequest(kind="performance_drift", reason="acc 0.6", requested_t=6, since_t=5, impact=3))
    >>> q = push(q, RetrainRequest(kind="feature_drift", reason="PSI 0.9", requested_t=9, since_t=8, impact=4.5))
    >>> [(r.kind, r.reason, r.requested_t, r.since_t) for r in q]
    [('feature_drift', 'PSI 0.9', 5.0, 4.0), ('performance_drift', 'acc 0.6', 6.0, 5.0)]
    """
    old = next((r for r in queue if r.kind == request.kind), None)
    if old is not None:
        since = None if old.since_t is None or request.since_t is None else min(old.since_t, request.since_t)
        ids = old.command_ids + [i for i in request.command_ids if i not in old.command_ids]
        request = request.model_copy(update={"requested_t": min(old.requested_t, request.requested_t),
                                              "since_t": since, "command_ids": ids})
    return sorted([r for r in queue if r.kind != request.kind] + [request], key=_priority)


def pop_highest(queue: list[RetrainRequest]) -> tuple[RetrainRequest | None, list[RetrainRequest]]:
    """The request to run next (urgent first, then highest impact, then longest
    waiting) and the queue without it.

    >>> q = [RetrainRequest(kind="settle", reason="", requested_t=1, impact=9),
    ...      RetrainRequest(kind="performance_drift", reason="", requested_t=2, impact=1, urgent=True)]
    >>> first, rest = pop_highest(q)
    >>> first.kind, [r.kind for r in rest]
    ('performance_drift', ['settle'])
    >>> pop_highest([])
    (None, [])
    """
    if not queue:
        return None, []
    ordered = sorted(queue, key=_priority)
    return ordered[0], ordered[1:]


def _priority(r: RetrainRequest) -> tuple[bool, float, float, str]:
    return (not r.urgent, -r.impact, r.requested_t, r.kind)
