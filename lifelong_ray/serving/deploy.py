"""Deploying the serving layer on the current Ray (Ray at the edge).

Called by the controller's executor (versions come and go) and by ``lifelong up``
and the demo (the ingress). Every function is idempotent, so a controller that
restarts mid-step may call it again safely::

    from ray import serve
    from lifelong_ray.serving import deploy

    deploy.ensure_serve(cfg)                 # serve.start on cfg.serving.host/port
    deploy.deploy_version(cfg, "v0001")      # app "lifelong-<model>-v0001", no HTTP route
                                             # (version_placement: ingress -> no app, a load check)
    deploy.deploy_ingress([cfg])             # app "lifelong" on "/"
    # ... write a routing table (serving.routing.write_routing) to send traffic ...
    deploy.retire_version(cfg, "v0001")

Relative local storage roots are made absolute here, because Serve replicas do
not share the caller's working directory.

**Admin token.** The ingress reads its admin bearer token inside its replica
(``serving.admin_token_file``, else the variable named by ``serving.admin_token_env``).
So that ``LIFELONG_ADMIN_TOKEN=... lifelong up cfg.yaml`` just works, :func:`deploy_ingress`
forwards that variable, when the deploying process has it, into the replica's
``runtime_env`` ``env_vars``. Ray shows a deployment's runtime env in its dashboard
and Serve config: where that matters, use ``serving.admin_token_file`` (only the path
travels) instead. Changing the token needs a redeploy of the ingress.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

from ray import serve

from lifelong_ray.config import Config
from lifelong_ray.serving.app import (
    INGRESS_APP,
    INGRESS_DEPLOYMENT,
    VERSION_DEPLOYMENT,
    Ingress,
    VersionModel,
    version_app_name,
)
from lifelong_ray.serving.feedback import DEFAULT_INDEX_CAPACITY

__all__ = [
    "INGRESS_APP",
    "version_app_name",
    "ensure_serve",
    "deploy_ingress",
    "ingress_app",
    "ingress_application",
    "admin_token_env_vars",
    "deploy_version",
    "retire_version",
    "deployed_versions",
    "serving_config_dict",
]

_RUNNING = "RUNNING"
_WAIT_S = 120.0


def serving_config_dict(cfg: Config) -> dict[str, Any]:
    """The JSON form of ``cfg`` handed to replicas, with a local storage root made absolute."""
    data = cfg.model_dump(mode="json")
    root = data["storage"]["root"]
    if "://" not in root:
        data["storage"]["root"] = os.path.abspath(root)
    return data


def ensure_serve(cfg: Config) -> None:
    """Start Serve's HTTP proxy on ``cfg.serving.host:port`` unless Serve already runs."""
    serve.start(http_options={"host": cfg.serving.host, "port": cfg.serving.port})


def _app_status(name: str) -> str | None:
    app = serve.status().applications.get(name)
    return None if app is None else str(getattr(app.status, "value", app.status))


