#!/usr/bin/env python3
"""The long form of tests/test_concurrency.py: gunicorn workers serve keyed clients while a
mutator process rotates and revokes their keys, optionally with Redis stopped, paused,
flushed, restarted from an older snapshot or failed over again and again, or with the
workers reading a lagging PostgreSQL standby; every request is judged against every key
change.

    .venv/bin/python scripts/soak.py --duration 120
    DRF_LLM_KEYS_TEST_DATABASE_URL=postgres://root@127.0.0.1:5432/mydb \\
        .venv/bin/python scripts/soak.py --duration 300 --redis private --fault pause

The database is a fresh test database (``test_<name>_soak``, or a temporary SQLite file),
dropped at the end. The cache: ``--redis private`` starts a redis-server of its own on a
free port (needed for --fault); ``--redis env`` uses DRF_LLM_KEYS_TEST_REDIS_URL; ``--redis
none`` a shared file-based cache. Exit status 1 when an invariant was broken.

Faults (every --fault-every seconds, from the first 2 s on):
  stop              Redis stopped for --fault-length seconds, then started empty
  pause             Redis frozen (SIGSTOP) for --fault-length seconds
  flush             Redis emptied
  restart-snapshot  SAVE; --fault-length seconds of key changes; kill -9 and a restart on
                    the same port from that older snapshot
  failover          a master and a replica behind a TCP proxy (the address every process
                    knows): the replica's replication is cut; --fault-length seconds of key
                    changes; the master is killed, the replica promoted and the proxy moved
                    to it; a fresh replica of the new master for the next round
  lost-tracker      every process reaches Redis through a TCP proxy, which silently cuts
                    the server side of every push channel's tracking connection (a silent
                    channel is reopened 10 PUSH_HEARTBEATs later: --fault-every 15 or more)

--replica-lag SECONDS (PostgreSQL with a streaming standby, DRF_LLM_KEYS_TEST_REPLICA_URL,
see scripts/services.sh standby): the gunicorn workers read through tests/routers.py from
the standby, which replays each commit that late; the mutator writes to the primary.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.harness import Faults

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAULTS = ["none", "stop", "pause", "flush", "restart-snapshot", "failover", "lost-tracker"]
# A process whose channel is down trusts its epoch up to PUSH_HEARTBEAT (1 s by default)
# after its last check; plus the request's own time.
HEARTBEAT_GRACE = 1.5


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
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
    parser.add_argument("--fault", choices=FAULTS, default="none")
    parser.add_argument("--fault-every", type=float, default=10, help="seconds between faults (default 10)")
    parser.add_argument(
        "--fault-length",
        type=float,
        default=2,
        help="seconds a stop or pause lasts, or between a snapshot "
        "(a cut replication) and the restart (the failover) (default 2)",
    )
    parser.add_argument(
        "--redis-timeout", type=float, default=0.25, help="Redis socket timeout in the servers"
    )
    parser.add_argument(
        "--replica-lag",
        type=float,
        default=0,
        metavar="SECONDS",
        help="the workers read from the PostgreSQL standby at DRF_LLM_KEYS_TEST_REPLICA_URL, "
        "which replays each commit that late (default 0: no replica)",
    )
    args = parser.parse_args(argv)
    if args.fault != "none" and args.redis != "private":
        parser.error("--fault needs --redis private")
    if args.fault == "failover" and args.fault_every < args.fault_length + 3:
        parser.error("--fault failover needs --fault-every at least --fault-length + 3 (a new replica syncs)")
    if args.replica_lag < 0:
        parser.error("--replica-lag must be 0 or more")
    if args.replica_lag:
        if not os.environ.get("DRF_LLM_KEYS_TEST_DATABASE_URL", "").startswith("postgres"):
            parser.error("--replica-lag needs DRF_LLM_KEYS_TEST_DATABASE_URL=postgres://... (the primary)")
        if not os.environ.get("DRF_LLM_KEYS_TEST_REPLICA_URL"):
            parser.error(
                "--replica-lag needs DRF_LLM_KEYS_TEST_REPLICA_URL=postgres://root@127.0.0.1:5433 "
                "(its standby, see scripts/services.sh standby)"
            )
    return args


def main() -> int:
    args = arguments()
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.server_settings"
    os.environ["DRF_LLM_KEYS_TEST_REDIS_TIMEOUT"] = str(args.redis_timeout)
    work = Path(tempfile.mkdtemp(prefix="drf-llm-keys-soak-"))
    from tests.support.proxy import Proxy
    from tests.support.redis import MASTER_ARGS, RedisServer, start_replica

    with contextlib.ExitStack() as stack:
        redis: dict[str, Any] = {}
        if args.redis == "private":
            failover = args.fault == "failover"
            proxied = args.fault in ("failover", "lost-tracker")
            server = RedisServer(work / "redis", args=MASTER_ARGS if failover else ()).start()
            stack.callback(server.stop)
            redis["server"], url = server, server.url
            if failover:
                redis["replica"] = start_replica(work / "replica", server)
                stack.callback(redis["replica"].stop)
            if proxied:
                redis["proxy"] = Proxy(server.port)
                stack.callback(redis["proxy"].close)
                url = redis["proxy"].url
            os.environ["DRF_LLM_KEYS_TEST_REDIS_URL"] = url
        elif args.redis == "none":
            os.environ.pop("DRF_LLM_KEYS_TEST_REDIS_URL", None)
        elif "DRF_LLM_KEYS_TEST_REDIS_URL" not in os.environ:
            sys.exit("soak: --redis env needs DRF_LLM_KEYS_TEST_REDIS_URL")
        return soak(args, work, redis)


class ReplayLag:
    """Samples, every 0.5 s, how far the standby's replay is behind: the proof that the
    workers really read a stale copy."""

    def __init__(self, server: dict[str, Any]) -> None:
        import psycopg

        self.connection = psycopg.connect(**server, dbname="postgres", autocommit=True)
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(0.5):
            row = self.connection.execute(
                "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())"
            ).fetchone()
            if row and row[0] is not None:
                self.samples.append(float(row[0]))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.connection.close()

    def summary(self) -> str:
        if not self.samples:
            return "no replay lag sampled"
        ordered = sorted(self.samples)
        return (
            f"standby replay lag over {len(ordered)} samples: min {ordered[0]:.2f} s, "
            f"median {statistics.median(ordered):.2f} s, max {ordered[-1]:.2f} s"
        )


def lagging_standby(
    stack: contextlib.ExitStack, env: dict[str, str], seconds: float, clients: int
) -> tuple[dict[str, str], ReplayLag]:
    """Once the standby has the test database and its clients, make it lag ``seconds``;
    the servers' environment reading from it, and the sampler of its lag."""
    import psycopg
    from django.db import connection

    from drf_llm_keys.models import LLMClient
    from tests.support import wait_until
    from tests.support.databases import standby_delay, standby_server

    server = standby_server(os.environ["DRF_LLM_KEYS_TEST_REPLICA_URL"])
    name = str(connection.settings_dict["NAME"])

    def replicated() -> bool:
        try:
            with psycopg.connect(**server, dbname=name, autocommit=True) as copy:
                row = copy.execute(f"SELECT count(*) FROM {LLMClient._meta.db_table}").fetchone()
        except psycopg.Error:  # not there yet
            return False
        return row == (clients,)

    wait_until(replicated, 60, f"the standby has no copy of {name}")
    stack.enter_context(standby_delay(server, f"{round(seconds * 1000)}ms"))
    sampler = ReplayLag(server)
    stack.callback(sampler.close)
    return {**env, "DJANGO_SETTINGS_MODULE": "tests.replica_settings"}, sampler


