"""Usage counted by several OS processes on one database (tests/usage_worker.py): their
additions add up exactly, a normal exit writes what waits, a crash loses at most what the
last USAGE_FLUSH_INTERVAL counted. Token budgets are shared across processes at once."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support import bearer, harness
from tests.support.redis import cache_config
from tests.support.usage import figures

pytestmark = pytest.mark.django_db(transaction=True)

TOKENS = "/clients/protected-bot/tokens/?prompt={}&completion={}"
FILE_BASED_CACHE = "django.core.cache.backends.filebased.FileBasedCache"


class UsageWorker:
    def __init__(self, env: dict[str, str], settings: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.usage_worker"],
            cwd=harness.ROOT,
            env={**env, "USAGE_WORKER_SETTINGS": json.dumps(settings)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.answer() == "ready"

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def answer(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def ask(self, line: str) -> str:
        self.send(line)
        return self.answer()

    def get(self, path: str, key: str) -> int:
        return int(self.ask(f"get {path} {key}"))

    def stop(self) -> int:
        """Close stdin: the worker ends normally, running atexit."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


Start = Callable[..., UsageWorker]


@pytest.fixture
def start(settings: Any, tmp_path: Any) -> Iterator[Start]:
    shared_directory = None
    if "DRF_LLM_KEYS_TEST_REDIS_URL" not in os.environ:
        # This run's local-memory cache is per process: this one and the workers share files.
        shared_directory = str(tmp_path / "cache")
        settings.CACHES = {"default": {"BACKEND": FILE_BASED_CACHE, "LOCATION": shared_directory}}
    workers: list[UsageWorker] = []

    def make(
        flush_interval: float = 3600, redis_url: str | None = None, **package_settings: Any
    ) -> UsageWorker:
        env = harness.child_environment(None if redis_url else shared_directory, redis_url)
        worker = UsageWorker(env, {"USAGE_FLUSH_INTERVAL": flush_interval, **package_settings})
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        if worker.process.poll() is None:
            worker.kill()


def test_processes_flushing_at_once_add_up_exactly(start, key):
    api_key, plaintext = key
    workers = [start() for _ in range(3)]
    rounds, per_round = 3, 15
    for _ in range(rounds):
        for worker in workers:
            for _ in range(per_round):
                assert worker.get(TOKENS.format(3, 2), plaintext) == 200
        for worker in workers:  # every flush sent before any answer is read: they overlap
            worker.send("flush")
        unwritten = [worker for worker in workers if worker.answer() != "True"]
        for worker in unwritten:  # SQLite may have been locked for a moment: counts were kept
            harness.wait_until(lambda worker=worker: worker.ask("flush") == "True", 30, "flush failed")
    total = rounds * per_round * len(workers)
    assert figures(api_key) == (total, 3 * total, 2 * total)
    assert [worker.stop() for worker in workers] == [0, 0, 0]
    assert figures(api_key) == (total, 3 * total, 2 * total)


def test_a_normal_exit_writes_what_waits(start, key):
    api_key, plaintext = key
    worker = start()
    for _ in range(4):
        assert worker.get(TOKENS.format(1, 1), plaintext) == 200
    assert figures(api_key) == (0, 0, 0)
    assert worker.stop() == 0
    assert figures(api_key) == (4, 4, 4)


def test_a_crash_loses_at_most_the_last_interval(start, key):
    api_key, plaintext = key
    # A short interval: the counts reach the database with no flush() and no exit...
    worker = start(flush_interval=0.1)
    for _ in range(4):
        assert worker.get(TOKENS.format(1, 1), plaintext) == 200
    harness.wait_until(lambda: figures(api_key) == (4, 4, 4), 30, "counts not written by the timer")
    assert worker.ask("pending") == "0"
    worker.kill()
    assert figures(api_key) == (4, 4, 4)
    # ...a long one: a crash loses what the interval held, nothing more.
    worker = start(flush_interval=3600)
    for _ in range(2):
        assert worker.get(TOKENS.format(1, 1), plaintext) == 200
    assert worker.ask("pending") == "2"
    worker.kill()
    assert figures(api_key) == (4, 4, 4)


# --- token budgets across processes, on a private Redis ---------------------------------


