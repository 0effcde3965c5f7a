"""`ray job submit` of jobs/backtest.py against a real, separate local Ray head with its Jobs API.

The head runs as its own process group (``ray start --head --block``) on free loopback
ports with its own ``--temp-dir``, so neither the session Ray of the other integration
tests nor anyone's ``ray.init(address="auto")`` ever sees it. It is stopped by signalling
that process group (not ``ray stop``, which would stop every Ray on the machine) and any
process still running from its temp dir is killed by pid.
"""

from __future__ import annotations

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
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray") if (BIN / "ray").exists() else "ray"
JOBS = ("loop.py", "retrain.py", "backfill.py", "backtest.py")


def _free_ports(k: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(k)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this venv's
    return {**env, **extra}


def _pids_using(temp: str) -> list[int]:
    """Processes whose command line names ``temp`` (the head's session files live there)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if temp.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                continue
    return [p for p in out if p != os.getpid()]


@pytest.fixture(scope="module")
def jobs_head():
    temp = tempfile.mkdtemp(prefix="ljs", dir="/tmp")  # short: Ray's unix socket paths are limited
    gcs, dash, agent, agent_grpc, metrics, rt_env, client, nm, om = _free_ports(9)
    log = open(os.path.join(temp, "head.log"), "wb")
    cmd = [RAY, "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}",
           f"--ray-client-server-port={client}", f"--node-manager-port={nm}", f"--object-manager-port={om}",
           "--num-cpus=1", "--object-store-memory=200000000", f"--temp-dir={temp}", "--disable-usage-stats"]
    # Ray token authentication, as on a cluster: the head and every client share one secret
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    proc = subprocess.Popen(cmd, env=_env(RAY_TRAIN_V2_ENABLED="1", **auth), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}: "
                                   f"{Path(temp, 'head.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{address}/api/version", timeout=2,
                                headers=_bearer(auth)).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Jobs API at {address} did not answer within 120 s")
            time.sleep(0.5)
        yield address, auth
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:  # `ray start --block` stops its processes on SIGTERM but may itself linger: give it 8 s
            proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _pids_using(temp) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in _pids_using(temp):  # stragglers of this head only, by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _bearer(auth: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {auth['RAY_AUTH_TOKEN']}"}


def _submit(head: tuple[str, dict[str, str]], sid: str, *entrypoint: str) -> subprocess.CompletedProcess:
    address, auth = head
    return subprocess.run(
        [RAY, "job", "submit", "--address", address, "--submission-id", sid, "--working-dir", str(ROOT),
         "--", "python", *entrypoint],
        cwd=ROOT, env=_env(**auth), capture_output=True, text=True, timeout=240)


def _client(head: tuple[str, dict[str, str]]):
    from ray.job_submission import JobSubmissionClient

    address, auth = head
    return JobSubmissionClient(address, headers=_bearer(auth))


def test_ray_job_submit_backtest_succeeds_and_writes_the_report(jobs_head, tmp_path):
    from ray.job_submission import JobStatus

    report_dir = tmp_path / "report"
    sid = f"lifelong-backtest-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    out = _submit(jobs_head, sid, "jobs/backtest.py", "--simulate", "abrupt", "--n", "2400", "--seed", "1",
                  "--bootstrap", "800", "--label-delay", "50", "--report-dir", str(report_dir))
    seconds = time.monotonic() - started
    client = _client(jobs_head)
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.returncode == 0
    logs = client.get_job_logs(sid)
    last = json.loads([line for line in logs.splitlines() if line.startswith('{"report"')][-1])
    report = json.loads((report_dir / "report.json").read_text())
    assert last["report"] == str(report_dir / "report.json")
    assert report["summary"]["samples"] == 2400 - 800 == last["summary"]["samples"]
    assert report["summary"]["drifts_detected"] >= 1 and report["events"]
    assert (report_dir / "report.png").stat().st_size > 0
    # the uploaded package is the source tree, not the venv (.gitignore + .rayignore)
    info = client.get_job_info(sid)
    assert info.runtime_env["working_dir"].startswith("gcs://_ray_pkg_")
    print(f"ray job submit of jobs/backtest.py: {seconds:.1f} s end to end")


def test_a_job_with_bad_input_fails_with_a_clear_message(jobs_head):
    from ray.job_submission import JobStatus

    sid = f"lifelong-bad-{uuid.uuid4().hex[:8]}"
    out = _submit(jobs_head, sid, "jobs/backtest.py", "--data", "/nonexistent/stream.parquet")
    client = _client(jobs_head)
    assert client.get_job_status(sid) == JobStatus.FAILED
    assert out.returncode != 0
    assert "jobs/backtest.py: error: no such --data file: /nonexistent/stream.parquet" in client.get_job_logs(sid)


def _job_module(job: str):
    """``jobs/<job>`` imported from its file (jobs/ is a folder of scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"lifelong_job_{job[:-3]}", ROOT / "jobs" / job)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("job", JOBS)
def test_every_job_has_help(job, capsys):
    with pytest.raises(SystemExit) as done:
        _job_module(job).main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith(f"usage: jobs/{job}")
    assert "ray job submit --working-dir . -- python jobs/" in out


@pytest.mark.parametrize("argv, message", [
    (["loop.py", "--config", "nope.yaml"], "config file not found: nope.yaml"),
    (["loop.py", "--config", "configs/demo.yaml", "--port", "0"], "--port must be 1-65535"),
    (["retrain.py", "--config", "nope.yaml"], "config file not found: nope.yaml"),
    (["retrain.py", "--config", "configs/demo.yaml", "--wait", "-1"], "--wait must be >= 0"),
    (["backfill.py", "--config", "configs/demo.yaml", "/nonexistent/dir"], "no such source: /nonexistent/dir"),
    (["backfill.py", "--config", "nope.yaml", "/tmp"], "config file not found: nope.yaml"),
    (["backtest.py", "--simulate", "abrupt", "--n", "500", "--bootstrap", "800"], "must be larger than --bootstrap"),
    (["backtest.py", "--data", "README.md"], "must end in one of .parquet, .pq, .csv"),
])
def test_bad_input_exits_2_before_touching_ray(argv, message, capsys, monkeypatch, tmp_path):
    import ray

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("bad input must fail before joining Ray"))
    if argv[0] == "backtest.py":
        argv = [*argv, "--report-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as done:
        _job_module(argv[0]).main(argv[1:])
    err = capsys.readouterr().err
    assert done.value.code == 2, err
    assert f"jobs/{argv[0]}: error: " in err and message in err


def test_loop_job_starts_the_controller_and_retrain_job_goes_through_it(jobs_head, tmp_path):
    """jobs/loop.py --detach brings up ingress + controller; jobs/retrain.py then finds that
    controller and queues the operator `retrain` command in the model's storage."""
    from ray.job_submission import JobStatus

    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["storage"]["root"] = str(tmp_path / "store")
    cfg["serving"]["port"] = _free_ports(1)[0]
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    client = _client(jobs_head)

    sid = f"lifelong-loop-{uuid.uuid4().hex[:8]}"
    out = _submit(jobs_head, sid, "jobs/loop.py", "--config", str(path), "--detach")
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"lifelong up: model demo at http://127.0.0.1:{cfg['serving']['port']}" in client.get_job_logs(sid)
    assert requests.get(f"http://127.0.0.1:{cfg['serving']['port']}/v1/models", timeout=10).json() == \
        {"models": ["demo"]}

    sid = f"lifelong-retrain-{uuid.uuid4().hex[:8]}"
    out = _submit(jobs_head, sid, "jobs/retrain.py", "--config", str(path), "--why", "job test")
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED, out.stdout[-3000:] + out.stderr[-3000:]
    line = json.loads([x for x in client.get_job_logs(sid).splitlines() if x.startswith('{"mode"')][-1])
    assert line["mode"] == "command" and line["status"] == "queued" and line["model"] == "demo"
    # queued, or already taken in by the running controller and archived (commands/archive/)
    commands = [c for c in (tmp_path / "store" / "models" / "demo" / "controller" / "commands").rglob("*.json")
                if c.parent.name != "invalid"]
    assert [json.loads(c.read_text())["id"] for c in commands] == [line["command_id"]]
