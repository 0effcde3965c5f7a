"""When to retrain: requests, the pending queue, cooldown and quota, follow-ups.

Part of the pure policy (see :mod:`lifelong_ray.policy.decide`): every function
takes the :class:`~lifelong_ray.policy.tick.Tick` being built and changes its
state copy; nothing here reads a clock or does I/O.

A retrain has a *purpose*: ``bootstrap`` (no champion yet), ``drift`` (a
monitor fired), ``settle`` (the follow-up after a drift-triggered promotion),
``operator`` (``lifelong retrain``). Performance drift, bootstrap and operator
retrains are *urgent*: they may run while the error budget is frozen; a
feature-drift-only or settle retrain only refreshes a healthy model and waits.
"""

from __future__ import annotations

from lifelong_ray.config import Config, TrainingConfig
from lifelong_ray.events import EventKind
from lifelong_ray.policy.lifecycle import RetrainStage, RolloutStage, transition
from lifelong_ray.policy.model import Action, ActionKind, ControllerState, Observations
from lifelong_ray.policy.quota import RetrainRecord, RetrainRequest, push, quota_blocker
from lifelong_ray.policy.tick import Tick

DAY = 86400.0


def retrain_action(state: ControllerState, cfg: Config) -> Action:
    """The START_RETRAIN action of the state's current job (deterministic, so a
    restarted controller re-issues exactly the same job)."""
    return Action(kind=ActionKind.START_RETRAIN, job_id=state.retrain_job_id, job_kind=state.retrain_kind,
                  since_t=state.retrain_since_t, window_rows=job_window_rows(state, cfg),
                  seed=cfg.training.seed + state.retrain_count, champion=state.champion)


def job_window_rows(state: ControllerState, cfg: Config) -> int | None:
    """The current job's window size: a full follow-up trains on up to
    ``training.settle_window`` rows; every other job on ``window_recent`` (None)."""
    if state.retrain_kind == "full" and state.retrain_purpose == "settle":
        return cfg.training.settle_window
    return None


def request_retrain(tick: Tick, since_t: float | None, reason: str, purpose: str = "drift",
                    urgent: bool = True, kind: str | None = None, impact: float = 0.0) -> None:
    """A monitor (or bootstrap) asks for a full retrain on the rows since ``since_t``.
    ``kind`` names the request in the queue (one per kind; default: the purpose)."""
    s = tick.s
    if tick.cfg.training.mode == "online" and s.champion is not None:
        return  # online mode adapts by incremental steps only
    busy = s.retrain == RetrainStage.RUNNING or s.rollout != RolloutStage.STABLE
    stepping = s.retrain == RetrainStage.RUNNING and s.retrain_kind == "online"
    if busy and not stepping:
        # A full retrain's candidate is already in flight and answers this request; a
        # follow-up chain it belongs to goes on (its promotion schedules the next one).
        return
    s.settles_left, s.settle_due_labeled = 0, None  # a new drift supersedes a pending follow-up
    if stepping:
        # An incremental step is in flight: a full retrain follows it, not lost.
        s.queued_retrain = {"since_t": since_t, "reason": reason, "purpose": purpose, "urgent": urgent,
                            "kind": kind, "impact": impact}
        tick.emit(EventKind.RETRAIN_REQUESTED, f"{reason}; queued behind incremental job {s.retrain_job_id}",
                  s.champion, since_t=since_t, queued=True)
        return
    pend(tick, since_t, reason, purpose=purpose, urgent=urgent, kind=kind, impact=impact)


