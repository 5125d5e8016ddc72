"""One command for every benchmark: each configuration runs in a process of its own.

    python -m benchmarks                                    # SQLite + local-memory cache
    python -m benchmarks --database-url postgres://USER@HOST:PORT/DB
                                                            # ... then PostgreSQL + Redis too
    python -m benchmarks --callgrind                        # instructions per request instead

The PostgreSQL database is the benchmark's: its tables are created and emptied. Redis is a
private redis-server the benchmark starts on a free loopback port and stops at the end;
with --redis-url it uses that server instead, writing and removing only keys under its
prefix (then anything that flushes that server during the run voids it).
Options not listed below go to every configuration (see ``python -m benchmarks.run -h``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from . import callgrind
from .redis_server import private_redis


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=os.environ.get("DRF_LLM_KEYS_BENCH_DATABASE_URL"))
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("DRF_LLM_KEYS_BENCH_REDIS_URL"),
        help="use this Redis rather than a private redis-server",
    )
    parser.add_argument("--million", action="store_true", help="add the 1,000,000-key scale step (slow)")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="run one configuration only")
    parser.add_argument(
        "--pg-prepared",
        action="store_true",
        help="PostgreSQL with psycopg's prepared statements (OPTIONS server_side_binding, prepare_threshold)",
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="count instructions per request under valgrind instead (SQLite + local memory)",
    )
    args, passed_on = parser.parse_known_args()
    if args.callgrind:
        return callgrind.main(passed_on)
    if args.million:
        passed_on += ["--scales", "10,10000,1000000"]

    started = time.monotonic()
    status = 0
    if args.only != "postgresql":
        with tempfile.TemporaryDirectory(prefix="drf-llm-keys-bench-") as directory:
            database = f"sqlite:///{os.path.join(directory, 'bench.sqlite3')}"
            status |= run_configuration(database, None, passed_on)
    if args.only != "sqlite":
        if args.database_url:
            with redis(args.redis_url) as redis_url:
                prepared = args.pg_prepared
                status |= run_configuration(args.database_url, redis_url, passed_on, prepared=prepared)
        else:
            print(
                "\nPostgreSQL + Redis skipped: give --database-url postgres://... "
                "(or DRF_LLM_KEYS_BENCH_DATABASE_URL)."
            )
    print(f"\nFinished in {time.monotonic() - started:.0f} s.")
    return status


@contextlib.contextmanager
def redis(url: str | None) -> Iterator[str]:
    if url:
        yield url
    else:
        with private_redis() as private:
            yield private


def run_configuration(
    database_url: str, redis_url: str | None, passed_on: list[str], prepared: bool = False
) -> int:
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="benchmarks.settings")
    env["DRF_LLM_KEYS_BENCH_DATABASE_URL"] = database_url
    env.pop("DRF_LLM_KEYS_BENCH_PG_PREPARED", None)
    if prepared:
        env["DRF_LLM_KEYS_BENCH_PG_PREPARED"] = "1"
    env.pop("DRF_LLM_KEYS_BENCH_REDIS_URL", None)
    if redis_url:
        env["DRF_LLM_KEYS_BENCH_REDIS_URL"] = redis_url
    print(flush=True)
    return subprocess.run([sys.executable, "-m", "benchmarks.run", *passed_on], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
