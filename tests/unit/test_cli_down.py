"""`lifelong down` returns only once Serve's port is free: a proxy still exiting shares the
port (SO_REUSEPORT) with the next `up`'s proxy and answers part of its requests with 404s."""

from __future__ import annotations

import socket

from lifelong_ray.cli import _wait_port_closed


def test_wait_port_closed_waits_for_a_listener_sharing_the_port_to_go():
    with socket.socket() as lsn:
        lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        lsn.bind(("127.0.0.1", 0))
        lsn.listen()
        port = lsn.getsockname()[1]
        assert not _wait_port_closed(port, timeout_s=0.3)
    assert _wait_port_closed(port, timeout_s=5)