def pend(tick: Tick, since_t: float | None, reason: str, announce: bool = True, purpose: str = "drift",
         urgent: bool = True, kind: str | None = None, impact: float = 0.0, command_id: str | None = None,
         **data: object) -> None:
    """Queue a retrain request (one per kind, highest priority first); the queue's
    head is what the pending retrain will train on and why. ``command_id``: the
    operator command asking for it (the ``retrain_started`` event that answers it lists it)."""
    s = tick.s
    req = RetrainRequest(kind=kind or purpose, reason=reason, requested_t=tick.now, since_t=since_t,
                         impact=impact, urgent=urgent, purpose=purpose,
                         command_ids=[command_id] if command_id else [])
    if command_id:
        data["command_id"] = command_id
    s.retrain_queue = push(s.retrain_queue, req)
    if s.retrain == RetrainStage.IDLE:
        s.retrain = transition(s.retrain, RetrainStage.PENDING)
    head = s.retrain_queue[0]
    s.retrain_purpose, s.retrain_urgent, s.retrain_since_t, s.retrain_reason = \
        head.purpose, head.urgent, head.since_t, head.reason
    s.retrain_deferred_reason = ""
    if announce:
        queued = f"; queued behind {head.kind} ({len(s.retrain_queue)} waiting)" if head.kind != req.kind else ""
        tick.emit(EventKind.RETRAIN_REQUESTED, f"{reason}{queued}", s.champion, since_t=since_t, purpose=purpose,
                  impact=round(impact, 3), urgent=urgent, **data)


def bootstrap(tick: Tick, obs: Observations) -> None:
    s = tick.s
    if s.champion is None and s.retrain == RetrainStage.IDLE and not s.paused \
            and obs.labeled_total >= tick.cfg.training.min_rows:
        request_retrain(tick, None, f"no champion yet; {obs.labeled_total} labeled rows available",
                        purpose="bootstrap")


def arm_settle(tick: Tick, purpose: str | None) -> None:
    """After promoting a full retrain made for ``purpose`` ``drift`` (or a settle that
    gained; or the first version, with ``training.settle_after_bootstrap``), schedule
    the follow-up: once ``settle_after_rows`` (default ``window_recent``) fresh labeled
    rows exist, retrain on them. The version trained right after a drift has seen only
    ``min_rows`` rows, partly from mid-change; the follow-up is canaried only if it
    gains. Each later follow-up of the chain waits ``settle_growth`` times longer, and
    with ``settle_window`` set it trains on every row since the chain began (up to that
    many): while the concept holds, the window grows. A refused follow-up does not end
    the chain (``settle_refused``): the next one waits as long as if it had gained, on a
    window that grew meanwhile.

    Follow-ups for drift promotions at t=100 with 400 labeled rows (gap 1,500, growth 4):

        >>> from lifelong_ray.config import load_config
        >>> from lifelong_ray.policy.model import ControllerState, Observations
        >>> cfg = load_config("configs/benchmark.yaml").with_overrides(
        ...     training={"settle_retrains": 2, "settle_growth": 4, "settle_window": 8000})
        >>> tick = Tick(ControllerState(model="m"), cfg, 100.0, Observations(labeled_total=400))
        >>> arm_settle(tick, "drift")
        >>> tick.s.settle_due_labeled, tick.s.settle_since_t, tick.s.settles_left
        (1900, 100.0, 2)
        >>> tick.s.settles_left -= 1        # the first follow-up ran and gained
        >>> arm_settle(tick, "settle")
        >>> tick.s.settle_due_labeled, tick.s.settle_since_t  # 400 + 1,500 x 4; same window start
        (6400, 100.0)
    """
    s, tc = tick.s, tick.cfg.training
    if purpose == "drift" or (purpose == "bootstrap" and tc.settle_after_bootstrap):
        s.settles_left = tc.settle_retrains
        s.settle_gap = settle_gap(tc)
        s.settle_since_t = tick.now if purpose == "drift" else None  # the first version: all rows so far
    elif purpose == "settle":
        s.settle_gap = int(round((s.settle_gap or settle_gap(tc)) * tc.settle_growth))
    else:
        return
    if s.settles_left > 0:
        s.settle_due_labeled = tick.obs.labeled_total + s.settle_gap


def settle_refused(tick: Tick, purpose: str | None) -> None:
    """A follow-up candidate was refused (gate or canary): the champion stays, and the
    chain goes on if it has follow-ups left. Its next one trains later, on more rows
    (with ``settle_window``, every row since the chain began), so one unlucky
    comparison on a small window does not leave a version trained on ``min_rows`` rows
    of a drift serving until the next drift."""
    if purpose == "settle":
        arm_settle(tick, "settle")


