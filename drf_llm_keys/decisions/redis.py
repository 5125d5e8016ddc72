"""Redis: generations read from the master, under its epoch, and written wherever a reader
may still be.

Reads go to the **master** (django-redis ``get_client(write=True)``, the first
``LOCATION``; Django's ``RedisCache`` the same): a replica may not have the last change yet.

The *epoch* names the master's dataset: its ``run_id`` (new at every start, so also after a
restart from a snapshot older than the last change) and its ``master_replid`` (new when a
replica is promoted, whatever it missed). A tag holds the epoch it was read under, so an old
generation that comes back with a snapshot or a failover is never trusted. Without push the
epoch is read again at most every ``PUSH_HEARTBEAT`` seconds.

Behind Sentinel a writer also writes every new generation to each server Sentinel lists:
after a failover the old master may stay up, and keep answering the readers still
connected to it, for seconds (a manual failover) or for as long as it is cut off from the
sentinels only.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from django.conf import settings
from django.core.cache import BaseCache
from django.core.cache.backends.redis import RedisCache, RedisSerializer
from django.utils.functional import cached_property
from django.utils.module_loading import import_string
from django_redis.cache import RedisCache as DjangoRedisCache
from django_redis.client import ShardClient
from redis.sentinel import SentinelConnectionPool

from ..conf import conf
from .backends import CacheBackend, Tag

logger = logging.getLogger("drf_llm_keys")

# How long a write waits for INVALIDATION_REPLICAS replicas to acknowledge it.
REPLICA_WAIT_MS = 1000


class RedisBackend(CacheBackend):
    def __init__(self, alias: str) -> None:
        super().__init__(alias)
        self.epoch_read: tuple[str, float] | None = None  # the epoch, and when it was read
        self.servers: dict[tuple[str, int], redis.Redis] = {}  # Sentinel's, by address

    @staticmethod
    def handles(cache: BaseCache) -> bool:
        """django-redis with one master (not its ShardClient), or Django's RedisCache."""
        if isinstance(cache, DjangoRedisCache):
            return not isinstance(cache.client, ShardClient)
        return isinstance(cache, RedisCache)

    def master(self) -> Any:
        """The redis-py client of the cache's master."""
        cache = self.cache
        if isinstance(cache, RedisCache):  # Django's own: its clients are its own business
            return self.own_master
        return cache.client.get_client(write=True)  # type: ignore[attr-defined]

    @cached_property
    def own_master(self) -> redis.Redis:
        """For Django's RedisCache: a client of the first LOCATION (the master), with the
        cache's OPTIONS, as the cache builds its own pools."""
        config = settings.CACHES[self.alias]
        location = config["LOCATION"]
        first = location[0] if isinstance(location, (list, tuple)) else re.split("[;,]", location)[0]
        options = dict(config.get("OPTIONS", {}))
        for name in ("serializer", "pool_class"):
            options.pop(name, None)
        if "parser" in options:
            options["parser_class"] = import_string(options.pop("parser"))
        return redis.Redis(connection_pool=redis.ConnectionPool.from_url(first, **options))

    @cached_property
    def serializer(self) -> Any:
        """For Django's RedisCache: the cache's serializer (its ``serializer`` option)."""
        chosen = settings.CACHES[self.alias].get("OPTIONS", {}).get("serializer", RedisSerializer)
        return (import_string(chosen) if isinstance(chosen, str) else chosen)()

    def read(self, gen_name: str, entry_name: str | None) -> tuple[Tag | None, Any]:
        names = [gen_name] if entry_name is None else [gen_name, entry_name]
        found = self.read_master(names)
        # After the read: the epoch must be that of the server run the read reached.
        tag = self._tag(found.get(gen_name), self.epoch())
        return tag, None if entry_name is None else found.get(entry_name)

    def read_master(self, names: list[str]) -> dict[str, Any]:
        cache, master = self.cache, self.master()
        if not isinstance(cache, RedisCache):  # django-redis takes the client to use
            return cache.get_many(names, client=master)  # type: ignore[call-arg]
        # Django's RedisCache reads a replica when LOCATION lists several servers.
        loads = self.serializer.loads
        values = master.mget([cache.make_and_validate_key(name) for name in names])
        return {name: loads(value) for name, value in zip(names, values, strict=True) if value is not None}

    def epoch(self) -> str:
        now = time.monotonic()
        known = self.epoch_read
        if known is not None and now - known[1] < conf.PUSH_HEARTBEAT:
            return known[0]
        pipeline = self.master().pipeline(transaction=False)
        pipeline.info("server")
        pipeline.info("replication")
        current = epoch_of(*pipeline.execute())
        self.epoch_read = (current, now)
        return current

    def write(self, tokens: dict[str, str], timeout: int, step: str = "generations written") -> None:
        """New generations on the master, acknowledged by ``INVALIDATION_REPLICAS`` replicas
        (a master cut off from them would lose the write in the failover); then, behind
        Sentinel, on every other server it lists, where some readers may still be."""
        encoded = [self.encode(name, value) for name, value in tokens.items()]
        pool = self.master().connection_pool
        sentinel = pool if isinstance(pool, SentinelConnectionPool) else None
        master = self.master() if sentinel is None else self.server(sentinel, self.named_master(sentinel))
        replicas = conf.INVALIDATION_REPLICAS
        acknowledged = set_all(master, encoded, timeout, replicas, lambda: self.step(step))
        if replicas > 0 and acknowledged < replicas:
            raise ConnectionError(f"{acknowledged} of {replicas} replicas acknowledged the invalidation")
        if sentinel is not None:
            for address in self.listed_replicas(sentinel):
                try:
                    set_all(self.server(sentinel, address), encoded, timeout, 0, lambda: None)
                except redis.ReadOnlyError:
                    pass  # a replica: it takes the master's writes
                except redis.RedisError as exc:
                    logger.info("drf_llm_keys: generation not written to %s:%s (%s)", *address, exc)

    def encode(self, name: str, value: Any) -> tuple[Any, Any]:
        cache = self.cache
        if isinstance(cache, RedisCache):
            return cache.make_and_validate_key(name), self.serializer.dumps(value)
        client = cache.client  # type: ignore[attr-defined]
        return client.make_key(name), client.encode(value)

    # --- Sentinel -----------------------------------------------------------------------

    def named_master(self, pool: SentinelConnectionPool) -> tuple[str, int]:
        host, port = pool.sentinel_manager.discover_master(pool.service_name)
        return str(host), int(port)

    def listed_replicas(self, pool: SentinelConnectionPool) -> list[tuple[str, int]]:
        """Every replica a sentinel lists, down or not: a demoted master is one of them."""
        for sentinel in pool.sentinel_manager.sentinels:
            try:
                listed = sentinel.sentinel_slaves(pool.service_name)
            except redis.RedisError:
                continue
            return [(str(replica["ip"]), int(replica["port"])) for replica in listed]
        return []

    def server(self, pool: SentinelConnectionPool, address: tuple[str, int]) -> redis.Redis:
        found = self.servers.get(address)
        if found is None:
            # Not its Sentinel-managed connections: these reach one address, whatever its role.
            ignored = ("host", "port", "connection_pool")
            kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in ignored}
            kwargs["connection_class"] = (
                redis.SSLConnection
                if issubclass(pool.connection_class, redis.SSLConnection)
                else redis.Connection
            )
            found = redis.Redis(
                connection_pool=redis.ConnectionPool(host=address[0], port=address[1], **kwargs)
            )
            self.servers[address] = found
        return found

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()
        if "own_master" in self.__dict__:
            self.own_master.close()


