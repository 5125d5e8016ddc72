"""Start the example with ``manage.py runserver`` on a free loopback port, for the demo and
the end-to-end tests: a real server in its own process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

MANAGE_PY = Path(__file__).resolve().parent.parent / "manage.py"
HOST = "127.0.0.1"
ATTEMPTS = 3


class ServerError(RuntimeError):
    pass


class PortTaken(ServerError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(
    env: Mapping[str, str] | None = None, timeout: float = 60.0, asgi: bool = False
) -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:PORT``) of a running server; stop it after.
    With ``asgi``, uvicorn serves ``example_project.asgi``: the async endpoints run on its
    event loop and stream as they go.

    ``env`` is added to this process's environment; ``DJANGO_SETTINGS_MODULE`` defaults to
    the example's settings.
    """
    environ = {**os.environ, "DJANGO_SETTINGS_MODULE": "example_project.settings", **(env or {})}
    with tempfile.TemporaryFile() as log:
        process, url = _start(environ, log, timeout, asgi)
        try:
            yield url
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server as Ctrl+C does, where a signal can: runserver then exits normally, so
    what runs at exit runs too (drf_llm_keys writes the usage it counted)."""
    steps: list[Callable[[], None]] = [process.terminate, process.kill]
    if os.name == "posix":  # Windows sends no SIGINT to another process
        steps.insert(0, lambda: process.send_signal(signal.SIGINT))
    for step in steps:
        step()
        try:
            process.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


def _start(
    environ: dict[str, str], log: IO[bytes], timeout: float, asgi: bool
) -> tuple[subprocess.Popen[bytes], str]:
    for _attempt in range(ATTEMPTS - 1):
        try:
            return _start_once(environ, log, timeout, asgi)
        except PortTaken:
            continue
    return _start_once(environ, log, timeout, asgi)


def _start_once(
    environ: dict[str, str], log: IO[bytes], timeout: float, asgi: bool
) -> tuple[subprocess.Popen[bytes], str]:
    # Free a moment ago: another program may take it first, and then runserver exits early.
    port = free_port()
    log.seek(0)
    log.truncate()
    command = [sys.executable, str(MANAGE_PY), "runserver", "--noreload", f"{HOST}:{port}"]
    if asgi:
        command = [sys.executable, "-m", "uvicorn", "example_project.asgi:application", "--no-access-log"]
        command += ["--host", HOST, "--port", str(port)]
    # uvicorn imports the project from the working directory: the repository's root.
    cwd = MANAGE_PY.parent.parent if asgi else None
    process = subprocess.Popen(command, env=environ, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
        except OSError:
            time.sleep(0.1)
            continue
        return process, f"http://{HOST}:{port}"
    exited = process.poll() is not None
    process.kill()
    process.wait()
    log.seek(0)
    output = log.read().decode(errors="replace")
    if exited and "already in use" in output:
        raise PortTaken(output)
    raise ServerError(f"{'uvicorn' if asgi else 'runserver'} did not start on {HOST}:{port}:\n{output}")
