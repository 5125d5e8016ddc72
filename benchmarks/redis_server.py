"""A redis-server of the benchmark's own, on a free loopback port, for one run.

Nothing another program does to a shared Redis (a ``FLUSHALL`` by a test suite, say) can
then remove the entries a step is measuring. No snapshot, no append-only file: it starts
empty and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from .processes import HOST, free_port, stop

STARTUP_SECONDS = 10.0


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """Start redis-server, yield its URL, stop it (and remove its directory) at the end."""
    if shutil.which("redis-server") is None:
        raise SystemExit(
            "redis-server is not installed: the benchmark starts a private one "
            "(scripts/services.sh bench installs it), or give --redis-url."
        )
    with tempfile.TemporaryDirectory(prefix="drf-llm-keys-bench-redis-") as directory:
        port = free_port()
        command = [
            "redis-server", "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", directory, "--logfile", f"{directory}/redis.log",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while not _answers(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the private redis-server did not answer on {HOST}:{port}")
                time.sleep(0.05)
            yield f"redis://{HOST}:{port}/0"
        finally:
            stop(process)
