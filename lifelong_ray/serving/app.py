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
for the served prediction. Deploy with :mod:`lifelong_ray.serving.deploy`.
"""

import asyncio
import json
import logging
import math
import re
import time
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from lifelong_ray.config import Config
from lifelong_ray.data.logs import ModelLogs, feature_arrays
from lifelong_ray.data.schema import Schema
from lifelong_ray.events import AuditLog
from lifelong_ray.serving import metrics as M
from lifelong_ray.serving.routing import RoutingTable, choose_version, read_routing, should_shadow
from lifelong_ray.storage import Storage

logger = logging.getLogger("lifelong_ray.serving")

INGRESS_APP = "lifelong"
VERSION_DEPLOYMENT = "VersionModel"
INGRESS_DEPLOYMENT = "Ingress"
REQUEST_ID_RE = re.compile(r"^[0-9a-f]{32}$")
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
        default=None, description="optional routing key: requests with the same key reach the same version")


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
    reason: str


class FeedbackResponse(BaseModel):
    accepted: int
    rejected: list[Rejection]


class ViolationOut(BaseModel):
    index: int | None
    field: str
    rule: str
    message: str


class ErrorResponse(BaseModel):
    error: str
    violations: list[ViolationOut] = Field(default_factory=list)


class ModelList(BaseModel):
    models: list[str]


#: models served by the ingress in this process; metric labels use "<unknown>" for any
#: other name so a client cannot grow the label set at will
_SERVED: set[str] = set()


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


class _ApiError(Exception):
    def __init__(self, status: int, error: str, violations: list[dict[str, Any]] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.violations = status, error, violations or []


@api.exception_handler(_ApiError)
async def _on_api_error(request: Request, exc: _ApiError) -> JSONResponse:
    return _error(exc.status, exc.error, exc.violations)


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
class VersionUnavailable(RuntimeError):
    """The routing table names a version that has no Serve application."""


class _Model:
    """Everything the ingress keeps about one served model."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.name = cfg.model.name
        self.schema = Schema(cfg.model)
        self.categorical = {f.name for f in cfg.model.features if f.dtype == "category"}
        self.storage = Storage(cfg.storage.root)
        self.logs = ModelLogs(self.storage, self.name)
        self.table = RoutingTable(model=self.name)
        self.table_seen_at = time.monotonic()
        self.handles: dict[str, Any] = {}

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


