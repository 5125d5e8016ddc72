"""Which Redis server decides trust, and whether it is still the one an entry was filled on.

Generations are read from the **master** (django-redis ``get_client(write=True)``, the
first ``LOCATION``; Django's ``RedisCache`` the same): a replica may not have the last
invalidation yet, and a generation read there would be trusted after it.

Each decision entry is tagged with the *epoch* it was filled under, the identity of the
master's dataset: its ``run_id`` (new at every start, so also after a restart from an RDB
or AOF file older than the last invalidation) and its ``master_replid`` (new when a replica
is promoted, whatever it missed). An entry is used only under the epoch it was tagged with,
so an old generation that comes back with a snapshot or a failover is never trusted: every
decision is loaded from the database again. ``push`` learns the epoch when its channel
connects (and its connections last no longer than that server run); without a channel the
lookup reads it again at most every ``PUSH_HEARTBEAT`` seconds.

Any other cache (local memory, Memcached, the file-based one, a django-redis
``ShardClient``) has no epoch: ``""``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from django.core.cache import BaseCache
from django.core.cache.backends.redis import RedisCacheClient  # imports redis only when used

from ..conf import conf
from .names import generation_prefix

# How long an invalidation waits for INVALIDATION_REPLICAS replicas to acknowledge it.
REPLICA_WAIT_MS = 1000


class Unsupported(Exception):
    """The cache has no single master this library can ask (not Redis, or sharded)."""


def master_client(cache: BaseCache) -> Any:
    """The redis-py client of the cache's master; ``Unsupported`` for any other cache."""
    client = getattr(cache, "client", None)  # django-redis: DefaultClient and its subclasses
    if client is not None and hasattr(client, "get_client"):
        try:
            return client.get_client(write=True)
        except NotImplementedError:  # ShardClient: a server per key, none for them all
            raise Unsupported(f"{type(client).__qualname__} shards keys over several servers") from None
    if _django_redis_client(cache) is not None:
        return cache._cache.get_client(write=True)  # type: ignore[attr-defined]
    raise Unsupported(f"{type(cache).__module__}.{type(cache).__qualname__} is not Redis")


def read(cache: BaseCache, names: list[str]) -> dict[str, Any]:
    """``get_many`` on the master, for the reads that decide trust."""
    if not _may_have_master(cache):  # every other cache, on its warm path: no exception
        if len(names) == 1:  # a held entry's generation: get() costs less than get_many()
            return {names[0]: cache.get(names[0])}
        return cache.get_many(names)
    try:
        master = master_client(cache)
    except Unsupported:
        return cache.get_many(names)
    django_client = _django_redis_client(cache)
    if django_client is None:  # django-redis takes the client to use
        return cache.get_many(names, client=master)  # type: ignore[call-arg]
    # Django's RedisCache reads a replica when LOCATION lists several servers.
    keys = [cache.make_and_validate_key(name) for name in names]
    loads = django_client._serializer.loads
    return {name: loads(v) for name, v in zip(names, master.mget(keys), strict=True) if v is not None}


# Each new generation, then its token published on the tokens channel: one step, so Redis
# sends the messages just before it announces the changes (push.Channel.learn).
# KEYS: the generation keys; ARGV: the channel, the timeout, the encoded values, the tokens.
_WRITE_AND_PUBLISH = """
local n = #KEYS
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[2 + i], 'EX', ARGV[2])
  redis.call('PUBLISH', ARGV[1], KEYS[i] .. ' ' .. ARGV[2 + n + i])
end
"""


def write(cache: BaseCache, values: dict[str, str], timeout: int, publish: bool = False) -> None:
    """New generations (``set_many``). On Redis with ``publish``, each token is also
    published on ``tokens_channel``; with ``INVALIDATION_REPLICAS``, the write is
    acknowledged by that many replicas too.

    Raises if they do not acknowledge within ``REPLICA_WAIT_MS``: a master cut off from its
    replicas (a partition that ends in a failover) would lose the write.
    """
    replicas = conf.INVALIDATION_REPLICAS
    master = None
    if replicas > 0:
        master = master_client(cache)
    elif publish and _may_have_master(cache):  # any other cache: no exception
        try:
            master = master_client(cache)
        except Unsupported:  # sharded
            pass
    if master is None:
        cache.set_many(values, timeout)
        return
    # WAIT counts the writes of its own connection: one pipeline, one connection.
    pipeline = master.pipeline(transaction=False)
    encoded = [encode(cache, name, value) for name, value in values.items()]
    if publish:
        keys = [key for key, _ in encoded]
        args = [tokens_channel(cache), timeout, *(value for _, value in encoded), *values.values()]
        pipeline.eval(_WRITE_AND_PUBLISH, len(keys), *keys, *args)
    else:
        for key, value in encoded:
            pipeline.set(key, value, ex=timeout)
    if replicas > 0:
        pipeline.execute_command("WAIT", replicas, REPLICA_WAIT_MS)
    acknowledged = pipeline.execute()[-1]
    if replicas > 0 and int(acknowledged) < replicas:
        raise ConnectionError(f"{acknowledged} of {replicas} replicas acknowledged the invalidation")


def tokens_channel(cache: BaseCache) -> str:
    """Where writers publish new generation tokens. Channels are shared by every database
    of a server: the name holds the database number and the generation keys' prefix."""
    db = master_client(cache).connection_pool.connection_kwargs.get("db", 0)
    return f"drf-llm-keys:tokens:{db}:{cache.make_key(generation_prefix())}"


def epoch(cache: BaseCache) -> str:
    """The epoch of the cache's master, read now; ``""`` for a cache that has none."""
    try:
        master = master_client(cache)
    except Unsupported:
        return ""
    pipeline = master.pipeline(transaction=False)
    pipeline.info("server")
    pipeline.info("replication")
    server, replication = pipeline.execute()
    return epoch_of(server, replication)


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


def tagged(generation: str, current_epoch: str) -> str:
    """What an entry is tagged with: its generation under the epoch it was read in."""
    return f"{generation}@{current_epoch}" if current_epoch else generation


def _may_have_master(cache: BaseCache) -> bool:
    """django-redis (any client), or Django's RedisCache."""
    return hasattr(getattr(cache, "client", None), "get_client") or _django_redis_client(cache) is not None


def _django_redis_client(cache: BaseCache) -> Any:
    inner = getattr(cache, "_cache", None)
    return inner if isinstance(inner, RedisCacheClient) else None


def encode(cache: BaseCache, name: str, value: Any) -> tuple[Any, Any]:
    django_client = _django_redis_client(cache)
    if django_client is not None:
        return cache.make_and_validate_key(name), django_client._serializer.dumps(value)
    client = cache.client  # type: ignore[attr-defined]
    return client.make_key(name), client.encode(value)