def forgetting_margin(state: ControllerState, cfg: Config) -> float | None:
    """The gate's forgetting check (``rollout.forgetting_margin``) for the current job,
    or None where it does not apply: after a drift the replay rows hold the old concept
    and forgetting it is the point; a follow-up of a drift (``settle_since_t`` set)
    replaces a champion trained after that drift too, which never knew the replay rows'
    concept, so comparing the two there measures noise. A refresh of the first version,
    an operator's retrain and incremental steps keep it."""
    purpose = state.retrain_purpose  # "online" for an incremental step
    if purpose in ("drift", "bootstrap") or (purpose == "settle" and state.settle_since_t is not None):
        return None
    return cfg.rollout.forgetting_margin


def settle_gap(tc: TrainingConfig) -> int:
    """Fresh labeled rows between a promotion and its first follow-up retrain."""
    return tc.settle_after_rows if tc.settle_after_rows is not None else tc.window_recent


def schedule_settle(tick: Tick, obs: Observations) -> None:
    s, tc = tick.s, tick.cfg.training
    if s.settle_due_labeled is None or s.paused or s.budget_frozen or s.retrain != RetrainStage.IDLE \
            or s.rollout != RolloutStage.STABLE or obs.labeled_total < s.settle_due_labeled:
        return
    fresh = obs.labeled_total - (s.settle_due_labeled - (s.settle_gap or settle_gap(tc)))
    s.settles_left -= 1
    s.settle_due_labeled = None
    if tc.settle_window is None:
        since, rows = None, f"the newest {tc.window_recent}"
    else:
        since = s.settle_since_t
        start = "all time" if since is None else f"t={since:g}"
        rows = f"every labeled row since {start}, the newest {tc.settle_window} at most"
    pend(tick, since, f"settle: {fresh} labeled rows since {s.champion} was promoted;"
                      f" retraining on {rows}", purpose="settle", urgent=False)


def schedule_retrain(tick: Tick, obs: Observations) -> None:
    s, cfg = tick.s, tick.cfg
    if s.queued_retrain and s.retrain == RetrainStage.IDLE and s.rollout == RolloutStage.STABLE:
        q, s.queued_retrain = s.queued_retrain, None
        pend(tick, q["since_t"], q["reason"], announce=False, purpose=q.get("purpose", "drift"),
             urgent=q.get("urgent", True), kind=q.get("kind"), impact=q.get("impact", 0.0))
    if s.retrain != RetrainStage.PENDING or s.paused:
        return
    key, blocked, retry_at = _blocker(s, cfg, tick.now, obs.retrains_running)
    if blocked:
        if key != s.retrain_deferred_reason.split("|")[0]:
            when = f"; it runs when allowed (next check at t={retry_at:.0f})" if retry_at is not None else ""
            tick.emit(EventKind.RETRAIN_DEFERRED, f"{blocked}{when}", s.champion, retry_at=retry_at,
                      queued=[r.kind for r in s.retrain_queue])
        s.retrain_deferred_reason = f"{key}|{blocked}"
        return
    if s.retrain_since_t is None:
        available = obs.labeled_total
    elif obs.labeled_since_t == s.retrain_since_t:
        available = obs.labeled_since_retrain
    else:  # requested this tick: the rows since the onset are counted on the next one
        available = 0
    if available < cfg.training.min_rows:
        s.retrain_deferred_reason = (f"rows|rows: waiting for labeled rows since the drift onset:"
                                     f" {available}/{cfg.training.min_rows}")
        return
    covered = len(s.retrain_queue) - 1
    command_ids = [i for r in s.retrain_queue for i in r.command_ids]
    s.retrain_queue = []  # one retrain on the newest rows answers every queued request
    s.retrain = transition(s.retrain, RetrainStage.RUNNING)
    s.retrain_count += 1
    s.retrain_kind = "full"
    s.retrain_job_id = f"{s.model}-retrain-{s.retrain_count:04d}"
    s.retrain_started_t = tick.now
    s.retrain_history = [r for r in s.retrain_history if tick.now - r.start_t < DAY] + \
        [RetrainRecord(start_t=tick.now)]
    s.retrain_deferred_reason = ""
    tick.actions.append(retrain_action(s, cfg))
    also = f" (also answers {covered} other queued request{'s' if covered > 1 else ''})" if covered > 0 else ""
    rows = min(available, job_window_rows(s, cfg) or cfg.training.window_recent)
    tick.emit(EventKind.RETRAIN_STARTED,
              f"job {s.retrain_job_id}: {s.retrain_reason}; {rows} labeled rows in the window{also}",
              s.champion, job_id=s.retrain_job_id, since_t=s.retrain_since_t, purpose=s.retrain_purpose,
              command_ids=command_ids)


