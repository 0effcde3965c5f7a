"""Retries of failing actions with exponential backoff, then abandonment.

The controller runs its pending actions in order. An action that raises is
retried after ``backoff * 2**(attempt-1)`` seconds (``controller.action_backoff_seconds``),
at most ``controller.action_retries`` times; the actions queued behind it wait
(they may depend on it: a routing table that sends traffic to a version being
deployed). After the last retry it is *abandoned*, together with every queued action
that names the same version (:func:`depends_on`), and reported to the policy as a
:class:`~lifelong_ray.policy.model.FailedAction` in the next tick's observations.
The bookkeeping lives in memory: a restarted controller retries a still-pending
action afresh.

    >>> from lifelong_ray.policy.model import Action, ActionKind
    >>> r = Retries(retries=2, backoff_seconds=1.0)
    >>> deploy = Action(kind=ActionKind.DEPLOY_VERSION, version="v2")
    >>> route = Action(kind=ActionKind.SET_ROUTING, weights={"v1": 90.0, "v2": 10.0})
    >>> r.failed(deploy, "boom", now=10.0, queue=[deploy, route])  # retry at 11
    False
    >>> r.ready(deploy, now=10.5), r.ready(deploy, now=11.0)
    (False, True)
    >>> r.failed(deploy, "boom", now=11.0, queue=[deploy, route])  # retry at 13
    False
    >>> r.failed(deploy, "boom again", now=13.0, queue=[deploy, route])  # abandoned
    True
    >>> r.dropped(route)
    True
    >>> [(f.action.kind.value, f.attempts, f.error, len(f.skipped)) for f in r.take_abandoned()]
    [('deploy_version', 3, 'boom again', 1)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lifelong_ray.policy.model import Action, FailedAction

#: characters of an exception's text kept in the reason
_MAX_ERROR = 500


def action_key(a: Action) -> str:
    """Identifies an action in the queue (equal actions are equivalent: they are idempotent)."""
    return a.model_dump_json()


def depends_on(a: Action, version: str | None) -> bool:
    """Does ``a`` only make sense if ``version`` is deployed (it routes traffic to it,
    mirrors requests to it, points an alias at it or deploys it)?"""
    if version is None:
        return False
    return a.version == version or a.weights.get(version, 0.0) > 0 or a.shadow == version


@dataclass
class _Attempts:
    count: int
    next_t: float
    error: str


@dataclass
class Retries:
    """Attempts and backoff of the failing actions of one controller."""

    retries: int
    backoff_seconds: float
    _failing: dict[str, _Attempts] = field(default_factory=dict)
    _dropped: set[str] = field(default_factory=set)
    _abandoned: list[FailedAction] = field(default_factory=list)

    def ready(self, a: Action, now: float) -> bool:
        """May ``a`` be tried now (it never failed, or its backoff has passed)?"""
        st = self._failing.get(action_key(a))
        return st is None or now >= st.next_t

    def dropped(self, a: Action) -> bool:
        """Was ``a`` abandoned (or skipped with an abandoned action) and not yet taken in by the policy?"""
        return action_key(a) in self._dropped

    def succeeded(self, a: Action) -> None:
        self._failing.pop(action_key(a), None)

    def failed(self, a: Action, error: BaseException | str, now: float, queue: list[Action]) -> bool:
        """Record a failed attempt of ``a``; True when it is abandoned (then the
        actions of ``queue`` that depend on its version are skipped with it)."""
        key = action_key(a)
        text = (error if isinstance(error, str) else f"{type(error).__name__}: {error}")[:_MAX_ERROR]
        st = self._failing.get(key) or _Attempts(0, now, text)
        st.count += 1
        st.error = text
        if st.count <= self.retries:
            st.next_t = now + self.backoff_seconds * 2 ** (st.count - 1)
            self._failing[key] = st
            return False
        self._failing.pop(key, None)
        self._dropped.add(key)
        skipped = [q for q in queue if action_key(q) != key and action_key(q) not in self._dropped
                   and depends_on(q, a.version)]
        self._dropped.update(action_key(q) for q in skipped)
        self._abandoned.append(FailedAction(action=a, error=text, attempts=st.count, skipped=skipped, t=now))
        return True

    def waiting(self, a: Action) -> tuple[int, float] | None:
        """(failed attempts, next try at) of an action in backoff; None if it is not failing."""
        st = self._failing.get(action_key(a))
        return None if st is None else (st.count, st.next_t)

    def take_abandoned(self) -> list[FailedAction]:
        """The abandoned actions not yet reported (each reported once)."""
        out, self._abandoned = self._abandoned, []
        return out

    def forget_dropped(self, queue: list[Action]) -> list[Action]:
        """``queue`` without the dropped actions, once the policy has taken them in."""
        keep = [a for a in queue if action_key(a) not in self._dropped]
        self._dropped.clear()
        return keep
