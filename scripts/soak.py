#!/usr/bin/env python3
"""The long form of tests/test_concurrency.py: gunicorn workers serve keyed clients while a
mutator process rotates and revokes their keys, optionally with Redis stopped, paused or
flushed again and again; every request is judged against every key change.

    .venv/bin/python scripts/soak.py --duration 120
    DRF_LLM_KEYS_TEST_DATABASE_URL=postgres://root@127.0.0.1:5432/mydb \\
        .venv/bin/python scripts/soak.py --duration 300 --redis private --fault pause

The database is a fresh test database (``test_<name>_soak``, or a temporary SQLite file),
dropped at the end. The cache: ``--redis private`` starts a redis-server of its own on a
free port (needed for --fault); ``--redis env`` uses DRF_LLM_KEYS_TEST_REDIS_URL; ``--redis
none`` a shared file-based cache. Exit status 1 when an invariant was broken.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    parser.add_argument(
        "--rate", type=float, default=200, help="requests per second, all threads (default 200)"
    )
    parser.add_argument("--change-interval", type=float, default=0.05, help="seconds between key rotations")
    parser.add_argument("--clients", type=int, default=4, help="keyed clients (default 4)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--redis", choices=["private", "env", "none"], default="private")
    parser.add_argument("--fault", choices=["none", "stop", "pause", "flush"], default="none")
    parser.add_argument("--fault-every", type=float, default=10, help="seconds between faults (default 10)")
    parser.add_argument("--fault-length", type=float, default=2, help="seconds a stop or pause lasts")
    parser.add_argument(
        "--redis-timeout", type=float, default=0.25, help="Redis socket timeout in the servers"
    )
    args = parser.parse_args()
    if args.fault != "none" and args.redis != "private":
        parser.error("--fault needs --redis private")

    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.server_settings"
    os.environ["DRF_LLM_KEYS_TEST_REDIS_TIMEOUT"] = str(args.redis_timeout)
    work = Path(tempfile.mkdtemp(prefix="drf-llm-keys-soak-"))
    from tests.support.redis import RedisServer

    redis_server = None
    if args.redis == "private":
        redis_server = RedisServer(work / "redis").start()
        os.environ["DRF_LLM_KEYS_TEST_REDIS_URL"] = redis_server.url
    elif args.redis == "none":
        os.environ.pop("DRF_LLM_KEYS_TEST_REDIS_URL", None)
    elif "DRF_LLM_KEYS_TEST_REDIS_URL" not in os.environ:
        parser.error("--redis env needs DRF_LLM_KEYS_TEST_REDIS_URL")
    try:
        return soak(args, work, redis_server)
    finally:
        if redis_server is not None:
            redis_server.stop()


def soak(args: argparse.Namespace, work: Path, redis_server: object) -> int:
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection

    from drf_llm_keys.models import LLMClient
    from tests.support import harness
    from tests.support.redis import RedisServer

    test_settings = settings.DATABASES["default"].setdefault("TEST", {})
    if connection.vendor != "sqlite":
        test_settings["NAME"] = f"test_{settings.DATABASES['default']['NAME']}_soak"
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        get_user_model()._default_manager.create(username="owner")
        slugs = [f"soak-{i}" for i in range(args.clients)]
        for i, slug in enumerate(slugs):
            # One in three is protected by the flag too, the others by their keys alone.
            LLMClient.objects.create(name=slug, slug=slug, require_api_key=i % 3 == 2)
        env = harness.child_environment(cache_dir=str(work / "cache"))
        faults = None
        if args.fault != "none":
            assert isinstance(redis_server, RedisServer)
            faults = harness.Faults(
                redis_server,
                args.fault,
                every=args.fault_every,
                length=args.fault_length,
                offset=min(2.0, args.duration / 4),
                grace_after=1.0,
                # The push channel's PUSH_HEARTBEAT (1 s by default) and the request's own time.
                grace_from_pause=1.5,
            )
        print(
            f"soak: {args.duration:g} s, {args.workers} workers, {args.threads} threads at {args.rate:g}/s, "
            f"{connection.vendor}, cache {args.redis}, fault {args.fault}, seed {args.seed}",
            flush=True,
        )
        verdict = harness.run(
            env,
            slugs,
            "owner",
            duration=args.duration,
            workers=args.workers,
            threads=args.threads,
            rate=args.rate,
            change_interval=args.change_interval,
            seed=args.seed,
            faults=faults,
        )
    finally:
        connection.creation.destroy_test_db(connection.settings_dict["NAME"], verbosity=0)
    print("soak:", verdict.summary())
    if faults is not None:
        fallbacks = verdict.server_log.count("cache read failed, using the database")
        print(f"soak: {faults.count} {args.fault} faults, {fallbacks} cache-read fallbacks logged")
    for name in ("accepted_after_retirement", "accepted_wrong_key", "valid_refused", "server_errors"):
        for sent in getattr(verdict, name)[:5]:
            print(f"soak: {name}: {sent}")
            if faults is not None:  # the faults around it, in seconds from its start
                events = faults.events
                near = [f"{what} {at - sent.begin:+.3f}" for what, at in events if abs(at - sent.begin) < 5]
                print(f"soak:   faults nearby: {', '.join(near) or 'none'}")
    if verdict.server_errors:
        print(verdict.server_log[-5000:])
    return 1 if verdict.violations else 0


if __name__ == "__main__":
    sys.exit(main())
