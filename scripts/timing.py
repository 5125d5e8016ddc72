#!/usr/bin/env python3
"""Timing of refusals, warm cache, in process: does the answer's time tell an attacker
anything? Prints the median and 90th percentile per kind of request; asserts nothing
(figures are noisy on a shared machine: compare the rows of one run, not runs).

    .venv/bin/python scripts/timing.py --rounds 20000

A wrong secret costs one SHA-256 of the presented key and one ``hmac.compare_digest``
against the stored digest, wherever the first wrong character is; an unknown prefix is
compared against a dummy digest, so it costs the same.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20_000, help="requests per kind (default 20,000)")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.cache import cache
    from django.db import connection
    from rest_framework.exceptions import AuthenticationFailed
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from drf_llm_keys import usage
    from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication
    from tests.support.hostile import World

    if connection.vendor != "sqlite":
        settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = (
            f"test_{settings.DATABASES['default']['NAME']}_timing"
        )
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        cache.clear()
        world = World.create()
        prefix, _, secret = world.valid.partition(".")
        unknown_prefix = flip(prefix, len(prefix) - 1)
        kinds = {
            "valid key (accepted)": world.valid,
            "wrong secret, first char": f"{prefix}.{flip(secret, 0)}",
            "wrong secret, last char": f"{prefix}.{flip(secret, len(secret) - 1)}",
            "unknown prefix": f"{unknown_prefix}.{secret}",
            "another client's key": world.other_client,
            "revoked key": world.revoked,
        }
        factory = APIRequestFactory()
        authentication = LLMClientAPIKeyAuthentication()

        def once(plaintext: str) -> float:
            request = Request(
                factory.get("/", HTTP_AUTHORIZATION=f"Bearer {plaintext}"),
                parser_context={"kwargs": {"llm_client": "protected-bot"}},
            )
            started = time.perf_counter()
            try:
                authentication.authenticate(request)
            except AuthenticationFailed:
                pass
            return time.perf_counter() - started

        for plaintext in kinds.values():  # warm the cache
            once(plaintext)
        samples: dict[str, list[float]] = {kind: [] for kind in kinds}
        order = list(kinds)
        rng = random.Random(1)
        for _ in range(args.rounds):
            rng.shuffle(order)  # interleaved, so drift hits every kind alike
            for kind in order:
                samples[kind].append(once(kinds[kind]))
        usage.counter.flush()  # while the database is there: at exit it is gone
    finally:
        connection.creation.destroy_test_db(connection.settings_dict["NAME"], verbosity=0)

    backend = settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1]
    print(f"timing: {args.rounds} rounds per kind, {connection.vendor}, {backend}, warm cache")
    print(f"{'kind':<28} {'median µs':>10} {'p90 µs':>10}")
    for kind, values in samples.items():
        values.sort()
        median = statistics.median(values) * 1e6
        p90 = values[int(len(values) * 0.9)] * 1e6
        print(f"{kind:<28} {median:>10.1f} {p90:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
