#!/usr/bin/env python3
"""The long form of tests/test_hostile_input.py: 100,000+ hostile requests (Authorization
and X-API-Key headers, client slugs) against the decision table, in process.

    .venv/bin/python scripts/fuzz.py --cases 100000
    DRF_LLM_KEYS_TEST_DATABASE_URL=postgres://root@127.0.0.1:5432/mydb \\
    DRF_LLM_KEYS_TEST_REDIS_URL=redis://127.0.0.1:6379/5 .venv/bin/python scripts/fuzz.py

A fresh test database (``test_<name>_fuzz`` or a temporary SQLite file) is created and
dropped. Exit status 1, with hypothesis's shrunk example, on the first case that breaks
the table or answers 5xx.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=100_000, help="requests in all (default 100,000)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.conf import settings as django_settings
    from django.db import connection
    from django.test.utils import setup_test_environment
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st
    from rest_framework.test import APIClient

    from tests.support.hostile import World, api_key_headers, authorization_headers, check, slugs

    setup_test_environment()
    if connection.vendor != "sqlite":
        django_settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = (
            f"test_{django_settings.DATABASES['default']['NAME']}_fuzz"
        )
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    try:
        from django.core.cache import cache

        cache.clear()
        world = World.create()
        api = APIClient()
        keyed = st.sampled_from(["protected-bot", "flagged-bot", "public-bot", "other-bot", "nobody"])
        shapes = {
            "Authorization": st.tuples(keyed, authorization_headers(world), st.none()),
            "X-API-Key": st.tuples(keyed, st.none(), api_key_headers(world)),
            "both headers": st.tuples(keyed, authorization_headers(world), api_key_headers(world)),
            "client slug": st.tuples(slugs(), authorization_headers(world), st.none()),
        }
        per_shape = -(-args.cases // len(shapes))
        for number, (name, cases) in enumerate(shapes.items()):

            @seed(args.seed + number)
            @settings(
                max_examples=per_shape,
                deadline=None,
                database=None,
                phases=(Phase.generate, Phase.shrink),
                suppress_health_check=list(HealthCheck),
            )
            @given(case=cases)
            def fuzz(case: tuple[str, str | None, str | None]) -> None:
                outcomes[check(world, api, *case)] += 1
                total = sum(outcomes.values())
                if total % 10_000 == 0:
                    rate = total / (time.monotonic() - started)
                    print(f"fuzz: {total} cases, {rate:.0f}/s, {dict(outcomes)}", flush=True)

            print(f"fuzz: {per_shape} cases of {name}", flush=True)
            fuzz()
    except AssertionError as failure:
        print(f"fuzz: FAILED after {sum(outcomes.values())} cases: {failure}")
        return 1
    finally:
        connection.creation.destroy_test_db(connection.settings_dict["NAME"], verbosity=0)
    elapsed = time.monotonic() - started
    total = sum(outcomes.values())
    print(
        f"fuzz: {total} cases in {elapsed:.0f}s ({total / elapsed:.0f}/s), seed {args.seed}: {dict(outcomes)}"
    )
    print("fuzz: every case got the decision table's answer; no 5xx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
