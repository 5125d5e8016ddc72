"""Requests driven through Django's WSGI handler in this process: no server, no network
between the client and Django, so what differs between endpoints is the authentication.
"""

from __future__ import annotations

import io
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from django.test.utils import override_settings

from .counting import RoundTrips, counting

Environ = dict[str, Any]


def environ(path: str, authorization: str | None = None) -> Environ:
    env: Environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if authorization is not None:
        env["HTTP_AUTHORIZATION"] = authorization
    return env


@dataclass
class Endpoint:
    label: str
    requests: Sequence[Environ]  # cycled through, request i uses requests[i % len]
    expect: int = 200
    # Untimed and uncounted work before request i (making the cache cold, say).
    prepare: Callable[[int], None] | None = None
    # DRF_LLM_KEYS for this endpoint's requests, put in place outside the timed calls. A
    # settings change resets what the process keeps (drf_llm_keys.decisions.reset), so it is
    # put in place once per batch of requests, followed by an untimed request.
    package_settings: dict[str, Any] | None = None
    samples: list[float] = field(default_factory=list)
    served: int = 0

    @contextmanager
    def in_place(self) -> Iterator[None]:
        if self.package_settings is None:
            yield
        else:
            with override_settings(DRF_LLM_KEYS=self.package_settings):
                yield

    def next_environ(self) -> Environ:
        env = dict(self.requests[self.served % len(self.requests)])
        env["wsgi.input"] = io.BytesIO()
        return env


class Driver:
    def __init__(self) -> None:
        self.handler = WSGIHandler()
        self._status = ""

    def _start_response(self, status: str, headers: Any, exc_info: Any = None) -> None:
        self._status = status

    def call(self, endpoint: Endpoint) -> tuple[float, int]:
        """One request, after its untimed preparation: its microseconds and status code."""
        if endpoint.prepare is not None:
            endpoint.prepare(endpoint.served)
        return self.timed(endpoint)

    def timed(self, endpoint: Endpoint) -> tuple[float, int]:
        env = endpoint.next_environ()
        started = time.perf_counter_ns()
        response = self.handler(env, self._start_response)
        for _ in response:
            pass
        response.close()  # sends request_finished, as a server would
        elapsed = (time.perf_counter_ns() - started) / 1000
        endpoint.served += 1
        return elapsed, int(self._status[:3])


@dataclass(frozen=True)
class Census:
    queries: float
    round_trips: float


def census(driver: Driver, endpoint: Endpoint, requests: int) -> Census:
    """SQL queries and cache round trips per request, counted over ``requests`` requests.

    Also the correctness check: every request must get the expected status.
    """
    queries = 0
    round_trips = 0

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal queries
        queries += 1
        return execute(sql, params, many, context)

    with endpoint.in_place(), counting():
        driver.call(endpoint)  # uncounted: the process may have just been reset
        for _ in range(requests):
            if endpoint.prepare is not None:
                endpoint.prepare(endpoint.served)
            before = RoundTrips.count
            with connection.execute_wrapper(count):
                _, status = driver.timed(endpoint)
            round_trips += RoundTrips.count - before
            if status != endpoint.expect:
                raise SystemExit(f"{endpoint.label}: expected HTTP {endpoint.expect}, got {status}")
    return Census(queries / requests, round_trips / requests)


def measure(driver: Driver, endpoints: Sequence[Endpoint], rounds: int, per_round: int) -> None:
    """Fill each endpoint's samples; every round visits all endpoints in a new order, so
    drift of the machine (other work, frequency scaling) hits them all alike."""
    order = list(endpoints)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for endpoint in order:
            with endpoint.in_place():
                driver.call(endpoint)  # untimed: the process may have just been reset
                for _ in range(per_round):
                    elapsed, _status = driver.call(endpoint)
                    endpoint.samples.append(elapsed)


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
