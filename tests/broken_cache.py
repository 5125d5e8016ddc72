"""A cache backend whose every operation raises, as a client library does when its server
is gone (django-redis without IGNORE_EXCEPTIONS raises ConnectionInterrupted)."""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.base import BaseCache


class CacheDown(ConnectionError):
    pass


class BrokenCache(BaseCache):
    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise CacheDown("cache server unreachable")

    add = get = set = touch = delete = has_key = incr = decr = _fail
    get_many = set_many = delete_many = get_or_set = clear = _fail
