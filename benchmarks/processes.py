"""What the steps that start servers (gunicorn, redis-server) share: loopback only; and what
the application does in a gunicorn worker before it serves."""

from __future__ import annotations

import gc
import socket
import subprocess

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (both servers stop gracefully on it: gunicorn stops its workers first), then
    SIGKILL if it takes too long."""
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def freeze_start_up() -> None:
    """Load the URLconf (the views, DRF) and leave everything loaded so far out of the
    garbage collector's passes (``gc.freeze()``). Otherwise a full collection walks all of
    it, a stall of whichever request it lands in, long enough to decide the revocation
    step's slowest trial (docs/benchmarks.md). Every row of the server steps runs on
    workers set up alike."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 (imports the views)
    gc.collect()
    gc.freeze()
