"""The Ray Serve application: one HTTP ingress, one Serve app per model version.

Topology (see DESIGN.md §2 and §4)::

    HTTP ──▶ app "lifelong" (route "/")  Ingress  ── FastAPI routes, validation,
                                         │           routing table, durable logs
                                         ├─▶ app "lifelong-<model>-v0001"  VersionModel
                                         └─▶ app "lifelong-<model>-v0002"  VersionModel

Every version is its own Serve application with ``route_prefix=None`` (reachable
only through a handle), so deploying or retiring a version never redeploys the
ingress. The ingress re-reads each model's routing table from Storage every
``serving.routing_poll_seconds`` and routes with the same pure
:func:`~lifelong_ray.serving.routing.choose_version` the backtest uses.

Prediction log rows (``models/<model>/predictions``) written here:

* one row per answered instance: ``shadow=False``, ``error=None``;
* one row per instance a shadow version answered: ``shadow=True`` (same request_id);
* one row per instance a version *failed* on: ``error`` set, ``prediction=-1``,
  ``confidence=NaN`` (same request_id; a failed canary is then retried on the
  champion, which writes the row that was actually answered).

A label join should therefore keep rows with ``error is null and not shadow``
for the served prediction. A version *fails* a call when it raises, times out, is
not deployed, or answers a non-finite confidence (``non_finite_output``).

Prediction rows are written through :class:`~lifelong_ray.data.answers.AnswerLog`
(which the logging benchmarks time as well). On a local storage root they go to this replica's
:class:`~lifelong_ray.data.segments.SegmentLog` (one append and one ``fdatasync`` per
request, shared under load), sealed into the parquet log every
``data.log_seal_seconds``; otherwise, and for feedback, one
:class:`~lifelong_ray.data.logs.GroupCommit` per log and model writes them (requests
that arrive while a file is being written share the next file and its fsync). Either
way a request is answered 2xx only once its rows are written, as durable as
``data.durability`` says for its log: ``fsync``, synced to the device first;
``group`` (the prediction log's default), in the OS, and synced by the log's group
commit (one flusher thread, :mod:`~lifelong_ray.data.flush`) within
``data.flush_interval_ms``; ``none``, in the OS.

Besides predict, the ingress takes feedback labels exactly once
(:mod:`~lifelong_ray.serving.feedback`), hands out label requests
(:mod:`~lifelong_ray.serving.active`), takes operator commands behind a bearer
token (:mod:`~lifelong_ray.serving.admin`), refuses bodies over
``serving.max_body_bytes`` (:mod:`~lifelong_ray.serving.bodylimit`) and, for chaos
tests only, injects the faults of ``models/<m>/faults.json``
(:mod:`~lifelong_ray.serving.faults`). Deploy with :mod:`lifelong_ray.serving.deploy`.
"""

import asyncio
import functools
import json
import logging
import math
import os
import random
import sys
import time
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from lifelong_ray.config import Config, ServingConfig
from lifelong_ray.control.commands import submit_command
from lifelong_ray.data.answers import AnswerLog
from lifelong_ray.data.flush import GroupFlusher
from lifelong_ray.data.logs import GroupCommit, ModelLogs, feedback_rows
from lifelong_ray.data.segments import seal_orphans
from lifelong_ray.data.schema import Schema
from lifelong_ray.policy.model import CommandKind
from lifelong_ray.serving import metrics as M
from lifelong_ray.serving import active
from lifelong_ray.serving.active import LabelRequests
from lifelong_ray.serving.admin import (
    AdminRequest,
    AdminTokenError,
    ApproveRequest,
    Auth,
    CommandAccepted,
    admin_disabled_message,
    check_bearer,
    resolve_token,
)
from lifelong_ray.serving.bodylimit import BodyLimit, check_length
from lifelong_ray.serving.faults import NO_FAULT, FaultSpec, draw_fault, read_faults
from lifelong_ray.serving.feedback import DEFAULT_INDEX_CAPACITY, FeedbackBook, Rejected, RejectCode, check_items
from lifelong_ray.serving.feedback_guard import LiveLabelGuard
from lifelong_ray.serving.local import LocalVersions
from lifelong_ray.serving.readiness import readiness
from lifelong_ray.serving.reads import MAX_SHOWN_VERSIONS, TTLCache, event_tail, shown_versions
from lifelong_ray.serving.routing import RoutingTable, choose_version, read_routing, should_shadow
from lifelong_ray.storage import Storage

logger = logging.getLogger("lifelong_ray.serving")

INGRESS_APP = "lifelong"
VERSION_DEPLOYMENT = "VersionModel"
INGRESS_DEPLOYMENT = "Ingress"
#: the most request ids one label-requests call may ask for
MAX_LABEL_BUDGET = 10_000
#: seconds a call to one version may take before it counts as failed
VERSION_CALL_TIMEOUT_S = 20.0
#: how often the ingress refreshes which version apps exist (so a call to a version that
#: is not deployed fails at once instead of waiting for the timeout)
APPS_REFRESH_S = 1.0
_LIVE_APP_STATES = {"RUNNING", "DEPLOYING", "UNHEALTHY"}
_STATUS_METADATA_MAX_CHARS = 4000


def version_app_name(model: str, version: str) -> str:
    """The Serve application that hosts one version.

    >>> version_app_name("iris", "v0003")
    'lifelong-iris-v0003'
    """
    return f"lifelong-{model}-{version}"


def controller_state_path(model: str) -> str:
    return f"models/{model}/controller/state.json"


# --------------------------------------------------------------------------------------
# HTTP envelopes (pydantic, so the OpenAPI document is real)
# --------------------------------------------------------------------------------------
class PredictRequest(BaseModel):
    """``POST /v1/models/{model}:predict``; each instance is checked against the schema."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"instances": [{"x0": 0.3, "color": "red"}], "key": "user-42"}]})

    instances: list[dict[str, Any]] = Field(
        description="rows of feature: value; every feature of the model, nothing else")
    key: str | None = Field(
        default=None, description="optional routing key: requests with the same key reach the same version "
                                  "(at most serving.max_key_chars characters, else 422)")


class PredictResponse(BaseModel):
    predictions: list[int] = Field(description="predicted class id per instance")
    request_ids: list[str] = Field(description="one id per instance (32 hex chars); send labels with it")
    model_version: str = Field(description="the version that answered")


class FeedbackRequest(BaseModel):
    """``POST /v1/models/{model}:feedback``; items are checked one by one (bad ones are rejected)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"labels": [{"request_id": "0123456789abcdef0123456789abcdef", "label": 1}]}]})

    labels: list[dict[str, Any]] = Field(
        description='items {"request_id": str (from :predict), "label": class id}')


