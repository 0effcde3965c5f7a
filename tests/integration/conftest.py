"""One shared local Ray (and Serve on a free loopback port) for the whole session."""

from __future__ import annotations

import os
import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    ctx = ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                   configure_logging=False, namespace="lifelong-tests")
    yield ctx
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def serve_port(ray_session) -> int:
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port
