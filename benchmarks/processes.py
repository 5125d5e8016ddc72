"""What the steps that start servers (gunicorn, redis-server) share: loopback only."""

from __future__ import annotations

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
