"""The live label guard of the ingress: with ``data.guard_live: quarantine``, flipped
``:feedback`` labels never reach the feedback log (``alert``, the default, only flags them).

Per served model the ingress keeps a :class:`LiveLabelGuard`: the predictions it
served (a bounded ``request_id -> prediction`` map, filled as it answers) and a
:class:`~lifelong_ray.data.guard.RollingLabelGuard` over the labels it takes. Each
``:feedback`` request's labels that passed the exactly-once checks are judged on
the rolling window (including them) before anything is written:

* accepted: they go to the feedback log as before;
* quarantined: they go to the quarantine store instead (reason
  ``label_disagreement``, source ``live_feedback``, with the window's numbers), a
  ``quarantined`` event is recorded, and each item is answered as rejected with
  code ``quarantined``. Nothing of them is joined or trained on; an operator who
  finds them genuine releases the entry (``lifelong quarantine release``), which
  appends them to the feedback log.

Labels of requests this replica did not answer itself (another replica, or before a
restart; beyond the map's capacity) have no known prediction: they are not counted
in the window, and they are accepted while the stream is open and quarantined while
it is not.

    >>> import tempfile
    >>> from lifelong_ray.config import parse_config
    >>> from lifelong_ray.serving.feedback import Candidate
    >>> from lifelong_ray.storage import Storage
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}],
    ...                     "label": {"name": "y", "classes": [0, 1]}}, "data": {"guard_min_rows": 5}})
    >>> g = LiveLabelGuard(cfg, Storage(tempfile.mkdtemp()), capacity=100)
    >>> g.guard.prior = (5, 100)                                  # the champion errs on 5%
    >>> g.served_now([f"{i:032x}" for i in range(20)], [0] * 20)
    >>> ok, held, v = g.judge([Candidate(i, f"{i:032x}", 0) for i in range(5)])
    >>> len(ok), len(held), v.state.value
    (5, 0, 'open')
    >>> ok, held, v = g.judge([Candidate(i, f"{i:032x}", 1) for i in range(5, 15)])   # all "wrong"
    >>> len(ok), len(held), v.state.value, v.finding.reason.value
    (0, 10, 'quarantined', 'label_disagreement')
    >>> g.quarantine(held, v, t=1.0).source
    'live_feedback'
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Sequence

import numpy as np
import pyarrow as pa

from lifelong_ray.config import Config
from lifelong_ray.data.guard import LIVE_FEEDBACK_SOURCE, GuardReason, LiveVerdict, RollingLabelGuard, StreamState
from lifelong_ray.data.quarantine import QuarantineEntry, QuarantineStore
from lifelong_ray.serving.feedback import Candidate
from lifelong_ray.storage import Storage

logger = logging.getLogger(__name__)

__all__ = ["LIVE_FEEDBACK_SOURCE", "LiveLabelGuard", "ServedPredictions", "holdout_errors"]


class ServedPredictions:
    """A bounded ``request_id -> served prediction`` map; the oldest entries go first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self._pred: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pred)

    def add(self, ids: Sequence[str], predictions: Sequence[int]) -> None:
        for rid, p in zip(ids, predictions):
            self._pred[rid] = int(p)
        while len(self._pred) > self.capacity:
            self._pred.popitem(last=False)

    def get(self, rid: str) -> int | None:
        return self._pred.get(rid)


class LiveLabelGuard:
    """The live label guard of one model in one ingress replica (see the module doc)."""

    def __init__(self, cfg: Config, storage: Storage, *, capacity: int) -> None:
        self.model = cfg.model.name
        self.guard = RollingLabelGuard(cfg.data, window_rows=cfg.data.guard_live_window_rows,
                                       baseline_rows=cfg.data.guard_live_baseline_rows)
        self.served = ServedPredictions(capacity)
        self.store = QuarantineStore(storage, self.model)
        self._storage = storage
        self._prior_of: str | None = None  # the champion whose holdout error is the prior

    def served_now(self, ids: Sequence[str], predictions: Sequence[int]) -> None:
        """The ingress answered ``ids`` with ``predictions`` (served rows only)."""
        self.served.add(ids, predictions)

    async def ensure_prior(self, champion: str | None) -> None:
        """While the live baseline is short, use ``champion``'s holdout error (read once per champion)."""
        if champion is None or champion == self._prior_of or len(self.guard.baseline) >= self.guard.cfg.guard_min_rows:
            return
        self._prior_of = champion
        try:
            self.guard.prior = await asyncio.to_thread(holdout_errors, self._storage, self.model, champion)
        except Exception as err:  # noqa: BLE001 - judge against the live baseline only
            logger.warning("live label guard of %s: no prior from %s (%s)", self.model, champion, err)

    def judge(self, cands: Sequence[Candidate]) -> tuple[list[Candidate], list[Candidate], LiveVerdict]:
        """Split ``cands`` into ``(accepted, quarantined, verdict)``; updates the windows."""
        known = [(c, p) for c in cands if (p := self.served.get(c.request_id)) is not None]
        verdict = self.guard.judge(np.array([c.label for c, _ in known], dtype=np.int64),
                                   np.array([p for _, p in known], dtype=np.int64))
        if verdict.changed:
            logger.warning("live label stream of %s is now %s%s", self.model, verdict.state.value,
                           f": {verdict.finding.message}" if verdict.finding else "")
        if verdict.accept:
            return list(cands), [], verdict
        return [], list(cands), verdict

    def message(self, verdict: LiveVerdict) -> str:
        why = verdict.finding.message if verdict.finding else "the label stream was quarantined"
        if verdict.state == StreamState.OPEN:
            return f"quarantined (the stream reopens with the next request: the newest labels agree again; {why})"
        return (f"quarantined: the live label stream of {self.model!r} disagrees with the served predictions "
                f"({why}); review with `lifelong quarantine {self.model}`")

    def quarantine(self, cands: Sequence[Candidate], verdict: LiveVerdict, t: float) -> QuarantineEntry:
        """Store quarantined labels (request_id, label, served prediction, t) with the reason (blocking)."""
        preds = [self.served.get(c.request_id) for c in cands]
        rows = pa.table({"request_id": pa.array([c.request_id for c in cands], pa.string()),
                         "label": pa.array([c.label for c in cands], pa.int64()),
                         "prediction": pa.array(preds, pa.int64()),
                         "t": pa.array([float(t)] * len(cands), pa.float64())})
        finding = verdict.finding
        data = {"stream": verdict.state.value, "window_rows": verdict.window_rows,
                **({"finding": finding.data} if finding else {})}
        return self.store.put(rows, reason=GuardReason.LABEL_DISAGREEMENT.value, message=self.message(verdict),
                              source=LIVE_FEEDBACK_SOURCE, t=t, label="label", data=data)


def holdout_errors(storage: Storage, model: str, version: str) -> tuple[int, int] | None:
    """``(errors, rows)`` of ``version`` on its gate holdout, from its metadata (None: unknown)."""
    from lifelong_ray.registry.store import Registry

    meta = Registry(storage, model).metadata(version)
    acc = (meta.get("metrics") or {}).get("holdout_accuracy")
    rows = int((meta.get("window") or {}).get("holdout_rows", 0) or 0)
    if acc is None or rows <= 0:
        return None
    return int(round((1 - float(acc)) * rows)), rows
