"""Admin endpoints: bearer-token check and the request/answer envelopes (no Ray, no HTTP).

``POST /v1/models/{model}:rollback|:approve|:retrain|:pause|:resume`` write an
operator command (:func:`lifelong_ray.control.commands.submit_command`) that the
controller takes in on its next tick; the endpoint answers 202 with the command id.

The token is the content of ``serving.admin_token_file`` when set, else the value of
the environment variable named by ``serving.admin_token_env`` *inside the ingress
replica* (:func:`lifelong_ray.serving.deploy.deploy_ingress` forwards the variable
from the deploying process into the replica's runtime env). It is read once, when
the ingress starts: redeploy the ingress to rotate it. With no token the admin API
is disabled (403); a missing or wrong token is 401 with ``WWW-Authenticate:
Bearer``; neither changes any state. Tokens are compared in constant time.

    >>> check_bearer("Bearer s3cret", "s3cret")
    <Auth.OK: 'ok'>
    >>> check_bearer("Bearer nope", "s3cret"), check_bearer(None, "s3cret"), check_bearer("Bearer x", None)
    (<Auth.INVALID: 'invalid'>, <Auth.MISSING: 'missing'>, <Auth.DISABLED: 'disabled'>)
    >>> resolve_token("LIFELONG_ADMIN_TOKEN", None, {"LIFELONG_ADMIN_TOKEN": " tok\\n"})
    'tok'
"""

from __future__ import annotations

import hmac
from enum import Enum
from pathlib import Path
from typing import Mapping

from pydantic import BaseModel, ConfigDict, Field


class Auth(str, Enum):
    OK = "ok"
    DISABLED = "disabled"  # no token configured
    MISSING = "missing"    # no (bearer) Authorization header
    INVALID = "invalid"    # wrong token


class AdminTokenError(RuntimeError):
    """The configured token file cannot be read or is empty."""


def resolve_token(env_name: str, token_file: str | None, environ: Mapping[str, str]) -> str | None:
    """The admin token: the token file's content if configured, else the env var's value.

    Surrounding whitespace is stripped; an empty value means no token. A configured
    file that cannot be read raises :class:`AdminTokenError` (never silently disabled
    into "no auth": with no token the endpoints refuse everything)."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as err:
            raise AdminTokenError(f"serving.admin_token_file {token_file!r} is unreadable: {err}") from None
        if not token:
            raise AdminTokenError(f"serving.admin_token_file {token_file!r} is empty")
        return token
    token = environ.get(env_name, "").strip()
    return token or None


def admin_disabled_message(model: str, env_name: str | None, err: Exception | None) -> str:
    """What a 403 of a model without an admin token says: why, and how to configure one.

    >>> msg = admin_disabled_message("iris", "LIFELONG_ADMIN_TOKEN", None)
    >>> msg.startswith("admin API disabled: no admin token is configured for model 'iris'"), "$LIFELONG_ADMIN_TOKEN" in msg
    (True, True)
    """
    why = f"the token file is unusable ({err})" if err is not None else \
        f"no admin token is configured for model {model!r}"
    env = f"${env_name}" if env_name else "the variable named by serving.admin_token_env"
    return (f"admin API disabled: {why}; set serving.admin_token_file to a file holding the token, or export "
            f"{env} (e.g. `export {env_name or 'LIFELONG_ADMIN_TOKEN'}=$(openssl rand -hex 32)`) before "
            "`lifelong up` deploys the ingress, then send Authorization: Bearer <token>")


def check_bearer(authorization: str | None, token: str | None) -> Auth:
    """Check an ``Authorization`` header against ``token`` in constant time."""
    if token is None:
        return Auth.DISABLED
    if not authorization:
        return Auth.MISSING
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return Auth.MISSING
    ok = hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))
    return Auth.OK if ok else Auth.INVALID


class AdminRequest(BaseModel):
    """Body of ``:rollback``, ``:retrain``, ``:pause``, ``:resume``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"why": "canary p95 doubled after the deploy", "who": "ana"}]})

    why: str | None = Field(default=None, description="required, non-empty: recorded in the audit log "
                                                      "(at most serving.max_why_chars)")
    who: str | None = Field(default=None, description='the operator; default "http" (at most serving.max_who_chars)')


class ApproveRequest(AdminRequest):
    """Body of ``:approve``: the version whose held rollout may go on."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"version": "v0003", "why": "reviewed the canary report", "who": "ana"}]})

    version: str | None = Field(default=None, description="required: a registered version, e.g. v0003")


class CommandAccepted(BaseModel):
    """Answer (202) of an admin endpoint: the command waits for the controller's next tick."""

    command_id: str
    kind: str
    model: str
    version: str | None
    who: str
    why: str
    t: float
