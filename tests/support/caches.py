"""Cache doubles: a backend whose every operation raises, as a client library does when its
server is gone (django-redis without IGNORE_EXCEPTIONS raises ConnectionInterrupted); and
proxies of a real cache that count its calls or fail them on demand."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.base import BaseCache

# The operations that are one round trip each on Redis.
CACHE_METHODS = ("get", "get_many", "set", "set_many", "add", "delete", "delete_many", "incr")


class CacheDown(ConnectionError):
    pass


class BrokenCache(BaseCache):
    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise CacheDown("cache server unreachable")

    add = get = set = touch = delete = has_key = incr = decr = _fail
    get_many = set_many = delete_many = get_or_set = clear = _fail


class CountingCache:
    """The real cache, with each call (one round trip on Redis) counted."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.real, name)
        if name not in CACHE_METHODS:
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return counted


class FlakyCache:
    """The real default cache, raising on every call while ``down`` is set; on Redis, its
    client too, which the library writes new generations through."""

    down = False

    def __init__(self) -> None:
        self.real = caches["default"]

    def __getattr__(self, name: str) -> Any:
        if name in ("client", "_cache") and FlakyCache.down:
            raise ConnectionError("cache is down")
        attribute = getattr(self.real, name)
        if name in CACHE_METHODS and FlakyCache.down:

            def broken(*args: Any, **kwargs: Any) -> Any:
                raise ConnectionError("cache is down")

            return broken
        return attribute
