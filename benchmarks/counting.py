"""Cache backends that count their round trips, so the figures are counted, not guessed.

Redis: every command sent on its own is one round trip, a pipeline is one however many
commands it carries. django-redis builds its client from the ``REDIS_CLIENT_CLASS``
option, so the count sits under django-redis, where the network is.

Local memory has no network: each call of the cache API counts as one "round trip",
nested calls (``get_many`` calling ``get``) once, so both backends count alike. Those
counters wrap every cache call, so they are in place only while ``counting()`` is (the
census), never while requests are timed: a dictionary lookup is cheap enough for the
wrappers to show in the timings. A Redis command's count is an addition beside a network
round trip: it stays.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

from django.core.cache.backends.locmem import LocMemCache
from redis import Redis
from redis.client import Pipeline


class RoundTrips:
    """A process-wide counter: read it before and after, divide by the requests."""

    count = 0


class CountingPipeline(Pipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        RoundTrips.count += 1
        return super().execute(raise_on_error)


class CountingRedis(Redis):
    def execute_command(self, *args: Any, **options: Any) -> Any:
        RoundTrips.count += 1
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> CountingPipeline:
        return CountingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


_depth = threading.local()


def _counted(method: Any) -> Any:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        depth = getattr(_depth, "value", 0)
        if depth == 0:
            RoundTrips.count += 1
        _depth.value = depth + 1
        try:
            return method(*args, **kwargs)
        finally:
            _depth.value = depth

    return wrapper


class CountingLocMemCache(LocMemCache):
    """A local-memory cache whose calls ``counting()`` counts."""


_COUNTED = (
    "add",
    "get",
    "set",
    "touch",
    "delete",
    "has_key",
    "incr",
    "get_many",
    "set_many",
    "delete_many",
    "get_or_set",
    "clear",
)


@contextlib.contextmanager
def counting() -> Iterator[None]:
    """Round trips counted in ``RoundTrips.count`` (Redis: always; local memory: here)."""
    for name in _COUNTED:
        setattr(CountingLocMemCache, name, _counted(getattr(LocMemCache, name)))
    try:
        yield
    finally:
        for name in _COUNTED:
            delattr(CountingLocMemCache, name)
