#!/usr/bin/env python3
"""Warm requests with 100 keys in use against many more (default 20,000): is there a cliff
when many keys are in use (or outnumber ``LOCAL_ENTRIES``)? PostgreSQL and a private redis-server,
push invalidation on, in-process WSGI as in ``python -m benchmarks``; prints figures,
asserts nothing.

    createdb -h 127.0.0.1 drf_llm_keys_bench
    .venv/bin/python scripts/working_set.py postgres://root@127.0.0.1:5432/drf_llm_keys_bench
    .venv/bin/python scripts/working_set.py postgres://... --keys 20000 --local-entries 32768

Each endpoint rotates over its keys in order (the worst case for a table that drops the
least recently used), after two passes that fill the cache. The database is the
benchmark's: its tables are emptied.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("database_url")
    parser.add_argument("--keys", type=int, default=20000)
    parser.add_argument("--local-entries", type=int, help="LOCAL_ENTRIES (default: the package's)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=300)
    args = parser.parse_args()
    from benchmarks.redis_server import private_redis

    with private_redis() as url:
        os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
        os.environ["DRF_LLM_KEYS_BENCH_DATABASE_URL"] = args.database_url
        os.environ["DRF_LLM_KEYS_BENCH_REDIS_URL"] = url
        run(args)


def run(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from django.conf import settings

    from benchmarks import seed
    from benchmarks.inprocess import Driver, Endpoint, census, environ, measure, median, percentile
    from drf_llm_keys.conf import conf

    if args.local_entries:
        settings.DRF_LLM_KEYS = {"LOCAL_ENTRIES": args.local_entries}
        conf.reload()
    size = args.keys
    seed.reset_database()
    seed.reset_cache()
    seed.create_credentials()
    seed.seed_scale(size)

    def spread(count: int) -> list[dict[str, object]]:
        indices = sorted({round(i * (size - 1) / max(count - 1, 1)) for i in range(count)})
        return [environ(f"/ours/{seed.scale_slug(i)}/", f"Bearer {seed.scale_plaintext(i)}") for i in indices]

    endpoints = [Endpoint("none (unauthenticated view)", [environ("/none/")])]
    endpoints += [Endpoint(f"warm, {count:,} keys in use", spread(count)) for count in (100, size)]
    driver = Driver()
    counts = {}
    try:
        for endpoint in endpoints:
            for _ in range(2):  # fills the cache; then confirms the generations (push)
                census(driver, endpoint, len(endpoint.requests))
            counts[endpoint.label] = census(driver, endpoint, min(len(endpoint.requests), 2000))
        measure(driver, endpoints, args.rounds, args.per_round)
    finally:
        seed.reset_cache()
    base = median(endpoints[0].samples)
    print(f"LOCAL_ENTRIES={conf.LOCAL_ENTRIES}, {size:,} keys in the database; µs per request")
    print(f"{'endpoint':<30}{'median':>8}{'p90':>8}{'added':>8}{'SQL/req':>9}{'RT/req':>8}")
    for endpoint in endpoints:
        middle, count = median(endpoint.samples), counts[endpoint.label]
        print(
            f"{endpoint.label:<30}{middle:>8.0f}{percentile(endpoint.samples, 0.9):>8.0f}"
            f"{middle - base:>8.0f}{count.queries:>9.2f}{count.round_trips:>8.2f}"
        )


if __name__ == "__main__":
    main()
