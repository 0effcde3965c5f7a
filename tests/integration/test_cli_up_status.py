"""`lifelong up` / `status --json` / `pause` / `history` / `down` as real subprocesses
on a fresh Ray of their own.

Why a separate Ray, and why the test starts it: the session's Ray (``ray_session``)
may already run Serve apps of other tests, and ``lifelong down`` shuts Serve down,
so ``up``/``down`` must not touch it. The fresh head is started with the very
command line ``lifelong up`` uses when it finds no Ray (:func:`ray_start_command`:
dashboard on 127.0.0.1), plus free ports, its own ``--temp-dir`` and ``--block``,
so that (1) nothing collides with the session's Ray or another helper's, (2) every
CLI subprocess reaches it through an explicit ``RAY_ADDRESS`` (``auto`` could pick
the session's Ray), and (3) it is stopped by signalling the process the test
started, never with ``ray stop`` (which stops every Ray of this user on the machine).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from lifelong_ray.cli import NO_APP, ray_start_command

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listen_hosts(port: int) -> set[str]:
    """The addresses with a listening TCP socket on ``port``, from /proc/net/tcp{,6}."""
    hosts = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            ip_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(ip_hex)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            hosts.add(str(ipaddress.ip_address(words)) if width == 8 else str(ipaddress.IPv6Address(words)))
    return hosts


def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def fresh_ray():
    """A Ray head of this test only: (address, dashboard port); stopped by pid afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="llr-", dir="/tmp")  # short: Ray's unix socket paths must fit
    gcs, dash = _free_port(), _free_port()
    extra = ["--port", str(gcs), "--temp-dir", temp_dir, "--block"]
    for flag in ("--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port",
                 "--object-manager-port"):
        extra += [flag, str(_free_port())]
    cmd = ray_start_command(num_cpus=4, dashboard_port=dash, extra=extra)
    log = open(Path(temp_dir) / "ray-start.log", "w")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray token authentication, as on a cluster (docs/runbook.md): the head and every
    # client share one secret; an explicit RAY_ADDRESS never turns it on by itself.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**env, **auth},
                            start_new_session=True)
    try:
        def started() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"ray start exited {proc.returncode}: "
                                     f"{(Path(temp_dir) / 'ray-start.log').read_text()[-2000:]}")
            return "Ray runtime started" in (Path(temp_dir) / "ray-start.log").read_text()
        _wait(started, 120, "the fresh Ray head")
        yield f"127.0.0.1:{gcs}", dash, auth
    finally:
        proc.send_signal(signal.SIGTERM)  # --block: the head stops every process it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_up_status_history_down_on_a_fresh_ray(fresh_ray, tmp_path):
    address, dash_port, auth = fresh_ray
    data = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    data["storage"]["root"] = str(tmp_path / "store")
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(data))
    port = _free_port()
    env = {**os.environ, "RAY_ADDRESS": address, **auth}

    def lifelong(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lifelong_ray", *argv], cwd=REPO, env=env, timeout=timeout,
                              capture_output=True, text=True)

    downed = False
    try:
        t0 = time.monotonic()
        up = lifelong("up", str(config), "--port", str(port))  # returns once the app is deployed
        up_seconds = time.monotonic() - t0
        assert up.returncode == 0, up.stderr[-3000:]
        assert f"at http://127.0.0.1:{port}/v1/models/demo" in up.stdout
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json() == {"status": "ok"}
        # Serve and the dashboard (the job API) listen on loopback only
        assert _listen_hosts(port) == {"127.0.0.1"}
        assert _wait(lambda: _listen_hosts(dash_port), 60, "the dashboard port") == {"127.0.0.1"}

        def live_status() -> dict | None:
            st = lifelong("status", "--json")
            assert st.returncode == 0, st.stderr[-3000:]
            doc = json.loads(st.stdout)
            return doc if doc["models"][0]["controller"]["ticks"] else None
        doc = _wait(live_status, 180, "the controller's first tick")
        assert doc["format"] == 1 and set(doc) == {"format", "generated_at", "generated_time", "models"}
        (model,) = doc["models"]
        assert (model["model"], model["champion"], model["stage"], model["paused"], model["versions"]) == \
            ("demo", None, "stable", False, [])
        assert model["controller"]["source"] == "live" and model["controller"]["tick_errors"] == 0
        assert model["storage"] == str(tmp_path / "store")

        paused = lifelong("pause", "demo", "--why", "cli integration test", "--who", "tester")
        assert paused.returncode == 0, paused.stderr[-3000:]

        def paused_events() -> list | None:
            h = lifelong("history", "demo", "--json", "--kind", "paused", "--since", "10m")
            assert h.returncode == 0, h.stderr[-3000:]
            return json.loads(h.stdout) or None
        (event,) = _wait(paused_events, 180, "the paused event")
        assert event["kind"] == "paused" and event["data"]["who"] == "tester"
        assert "cli integration test" in event["reason"]

        table = lifelong("status", "demo")
        assert table.returncode == 0 and "PAUSED" in table.stdout and "paused by tester" in table.stdout
        bad = lifelong("history", "demo", "--kind", "nope")
        assert bad.returncode == 2 and "valid kinds: drift_detected" in bad.stderr

        down = lifelong("down")
        assert down.returncode == 0 and "stopped ['demo']" in down.stdout, down.stderr[-3000:]
        downed = True
        after = lifelong("status")
        assert after.returncode == 1 and NO_APP in after.stderr and "Traceback" not in after.stderr
        print(f"lifelong up took {up_seconds:.1f}s")
    finally:
        if not downed:
            lifelong("down", timeout=120)


