#!/usr/bin/env python3
"""What a process keeps: resident memory after a steady working set, the bytes a held
entry costs, resident memory after a flood of distinct unknown keys and client slugs
(default 1,000,000), which must not grow it beyond a few MiB. SQLite and the local-memory
cache, ``authenticate()`` called in process; prints figures, asserts nothing.

    .venv/bin/python scripts/memory.py --keys 20000 --held 10000 --distinct 1000000

The steady set: every one of ``--keys`` real keys used twice,
each time with as many unknown keys and unknown slugs. Then ``--distinct`` requests, each
with a key prefix or a client slug never seen before, half on real clients. Last, the
bytes a held entry costs, measured with tracemalloc over ``--held`` entries: keys on a client
of their own each, then on one client.
"""

from __future__ import annotations

import argparse
import gc
import os
import secrets
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def resident_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS in /proc/self/status (Linux only)")


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--keys", type=int, default=20000)
    parser.add_argument(
        "--held", type=int, default=10_000, help="entries the held-entry cost is measured over"
    )
    parser.add_argument("--distinct", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drf-llm-keys-memory-") as directory:
        os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
        os.environ["DRF_LLM_KEYS_BENCH_DATABASE_URL"] = f"sqlite:///{directory}/memory.sqlite3"
        run(args.keys, args.held, args.distinct)


def run(working: int, held_count: int, distinct: int) -> None:
    import logging

    import django

    django.setup()
    from django.test import RequestFactory, override_settings
    from rest_framework.exceptions import AuthenticationFailed, NotFound
    from rest_framework.request import Request

    from benchmarks import seed
    from benchmarks.internals import load_decision, lookup
    from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication
    from drf_llm_keys.conf import conf
    from drf_llm_keys.decisions import get_decision_cache
    from drf_llm_keys.models import LLMClient, LLMClientAPIKey

    logging.getLogger("drf_llm_keys").setLevel(logging.ERROR)  # dropped usage counts: expected
    # The local-memory cache stands in for Redis, in this process: what it holds is counted
    # as the process's. Generations that expired in a long run (CACHE_TIMEOUT) and were
    # leased again would count as growth, though with Redis they live on the server.
    override_settings(DRF_LLM_KEYS={"CACHE_TIMEOUT": 7 * 24 * 3600}).enable()
    seed.reset_database()
    seed.create_credentials()
    seed.seed_scale(max(working, held_count))
    authentication, factory = LLMClientAPIKeyAuthentication(), RequestFactory()

    def request(slug: str, plaintext: str) -> Any:
        drf_request = Request(factory.get("/", HTTP_AUTHORIZATION=f"Bearer {plaintext}"))
        drf_request.parser_context = {"kwargs": {"llm_client": slug}, "view": None}
        try:
            return authentication.authenticate(drf_request)
        except (AuthenticationFailed, NotFound):  # an unknown key; an unknown client
            return None

    def unknown_key() -> str:
        return f"{conf.KEY_PREFIX}{secrets.token_hex(6)}.{secrets.token_urlsafe(32)}"

    for _ in range(2):
        for i in range(working):
            if request(seed.scale_slug(i), seed.scale_plaintext(i)) is None:
                raise SystemExit(f"key {i} refused")
            request(seed.scale_slug(i), unknown_key())
            request(f"unknown-{secrets.token_hex(8)}", unknown_key())
    gc.collect()
    steady, local = resident_mib(), get_decision_cache()
    print(
        f"steady ({working:,} keys in use): resident {steady:.1f} MiB; held entries "
        f"{len(local.held.entries):,}, held refusals {len(local.unknown_keys.entries):,}"
    )
    started = time.monotonic()
    for number in range(distinct):
        if number % 2:
            request(seed.scale_slug(number % working), unknown_key())
        else:
            request(f"unknown-{number}", unknown_key())
    gc.collect()
    after = resident_mib()
    print(
        f"after {distinct:,} distinct unknown keys and slugs ({time.monotonic() - started:.0f} s): "
        f"resident {after:.1f} MiB, {after - steady:+.1f} MiB; held entries {len(local.held.entries):,}, "
        f"held refusals {len(local.unknown_keys.entries):,}"
    )

    # What one held entry costs: the memory Python frees, as tracemalloc counts it, when the
    # ``held_count`` entries a process took from the shared cache are dropped again (their
    # names, table slots, tags and entries, and the parts they share, counted once). The
    # lookup alone: a request would also count its usage in the process. First with a client
    # of each key's own (its state and generation held for each entry), then with all the
    # keys on one client, as a deployment's keys share a few clients.
    own = [(seed.scale_slug(i), seed.scale_plaintext(i).partition(".")[0]) for i in range(held_count)]
    first = LLMClient.objects.get(slug=seed.scale_slug(0))
    others = range(1, held_count)
    LLMClientAPIKey.objects.bulk_create(
        LLMClientAPIKey(llm_client=first, api_key_id=seed.SCALE_ID_BASE + i) for i in others
    )
    one = [(seed.scale_slug(0), prefix) for _, prefix in own]
    for label, requests in (("a client of its own", own), ("all on one client", one)):
        for slug, prefix in requests:  # every entry in the shared cache
            lookup(slug, prefix, load_decision, using="default")
        local.held.entries.clear()
        local.shared_parts.clear()
        gc.collect()
        tracemalloc.start()
        for slug, prefix in requests:
            lookup(slug, prefix, load_decision, using="default")
        gc.collect()
        holding = tracemalloc.get_traced_memory()[0]
        local.held.entries.clear()
        local.shared_parts.clear()
        gc.collect()
        freed = holding - tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        print(
            f"held entry, {label}: {freed / held_count:,.0f} bytes each (tracemalloc, {held_count:,} entries)"
        )


if __name__ == "__main__":
    main()
