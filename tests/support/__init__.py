"""Helpers shared by the tests, ``scripts/`` and ``benchmarks/``; no test module imports
another. ``redis``: a private redis-server; ``world``: the clients and keys most fault
tests start from; ``caches``: cache doubles; ``harness``: server, worker and mutator
processes (``worker`` and ``mutator`` are their entry points); ``hostile``: hostile
requests and the decision table they must meet."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent


def bearer(plaintext: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


def as_headers(meta: dict[str, str]) -> dict[str, str]:
    """``HTTP_X_API_KEY``-style names (Django's test client) as headers (``X-Api-Key``)."""
    return {name.removeprefix("HTTP_").replace("_", "-").title(): value for name, value in meta.items()}


def over_asgi(method: str, path: str, body: str | None = None, **meta: str) -> Any:
    """One request through Django's ASGI handler (``AsyncClient``), from sync test code;
    ``meta`` as Django's test client takes headers (``HTTP_AUTHORIZATION=...``)."""
    # Imported here: the worker and server processes import this package too, without them.
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    async def send() -> Any:
        client = AsyncClient()
        headers = as_headers(meta)
        if body is None:
            return await getattr(client, method)(path, headers=headers)
        return await getattr(client, method)(path, body, content_type="application/json", headers=headers)

    return async_to_sync(send)()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.05)