def _wait_running(name: str, timeout_s: float = _WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        status = _app_status(name)
        if status == _RUNNING:
            return
        if status is None or status in ("DEPLOY_FAILED", "UNHEALTHY"):
            app = serve.status().applications.get(name)
            raise RuntimeError(f"Serve application {name} is {status}: {getattr(app, 'message', '')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve application {name} not RUNNING after {timeout_s:g}s (status {status})")
        time.sleep(0.2)


def admin_token_env_vars(cfgs: list[Config], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The admin-token variables of ``cfgs`` that ``environ`` sets (forwarded to the ingress).

    >>> from lifelong_ray.config import parse_config
    >>> cfg = parse_config({"model": {"name": "m", "features": [{"name": "x"}],
    ...                     "label": {"name": "y", "classes": [0, 1]}}})
    >>> admin_token_env_vars([cfg], {"LIFELONG_ADMIN_TOKEN": "t", "HOME": "/root"})
    {'LIFELONG_ADMIN_TOKEN': 't'}
    """
    names = {c.serving.admin_token_env for c in cfgs if not c.serving.admin_token_file}
    return {n: environ[n] for n in sorted(names) if environ.get(n, "").strip()}


def deploy_ingress(cfgs: list[Config], index_capacity: int = DEFAULT_INDEX_CAPACITY) -> None:
    """(Re)deploy the HTTP ingress ``lifelong`` on route ``/`` for these models.

    ``index_capacity`` bounds, per model, the request ids the ingress keeps in memory
    for the feedback checks (served ids and labeled ids each); beyond it the oldest
    are looked up in the logs instead."""
    serve.run(ingress_application(cfgs, index_capacity), name=INGRESS_APP, route_prefix="/")


def ingress_app(args: dict[str, Any]) -> Any:
    """Serve application builder of the ingress, for ``serve run``/``serve deploy`` and a KubeRay
    ``RayService`` (``deploy/rayservice.yaml``)::

        applications:
          - name: lifelong
            route_prefix: /
            import_path: lifelong_ray.serving.deploy:ingress_app
            args: {configs: [/path/demo.yaml], start_controllers: true}

    ``configs``: the models' YAML configs (on every node, storage root on shared/object
    storage). ``start_controllers``: also start (or adopt) each model's detached controller
    actor, so the Serve config alone runs the whole loop; otherwise start them with
    ``jobs/loop.py`` or ``lifelong up``."""
    from lifelong_ray.config import load_config
    from lifelong_ray.control.controller import resolve_storage

    paths = args.get("configs")
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise ValueError("ingress_app needs args.configs: a list of config paths")
    cfgs = [resolve_storage(load_config(p)) for p in paths]
    if str(args.get("start_controllers", "false")).lower() in ("1", "true", "yes"):
        from lifelong_ray.control.actor import start_controller

        for cfg in cfgs:
            start_controller(cfg)
    return ingress_application(cfgs, int(args.get("index_capacity", DEFAULT_INDEX_CAPACITY)))


def ingress_application(cfgs: list[Config], index_capacity: int = DEFAULT_INDEX_CAPACITY) -> Any:
    """The ingress bound to ``cfgs`` (a Serve ``Application``; nothing is deployed yet)."""
    if not cfgs:
        raise ValueError("deploy_ingress needs at least one config")
    names = [c.model.name for c in cfgs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate model names: {names}")
    num_cpus = max(c.serving.ingress_num_cpus for c in cfgs)
    options: dict[str, Any] = {"num_cpus": num_cpus}
    env_vars = admin_token_env_vars(cfgs)
    if env_vars:
        options["runtime_env"] = {"env_vars": env_vars}
    return Ingress.options(name=INGRESS_DEPLOYMENT, ray_actor_options=options).bind(
        [serving_config_dict(c) for c in cfgs], index_capacity)


def deploy_version(cfg: Config, version: str) -> None:
    """Host ``version`` as its own Serve app (no HTTP route); return once it is RUNNING.

    Idempotent: an app already RUNNING is left alone, one still DEPLOYING is waited for.
    A version that fails to start (e.g. its artifact fails the integrity check) is
    deleted again and the error raised.

    With ``serving.version_placement: ingress`` no app is made: the ingress loads the
    version itself when a routing table names it. This only checks that the version
    loads (its artifact passes the integrity check), so that a broken version fails
    here, before any table names it, as it would with its own app."""
    if cfg.serving.version_placement == "ingress":
        from lifelong_ray.registry.store import Registry
        from lifelong_ray.storage import Storage

        Registry(Storage(serving_config_dict(cfg)["storage"]["root"]), cfg.model.name).load(version)
        return
    name = version_app_name(cfg.model.name, version)
    status = _app_status(name)
    if status == _RUNNING:
        return
    if status == "DEPLOYING":
        _wait_running(name)
        return
    app = VersionModel.options(
        name=VERSION_DEPLOYMENT, ray_actor_options={"num_cpus": cfg.serving.version_num_cpus}
    ).bind(serving_config_dict(cfg), version)
    try:
        serve.run(app, name=name, route_prefix=None)
        _wait_running(name)
    except Exception as err:
        cause = _failure_cause(name)
        try:
            serve.delete(name, _blocking=False)
        except Exception:  # noqa: BLE001 - report the original error
            pass
        if cause and cause not in str(err):
            raise RuntimeError(f"{err} ({cause})") from err
        raise


def _failure_cause(name: str) -> str:
    """The last line of the error a failed app's deployments report (e.g. the exception
    its constructor raised), for the controller's ``action_failed`` reason."""
    try:
        app = serve.status().applications.get(name)
    except Exception:  # noqa: BLE001 - the cause is a courtesy
        return ""
    if app is None:
        return ""
    for d in app.deployments.values():
        lines = [ln.strip() for ln in str(getattr(d, "message", "") or "").splitlines() if ln.strip()]
        if lines:
            return lines[-1][:300]
    return ""


def retire_version(cfg: Config, version: str) -> None:
    """Stop hosting ``version`` (no-op when it is not deployed). Does not wait."""
    name = version_app_name(cfg.model.name, version)
    if name in serve.status().applications:
        serve.delete(name, _blocking=False)


def deployed_versions(cfg: Config) -> list[str]:
    """Versions of ``cfg``'s model with a Serve app (any status but DELETING), sorted.

    Version names must not contain ``-`` (``vNNNN``), which keeps model ``a`` apart
    from model ``a-b``."""
    prefix = version_app_name(cfg.model.name, "")
    out = []
    for name, app in serve.status().applications.items():
        if not name.startswith(prefix):
            continue
        version = name[len(prefix):]
        status = str(getattr(app.status, "value", app.status))
        if version and "-" not in version and status != "DELETING":
            out.append(version)
    return sorted(out)
