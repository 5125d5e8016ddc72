#!/usr/bin/env python3
"""What a process keeps: resident memory after a steady working set, then after a flood of
distinct unknown keys and client slugs (default 1,000,000), which must not grow it beyond
a few MiB. SQLite and the local-memory cache, ``authenticate()`` called in process; prints
figures, asserts nothing.

    .venv/bin/python scripts/memory.py --keys 20000 --distinct 1000000

The steady set: every one of ``--keys`` real keys used twice,
each time with as many unknown keys and unknown slugs. Then ``--distinct`` requests, each
with a key prefix or a client slug never seen before, half on real clients.
"""

from __future__ import annotations

import argparse
import gc
import os
import secrets
import sys
import tempfile
import time
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


def deep_size(root: Any) -> int:
    """Bytes of ``root`` and everything it holds (dicts, lists, tuples), each object once."""
    seen: set[int] = set()
    total, stack = 0, [root]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        total += sys.getsizeof(value)
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return total


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--keys", type=int, default=20000)
    parser.add_argument("--distinct", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drf-llm-keys-memory-") as directory:
        os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
        os.environ["DRF_LLM_KEYS_BENCH_DATABASE_URL"] = f"sqlite:///{directory}/memory.sqlite3"
        run(args.keys, args.distinct)


def run(working: int, distinct: int) -> None:
    import logging

    import django

    django.setup()
    from django.test import RequestFactory
    from rest_framework.exceptions import AuthenticationFailed
    from rest_framework.request import Request

    from benchmarks import seed
    from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication
    from drf_llm_keys.conf import conf
    from drf_llm_keys.decisions import get_decision_cache

    logging.getLogger("drf_llm_keys").setLevel(logging.ERROR)  # dropped usage counts: expected
    seed.reset_database()
    seed.create_credentials()
    seed.seed_scale(working)
    authentication, factory = LLMClientAPIKeyAuthentication(), RequestFactory()

    def request(slug: str, plaintext: str) -> Any:
        drf_request = Request(factory.get("/", HTTP_AUTHORIZATION=f"Bearer {plaintext}"))
        drf_request.parser_context = {"kwargs": {"llm_client": slug}, "view": None}
        try:
            return authentication.authenticate(drf_request)
        except AuthenticationFailed:
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
    # What one held entry costs: its name, table slot, generation tag and entry, the parts it
    # shares with others (an owner's fields) and the table that finds them counted once, as
    # sys.getsizeof sees them.
    held = deep_size((local.held.entries, local.shared_parts)) / max(len(local.held.entries), 1)
    print(f"held entry: {held:,.0f} bytes each")
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


if __name__ == "__main__":
    main()