@pytest.fixture
def shared_redis(start: Start, redis_server: harness.RedisServer, settings: Any) -> harness.RedisServer:
    """The private Redis, for this process (after ``start`` chose its cache) and the workers."""
    redis_server.resume()
    redis_server.flush()
    settings.CACHES = {"default": cache_config(redis_server, timeout=2)}
    return redis_server


def test_a_budget_spent_in_one_process_refuses_in_another(api, start, shared_redis, key, settings):
    _, plaintext = key
    budget = {"TOKEN_RATE": "100/hour"}
    spender, other = start(redis_url=shared_redis.url, **budget), start(redis_url=shared_redis.url, **budget)
    assert spender.get(TOKENS.format(60, 30), plaintext) == 200
    assert other.get(TOKENS.format(0, 0), plaintext) == 200  # 90 spent: under the budget
    assert spender.get(TOKENS.format(5, 5), plaintext) == 200  # 100 spent: the budget
    assert other.get(TOKENS.format(0, 0), plaintext) == 429
    settings.DRF_LLM_KEYS = budget  # and in this process too
    refused = api.get(TOKENS.format(0, 0), **bearer(plaintext))
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 3600


def test_the_budgets_counters_never_name_a_key(start, shared_redis, key):
    api_key, plaintext = key
    worker = start(redis_url=shared_redis.url, TOKEN_RATE="100/hour")
    assert worker.get(TOKENS.format(1, 1), plaintext) == 200
    names = [name.decode() for name in shared_redis.client().keys("*")]
    counters = [name for name in names if ":t:" in name]
    assert len(counters) == 1, names
    assert api_key.prefix not in counters[0]
    assert not [name for name in names if plaintext in name or plaintext.split(".")[1] in name]


def read_then_reset(port: int, path: str, plaintext: str, size: int) -> None:
    """A client that reads ``size`` bytes of a streamed body, then resets the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {plaintext}\r\n\r\n"
        sock.sendall(request.encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        body = received.partition(b"\r\n\r\n")[2]
        while len(body) < size:
            body += sock.recv(size - len(body))
        # Linger 0: close() sends a RST, as a client that crashes or is killed does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("asgi", "endpoint"),
    [(False, "/clients/protected-bot/tokens/metered/"), (True, "/ninja/metered/protected-bot/")],
    ids=["MeteredStream under gunicorn", "AsyncMeteredStream under uvicorn"],
)
def test_streams_read_in_part_and_reset_record_the_tokens_sent(key, tmp_path, asgi, endpoint):
    """Three 1,000-token streams from a gunicorn or uvicorn worker, each read in part by a client that
    then resets: each records its prompt tokens and at least the chunks the client read,
    never the whole stream (the server's writes fail and it closes the response)."""
    api_key, plaintext = key
    chunk, chunks, read = 4096, 1000, 50
    env = harness.child_environment(cache_dir=str(tmp_path / "cache"))
    servers = harness.Servers(env, workers=1, asgi=asgi)
    try:
        for _ in range(3):
            path = f"{endpoint}?prompt=7&chunks={chunks}&size={chunk}"
            read_then_reset(servers.port, path, plaintext, read * chunk)
    finally:
        servers.stop()  # a graceful stop: the worker writes its counts at exit
    requests, prompt, completion = figures(api_key)
    assert (requests, prompt) == (3, 21), servers.output()
    assert 3 * read <= completion < 3 * chunks, servers.output()


@pytest.mark.slow
def test_a_graceful_uvicorn_stop_writes_what_waits(key, tmp_path):
    """uvicorn runs no atexit (it raises SIGTERM again once stopped): drf_llm_keys.asgi's
    lifespan shutdown writes the counts instead, every one of them."""
    api_key, plaintext = key
    servers = harness.Servers(
        harness.child_environment(cache_dir=str(tmp_path / "cache")), workers=1, asgi=True
    )
    try:
        for _ in range(5):
            reply = harness.request(
                servers.port,
                "/ninja/metered/protected-bot/?chunks=3&prompt=7",
                {"Authorization": f"Bearer {plaintext}"},
            )
            assert reply.status == 200
    finally:
        servers.stop()
    assert figures(api_key) == (5, 35, 15), servers.output()
