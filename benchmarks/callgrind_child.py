"""The process valgrind runs for ``benchmarks.callgrind``: requests in-process, with a
mark between the sections to count (see there). Not meant to be run by hand.

    python -m benchmarks.callgrind_child prepare CREDENTIALS.json
    python -m benchmarks.callgrind_child measure CREDENTIALS.json PLAN.json REQUESTS WARM_UP
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import random
import string
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
django.setup()

from drf_llm_keys.conf import conf  # noqa: E402

from . import seed  # noqa: E402
from .inprocess import Driver, Endpoint, environ  # noqa: E402
from .internals import evict, invalidate  # noqa: E402
from .labels import (  # noqa: E402
    API_KEY,
    COLD,
    DRF_TOKEN,
    DRF_TOKEN_REFUSED,
    EMPTY,
    FLOOR,
    KNOX,
    NONE,
    REFUSED,
    WARM,
)

_URL_SAFE = string.ascii_letters + string.digits + "-_"


def mark() -> None:
    """callgrind runs with ``--dump-before=getppid``: this call ends a counted section."""
    os.getppid()


def unknown_keys(count: int) -> list[str]:
    """Well-formed keys that no row has, a new prefix each (repeatable: seeded)."""
    rng = random.Random(13)
    return [
        f"{conf.KEY_PREFIX}{rng.getrandbits(48):012x}.{''.join(rng.choices(_URL_SAFE, k=43))}"
        for _ in range(count)
    ]


def endpoints(creds: seed.Credentials, count: int) -> list[Endpoint]:
    ours = environ(f"/ours/{seed.PROTECTED}/", f"Bearer {creds.ours}")
    rng = random.Random(7)
    tokens = [f"{rng.getrandbits(160):040x}" for _ in range(count)]
    return [
        Endpoint(NONE, [environ("/none/")]),
        Endpoint(FLOOR, [environ("/floor/", f"Floor {creds.floor}")]),
        Endpoint(WARM, [ours]),
        Endpoint(COLD, [ours], prepare=lambda i: invalidate(seed.PROTECTED)),
        Endpoint(EMPTY, [ours], prepare=lambda i: evict(seed.PROTECTED, creds.ours_prefix)),
        Endpoint(
            REFUSED,
            [environ(f"/ours/{seed.PROTECTED}/", f"Bearer {key}") for key in unknown_keys(count)],
            expect=401,
        ),
        Endpoint(DRF_TOKEN, [environ("/drf-token/", f"Token {creds.drf_token}")]),
        Endpoint(DRF_TOKEN_REFUSED, [environ("/drf-token/", f"Token {t}") for t in tokens], expect=401),
        Endpoint(API_KEY, [environ("/api-key/", f"Api-Key {creds.api_key}")]),
        Endpoint(KNOX, [environ("/knox/", f"Token {creds.knox}")]),
    ]


def prepare(credentials_path: str) -> None:
    seed.reset_database()
    creds = seed.create_credentials()
    with open(credentials_path, "w") as out:
        json.dump(dataclasses.asdict(creds), out)


def measure(credentials_path: str, plan_path: str, requests: int, warm_up: int) -> None:
    with open(credentials_path) as source:
        creds = seed.Credentials(**json.load(source))
    seed.fill_floor(creds.floor)
    driver = Driver()
    plan: list[str] = []

    def section(name: str) -> None:
        """End the section ``name``; collect garbage in one of its own, so every counted
        section starts from the same state and no collection is charged to it whole."""
        mark()
        plan.append(name)
        gc.collect()
        mark()
        plan.append("gc")

    def run(endpoint: Endpoint, count: int) -> None:
        for _ in range(count):
            _, status = driver.call(endpoint)
            if status != endpoint.expect:
                raise SystemExit(f"{endpoint.label}: expected HTTP {endpoint.expect}, got {status}")

    section("start-up")
    for endpoint in endpoints(creds, warm_up + requests):
        run(endpoint, warm_up)  # imports, connections, caches; and the first unknown keys
        section(f"warm-up|{endpoint.label}")
        if endpoint.prepare is not None:
            for i in range(endpoint.served, endpoint.served + requests):
                endpoint.prepare(i)
            section(f"prepare|{endpoint.label}")
        run(endpoint, requests)
        section(f"requests|{endpoint.label}")
    with open(plan_path, "w") as out:
        json.dump(plan, out)


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2])
    else:
        measure(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