@serve.deployment(name=INGRESS_DEPLOYMENT, max_ongoing_requests=128)
@serve.ingress(api)
class Ingress:
    """HTTP front door of every served model (several configs, one per model)."""

    async def __init__(self, cfg_dicts: list[dict[str, Any]]) -> None:
        self._models: dict[str, _Model] = {}
        for d in cfg_dicts:
            cfg = Config.model_validate(d)
            self._models[cfg.model.name] = _Model(cfg)
            _SERVED.add(cfg.model.name)
        for m in self._models.values():
            try:
                m.set_table(await asyncio.to_thread(read_routing, m.storage, m.name))
            except Exception:  # noqa: BLE001 - keep serving; the poller retries
                logger.exception("could not read the routing table of %s", m.name)
        self._background: set[asyncio.Task] = set()
        periods = [m.cfg.serving.routing_poll_seconds for m in self._models.values()] or [1.0]
        self._poll_period = min(periods)
        # names of live Serve apps and the monotonic time the snapshot was requested
        self._apps: set[str] | None = None
        self._apps_at = -math.inf
        loop = asyncio.get_running_loop()
        self._poller = loop.create_task(self._poll_routing())
        self._apps_poller = loop.create_task(self._poll_apps())

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
                m.set_table(table)

    def _model(self, name: str) -> _Model:
        m = self._models.get(name)
        if m is None:
            M.REJECTED.labels(model=_model_label(name), rule="unknown_model").inc()
            raise _ApiError(404, f"unknown model {name!r}; served models: {sorted(self._models)}", [
                _violation(None, "model", "unknown_model", f"model {name!r} is not served here")])
        return m

    # -- calling versions -------------------------------------------------------------
    async def _call(self, m: _Model, version: str, cols: dict[str, np.ndarray]) -> tuple[list[int], list[float]]:
        # The controller deploys a version (and waits for RUNNING) before it writes a table
        # naming it, so a snapshot taken after this table was seen that lacks the app means
        # the version is really gone: fail now rather than queue until the timeout.
        if (self._apps is not None and self._apps_at > m.table_seen_at
                and version_app_name(m.name, version) not in self._apps):
            raise VersionUnavailable(f"version {version} of {m.name} is not deployed "
                                     f"(no Serve application {version_app_name(m.name, version)})")
        resp = m.handle(version).predict.remote(cols)

        async def _wait() -> Any:
            return await resp

        try:
            labels, conf = await asyncio.wait_for(_wait(), VERSION_CALL_TIMEOUT_S)
        except asyncio.TimeoutError:
            resp.cancel()
            raise TimeoutError(f"version {version} did not answer within {VERSION_CALL_TIMEOUT_S:g}s") from None
        if len(labels) != len(next(iter(cols.values()))):
            raise RuntimeError(f"version {version} returned {len(labels)} predictions")
        return labels, conf

    async def _log(self, m: _Model, *, request_ids: list[str], version: str, features: dict[str, Any],
                   labels: list[int] | None, conf: list[float] | None, latency_ms: float,
                   key: str | None, shadow: bool = False, error: str | None = None) -> None:
        n = len(request_ids)
        await asyncio.to_thread(
            m.logs.append_predictions, request_ids=request_ids, t=time.time(), version=version,
            features=features, predictions=labels if labels is not None else [-1] * n,
            confidence=conf if conf is not None else [math.nan] * n, latency_ms=latency_ms,
            key=key, shadow=shadow, error=error)

    async def _log_failure(self, m: _Model, version: str, err: BaseException, **kw: Any) -> str:
        M.VERSION_ERRORS.labels(model=m.name, version=version).inc()
        message = f"{type(err).__name__}: {err}"[:500]
        logger.warning("version %s of %s failed: %s", version, m.name, message)
        try:
            await self._log(m, version=version, labels=None, conf=None, error=message, **kw)
        except Exception:  # noqa: BLE001 - the answer matters more than the error row
            logger.exception("could not log the failure of %s %s", m.name, version)
        return message

    async def _shadow(self, m: _Model, version: str, cols: dict[str, np.ndarray], features: dict[str, Any],
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
        cols, violations = m.schema.validate_records(body.instances)
        if violations:
            M.REJECTED.labels(model=model, rule=violations[0].rule.value).inc()
            raise _ApiError(422, "invalid instances", [v.to_json() for v in violations])

        table = m.table
        request_ids = [uuid.uuid4().hex for _ in range(n)]
        version = choose_version(table, body.key, request_ids[0])
        if version is None:
            raise _ApiError(503, f"no version of {model!r} is serving yet (empty routing table); "
                                 "register and deploy one first")
        features = feature_arrays(cols, m.schema.names, m.categorical)
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
        M.PREDICT_LATENCY.labels(model=model).observe(latency_s)
        return {"predictions": labels, "request_ids": request_ids, "model_version": version}

    @api.post("/v1/models/{model}:feedback", response_model=FeedbackResponse,
              responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
                         422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def feedback(self, model: str, body: FeedbackRequest) -> Any:
        m = self._model(model)
        classes = list(m.cfg.model.label.classes)
        ids: list[str] = []
        labels: list[int] = []
        rejected: list[dict[str, Any]] = []
        for i, item in enumerate(body.labels):
            rid = item.get("request_id")
            rid_out = rid if isinstance(rid, str) else (None if rid is None else json.dumps(rid, default=str))
            reason = None
            extra = sorted(set(item) - {"request_id", "label"})
            if extra:
                reason = f"labels[{i}].{extra[0]}: unexpected (only request_id and label are allowed)"
            elif rid is None:
                reason = f"labels[{i}].request_id: missing (the request_id returned by :predict is required)"
            elif not isinstance(rid, str) or not REQUEST_ID_RE.match(rid):
                reason = (f"labels[{i}].request_id: format (must be 32 lowercase hex characters "
                          f"as returned by :predict, got {rid_out!r})")
            elif "label" not in item:
                reason = f"labels[{i}].label: missing"
            elif not m.schema.label_ok(item["label"]):
                reason = (f"labels[{i}].label: label_domain ({item['label']!r} is not one of the "
                          f"classes {classes})")
            if reason is not None:
                rejected.append({"request_id": rid_out, "reason": reason})
            else:
                ids.append(rid)
                labels.append(int(item["label"]))
        if ids:
            try:
                await asyncio.to_thread(m.logs.append_feedback, ids, labels, time.time())
            except Exception as err:  # noqa: BLE001
                logger.exception("feedback log write failed for %s", model)
                raise _ApiError(503, f"could not persist the labels: {type(err).__name__}: {err}") from None
        if ids:
            M.FEEDBACK.labels(model=model, outcome="accepted").inc(len(ids))
        if rejected:
            M.FEEDBACK.labels(model=model, outcome="rejected").inc(len(rejected))
        return {"accepted": len(ids), "rejected": rejected}

    @api.get("/v1/models", response_model=ModelList)
    async def list_models(self) -> Any:
        return {"models": sorted(self._models)}

    @api.get("/v1/models/{model}", responses={404: {"model": ErrorResponse}})
    async def model_status(self, model: str) -> Any:
        m = self._model(model)
        status = await asyncio.to_thread(self._status, m)
        return JSONResponse(_json_safe(status))

    def _status(self, m: _Model) -> dict[str, Any]:
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
            from lifelong_ray.registry.store import Registry

            reg = Registry(m.storage, m.name)
            for item in reg.list_versions():
                v = item.get("version") if isinstance(item, dict) else str(item)
                try:
                    md = reg.metadata(v)
                except Exception as err:  # noqa: BLE001
                    md = {"error": f"metadata unreadable: {err}"}
                out["versions"].append({"version": v, **_metadata_summary(md)})
            out["aliases"] = dict(reg.aliases())
        except Exception as err:  # noqa: BLE001 - status must answer even with a broken registry
            out["registry_error"] = f"{type(err).__name__}: {err}"
        try:
            path = controller_state_path(m.name)
            if m.storage.exists(path):
                out["controller"] = m.storage.read_json(path)
        except Exception as err:  # noqa: BLE001
            out["controller_error"] = f"{type(err).__name__}: {err}"
        try:
            out["last_events"] = [e.to_json() for e in AuditLog(m.storage, m.name).read()[-10:]]
        except Exception as err:  # noqa: BLE001
            out["events_error"] = f"{type(err).__name__}: {err}"
        return out

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/metrics")
    async def metrics(self) -> Response:
        body, content_type = M.exposition()
        return Response(content=body, media_type=content_type)

    def __del__(self) -> None:
        for name in ("_poller", "_apps_poller"):
            task = getattr(self, name, None)
            if task is not None:
                task.cancel()
