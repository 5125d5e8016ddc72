"""The in-flight cap across gunicorn workers on one Redis: held across processes, and a
slot of a worker killed mid-stream freed when its lease runs out."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from typing import Any

import pytest
import redis

from drf_llm_keys import keys
from tests.support import harness, wait_until
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LEASE = 3.0


def stream(port: int, path: str, plaintext: str, answers: list[harness.Reply]) -> None:
    answers.append(harness.request(port, path, {"Authorization": f"Bearer {plaintext}"}))


def served_by(sock: socket.socket, path: str, plaintext: str) -> int:
    """Send a request on ``sock`` and read its head: the pid of the worker streaming it."""
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {plaintext}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    return int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"x-served-by"))
    )


def held(server: RedisServer) -> int:
    """Reservations in the ledger now, whatever their lease (hashes of in-flight accounts)."""
    client = redis.Redis.from_url(server.url)
    return sum(client.hlen(name) for name in client.scan_iter("*:c:*:h"))


def test_the_cap_holds_across_workers_and_a_killed_workers_slot_frees_with_its_lease(
    key: Any, redis_server: RedisServer
) -> None:
    redis_server.resume()
    redis_server.flush()
    _, plaintext = key
    settings = {"MAX_CONCURRENT": 2, "RESERVATION_LEASE": LEASE, "PUSH_HEARTBEAT": 0.5}
    env = harness.child_environment(
        redis_url=redis_server.url, DRF_LLM_KEYS_TEST_SETTINGS=json.dumps(settings)
    )
    servers = harness.Servers(env, workers=3)
    path = "/clients/protected-bot/admitted/?stream=1&completion=4&delay=0.5"
    try:
        # Three 2-second streams at once, one per worker: the cap admits two of them.
        answers: list[harness.Reply] = []
        threads = [
            threading.Thread(target=stream, args=(servers.port, path, plaintext, answers)) for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(answer.status for answer in answers) == [200, 200, 429], servers.output()
        wait_until(lambda: held(redis_server) == 0, 5, "slots not freed after the streams")

        # A worker killed mid-stream never settles: its slot holds until its lease ends.
        slow = "/clients/protected-bot/admitted/?stream=1&completion=100&delay=0.2"
        quick = "/clients/protected-bot/admitted/"
        bearer = {"Authorization": f"Bearer {plaintext}"}
        reserved_at = time.monotonic()
        with socket.create_connection(("127.0.0.1", servers.port), timeout=30) as victim:
            os.kill(served_by(victim, slow, plaintext), signal.SIGKILL)
        time.sleep(LEASE / 2)  # the next stream's lease outlives the dead one's
        with socket.create_connection(("127.0.0.1", servers.port), timeout=30) as other:
            served_by(other, slow, plaintext)  # the second slot
            assert held(redis_server) == 2
            assert harness.request(servers.port, quick, bearer).status == 429  # the dead one's counts
            wait_until(lambda: time.monotonic() - reserved_at > LEASE + 0.2, LEASE + 5, "lease wait")
            assert harness.request(servers.port, quick, bearer).status == 200
            assert held(redis_server) == 1  # the live stream's
        # The client gone: the worker's next write fails, it closes the response and settles.
        wait_until(lambda: held(redis_server) == 0, 10, "the abandoned stream's slot was not freed")
    finally:
        servers.stop()


def test_workers_racing_for_a_budget_admit_exactly_what_it_holds(key: Any, redis_server: RedisServer) -> None:
    """24 requests from 6 threads over 3 workers, each costing what it reserved (100 tokens
    at 1 USD per million), against a budget of 1,000 tokens: exactly 10 admitted."""
    redis_server.resume()
    redis_server.flush()
    api_key, plaintext = key
    settings = {"PRICES": {"m": {"input": "1", "output": "1"}}, "PUSH_HEARTBEAT": 0.5}
    env = harness.child_environment(
        redis_url=redis_server.url, DRF_LLM_KEYS_TEST_SETTINGS=json.dumps(settings)
    )
    keys.set_budget(api_key, "0.001", "month")
    servers = harness.Servers(env, workers=3)
    path = "/clients/protected-bot/admitted/?model=m&prompt=50&max_tokens=50&completion=50"
    answers: list[harness.Reply] = []
    try:
        threads = [
            threading.Thread(
                target=lambda: [stream(servers.port, path, plaintext, answers) for _ in range(4)]
            )
            for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        servers.stop()
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [200] * 10 + [429] * 14, servers.output()


def test_a_client_one_request_at_a_time_never_meets_its_own_slot(key: Any, redis_server: RedisServer) -> None:
    """With a cap of 1, requests sent one after another over 3 workers are all admitted: each
    settlement, sent without waiting before its response leaves, is done before the next
    request reaches Redis from any worker."""
    redis_server.resume()
    redis_server.flush()
    _, plaintext = key
    settings = {"MAX_CONCURRENT": 1, "PUSH_HEARTBEAT": 0.5}
    env = harness.child_environment(
        redis_url=redis_server.url, DRF_LLM_KEYS_TEST_SETTINGS=json.dumps(settings)
    )
    servers = harness.Servers(env, workers=3)
    bearer = {"Authorization": f"Bearer {plaintext}"}
    try:
        statuses = [
            harness.request(servers.port, "/clients/protected-bot/admitted/", bearer).status
            for _ in range(300)
        ]
        assert statuses.count(200) == 300, (statuses.count(429), servers.output())
        assert held(redis_server) == 0
    finally:
        servers.stop()
