"""cluster.yaml (Ray cluster launcher) and deploy/rayservice.yaml (KubeRay) load and hold what they must."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def service() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())


def test_cluster_launcher_file_has_cpu_head_cpu_and_gpu_workers(cluster):
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cluster, key
    assert cluster["provider"]["type"]
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"]["CPU"] > 0 and head["resources"].get("GPU", 0) == 0
    workers = {name: t for name, t in types.items() if name != cluster["head_node_type"]}
    cpu = [t for t in workers.values() if t["resources"].get("GPU", 0) == 0 and t["resources"]["CPU"] > 0]
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert cpu and gpu
    for t in types.values():
        assert "node_config" in t and "resources" in t
    for t in workers.values():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"] <= cluster["max_workers"]


def test_cluster_installs_the_package_and_puts_storage_on_object_storage(cluster):
    setup = "\n".join(cluster["setup_commands"])
    assert "pip install -e ~/lifelong" in setup and "ray[default]==2.60.0" in setup
    assert "~/lifelong" in cluster["file_mounts"]
    assert "LIFELONG_STORAGE_ROOT" in setup and "s3://" in setup and "['storage']['root']" in setup
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert any("--address=$RAY_HEAD_IP" in c for c in cluster["worker_start_ray_commands"])


def test_rayservice_names_an_importable_ingress_and_three_groups(service):
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    assert service["metadata"]["name"]
    spec = service["spec"]
    serve_cfg = yaml.safe_load(spec["serveConfigV2"])  # a string holding YAML, as KubeRay wants it
    (app,) = serve_cfg["applications"]
    assert app["route_prefix"] == "/" and app["name"] == "lifelong"
    module, _, attr = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attr)
    assert callable(builder)
    assert app["args"]["configs"] and app["args"]["start_controllers"] is True

    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"] is not None and head["template"]["spec"]["containers"][0]["image"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert g["template"]["spec"]["containers"][0]["image"]
    gpu = [g for g in groups.values()
           if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0) >= 1]
    cpu = [g for g in groups.values() if g not in gpu]
    assert len(gpu) == 1 and cpu
    assert gpu[0]["rayStartParams"]["num-gpus"] == "1" and gpu[0]["minReplicas"] == 0


def test_the_serve_config_builder_binds_the_ingress_for_a_real_config(tmp_path):
    """The builder the manifest names, called as Serve would (no cluster needed to bind)."""
    from ray.serve import Application

    from lifelong_ray.serving.deploy import INGRESS_DEPLOYMENT, ingress_app

    app = ingress_app({"configs": [str(ROOT / "configs" / "demo.yaml")]})
    assert isinstance(app, Application)
    assert app._bound_deployment.name == INGRESS_DEPLOYMENT
    with pytest.raises(ValueError, match="args.configs"):
        ingress_app({})


def test_rayservice_dashboard_and_jobs_api_need_ray_token_auth_or_loopback(service):
    """The shipped manifest never opens the dashboard / Jobs API to the network without Ray's token."""
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    host = str(head["rayStartParams"].get("dashboard-host", "127.0.0.1"))
    auth = cluster.get("authOptions") or {}
    containers = [head["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    env_mode = {c["name"]: {e["name"]: e.get("value") for e in c.get("env", [])}.get("RAY_AUTH_MODE")
                for c in containers}
    token_on = auth.get("mode") == "token" or all(m == "token" for m in env_mode.values())
    assert host in ("127.0.0.1", "localhost") or token_on, (host, auth, env_mode)
    assert token_on, "Ray token authentication must be on in the shipped manifest"
    assert auth.get("mode") == "token" and auth.get("secretName"), auth   # the token comes from a Secret
    assert "auth_token" in (ROOT / "deploy" / "rayservice.yaml").read_text()  # how to create that Secret


def test_rayservice_gives_the_ingress_its_admin_token_from_a_secret(service):
    """Admin fails closed without a token: the manifest must hand the ingress one, from a Secret."""
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in head["env"]}
    ref = env["LIFELONG_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"]
