"""Through a real server: gunicorn on loopback with three worker classes (sync, gthread,
and uvicorn's ASGI worker), loaded by wrk.

Every wrk request carries ``Connection: close``, so each request is a new connection that
the kernel hands to whichever worker is free (as behind nginx, which by default does not
keep upstream connections alive). Sync workers close after every response anyway; gthread
and uvicorn workers would keep a connection alive, and a kept-alive connection stays with
the worker that accepted it, so a few wrk connections could pin the load on one worker.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .processes import HOST, free_port, stop
from .seed import PROTECTED, Credentials

STARTUP_SECONDS = 30.0
REQUEST_TIMEOUT = 5.0
WARM_UP_SECONDS = 1


@dataclass(frozen=True)
class Scenario:
    label: str
    path: str
    headers: dict[str, str]
    expect: int
    baseline: str = "unauthenticated view"  # the open view its "x none" ratio is against


NONE = "unauthenticated view"
OURS = "drf-llm-keys, valid key (warm)"
ADRF_NONE = "adrf: open async view"
NINJA_NONE = "Ninja: open async operation"


def scenarios(creds: Credentials) -> list[Scenario]:
    def auth(value: str) -> dict[str, str]:
        return {"Authorization": value}

    return [
        Scenario(NONE, "/none/", {}, 200),
        Scenario(OURS, f"/ours/{PROTECTED}/", auth(f"Bearer {creds.ours}"), 200),
        Scenario("DRF TokenAuthentication", "/drf-token/", auth(f"Token {creds.drf_token}"), 200),
        Scenario("djangorestframework-api-key", "/api-key/", auth(f"Api-Key {creds.api_key}"), 200),
        Scenario("django-rest-knox", "/knox/", auth(f"Token {creds.knox}"), 200),
    ]


def async_scenarios(creds: Credentials) -> list[Scenario]:
    """The async rows: each keyed view against the same open async view."""
    auth = {"Authorization": f"Bearer {creds.ours}"}
    return [
        Scenario(ADRF_NONE, "/async/none/", {}, 200, ADRF_NONE),
        Scenario("adrf: ours, decided on the loop", f"/async/ours/{PROTECTED}/", auth, 200, ADRF_NONE),
        Scenario("adrf: ours, in adrf's thread", f"/async/ours-in-thread/{PROTECTED}/", auth, 200, ADRF_NONE),
        Scenario(NINJA_NONE, "/ninja/none/", {}, 200, NINJA_NONE),
        Scenario("Ninja: ours, valid key (warm)", f"/ninja/ours/{PROTECTED}/", auth, 200, NINJA_NONE),
    ]


@dataclass(frozen=True)
class WorkerClass:
    label: str
    application: str
    options: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def worker_classes(threads: int) -> list[WorkerClass]:
    return [
        WorkerClass("sync", "benchmarks.wsgi:application", ("--worker-class", "sync")),
        WorkerClass(
            f"gthread, {threads} threads",
            "benchmarks.wsgi:application",
            ("--worker-class", "gthread", "--threads", str(threads)),
        ),
        WorkerClass(
            "ASGI (uvicorn worker)",
            "benchmarks.asgi:application",
            ("--worker-class", "uvicorn_worker.UvicornWorker"),
            env=(("DRF_LLM_KEYS_BENCH_ASGI", "1"),),  # settings: a connection pool
        ),
    ]


# --- the server -----------------------------------------------------------------------


@contextlib.contextmanager
def gunicorn(
    application: str, options: Sequence[str], workers: int, env: Sequence[tuple[str, str]] = ()
) -> Iterator[int]:
    """gunicorn serving ``application`` with this process's settings; yields its port."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", application, "--bind", f"{HOST}:{port}",
        "--workers", str(workers), *options, "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=dict(os.environ, **dict(env)))
    try:
        _wait_until_ready(process, port)
        yield port
    finally:
        stop(process)