def record_usage(tick: Tick, train_seconds: float, cpu_seconds: float | None = None) -> None:
    """Charge a finished full retrain's compute to its record (the daily CPU/GPU quotas):
    the CPU-seconds the job measured (a Tune search: the sum over its trials), else its
    train seconds x workers x CPUs per worker."""
    s, tc = tick.s, tick.cfg.training
    if not s.retrain_history:
        return
    cpu = cpu_seconds if cpu_seconds is not None else train_seconds * tc.num_workers * tc.cpus_per_worker
    gpu = train_seconds * tc.num_workers if tc.use_gpu else 0.0
    s.retrain_history[-1] = s.retrain_history[-1].model_copy(update={"cpu_seconds": cpu, "gpu_seconds": gpu})


def schedule_online(tick: Tick, obs: Observations) -> None:
    """online / hybrid: fine-tune a challenger copy of the champion on each fresh
    labeled mini-batch while nothing else is in flight; it reaches traffic only
    through the gate (with a required gain) and the canary."""
    s, tc = tick.s, tick.cfg.training
    if tc.mode == "batch" or s.champion is None or s.paused or s.budget_frozen \
            or s.retrain != RetrainStage.IDLE or s.rollout != RolloutStage.STABLE or s.queued_retrain:
        return
    fresh = obs.labeled_total - s.online_labeled_mark
    if fresh < tc.online_batch:
        return
    s.retrain = transition(s.retrain, RetrainStage.RUNNING)
    s.retrain_count += 1
    s.retrain_kind = "online"
    s.retrain_purpose = "online"
    s.retrain_urgent = False
    s.retrain_job_id = f"{s.model}-online-{s.retrain_count:04d}"
    s.retrain_since_t = None
    s.retrain_started_t = tick.now
    s.online_labeled_mark = obs.labeled_total
    tick.actions.append(retrain_action(s, tick.cfg))
    tick.emit(EventKind.RETRAIN_STARTED,
              f"job {s.retrain_job_id}: incremental step, a copy of {s.champion} fine-tuned on the newest"
              f" {tc.online_window} labeled rows ({fresh} fresh)", s.champion, job_id=s.retrain_job_id,
              job_kind="online")


def _blocker(s: ControllerState, cfg: Config, now: float, running: int = 0) -> tuple[str, str, float | None]:
    """What keeps the pending retrain from starting now: (key, reason, retry_at); ("", "", None) if nothing.
    ``running``: retrain jobs of other models on the same storage root running now."""
    if s.budget_frozen and not s.retrain_urgent:
        return "budget", f"budget: {s.budget_reason}; a retrain that only refreshes a healthy model waits", None
    if s.last_retrain_finished_t is not None:
        left = cfg.drift.cooldown_seconds - (now - s.last_retrain_finished_t)
        if left > 0:
            return ("cooldown", f"cooldown: {left:.0f}s left of {cfg.drift.cooldown_seconds:.0f}s after the last"
                                f" retrain", now + left)
    verdict = quota_blocker(s.retrain_history, running, cfg.quota, now, urgent=s.retrain_urgent)
    if not verdict.allowed:
        return ",".join(sorted(b.value for b in verdict.blockers)), verdict.reason, verdict.retry_at
    return "", "", None
