"""One command for every benchmark: each configuration runs in a process of its own.

    python -m benchmarks                                    # SQLite + local-memory cache
    python -m benchmarks --database-url postgres://USER@HOST:PORT/DB --redis-url redis://HOST:PORT/N
                                                            # ... then PostgreSQL + Redis too

The PostgreSQL database is the benchmark's: its tables are created and emptied. In Redis
only keys under the benchmark's prefix are written and removed, never the whole DB.
Options not listed below go to every configuration (see ``python -m benchmarks.run -h``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=os.environ.get("DRF_LLM_KEYS_BENCH_DATABASE_URL"))
    parser.add_argument("--redis-url", default=os.environ.get("DRF_LLM_KEYS_BENCH_REDIS_URL"))
    parser.add_argument("--million", action="store_true", help="add the 1,000,000-key scale step (slow)")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="run one configuration only")
    args, passed_on = parser.parse_known_args()
    if args.million:
        passed_on += ["--scales", "10,10000,1000000"]

    started = time.monotonic()
    status = 0
    if args.only != "postgresql":
        with tempfile.TemporaryDirectory(prefix="drf-llm-keys-bench-") as directory:
            database = f"sqlite:///{os.path.join(directory, 'bench.sqlite3')}"
            status |= run_configuration(database, None, passed_on)
    if args.only != "sqlite":
        if args.database_url and args.redis_url:
            status |= run_configuration(args.database_url, args.redis_url, passed_on)
        else:
            print(
                "\nPostgreSQL + Redis skipped: give --database-url postgres://... and --redis-url "
                "redis://... (or DRF_LLM_KEYS_BENCH_DATABASE_URL and DRF_LLM_KEYS_BENCH_REDIS_URL)."
            )
    print(f"\nFinished in {time.monotonic() - started:.0f} s.")
    return status


def run_configuration(database_url: str, redis_url: str | None, passed_on: list[str]) -> int:
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="benchmarks.settings")
    env["DRF_LLM_KEYS_BENCH_DATABASE_URL"] = database_url
    env.pop("DRF_LLM_KEYS_BENCH_REDIS_URL", None)
    if redis_url:
        env["DRF_LLM_KEYS_BENCH_REDIS_URL"] = redis_url
    print(flush=True)
    return subprocess.run([sys.executable, "-m", "benchmarks.run", *passed_on], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