def _wait_until_ready(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited with status {process.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if get(port, "/none/", {}).status == 200:
                return
        time.sleep(0.2)
    raise SystemExit("gunicorn did not answer in time")


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    keeps_alive: bool  # the server left the connection open for another request


def get(port: int, path: str, headers: dict[str, str]) -> Answer:
    """One request on a new connection."""
    connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        return Answer(response.status, body, not response.will_close)
    finally:
        connection.close()


# --- wrk ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkRun:
    requests: int
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    unexpected: int  # responses with another status class than the scenario expects
    socket_errors: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS_MS[unit]


def wrk(port: int, case: Scenario, *, connections: int, threads: int, seconds: int) -> WrkRun:
    if not ipaddress.ip_address(HOST).is_loopback:  # a load generator aims at this machine only
        raise ValueError(f"wrk only targets loopback, not {HOST}")
    command = [
        "wrk", "--threads", str(threads), "--connections", str(connections), "--duration", f"{seconds}s",
        "--timeout", f"{REQUEST_TIMEOUT:g}s", "--latency", "--header", "Connection: close",
    ]  # fmt: skip
    for name, value in case.headers.items():
        command += ["--header", f"{name}: {value}"]
    command.append(f"http://{HOST}:{port}{case.path}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + REQUEST_TIMEOUT + 30)
    out = done.stdout
    if done.returncode != 0 or "Requests/sec" not in out:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or out}")
    count = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    assert count is not None, out
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    requests = int(count[1])
    failed = int(non_2xx[1]) if non_2xx else 0
    return WrkRun(
        requests=requests,
        seconds=_ms(count[2] + count[3]) / 1000,
        rate=float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        p50_ms=_ms(latency["50"]),
        p99_ms=_ms(latency["99"]),
        unexpected=failed if case.expect < 400 else requests - failed,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


# --- the step -------------------------------------------------------------------------


def run(
    creds: Credentials,
    *,
    workers: int,
    threads: int,
    connections: int,
    rounds: int,
    seconds: int,
    async_views: bool = False,
) -> None:
    """The sync views under each worker class; with ``async_views``, the async views (adrf,
    Ninja) under the ASGI worker instead."""
    if shutil.which("wrk") is None:
        print(
            "\nThrough gunicorn: skipped, wrk is not installed (scripts/services.sh bench, "
            "apt-get install wrk, brew install wrk)."
        )
        return
    cases = async_scenarios(creds) if async_views else scenarios(creds)
    classes = worker_classes(threads)
    if async_views:
        classes = [worker_class for worker_class in classes if worker_class.env]  # the ASGI one
    what = "async views, " if async_views else ""
    print(
        f"\nThrough gunicorn ({what}{workers} workers) on loopback, loaded by wrk: {connections} connections "
        f"from one wrk thread, Connection: close; {rounds} interleaved rounds of {seconds} s "
        "per scenario; medians over the rounds"
    )
    for worker_class in classes:
        runs: dict[str, list[WrkRun]] = {case.label: [] for case in cases}
        with gunicorn(worker_class.application, worker_class.options, workers, worker_class.env) as port:
            keeps_alive = get(port, "/none/", {}).keeps_alive
            for case in cases:
                status = get(port, case.path, case.headers).status
                if status != case.expect:
                    raise SystemExit(
                        f"{worker_class.label}, {case.label}: expected HTTP {case.expect}, got {status}"
                    )
                # Every worker's imports, connections and caches.
                wrk(port, case, connections=connections, threads=1, seconds=WARM_UP_SECONDS)
            for index in range(rounds):
                # Interleaved, each round in another order: drift hits every scenario alike.
                for case in cases[index % len(cases) :] + cases[: index % len(cases)]:
                    runs[case.label].append(
                        wrk(port, case, connections=connections, threads=1, seconds=seconds)
                    )
        alive = "keeps connections alive unless asked not to" if keeps_alive else "closes every connection"
        print(f"\n{worker_class.label} ({alive})")
        report(cases, runs)


def report(cases: Sequence[Scenario], runs: dict[str, list[WrkRun]]) -> None:
    rate = {label: statistics.median(r.rate for r in found) for label, found in runs.items()}
    print(f"{'scenario':<34}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'x none':>8}{'ours x':>8}  checked")
    for case in cases:
        found = runs[case.label]
        unexpected = sum(r.unexpected for r in found)
        errors = sum(r.socket_errors for r in found)
        checked = f"{sum(r.requests for r in found)} x {case.expect}"
        if unexpected:
            checked += f", {unexpected} other statuses!"
        if errors:
            checked += f", {errors} socket errors!"
        ours_vs = (
            "-" if case.label in (NONE, OURS) or OURS not in rate else f"{rate[OURS] / rate[case.label]:.2f}"
        )
        p50 = statistics.median(r.p50_ms for r in found)
        p99 = statistics.median(r.p99_ms for r in found)
        print(
            f"{case.label:<34}{rate[case.label]:>8.0f}{p50:>8.2f}{p99:>8.2f}"
            f"{rate[case.label] / rate[case.baseline]:>8.2f}{ours_vs:>8}  {checked}"
        )