def soak(args: argparse.Namespace, work: Path, redis: dict[str, Any]) -> int:
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection

    from drf_llm_keys.models import LLMClient
    from tests.support import harness

    test_settings = settings.DATABASES["default"].setdefault("TEST", {})
    if connection.vendor != "sqlite":
        test_settings["NAME"] = f"test_{settings.DATABASES['default']['NAME']}_soak"
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    sampler = None
    try:
        with contextlib.ExitStack() as stack:
            get_user_model()._default_manager.create(username="owner")
            slugs = [f"soak-{i}" for i in range(args.clients)]
            for i, slug in enumerate(slugs):
                # One in three is protected by the flag too, the others by their keys alone.
                LLMClient.objects.create(name=slug, slug=slug, require_api_key=i % 3 == 2)
            env = harness.child_environment(cache_dir=str(work / "cache"))
            server_env = None
            if args.replica_lag:
                server_env, sampler = lagging_standby(stack, env, args.replica_lag, args.clients)
            faults = make_faults(args, work, redis)
            if isinstance(faults, harness.Failovers):
                stack.callback(faults.close)
            print(
                f"soak: {args.duration:g} s, {args.workers} workers, {args.threads} threads at "
                f"{args.rate:g}/s, {connection.vendor}"
                f"{f' read from a standby {args.replica_lag:g} s behind' if args.replica_lag else ''}, "
                f"cache {args.redis}, fault {args.fault}, seed {args.seed}",
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
                server_env=server_env,
            )
    finally:
        connection.creation.destroy_test_db(connection.settings_dict["NAME"], verbosity=0)
    print("soak:", verdict.summary())
    if sampler is not None:
        print("soak:", sampler.summary())
    if faults is not None:
        fallbacks = verdict.server_log.count("cache read failed")
        print(f"soak: {faults.count} {args.fault} faults, {fallbacks} cache-read fallbacks logged")
        if faults.lost:  # what the server came back without: the faults really lost writes
            what = {
                "failover": "each promoted replica missed {} replication bytes",
                "lost-tracker": "tracking connections cut each time: {}",
            }.get(args.fault, "each restart came back without {} writes since the snapshot")
            print("soak:", what.format(", ".join(map(str, faults.lost))))
    for name in ("accepted_after_retirement", "accepted_wrong_key", "valid_refused", "server_errors"):
        for sent in getattr(verdict, name)[:5]:
            print(f"soak: {name}: {sent}")
            print(f"soak:   its key: {verdict.keys.get(sent.prefix)}")
            if faults is not None:  # the faults around it, in seconds from its start
                events = faults.events
                near = [f"{what} {at - sent.begin:+.3f}" for what, at in events if abs(at - sent.begin) < 5]
                print(f"soak:   faults nearby: {', '.join(near) or 'none'}")
    if verdict.server_errors:
        print(verdict.server_log[-5000:])
    return 1 if verdict.violations else 0


def make_faults(args: argparse.Namespace, work: Path, redis: dict[str, Any]) -> Faults | None:
    from tests.support import harness

    if args.fault == "none":
        return None
    offset = min(2.0, args.duration / 4)
    if args.fault == "failover":
        return harness.Failovers(
            redis["server"],
            redis["replica"],
            redis["proxy"],
            work,
            every=args.fault_every,
            length=args.fault_length,
            offset=offset,
            grace_from_restart=HEARTBEAT_GRACE,
        )
    if args.fault == "lost-tracker":
        return harness.LostTrackers(
            redis["server"], redis["proxy"], args.fault_every, offset, grace_from_restart=HEARTBEAT_GRACE
        )
    return harness.Faults(
        redis["server"],
        args.fault,
        every=args.fault_every,
        length=args.fault_length,
        offset=offset,
        grace_after=1.0,
        grace_from_pause=HEARTBEAT_GRACE,
        grace_from_restart=HEARTBEAT_GRACE,
    )


if __name__ == "__main__":
    sys.exit(main())
