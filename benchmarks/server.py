"""Through a real server: gunicorn with sync workers on loopback, driven by ``loadgen``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from . import loadgen
from .inprocess import percentile
from .seed import PROTECTED, PUBLIC, Credentials

HOST = "127.0.0.1"
STARTUP_SECONDS = 30.0


@dataclass(frozen=True)
class Scenario:
    label: str
    path: str
    headers: dict[str, str]
    expect: int


def scenarios(creds: Credentials) -> list[Scenario]:
    valid = {"Authorization": f"Bearer {creds.ours}"}
    # A well-formed key with a known prefix and a wrong secret: the costliest refusal.
    refused = {"Authorization": f"Bearer {creds.ours_prefix}.{'x' * 43}"}
    return [
        Scenario("unauthenticated view", "/none/", {}, 200),
        Scenario("drf-llm-keys, public client", f"/ours/{PUBLIC}/", {}, 200),
        Scenario("drf-llm-keys, valid key", f"/ours/{PROTECTED}/", valid, 200),
        Scenario("drf-llm-keys, refused key", f"/ours/{PROTECTED}/", refused, 401),
        Scenario("DRF Token, public view", "/drf-token-public/", {}, 200),
        Scenario("DRF Token, valid token", "/drf-token/", {"Authorization": f"Token {creds.drf_token}"}, 200),
        Scenario("DRF Token, refused token", "/drf-token/", {"Authorization": "Token " + "0" * 40}, 401),
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def gunicorn(workers: int) -> Iterator[int]:
    """A gunicorn serving ``benchmarks.wsgi`` with this process's settings; yields its port."""
    port = _free_port()
    command = [
        sys.executable, "-m", "gunicorn", "benchmarks.wsgi:application",
        "--bind", f"{HOST}:{port}", "--workers", str(workers), "--worker-class", "sync",
        "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=dict(os.environ))
    try:
        _wait_until_ready(process, port)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)  # graceful stop: gunicorn stops its workers
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_until_ready(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited with status {process.returncode}")
        load = loadgen.run(HOST, port, "/none/", {}, concurrency=1, max_requests=1, max_seconds=1)
        if load.statuses[200]:
            return
        time.sleep(0.2)
    raise SystemExit("gunicorn did not answer in time")


def run(creds: Credentials, *, workers: int, concurrency: int, rounds: int, seconds: float) -> None:
    cases = scenarios(creds)
    with gunicorn(workers) as port:
        # Warm every worker's imports, connections and (local-memory) caches.
        for case in cases:
            loadgen.run(
                HOST, port, case.path, case.headers, concurrency=concurrency, max_requests=200, max_seconds=5
            )
        loads = {case.label: loadgen.Load() for case in cases}
        for index in range(rounds):
            # Interleaved, and each round in another order, as in-process.
            for case in cases[index % len(cases) :] + cases[: index % len(cases)]:
                loadgen.run(
                    HOST,
                    port,
                    case.path,
                    case.headers,
                    concurrency=concurrency,
                    max_requests=1_000_000,
                    max_seconds=seconds,
                    into=loads[case.label],
                )
    print(
        f"\nThrough gunicorn ({workers} sync workers) on loopback: {concurrency} client threads, "
        f"{rounds} interleaved rounds of {seconds:g} s per scenario"
    )
    print(f"{'scenario':<32}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'requests':>10}  statuses")
    for case in cases:
        load = loads[case.label]
        statuses = ", ".join(f"{code}: {count}" for code, count in sorted(load.statuses.items()))
        if load.errors:
            statuses += f", errors: {load.errors}"
        if set(load.statuses) != {case.expect}:
            statuses += f"  (expected only {case.expect}!)"
        done = len(load.latencies_ms)
        rate = done / load.seconds if load.seconds else 0.0
        p50 = percentile(load.latencies_ms, 0.50) if done else float("nan")
        p99 = percentile(load.latencies_ms, 0.99) if done else float("nan")
        print(f"{case.label:<32}{rate:>9.0f}{p50:>9.2f}{p99:>9.2f}{done:>10}  {statuses}")