class Rejection(BaseModel):
    request_id: str | None
    code: str = Field(description="reason code: unexpected, missing, format, label_domain, "
                                  "unknown_request_id, expired, duplicate, quarantined")
    reason: str = Field(description="the field, the code and what was wrong, in words")


class FeedbackResponse(BaseModel):
    accepted: int
    rejected: list[Rejection]


class ViolationOut(BaseModel):
    index: int | None
    field: str
    rule: str
    message: str


class ReadyResponse(BaseModel):
    model: str
    ready: bool
    reason: str
    routing_generation: int


class ErrorResponse(BaseModel):
    error: str
    violations: list[ViolationOut] = Field(default_factory=list)


class ModelList(BaseModel):
    models: list[str]


class ModelStatus(BaseModel):
    """``GET /v1/models/{model}``: schema, versions, routing, controller state, last events.

    Parts that could not be read are left empty and named in ``<part>_error`` fields."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: str
    schema_: dict[str, Any] = Field(alias="schema", description="features and label of the model")
    versions: list[dict[str, Any]] = Field(description="registered versions with their metadata summary")
    aliases: dict[str, str]
    weights: dict[str, float] = Field(description="version -> percent of traffic the ingress routes now")
    routing: dict[str, Any]
    controller: dict[str, Any] | None = Field(description="the controller's persisted state (None: none yet)")
    last_events: list[dict[str, Any]] = Field(description="the newest audit events, oldest first")


#: models served by the ingress in this process; metric labels use "<unknown>" for any
#: other name so a client cannot grow the label set at will
_SERVED: set[str] = set()
#: body-size limit per served model (bytes); paths naming no served model get the smallest
_BODY_LIMITS: dict[str, int] = {}
#: admin bearer token per served model (None: admin API disabled), and why it is disabled
_ADMIN_TOKENS: dict[str, str | None] = {}
_ADMIN_DISABLED: dict[str, str] = {}


def new_request_ids(n: int) -> list[str]:
    """``n`` random request ids: 32 hex characters (128 bits) each, like ``uuid4().hex``,
    from one ``os.urandom`` call (ten ``uuid4()`` cost 40 us, this 3 us).

    >>> ids = new_request_ids(3)
    >>> len(ids), len(set(ids)), all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    (3, 3, True)
    """
    h = os.urandom(16 * n).hex()
    return [h[k:k + 32] for k in range(0, 32 * n, 32)]


def _model_label(name: str) -> str:
    return name if name in _SERVED else "<unknown>"


def _error(status: int, error: str, violations: list[dict[str, Any]] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "violations": violations or []})


def _violation(index: int | None, field: str, rule: str, message: str) -> dict[str, Any]:
    return {"index": index, "field": field, "rule": rule, "message": message}


# pydantic error type -> our rule name
_PYDANTIC_RULES = {
    "missing": "missing",
    "extra_forbidden": "unexpected",
    "dict_type": "not_an_object",
    "model_attributes_type": "not_an_object",
    "model_type": "not_an_object",
    "list_type": "type",
    "string_type": "type",
    "json_invalid": "json_invalid",
}


def _from_pydantic(err: dict[str, Any]) -> dict[str, Any]:
    loc = list(err.get("loc", ()))
    if loc and loc[0] == "body":
        loc = loc[1:]
    index = None
    if len(loc) >= 2 and isinstance(loc[1], int) and loc[0] in ("instances", "labels"):
        index = loc[1]
    if not loc:
        field = "body"
    elif index is not None and len(loc) == 2:
        field = f"{loc[0]}[{index}]"
    else:
        field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    rule = _PYDANTIC_RULES.get(err.get("type", ""), err.get("type", "invalid"))
    msg = err.get("msg", "invalid")
    if field == "body" and rule == "missing":
        msg = "a JSON body is required"
    elif field == "body" and rule == "not_an_object":
        msg = "the body must be a JSON object (send Content-Type: application/json)"
    return _violation(index, field, rule, f"{field}: {msg}")


api = FastAPI(
    title="lifelong-ray",
    description="Predict, send feedback labels and inspect lifelong models (DESIGN.md §4).",
    version="1",
)


@api.exception_handler(RequestValidationError)
async def _on_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    model = _model_label(request.path_params.get("model", ""))
    bad_json = [e for e in errors if e.get("type") == "json_invalid"]
    if bad_json:
        e = bad_json[0]
        pos = e.get("loc", ("body", "?"))[-1]
        detail = (e.get("ctx") or {}).get("error", "JSON decode error")
        M.REJECTED.labels(model=model, rule="json_invalid").inc()
        return _error(400, "malformed JSON", [_violation(
            None, "body", "json_invalid", f"the body is not valid JSON: {detail} at position {pos}")])
    violations = [_from_pydantic(e) for e in errors]
    M.REJECTED.labels(model=model, rule=violations[0]["rule"] if violations else "invalid").inc()
    return _error(422, "invalid request", violations)


@api.exception_handler(StarletteHTTPException)
async def _on_http_exception(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's own 400 (a body it cannot parse, e.g. not UTF-8) in the documented envelope."""
    if exc.status_code != 400:
        return await http_exception_handler(request, exc)
    M.REJECTED.labels(model=_model_label(request.path_params.get("model", "")), rule="unparseable").inc()
    return _error(400, "malformed request body", [_violation(
        None, "body", "unparseable", f"the body could not be read as JSON: {exc.detail}")])