def _seed_a_champion(root: Path):
    """Storage as `make demo` leaves it: a champion v0001 in the state, routing and aliases,
    and (on this fresh Ray) no Serve application hosting it."""
    import numpy as np

    from lifelong_ray.config import load_config
    from lifelong_ray.control.controller import state_path
    from lifelong_ray.policy.model import ControllerState
    from lifelong_ray.registry.store import Registry
    from lifelong_ray.serving.routing import RoutingTable, write_routing
    from lifelong_ray.storage import Storage

    from itest_helpers import register_untrained

    data = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    data["storage"]["root"] = str(root)
    data["training"]["min_rows"] = 10**9     # no retrain: the champion stays the one seeded here
    cfg_path = root.parent / "demo.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = load_config(cfg_path)
    rng = np.random.default_rng(0)
    cols = {f"x{i}": rng.normal(size=300) for i in range(5)}
    cols["segment"] = rng.choice(np.array(["a", "b", "c"], dtype=object), 300)
    v = register_untrained(cfg, cols)
    storage = Storage(cfg.storage.root)
    Registry(storage, "demo").set_alias("champion", v)
    write_routing(storage, RoutingTable(model="demo", generation=1, weights={v: 100.0}, champion=v))
    state = ControllerState(model="demo", seq=5, champion=v, champion_reference_accuracy=0.9,
                            weights={v: 100.0}, routing_generation=1)
    storage.write_json(state_path("demo"), state.model_dump(mode="json"))
    return cfg_path, v


def test_up_on_storage_with_a_champion_answers_every_predict_at_once_and_after_a_restart(fresh_ray, tmp_path):
    """The restart outage: `up` on storage whose champion Serve does not run returned at once and
    answered 503 (`version v0002 of demo is not deployed`) for as long as it ran. Now the
    controller reconciles Serve with the state every tick and `up` returns once the model answers."""
    address, _, auth = fresh_ray
    config, champion = _seed_a_champion(tmp_path / "store")
    port = _free_port()
    env = {**os.environ, "RAY_ADDRESS": address, **auth}

    def lifelong(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lifelong_ray", *argv], cwd=REPO, env=env, timeout=timeout,
                              capture_output=True, text=True)

    def predicts(n: int) -> list[int]:
        body = {"instances": [{"x0": 0.1, "x1": -0.2, "x2": 0.3, "x3": 0.0, "x4": 1.0, "segment": "a"}]}
        return [requests.post(f"http://127.0.0.1:{port}/v1/models/demo:predict", json=body, timeout=30).status_code
                for _ in range(n)]

    try:
        for attempt in ("first up", "up after down"):
            up = lifelong("up", str(config), "--port", str(port))
            assert up.returncode == 0, f"{attempt}: {up.stderr[-3000:]}"
            codes = predicts(20)
            assert codes == [200] * 20, f"{attempt}: {codes}"
            ready = requests.get(f"http://127.0.0.1:{port}/v1/models/demo/ready", timeout=10).json()
            assert ready["ready"] and champion in ready["reason"], ready
            down = lifelong("down")
            assert down.returncode == 0, down.stderr[-3000:]
        h = lifelong("history", "demo", "--json", "--kind", "serving_reconciled", "--config", str(config))
        assert h.returncode == 0, h.stderr[-3000:]
        redeploys = [e for e in json.loads(h.stdout) if e["version"] == champion]
        assert len(redeploys) >= 2 and "deployed again" in redeploys[0]["reason"], redeploys
    finally:
        lifelong("down", timeout=120)
