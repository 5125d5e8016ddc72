"""How soon another process refuses a revoked key: gunicorn workers hold a valid key warm
(Redis, push invalidation on); this process calls ``revoke_key()`` and from the moment it
returns sends requests, one at a time on new connections, until the first 401.

The figure includes one request's round trip through the server: it is the time a client
of that server could still have been served, had the revocation not been immediate. Any
200 after ``revoke_key()`` returned is counted and flagged: it would break the guarantee
that a revoked key is refused at once in every process.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.cache import cache

from drf_llm_keys import keys
from drf_llm_keys.models import LLMClient

from .inprocess import median, percentile
from .internals import channel
from .processes import HOST
from .server import REQUEST_TIMEOUT, Answer, get, gunicorn

CLIENT = "revocation-bot"
GIVE_UP_SECONDS = 2.0


def run(*, workers: int, trials: int) -> None:
    if not hasattr(cache, "client") or channel() is None:
        print("\nRevocation latency: skipped (needs Redis 6+ with push invalidation).")
        return
    owner = get_user_model()._default_manager.get(username="bench-owner")
    # require_api_key: revoking its only key leaves it protected rather than public.
    client = LLMClient.objects.create(name="Revocation", slug=CLIENT, require_api_key=True)
    path = f"/ours-pid/{CLIENT}/"
    latencies_ms: list[float] = []
    reference_ms: list[float] = []  # the same request, warm, just before the revocation
    after_ms: list[float] = []  # and once more after the first 401
    served_after, never = 0, 0
    with gunicorn("benchmarks.wsgi:application", ("--worker-class", "sync"), workers) as port:
        # Untimed, as the warm-up requests of every other step: a worker's first refusal
        # of a revoked key runs code it has not run before. Then every worker refuses it.
        untimed = _trial(port, path, client, owner, "revocation warm-up", workers)
        _warm_every_worker(port, path, untimed.headers, workers, status=401, passes=1)
        for trial in range(trials):
            result = _trial(port, path, client, owner, f"revocation {trial}", workers)
            reference_ms.append(result.reference_ms)
            served_after += result.served_after
            if result.latency_ms is None:
                never += 1
            else:
                latencies_ms.append(result.latency_ms)
                after_ms.append(result.after_ms)
    print(
        f"\nRevocation latency: gunicorn ({workers} sync workers), a valid key warm in every worker; "
        f"{trials} trials, from revoke_key() returning in this process to the first 401 (one request "
        "round trip included)"
    )
    if latencies_ms:
        print(
            f"  p50 {median(latencies_ms):.2f} ms, p99 {percentile(latencies_ms, 0.99):.2f} ms, "
            f"max {max(latencies_ms):.2f} ms"
        )
        for what, figures in (
            ("the same request just before the revocation (200, warm)", reference_ms),
            ("the next request after the first 401 (401 again)", after_ms),
        ):
            print(f"  {what}: p50 {median(figures):.2f} ms, p99 {percentile(figures, 0.99):.2f} ms")
    if untimed.latency_ms is not None:
        print(f"  the untimed first trial (no worker had refused a key yet): {untimed.latency_ms:.2f} ms")
    served_after += untimed.served_after
    never += untimed.latency_ms is None
    flag = "" if served_after == 0 else "  (a revoked key was served!)"
    print(f"  requests served with 200 after revoke_key() returned: {served_after}{flag}")
    if never:
        print(f"  trials with no 401 within {GIVE_UP_SECONDS:g} s: {never}  (MISSED)")


@dataclasses.dataclass
class Trial:
    headers: dict[str, str]
    reference_ms: float
    latency_ms: float | None  # None: no 401 within GIVE_UP_SECONDS
    after_ms: float
    served_after: int  # requests served with 200 after revoke_key() returned


def _trial(port: int, path: str, client: LLMClient, owner: Any, name: str, workers: int) -> Trial:
    """A new key, warm in every worker, then revoked here: the time to its first 401."""
    api_key, plaintext = keys.create_key([client], user=owner, name=name)
    headers = {"Authorization": f"Bearer {plaintext}"}
    _warm_every_worker(port, path, headers, workers)
    started = time.perf_counter()
    if get(port, path, headers).status != 200:
        raise SystemExit(f"{name}: the key was refused before its revocation")
    reference_ms = (time.perf_counter() - started) * 1000
    keys.revoke_key(api_key)
    returned = time.perf_counter()
    served_after = 0
    while True:
        status = get(port, path, headers).status
        elapsed = time.perf_counter() - returned
        if status == 401:
            started = time.perf_counter()
            if get(port, path, headers).status != 401:
                raise SystemExit(f"{name}: served again after a 401")
            after_ms = (time.perf_counter() - started) * 1000
            return Trial(headers, reference_ms, elapsed * 1000, after_ms, served_after)
        if status == 200:
            served_after += 1
        else:
            raise SystemExit(f"{name}: unexpected HTTP {status}")
        if elapsed > GIVE_UP_SECONDS:
            return Trial(headers, reference_ms, None, 0.0, served_after)


def _warm_every_worker(
    port: int, path: str, headers: dict[str, str], workers: int, *, status: int = 200, passes: int = 2
) -> None:
    """Each worker answers the key ``passes`` times with ``status`` (with 200, the first
    pass fills its entry).

    Which worker accepts a new connection is not fair: one can take hundreds in a row. But
    a sync worker that has accepted a connection serves nothing else until its request
    arrives, and connections are accepted in the order they were made. So with
    ``workers - 1`` connections opened and left silent, the next request goes to the one
    worker left; then each silent connection's request goes to the worker holding it.
    """
    for _ in range(passes):
        silent = [http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT) for _ in range(workers - 1)]
        try:
            for connection in silent:
                connection.connect()
            answers = [get(port, path, headers)]
            for connection in silent:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                answers.append(Answer(response.status, response.read(), False))
        finally:
            for connection in silent:
                connection.close()
        for answer in answers:
            if answer.status != status:
                raise SystemExit(f"revocation warm-up: expected {status}, got {answer.status}")
        if status != 200:  # a refusal does not reach the view, which names its process
            continue
        served = {json.loads(answer.body)["pid"] for answer in answers}
        if len(served) != workers:
            raise SystemExit(f"revocation warm-up: {len(served)} distinct workers of {workers} answered")