class _ApiError(Exception):
    def __init__(self, status: int, error: str, violations: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.violations, self.headers = status, error, violations or [], headers


@api.exception_handler(_ApiError)
async def _on_api_error(request: Request, exc: _ApiError) -> JSONResponse:
    response = _error(exc.status, exc.error, exc.violations)
    response.headers.update(exc.headers or {})
    return response


def _model_of_path(path: str) -> str:
    """
    >>> _model_of_path("/v1/models/iris:predict"), _model_of_path("/v1/models/iris/label-requests")
    ('iris', 'iris')
    """
    rest = path[len("/v1/models/"):] if path.startswith("/v1/models/") else ""
    return rest.split("/", 1)[0].split(":", 1)[0]


def _body_limit(path: str) -> int:
    """The body-size limit of the model a path names; the smallest one for other paths."""
    if not _BODY_LIMITS:
        return ServingConfig().max_body_bytes
    return _BODY_LIMITS.get(_model_of_path(path), min(_BODY_LIMITS.values()))


def _on_too_large(path: str) -> None:
    M.REJECTED.labels(model=_model_label(_model_of_path(path)), rule="max_body_bytes").inc()


api.add_middleware(BodyLimit, limit_for=_body_limit, on_reject=_on_too_large)

_AUTH_ERRORS = {
    Auth.MISSING: "missing bearer token: send Authorization: Bearer <token>",
    Auth.INVALID: "invalid bearer token",
}


def _admin_auth(request: Request, model: str,
                authorization: str | None = Header(default=None, description="Bearer <admin token>")) -> None:
    """FastAPI dependency of every admin route; runs before the body is validated."""
    kind = request.url.path.rsplit(":", 1)[-1]
    label = _model_label(model)
    if model not in _SERVED:  # fail closed: nothing passes without a published token
        M.REJECTED.labels(model=label, rule="unknown_model").inc()
        raise _ApiError(404, f"unknown model {model!r}; served models: {sorted(_SERVED)}", [
            _violation(None, "model", "unknown_model", f"model {model!r} is not served here")])
    # a served model whose token was never resolved is treated as having none
    auth = check_bearer(authorization, _ADMIN_TOKENS.get(model))
    if auth == Auth.OK:
        return
    if auth == Auth.DISABLED:
        M.ADMIN_COMMANDS.labels(model=label, kind=kind, result="disabled").inc()
        raise _ApiError(403, _ADMIN_DISABLED.get(model) or admin_disabled_message(model, None, None), [_violation(
            None, "authorization", "no_token_configured", "no admin token is configured for this model")])
    M.ADMIN_COMMANDS.labels(model=label, kind=kind, result="unauthorized").inc()
    challenge = 'Bearer realm="lifelong"' + (', error="invalid_token"' if auth == Auth.INVALID else "")
    raise _ApiError(401, _AUTH_ERRORS[auth], [_violation(None, "authorization", auth.value, _AUTH_ERRORS[auth])],
                    headers={"WWW-Authenticate": challenge})


# --------------------------------------------------------------------------------------
# One model version
# --------------------------------------------------------------------------------------
@serve.deployment(name=VERSION_DEPLOYMENT, max_ongoing_requests=32)
class VersionModel:
    """Hosts one registered version (loaded, integrity-checked, by the registry)."""

    def __init__(self, cfg_dict: dict[str, Any], version: str) -> None:
        from lifelong_ray.registry.store import Registry

        cfg = Config.model_validate(cfg_dict)
        self.model_name = cfg.model.name
        self.version = version
        self.model = Registry(Storage(cfg.storage.root), cfg.model.name).load(version)

    async def predict(self, columns: dict[str, np.ndarray]) -> tuple[list[int], list[float]]:
        labels, confidence = self.model.predict(columns)
        return (np.asarray(labels, dtype=np.int64).tolist(),
                np.asarray(confidence, dtype=np.float64).tolist())

    async def info(self) -> dict[str, str]:
        return {"model": self.model_name, "version": self.version}


# --------------------------------------------------------------------------------------
# The ingress
# --------------------------------------------------------------------------------------
class VersionError(RuntimeError):
    """A call to one version failed; ``kind`` labels the metric and starts the log's error."""

    kind = "exception"


class VersionUnavailable(VersionError):
    """The routing table names a version that has no Serve application."""

    kind = "unavailable"


class NonFiniteOutput(VersionError):
    """The version answered NaN or infinite confidences."""

    kind = "non_finite_output"


class InjectedAbort(VersionError):
    """A fault from ``faults.json`` (chaos testing) failed the call on purpose."""

    kind = "injected_abort"


def _error_kind(err: BaseException) -> str:
    if isinstance(err, VersionError):
        return err.kind
    return "timeout" if isinstance(err, TimeoutError) else "exception"


def _error_message(err: BaseException) -> str:
    prefix = err.kind if isinstance(err, VersionError) else type(err).__name__
    return f"{prefix}: {err}"[:500]


class _Model:
    """Everything the ingress keeps about one served model."""

    def __init__(self, cfg: Config, index_capacity: int) -> None:
        self.cfg = cfg
        self.name = cfg.model.name
        self.schema = Schema(cfg.model)
        self.storage = Storage(cfg.storage.root)
        self.logs = ModelLogs.from_config(self.storage, cfg)
        self.book = FeedbackBook(self.logs, horizon_s=cfg.data.label_horizon_seconds, capacity=index_capacity)
        # predictions: appended to this replica's segment, sealed into parquet every log_seal_seconds
        # (local disk), or group commit: the rows of concurrent requests share one durable file
        durability, flush_s = cfg.data.durability, cfg.data.flush_interval_ms / 1e3
        self.answers = AnswerLog(self.logs, self.schema, segments=cfg.data.log_segments,
                                 seal_s=cfg.data.log_seal_seconds, on_sealed=self.book.served_sealed,
                                 durability=durability.predictions, flush_interval_s=flush_s)
        self.feedback_log = GroupCommit(self.logs, self.logs.feedback_prefix, durability=durability.feedback,
                                        flush_interval_s=flush_s)
        self.command_flusher = GroupFlusher(f"{self.name}/commands", flush_s) \
            if durability.commands == "group" and self.storage.is_local else None
        for log_name, flusher in (("predictions", self.answers.flusher), ("feedback", self.feedback_log.flusher),
                                  ("commands", self.command_flusher)):
            if flusher is not None:  # read at scrape time
                M.LOG_UNFLUSHED.labels(model=self.name, log=log_name).set_function(flusher.unflushed_seconds)
        self.live_guard = LiveLabelGuard(cfg, self.storage, capacity=index_capacity)
        #: status and label-request snapshots, a second old at most (serving/reads.py)
        self.snapshots = TTLCache()
        self._registry: Any = None
        self.table = RoutingTable(model=self.name)
        self.table_seen_at = time.monotonic()
        self.faults: FaultSpec | None = None
        self.handles: dict[str, Any] = {}
        #: versions loaded in this replica (``serving.version_placement: ingress``), else None
        self.local: LocalVersions | None = None
        if cfg.serving.version_placement == "ingress":
            from lifelong_ray.registry.store import Registry

            self.local = LocalVersions(Registry(self.storage, self.name).load)

    def registry(self) -> Any:
        """This model's registry, kept: version metadata is immutable and cached in it."""
        if self._registry is None:
            from lifelong_ray.registry.store import Registry

            self._registry = Registry(self.storage, self.name)
        return self._registry

    async def adopt(self, table: RoutingTable) -> None:
        """Switch to ``table``; in ingress placement, load the versions it names first (and
        retry, every ``retry_s``, a version whose load failed)."""
        if self.local is not None and (table != self.table or self.local.needs_sync(table)):
            await asyncio.to_thread(self.local.sync, table, self.table)
        self.set_table(table)

    def set_faults(self, faults: FaultSpec | None) -> None:
        if faults != self.faults:
            logger.warning("fault injection for %s: %s", self.name,
                           "off" if faults is None else faults.model_dump(mode="json")["versions"])
        self.faults = faults

    def set_table(self, table: RoutingTable) -> None:
        if table == self.table:
            return
        M.set_route_weights(self.name, table.weights, self.table.weights)
        if table.weights != self.table.weights or table.generation != self.table.generation:
            logger.info("routing of %s -> generation %d weights %s", self.name, table.generation, table.weights)
        self.table = table
        self.table_seen_at = time.monotonic()

    def handle(self, version: str) -> Any:
        h = self.handles.get(version)
        if h is None:
            h = serve.get_deployment_handle(VERSION_DEPLOYMENT, app_name=version_app_name(self.name, version),
                                            _check_exists=False, _record_telemetry=False)
            self.handles[version] = h
        return h


def _live_apps() -> set[str]:
    """Names of the Serve applications that exist and are not being deleted (blocking)."""
    out = set()
    for name, app in serve.status().applications.items():
        if str(getattr(app.status, "value", app.status)) in _LIVE_APP_STATES:
            out.add(name)
    return out


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats (which JSON cannot carry) by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _metadata_summary(md: Any) -> dict[str, Any]:
    """Metadata of a version minus its bulky entries (the file manifest, anything long)."""
    if not isinstance(md, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in md.items():
        if k == "files":
            continue
        try:
            if len(json.dumps(v, default=str)) <= _STATUS_METADATA_MAX_CHARS:
                out[str(k)] = v
        except (TypeError, ValueError):
            continue
    return out


#: decorator of every admin route: 202 with the command, the bearer check before anything else
_admin_route = functools.partial(api.post, status_code=202, response_model=CommandAccepted,
                                 dependencies=[Depends(_admin_auth)], responses={
                                     code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 422, 503)})


def _invalid_admin(model: str, kind: str, field: str, rule: str, message: str) -> _ApiError:
    M.ADMIN_COMMANDS.labels(model=model, kind=kind, result="invalid").inc()
    return _ApiError(422, "invalid request", [_violation(None, field, rule, f"{field}: {message}")])


def _publish(cfg: Config) -> None:
    """Make one served model known to the module-level hooks (metric labels, body limit, admin).

    A module-level function on purpose: Serve ships the ingress class by value, with
    copies of the module globals its methods name, so the class must not touch these
    dicts itself or the FastAPI hooks (which run with the real module) would not see it."""
    name, env = cfg.model.name, cfg.serving.admin_token_env
    _SERVED.add(name)
    M.watch(cfg)  # the controller's persisted state, read at scrape time
    _BODY_LIMITS[name] = cfg.serving.max_body_bytes
    try:
        _ADMIN_TOKENS[name] = resolve_token(env, cfg.serving.admin_token_file, os.environ)
        _ADMIN_DISABLED[name] = admin_disabled_message(name, env, None)
    except AdminTokenError as err:
        logger.error("admin API of %s disabled: %s", name, err)
        _ADMIN_TOKENS[name], _ADMIN_DISABLED[name] = None, admin_disabled_message(name, env, err)


def apply_switch_interval(cfgs: list[Config]) -> float:
    """Set this process's GIL switch interval to the smallest ``serving.gil_switch_interval_ms``
    of ``cfgs`` (none set: leave it). Returns the interval in force, in seconds.

    >>> from lifelong_ray.config import parse_config
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x", "dtype": "float"}],
    ...                               "label": {"name": "y", "classes": [0, 1]}}})
    >>> before = sys.getswitchinterval()
    >>> apply_switch_interval([cfg])
    0.0005
    >>> sys.setswitchinterval(before)
    """
    wanted = [c.serving.gil_switch_interval_ms for c in cfgs if c.serving.gil_switch_interval_ms is not None]
    if wanted:
        sys.setswitchinterval(min(wanted) / 1e3)
    return sys.getswitchinterval()


@serve.deployment(name=INGRESS_DEPLOYMENT, max_ongoing_requests=128)
@serve.ingress(api)
class Ingress:
    """HTTP front door of every served model (several configs, one per model)."""

    async def __init__(self, cfg_dicts: list[dict[str, Any]], index_capacity: int = DEFAULT_INDEX_CAPACITY) -> None:
        self._models: dict[str, _Model] = {}
        self._inflight = 0  # predicts and shadow calls in flight in this replica (the log syncs in-line only alone)
        for d in cfg_dicts:
            cfg = Config.model_validate(d)
            self._models[cfg.model.name] = _Model(cfg, index_capacity)
            _publish(cfg)
        apply_switch_interval([m.cfg for m in self._models.values()])
        for m in self._models.values():
            if m.answers.segmented:  # rows a dead replica answered but never sealed
                try:
                    sealed = await asyncio.to_thread(seal_orphans, m.logs, m.logs.predictions_prefix,
                                                     fsync=m.cfg.data.durability.predictions != "none")
                    if sealed:
                        logger.warning("sealed %d rows of %s left in segments of a stopped replica",
                                       sum(r for *_, r in sealed), m.name)
                except Exception:  # noqa: BLE001 - the controller and the seal loop retry
                    logger.exception("could not seal orphaned segments of %s", m.name)
            try:
                await m.adopt(await asyncio.to_thread(read_routing, m.storage, m.name))
                m.set_faults(await asyncio.to_thread(read_faults, m.storage, m.name))
            except Exception:  # noqa: BLE001 - keep serving; the poller retries
                logger.exception("could not read the routing table or faults of %s", m.name)
        self._rng = random.Random()
        self._snapshots = TTLCache()  # the /ui page's data
        self._background: set[asyncio.Task] = set()
        periods = [m.cfg.serving.routing_poll_seconds for m in self._models.values()] or [1.0]
        self._poll_period = min(periods)
        # names of live Serve apps and the monotonic time the snapshot was requested
        self._apps: set[str] | None = None
        self._apps_at = -math.inf
        loop = asyncio.get_running_loop()
        self._poller = loop.create_task(self._poll_routing())
        # which Serve apps are live matters only to versions called through a handle
        placements = {m.cfg.serving.version_placement for m in self._models.values()}
        self._apps_poller = loop.create_task(self._poll_apps()) if "deployment" in placements else None

    async def _poll_apps(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                apps = await asyncio.to_thread(_live_apps)
            except Exception as err:  # noqa: BLE001 - without a snapshot calls just wait/time out
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    logger.warning("could not list Serve applications (%d times): %s", failures, err)
                self._apps = None
            else:
                failures = 0
                self._apps, self._apps_at = apps, started
            await asyncio.sleep(APPS_REFRESH_S)

    async def _poll_routing(self) -> None:
        failures: dict[str, int] = {}
        while True:
            await asyncio.sleep(self._poll_period)
            for m in self._models.values():
                try:
                    table = await asyncio.to_thread(read_routing, m.storage, m.name)
                except Exception as err:  # noqa: BLE001 - keep the last good table
                    failures[m.name] = failures.get(m.name, 0) + 1
                    if failures[m.name] in (1, 10) or failures[m.name] % 100 == 0:
                        logger.warning("routing table of %s unreadable (%d times): %s", m.name,
                                       failures[m.name], err)
                    continue
                failures.pop(m.name, None)
                try:
                    await m.adopt(table)
                except Exception as err:  # noqa: BLE001 - keep the last good table
                    logger.warning("could not adopt routing table of %s: %s", m.name, err)
                try:
                    m.set_faults(await asyncio.to_thread(read_faults, m.storage, m.name))
                except Exception as err:  # noqa: BLE001 - keep the last good faults
                    logger.warning("faults file of %s invalid, keeping the last good one: %s", m.name, err)

    def _model(self, name: str) -> _Model:
        m = self._models.get(name)
        if m is None:
            M.REJECTED.labels(model=_model_label(name), rule="unknown_model").inc()
            raise _ApiError(404, f"unknown model {name!r}; served models: {sorted(self._models)}", [
                _violation(None, "model", "unknown_model", f"model {name!r} is not served here")])
        return m

    # -- calling versions -------------------------------------------------------------
    async def _call(self, m: _Model, version: str, cols: dict[str, np.ndarray]) -> tuple[list[int], list[float]]:
        if m.local is not None:
            return await self._call_local(m, version, cols)
        # The controller deploys a version (and waits for RUNNING) before it writes a table
        # naming it, so a snapshot taken after this table was seen that lacks the app means
        # the version is really gone: fail now rather than queue until the timeout.
        if (self._apps is not None and self._apps_at > m.table_seen_at
                and version_app_name(m.name, version) not in self._apps):
            raise VersionUnavailable(f"version {version} of {m.name} is not deployed "
                                     f"(no Serve application {version_app_name(m.name, version)})")
        fault = await self._fault(m, version)
        resp = m.handle(version).predict.remote(cols)

        async def _wait() -> Any:
            return await resp

        try:
            labels, conf = await asyncio.wait_for(_wait(), VERSION_CALL_TIMEOUT_S)
        except asyncio.TimeoutError:
            resp.cancel()
            raise TimeoutError(f"version {version} did not answer within {VERSION_CALL_TIMEOUT_S:g}s") from None
        return self._checked(m, version, labels, conf, cols, fault.nan)

    async def _fault(self, m: _Model, version: str) -> Any:
        """Draw this call's fault from ``faults.json`` (chaos testing); apply its delay and abort."""
        fault = draw_fault(m.faults.versions.get(version), self._rng) if m.faults is not None else NO_FAULT
        if fault.delay_s > 0:
            M.FAULTS_INJECTED.labels(model=m.name, version=version, kind="delay").inc()
            await asyncio.sleep(fault.delay_s)
        if fault.abort:
            M.FAULTS_INJECTED.labels(model=m.name, version=version, kind="abort").inc()
            raise InjectedAbort(f"version {version} call aborted by faults.json (chaos testing)")
        return fault

    async def _call_local(self, m: _Model, version: str,
                          cols: dict[str, np.ndarray]) -> tuple[list[int], list[float]]:
        """A call to a version loaded in this replica: same faults and output checks, no hop.

        The model runs in-line on the event loop, as a one-deployment app would
        (``version_placement: ingress`` is meant for small CPU models)."""
        loaded = m.local.get(version)
        if loaded is None:
            raise VersionUnavailable(m.local.why_missing(version))
        fault = await self._fault(m, version)
        labels_a, conf_a = loaded.predict(cols)
        labels = np.asarray(labels_a, dtype=np.int64).tolist()
        conf = np.asarray(conf_a, dtype=np.float64).tolist()
        return self._checked(m, version, labels, conf, cols, fault.nan)

    @staticmethod
    def _checked(m: _Model, version: str, labels: list[int], conf: list[float],
                 cols: dict[str, np.ndarray], inject_nan: bool) -> tuple[list[int], list[float]]:
        if len(labels) != len(next(iter(cols.values()))):
            raise RuntimeError(f"version {version} returned {len(labels)} predictions")
        if inject_nan:
            M.FAULTS_INJECTED.labels(model=m.name, version=version, kind="nan").inc()
            conf = [math.nan] * len(conf)
        bad = sum(1 for c in conf if not math.isfinite(c))
        if bad:
            raise NonFiniteOutput(f"version {version} answered {bad} of {len(conf)} confidences NaN or infinite")
        return labels, conf

    async def _log(self, m: _Model, *, request_ids: list[str], version: str, features: dict[str, list[Any]],
                   labels: list[int] | None, conf: list[float] | None, latency_ms: float,
                   key: str | None, shadow: bool = False, error: str | None = None) -> None:
        """Log the rows of one answer (``features`` from ``AnswerLog.features``), durable on return."""
        # a lone request syncs the log on the event loop (no thread hop); with others in
        # flight (predicts and shadow calls, each counted in _inflight, this one too) the
        # sync goes to a thread, so their validation and model calls go on meanwhile
        path, t = await m.answers.append(request_ids=request_ids, version=version, features=features, labels=labels,
                                         confidence=conf, latency_ms=latency_ms, key=key, shadow=shadow, error=error,
                                         alone=self._inflight <= 1)
        if not shadow and error is None:
            m.book.served_now(None if m.answers.segmented else path, request_ids, t)
            m.live_guard.served_now(request_ids, labels or ())

    async def _log_failure(self, m: _Model, version: str, err: BaseException, **kw: Any) -> str:
        M.VERSION_ERRORS.labels(model=m.name, version=version, kind=_error_kind(err)).inc()
        message = _error_message(err)
        logger.warning("version %s of %s failed: %s", version, m.name, message)
        try:
            await self._log(m, version=version, labels=None, conf=None, error=message, **kw)
        except Exception:  # noqa: BLE001 - the answer matters more than the error row
            logger.exception("could not log the failure of %s %s", m.name, version)
        return message

    async def _shadow(self, m: _Model, version: str, cols: dict[str, np.ndarray], features: dict[str, Any],
                      request_ids: list[str], key: str | None) -> None:
        self._inflight += 1  # a shadow call is work in flight too: its log write syncs in-line only alone
        try:
            await self._shadow_call(m, version, cols, features, request_ids, key)
        finally:
            self._inflight -= 1

    async def _shadow_call(self, m: _Model, version: str, cols: dict[str, np.ndarray], features: dict[str, Any],
                           request_ids: list[str], key: str | None) -> None:
        t0 = time.perf_counter()
        try:
            labels, conf = await self._call(m, version, cols)
        except Exception as err:  # noqa: BLE001
            await self._log_failure(m, version, err, request_ids=request_ids, features=features,
                                    latency_ms=(time.perf_counter() - t0) * 1e3, key=key, shadow=True)
            return
        try:
            await self._log(m, request_ids=request_ids, version=version, features=features, labels=labels,
                            conf=conf, latency_ms=(time.perf_counter() - t0) * 1e3, key=key, shadow=True)
        except Exception:  # noqa: BLE001
            logger.exception("could not log shadow predictions of %s %s", m.name, version)

    # -- routes -----------------------------------------------------------------------
    @api.post("/v1/models/{model}:predict", response_model=PredictResponse,
              responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
                         422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def predict(self, model: str, body: PredictRequest) -> Any:
        self._inflight += 1
        try:
            return await self._predict(model, body)
        finally:
            self._inflight -= 1

    async def _predict(self, model: str, body: PredictRequest) -> Any:
        t0 = time.perf_counter()
        m = self._model(model)
        n = len(body.instances)
        limit = m.cfg.serving.max_instances_per_request
        if n == 0:
            M.REJECTED.labels(model=model, rule="min_items").inc()
            raise _ApiError(422, "invalid instances", [_violation(
                None, "instances", "min_items", "instances must hold at least one instance")])
        if n > limit:
            M.REJECTED.labels(model=model, rule="max_items").inc()
            raise _ApiError(422, "invalid instances", [_violation(
                None, "instances", "max_items", f"instances holds {n} rows; at most {limit} per request")])
        too_long = check_length("key", body.key, m.cfg.serving.max_key_chars, "serving.max_key_chars")
        if too_long:
            M.REJECTED.labels(model=model, rule="max_length").inc()
            raise _ApiError(422, "invalid request", [too_long])
        cols, violations = m.schema.validate_records(body.instances)
        if violations:
            M.REJECTED.labels(model=model, rule=violations[0].rule.value).inc()
            raise _ApiError(422, "invalid instances", [v.to_json() for v in violations])

        table = m.table
        request_ids = new_request_ids(n)
        version = choose_version(table, body.key, request_ids[0])
        if version is None:
            raise _ApiError(503, f"no version of {model!r} is serving yet (empty routing table); "
                                 "register and deploy one first")
        features = m.answers.features(cols)
        common = {"request_ids": request_ids, "features": features, "key": body.key}

        try:
            labels, conf = await self._call(m, version, cols)
        except Exception as err:  # noqa: BLE001
            message = await self._log_failure(m, version, err, latency_ms=(time.perf_counter() - t0) * 1e3,
                                              **common)
            fallback = table.champion
            if fallback is None or fallback == version:
                raise _ApiError(503, f"version {version} of {model!r} failed: {message}") from None
            try:
                labels, conf = await self._call(m, fallback, cols)
            except Exception as err2:  # noqa: BLE001
                message2 = await self._log_failure(m, fallback, err2,
                                                   latency_ms=(time.perf_counter() - t0) * 1e3, **common)
                raise _ApiError(503, f"versions {version} and {fallback} of {model!r} failed: "
                                     f"{message}; {message2}") from None
            version = fallback
        latency_s = time.perf_counter() - t0
        try:
            await self._log(m, version=version, labels=labels, conf=conf, latency_ms=latency_s * 1e3, **common)
        except Exception as err:  # noqa: BLE001 - never answer 2xx for a record that is not durable
            logger.exception("prediction log write failed for %s", model)
            raise _ApiError(503, f"could not persist the predictions: {type(err).__name__}: {err}") from None

        if table.shadow and table.shadow != version and should_shadow(table, request_ids[0]):
            task = asyncio.get_running_loop().create_task(
                self._shadow(m, table.shadow, cols, features, request_ids, body.key))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        M.PREDICTIONS.labels(model=model, version=version).inc(n)
        M.PREDICT_LATENCY.labels(model=model, version=version).observe(latency_s)
        return {"predictions": labels, "request_ids": request_ids, "model_version": version}

    @api.post("/v1/models/{model}:feedback", response_model=FeedbackResponse,
              responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
                         422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def feedback(self, model: str, body: FeedbackRequest) -> Any:
        m = self._model(model)
        now = time.time()
        candidates, rejected = check_items(body.labels, m.cfg.model.label.classes)
        try:
            accepted, more = await m.book.review(candidates, now)
        except Exception as err:  # noqa: BLE001 - e.g. the logs are unreadable: retry later, nothing taken
            logger.exception("feedback check failed for %s", model)
            raise _ApiError(503, f"could not check the labels against the logs: {type(err).__name__}: {err}") from None
        rejected = [*rejected, *more]
        if accepted:
            accepted, held = await self._guard_labels(m, accepted, now)
            rejected += held
        rejected = sorted(rejected, key=lambda r: r.index)
        if accepted:
            ids, labels = [c.request_id for c in accepted], [c.label for c in accepted]
            write = asyncio.ensure_future(m.feedback_log.append(lambda t: feedback_rows(ids, labels, t), len(ids),
                                                                alone=self._inflight == 0))

            def _settle(done: asyncio.Future) -> None:  # when the write ends, even if this request was cancelled
                ok = not done.cancelled() and done.exception() is None
                path, t = done.result() if ok else (None, now)
                m.book.settle(accepted, path, t)

            write.add_done_callback(_settle)
            try:
                await asyncio.shield(write)
            except Exception as err:  # noqa: BLE001 - never a 2xx for labels that are not durable
                logger.exception("feedback log write failed for %s", model)
                raise _ApiError(503, f"could not persist the labels: {type(err).__name__}: {err}") from None
            M.FEEDBACK.labels(model=model, outcome="accepted", reason="none").inc(len(accepted))
        for r in rejected:
            M.FEEDBACK.labels(model=model, outcome="rejected", reason=r.code.value).inc()
        return {"accepted": len(accepted), "rejected": [r.to_json() for r in rejected]}

    @staticmethod
    async def _guard_labels(m: _Model, accepted: list, now: float) -> tuple[list, list[Rejected]]:
        """The live label guard (serving/feedback_guard.py): labels of a collapsing stream
        go to the quarantine store, durably, instead of the feedback log."""
        mode = m.cfg.data.guard_live
        if mode == "off":
            return accepted, []
        await m.live_guard.ensure_prior(m.table.champion)
        passed, held, verdict = m.live_guard.judge(accepted)
        if not held:
            return passed, []
        if mode == "alert":  # a real concept change looks the same: warn, let the labels train
            M.FEEDBACK.labels(model=m.name, outcome="flagged", reason="label_disagreement").inc(len(held))
            return accepted, []
        try:
            entry = await asyncio.to_thread(m.live_guard.quarantine, held, verdict, now)
        except Exception as err:  # noqa: BLE001 - never a 2xx for labels that are not durable anywhere
            logger.exception("could not quarantine feedback of %s", m.name)
            raise _ApiError(503, f"could not persist the labels: {type(err).__name__}: {err}") from None
        finally:
            m.book.settle(held, None, now)  # not labeled: a release (or a later label) may take the id
        why = f"quarantined as {entry.id} ({m.live_guard.message(verdict)})"
        return accepted, [Rejected(c.index, c.request_id, RejectCode.QUARANTINED, f"labels[{c.index}].label: {why}")
                          for c in held]

    @api.get("/v1/models/{model}/label-requests", response_model=LabelRequests,
             responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
    async def label_requests(self, model: str, budget: int = Query(
            default=10, ge=1, le=MAX_LABEL_BUDGET, description="how many request ids to return at most")) -> Any:
        """Served, unlabeled, unexpired requests whose labels would help most (see serving/active.py)."""
        m = self._model(model)
        # a snapshot per budget, fresh after this replica takes labels (their ids leave the pool)
        out = await m.snapshots.get_or_compute(("label-requests", budget, m.book.settles), lambda: asyncio.to_thread(
            active.label_requests, m.cfg, budget, now=time.time(), storage=m.storage))
        M.LABEL_REQUESTS.labels(model=model).inc(len(out.items))
        return JSONResponse(_json_safe(out.model_dump(mode="json")))

    # -- admin (bearer token; see serving/admin.py) --------------------------------------
    async def _command(self, model: str, kind: CommandKind, body: AdminRequest | None,
                       version: str | None = None) -> JSONResponse:
        m = self._model(model)
        why = (body.why or "").strip() if body is not None else ""
        if not why:
            raise _invalid_admin(model, kind.value, "why", "missing", "required, a non-empty reason (it goes to the "
                                                                      "audit log)")
        limits = m.cfg.serving
        for field, value, limit, setting in (("why", why, limits.max_why_chars, "serving.max_why_chars"),
                                             ("who", body.who if body else None, limits.max_who_chars,
                                              "serving.max_who_chars")):
            too_long = check_length(field, value, limit, setting)
            if too_long:
                M.ADMIN_COMMANDS.labels(model=model, kind=kind.value, result="invalid").inc()
                raise _ApiError(422, "invalid request", [too_long])
        who = (body.who or "").strip() or "http"
        try:
            cmd = await asyncio.to_thread(submit_command, m.storage, m.name, kind, version=version, who=who,
                                          why=why, now=time.time(), durability=m.cfg.data.durability.commands,
                                          flusher=m.command_flusher)
        except Exception as err:  # noqa: BLE001 - never a 2xx for a command that is not durable
            M.ADMIN_COMMANDS.labels(model=model, kind=kind.value, result="failed").inc()
            logger.exception("could not write the %s command of %s", kind.value, model)
            raise _ApiError(503, f"could not persist the command: {type(err).__name__}: {err}") from None
        M.ADMIN_COMMANDS.labels(model=model, kind=kind.value, result="accepted").inc()
        logger.info("admin %s of %s by %s: %s (command %s)", kind.value, model, who, why, cmd.id)
        out = CommandAccepted(command_id=cmd.id, kind=cmd.kind.value, model=cmd.model, version=cmd.version,
                              who=cmd.who, why=cmd.why, t=cmd.t)
        return JSONResponse(status_code=202, content=out.model_dump(mode="json"))

    @_admin_route("/v1/models/{model}:rollback")
    async def rollback(self, model: str, body: AdminRequest | None = None) -> Any:
        """Abort the canary, or go back to the previous champion."""
        return await self._command(model, CommandKind.ROLLBACK, body)

    @_admin_route("/v1/models/{model}:approve")
    async def approve(self, model: str, body: ApproveRequest | None = None) -> Any:
        """Let the rollout of ``version`` held for approval go on."""
        m = self._model(model)
        version = (body.version or "").strip() if body is not None else ""
        if not version:
            raise _invalid_admin(model, "approve", "version", "missing", "required, the version to approve (e.g. v0003)")
        known = await asyncio.to_thread(self._registered, m)
        if version not in known:
            raise _invalid_admin(model, "approve", "version", "unknown_version",
                                 f"{version!r} is not a registered version of {model!r} (latest: {known[-5:]})")
        return await self._command(model, CommandKind.APPROVE, body, version=version)

    @staticmethod
    def _registered(m: _Model) -> list[str]:
        from lifelong_ray.registry.store import Registry

        return Registry(m.storage, m.name).list_versions()

    @_admin_route("/v1/models/{model}:retrain")
    async def retrain(self, model: str, body: AdminRequest | None = None) -> Any:
        """Request a full retrain now (quotas still apply)."""
        return await self._command(model, CommandKind.RETRAIN, body)

    @_admin_route("/v1/models/{model}:pause")
    async def pause(self, model: str, body: AdminRequest | None = None) -> Any:
        """No new retrains or rollout steps; traffic stays as it is."""
        return await self._command(model, CommandKind.PAUSE, body)

    @_admin_route("/v1/models/{model}:resume")
    async def resume(self, model: str, body: AdminRequest | None = None) -> Any:
        """Undo :pause."""
        return await self._command(model, CommandKind.RESUME, body)

    @api.get("/v1/models", response_model=ModelList)
    async def list_models(self) -> Any:
        return {"models": sorted(self._models)}

    @api.get("/v1/models/{model}", response_model=ModelStatus, responses={404: {"model": ErrorResponse}})
    async def model_status(self, model: str) -> Any:
        m = self._model(model)
        status = await m.snapshots.get_or_compute(
            ("status", m.table.generation), lambda: asyncio.to_thread(lambda: _json_safe(self._status(m))))
        return JSONResponse(status)

    def _status(self, m: _Model) -> dict[str, Any]:
        """The status document: bounded reads only (the newest versions plus those routed
        or aliased, the audit log's tail), served from a snapshot for SNAPSHOT_TTL_S."""
        features = []
        for f in m.cfg.model.features:
            d: dict[str, Any] = {"name": f.name, "dtype": f.dtype, "nullable": f.nullable}
            if f.dtype == "category":
                d["categories"] = list(f.categories or [])
            else:
                d["min"], d["max"] = f.min, f.max
            features.append(d)
        out: dict[str, Any] = {
            "model": m.name,
            "schema": {"features": features,
                       "label": {"name": m.cfg.model.label.name, "classes": list(m.cfg.model.label.classes)}},
            "versions": [],
            "aliases": {},
            "weights": dict(m.table.weights),
            "routing": m.table.to_json(),
            "controller": None,
            "last_events": [],
        }
        try:
            reg = m.registry()
            aliases = dict(reg.aliases())
            versions = reg.list_versions()
            keep = {*aliases.values(), *m.table.weights, *(v for v in (m.table.champion, m.table.shadow) if v)}
            shown = shown_versions(versions, keep)
            if len(shown) < len(versions):
                out["versions_total"] = len(versions)
                out["versions_note"] = (f"{len(shown)} of {len(versions)} versions shown: the newest "
                                        f"{MAX_SHOWN_VERSIONS} and those routed or aliased")
            for v in shown:
                try:
                    md = reg.metadata(v)  # versions are immutable: the registry caches it
                except Exception as err:  # noqa: BLE001
                    md = {"error": f"metadata unreadable: {err}"}
                out["versions"].append({"version": v, **_metadata_summary(md)})
            out["aliases"] = aliases
        except Exception as err:  # noqa: BLE001 - status must answer even with a broken registry
            out["registry_error"] = f"{type(err).__name__}: {err}"
        try:
            path = controller_state_path(m.name)
            if m.storage.exists(path):
                out["controller"] = m.storage.read_json(path)
        except Exception as err:  # noqa: BLE001
            out["controller_error"] = f"{type(err).__name__}: {err}"
        try:
            out["last_events"] = [e.to_json() for e in event_tail(m.storage, m.name, 10)]
        except Exception as err:  # noqa: BLE001
            out["events_error"] = f"{type(err).__name__}: {err}"
        return out

    @api.get("/ui", response_class=HTMLResponse, responses={200: {
        "description": "the status page: one self-contained HTML document (serving/ui.py)",
        "content": {"text/html": {"schema": {"type": "string"}}}}})
    async def ui_page(self) -> HTMLResponse:
        """Status page: versions and weights, rollout stage, drift, error budget, windowed
        quality over time with events marked, and the latest decisions with their reasons."""
        from lifelong_ray.serving import ui

        models = list(self._models.values())
        key = ("ui", tuple(m.table.generation for m in models))
        views = await self._snapshots.get_or_compute(key, lambda: asyncio.to_thread(
            lambda: [ui.gather(m.storage, m.cfg, m.table, registry=m.registry()) for m in models]))
        return HTMLResponse(ui.render_page(views, now=time.time()), headers=ui.SECURITY_HEADERS)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models/{model}/ready", response_model=ReadyResponse,
             responses={404: {"model": ErrorResponse}, 503: {"model": ReadyResponse}})
    async def ready(self, model: str) -> JSONResponse:
        """200 when every version with weight can be called now, else 503 with the reason
        (``lifelong up`` waits on it; a load balancer's readiness probe may too)."""
        m = self._model(model)
        ok, reason = readiness(m.table, lambda v: self._callable(m, v))
        body = {"model": model, "ready": ok, "reason": reason, "routing_generation": m.table.generation}
        return JSONResponse(status_code=200 if ok else 503, content=body)

    def _callable(self, m: _Model, version: str) -> bool:
        """Whether a call to ``version`` can be answered now (its app runs, or it is loaded here)."""
        if m.local is not None:
            return m.local.get(version) is not None
        return (self._apps is not None and self._apps_at > m.table_seen_at
                and version_app_name(m.name, version) in self._apps)

    @api.get("/metrics", response_class=PlainTextResponse, responses={200: {
        "description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics(self) -> Response:
        body, content_type = await asyncio.to_thread(M.exposition)  # reads storage: off the event loop
        return Response(content=body, media_type=content_type)

    def __del__(self) -> None:
        for name in ("_poller", "_apps_poller"):
            task = getattr(self, name, None)
            if task is not None:
                task.cancel()
        for m in getattr(self, "_models", {}).values():  # Serve's graceful shutdown: seal and sync what is left
            m.answers.close()
            m.feedback_log.close()
            if m.command_flusher is not None:
                m.command_flusher.close()