def set_all(
    server: Any, encoded: list[tuple[Any, Any]], timeout: int, replicas: int, written: Callable[[], None]
) -> int:
    """SET each pair on ``server``, sent at once; then, with ``replicas``, WAIT for them on
    the same connection (WAIT counts that connection's writes). Returns how many acknowledged."""
    client = server.client()  # one connection of the pool, held until closed
    try:
        connection = client.connection
        connection.send_packed_command(
            connection.pack_commands([("SET", key, value, "EX", timeout) for key, value in encoded])
        )
        for _ in encoded:
            client.parse_response(connection, "SET")
        written()
        if replicas <= 0:
            return 0
        return int(client.execute_command("WAIT", replicas, REPLICA_WAIT_MS))
    finally:
        client.close()


def epoch_of(server: Mapping[str, Any], replication: Mapping[str, Any]) -> str:
    if replication.get("role") != "master":
        # A LOCATION that names a replica, or a master demoted under us: nothing to trust.
        raise ConnectionError(f"the cache's server is a {replication.get('role')}, not the master")
    identity = f"{server['run_id']}/{replication['master_replid']}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def info_fields(text: Any) -> dict[str, str]:
    """The ``name:value`` lines of a raw ``INFO`` reply."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    pairs = (line.partition(":") for line in str(text).splitlines() if ":" in line)
    return {name: value.strip() for name, _, value in pairs}
