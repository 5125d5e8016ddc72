"""A small bounded HTTP load generator: loopback only, stops after a count or a time.

Each thread sends one request at a time on a fresh connection (gunicorn's sync workers
close every connection after the response, as they do behind a proxy).
"""

from __future__ import annotations

import http.client
import ipaddress
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

REQUEST_TIMEOUT = 5.0


@dataclass
class Load:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    seconds: float = 0.0


def run(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    into: Load | None = None,
) -> Load:
    """Send up to ``max_requests`` requests for at most ``max_seconds``, from ``concurrency``
    threads; add what was seen to ``into`` (a new ``Load`` by default)."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the load generator only targets loopback, not {host}")
    load = into if into is not None else Load()
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds
    remaining = [max_requests]

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            started = time.perf_counter()
            connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT)
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                with lock:
                    load.errors += 1
                continue
            finally:
                connection.close()
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                load.latencies_ms.append(elapsed)
                load.statuses[status] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        # Every request has its own timeout, so this bound is only a safety net.
        thread.join(max_seconds + REQUEST_TIMEOUT + 1)
    load.seconds += time.perf_counter() - started
    return load
