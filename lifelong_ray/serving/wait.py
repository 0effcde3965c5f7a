"""Wait until a model answers: what ``lifelong up`` does before it returns.

``up`` returns only once the ingress says the model is ready (every version with
weight can be called: ``GET /v1/models/{m}/ready``), so a client that starts
predicting when ``up`` returns gets 200s, not 503s from a champion the controller
is still redeploying after a restart.

>>> answers = iter([(False, "v0002 (100% of traffic) cannot be called yet"), (True, "v0002 100% can be called")])
>>> t = [0.0]
>>> wait_ready(lambda: next(answers), timeout_s=60, clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s))
(True, 'v0002 100% can be called', 0.5)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import requests

POLL_S = 0.5


def probe_ready(url: str, model: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Ask the ingress at ``url`` whether ``model`` is ready; connection errors are "not yet"."""
    try:
        r = requests.get(f"{url.rstrip('/')}/v1/models/{model}/ready", timeout=timeout_s)
    except requests.RequestException as err:
        return False, f"the ingress at {url} does not answer yet ({type(err).__name__})"
    try:
        body = r.json()
    except ValueError:
        return False, f"the ingress answered {r.status_code} {r.text[:200]!r}"
    return r.status_code == 200 and bool(body.get("ready")), str(body.get("reason") or body.get("error") or body)


def wait_ready(probe: Callable[[], tuple[bool, str]], timeout_s: float,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> tuple[bool, str, float]:
    """Poll ``probe`` until it says ready or ``timeout_s`` passes: ``(ready, last reason, seconds waited)``."""
    start = clock()
    while True:
        ok, reason = probe()
        waited = clock() - start
        if ok or waited >= timeout_s:
            return ok, reason, waited
        sleep(POLL_S)
