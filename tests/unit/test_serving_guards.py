"""Fault injection, admin token checks and the body-size middleware, without Ray."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from pydantic import ValidationError

from lifelong_ray.config import parse_config
from lifelong_ray.serving.admin import AdminTokenError, Auth, check_bearer, resolve_token
from lifelong_ray.serving.bodylimit import BodyLimit
from lifelong_ray.serving.deploy import admin_token_env_vars
from lifelong_ray.serving.faults import (
    NO_FAULT,
    FaultSpec,
    VersionFaults,
    clear_faults,
    draw_fault,
    faults_path,
    read_faults,
    write_faults,
)
from lifelong_ray.storage import Storage


# -- faults ------------------------------------------------------------------------------
def test_faults_round_trip_and_clear(tmp_path):
    s = Storage(str(tmp_path))
    assert read_faults(s, "m") is None
    spec = write_faults(s, "m", {"v0002": VersionFaults(nan_fraction=0.5), "v0003": {"delay_ms": 250}})
    assert read_faults(s, "m") == spec and spec.versions["v0003"].delay_ms == 250
    assert s.read_json(faults_path("m"))["model"] == "m"
    clear_faults(s, "m")
    clear_faults(s, "m")  # idempotent
    assert read_faults(s, "m") is None


@pytest.mark.parametrize("bad", [{"abort_fraction": 1.5}, {"delay_ms": -1}, {"nan_fraction": -0.1},
                                 {"delay_ms": 10 ** 9}, {"abourt_fraction": 1}])
def test_faults_validate_each_field(tmp_path, bad):
    with pytest.raises(ValidationError) as err:
        write_faults(Storage(str(tmp_path)), "m", {"v1": bad})
    assert next(iter(bad)) in str(err.value)
    assert not Storage(str(tmp_path)).exists(faults_path("m"))


def test_draw_fault_fractions():
    rng = random.Random(0)
    assert draw_fault(None, rng) == NO_FAULT
    assert draw_fault(VersionFaults(), rng) == NO_FAULT
    always = draw_fault(VersionFaults(abort_fraction=1, nan_fraction=1, delay_ms=20), rng)
    assert always.abort and always.nan and always.delay_s == pytest.approx(0.02)
    draws = [draw_fault(VersionFaults(abort_fraction=0.3), rng).abort for _ in range(4000)]
    assert 0.27 < sum(draws) / len(draws) < 0.33


def test_fault_spec_rejects_unknown_keys():
    with pytest.raises(ValidationError):
        FaultSpec.model_validate({"model": "m", "versions": {}, "extra": 1})


# -- admin token -------------------------------------------------------------------------
def test_token_from_file_wins_and_bad_files_raise(tmp_path):
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert resolve_token("TOK", str(f), {"TOK": "from-env"}) == "from-file"
    assert resolve_token("TOK", None, {"TOK": "from-env"}) == "from-env"
    assert resolve_token("TOK", None, {"TOK": "  "}) is None
    assert resolve_token("TOK", None, {}) is None
    with pytest.raises(AdminTokenError, match="unreadable"):
        resolve_token("TOK", str(tmp_path / "nope"), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(AdminTokenError, match="empty"):
        resolve_token("TOK", str(tmp_path / "empty"), {})


@pytest.mark.parametrize("header, token, expected", [
    ("Bearer abc", "abc", Auth.OK),
    ("bearer abc", "abc", Auth.OK),
    ("Bearer abd", "abc", Auth.INVALID),
    ("Bearer ab", "abc", Auth.INVALID),
    ("Basic abc", "abc", Auth.MISSING),
    ("Bearer ", "abc", Auth.MISSING),
    ("", "abc", Auth.MISSING),
    (None, "abc", Auth.MISSING),
    ("Bearer abc", None, Auth.DISABLED),
])
def test_check_bearer(header, token, expected):
    assert check_bearer(header, token) == expected


def test_deploy_forwards_only_the_configured_token_variable():
    cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
                        "serving": {"admin_token_env": "MY_TOKEN"}})
    assert admin_token_env_vars([cfg], {"MY_TOKEN": "t", "LIFELONG_ADMIN_TOKEN": "x"}) == {"MY_TOKEN": "t"}
    assert admin_token_env_vars([cfg], {}) == {}
    with_file = cfg.with_overrides(serving={"admin_token_file": "/run/secrets/t"})
    assert admin_token_env_vars([with_file], {"MY_TOKEN": "t"}) == {}


def _admin_request(model: str):
    from starlette.requests import Request

    return Request({"type": "http", "method": "POST", "path": f"/v1/models/{model}:pause", "headers": [],
                    "query_string": b""})


def test_admin_auth_fails_closed_for_a_served_model_without_a_resolved_token(monkeypatch):
    """A served model whose token was never resolved is refused (403 saying how to set one), not let through."""
    from lifelong_ray.serving import app

    monkeypatch.setattr(app, "_SERVED", {"m"})
    monkeypatch.setattr(app, "_ADMIN_TOKENS", {})
    monkeypatch.setattr(app, "_ADMIN_DISABLED", {})
    with pytest.raises(app._ApiError) as err:
        app._admin_auth(_admin_request("m"), "m", authorization="Bearer anything")
    assert err.value.status == 403
    assert "no admin token is configured for model 'm'" in err.value.error
    assert "serving.admin_token_file" in err.value.error and "$" in err.value.error
    assert err.value.violations[0]["rule"] == "no_token_configured"
    # a model the hooks do not know is 404 before any route code runs
    with pytest.raises(app._ApiError) as err:
        app._admin_auth(_admin_request("other"), "other", authorization="Bearer anything")
    assert err.value.status == 404 and err.value.violations[0]["rule"] == "unknown_model"


def test_admin_auth_without_a_token_configured_is_403_and_with_one_checks_it(monkeypatch):
    from lifelong_ray.serving import app

    cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}], "label": {"name": "y", "classes": [0, 1]}},
                        "serving": {"admin_token_env": "NO_SUCH_TOKEN_VAR_X"}})
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR_X", raising=False)
    monkeypatch.setattr(app, "_SERVED", set())
    monkeypatch.setattr(app, "_ADMIN_TOKENS", {})
    monkeypatch.setattr(app, "_ADMIN_DISABLED", {})
    monkeypatch.setattr(app, "_BODY_LIMITS", {})
    monkeypatch.setattr(app.M, "watch", lambda cfg: None)
    app._publish(cfg)
    with pytest.raises(app._ApiError) as err:
        app._admin_auth(_admin_request("m"), "m", authorization="Bearer guess")
    assert err.value.status == 403 and "$NO_SUCH_TOKEN_VAR_X" in err.value.error
    monkeypatch.setenv("NO_SUCH_TOKEN_VAR_X", "tok")
    app._publish(cfg)
    assert app._admin_auth(_admin_request("m"), "m", authorization="Bearer tok") is None
    with pytest.raises(app._ApiError) as err:
        app._admin_auth(_admin_request("m"), "m", authorization="Bearer guess")
    assert err.value.status == 401


# -- body limit --------------------------------------------------------------------------
async def _echo(scope, receive, send):
    """A real ASGI app: answers 200 with the number of body bytes it received."""
    size = 0
    while True:
        msg = await receive()
        size += len(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    body = json.dumps({"size": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _call(chunks: list[bytes], content_length: int | None, limit: int = 1024):
    rejected: list[str] = []
    app = BodyLimit(_echo, limit_for=lambda path: limit, on_reject=rejected.append)
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    scope = {"type": "http", "path": "/v1/models/m:predict", "headers": headers}
    incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    received = []
    sent: list[dict] = []

    async def receive():
        msg = incoming.pop(0)
        received.append(msg)
        return msg

    async def send(msg):
        sent.append(msg)

    asyncio.run(app(scope, receive, send))
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    return sent[0]["status"], body, rejected, len(received)


def test_body_within_the_limit_passes_unchanged():
    status, body, rejected, _ = _call([b"x" * 500, b"y" * 524], content_length=None)
    assert status == 200 and body == {"size": 1024} and rejected == []


def test_declared_length_over_the_limit_is_refused_unread():
    status, body, rejected, reads = _call([b"x" * 2000], content_length=2000)
    assert status == 413 and reads == 0 and rejected == ["/v1/models/m:predict"]
    v = body["violations"][0]
    assert v["field"] == "body" and v["rule"] == "max_body_bytes"
    assert "2000 bytes" in v["message"] and "1024" in v["message"] and "serving.max_body_bytes" in v["message"]


def test_streamed_body_over_the_limit_is_refused_as_it_arrives():
    status, body, _, reads = _call([b"x" * 600, b"x" * 600, b"x" * 600], content_length=None)
    assert status == 413 and reads == 2  # stopped at the chunk that crossed the limit
    assert "more than 1024 bytes" in body["violations"][0]["message"]
