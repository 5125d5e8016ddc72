"""Where the decision cache keeps what every process shares: one backend object per cache
alias, chosen once (``state.backend_for``) as django-redis chooses its client class.

- ``CacheBackend``: any Django cache (local memory, Memcached, the file-based one).
- ``redis.RedisBackend``: Redis, read from the master, under its epoch.
- ``push.PushBackend``: the same, with Redis announcing each change to every process.

The verbs are those of the protocol in docs/design.md: ``read`` a generation and an entry,
``trusts`` a held entry without a round trip, ``fill`` an entry, ``lease`` a first
generation, ``write`` new generations.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.cache import BaseCache, caches

from ..conf import conf

logger = logging.getLogger("drf_llm_keys")

# Seconds between two log lines about the same kind of cache fault.
FAULT_LOG_INTERVAL = 10.0
_fault_logged: dict[str, float] = {}


def log_fault(what: str, exc: BaseException) -> None:
    """One WARNING line per kind of fault and ``FAULT_LOG_INTERVAL``; the traceback at DEBUG."""
    now = time.monotonic()
    if now - _fault_logged.get(what, float("-inf")) >= FAULT_LOG_INTERVAL:
        _fault_logged[what] = now
        logger.warning("drf_llm_keys: cache %s failed (%s: %s)", what, type(exc).__name__, exc)
    logger.debug("drf_llm_keys: cache %s failed", what, exc_info=exc)


# Starts a generation a writer sets before its commit: no entry is ever filled or trusted
# under it, so nothing read while the change is in flight outlives it (invalidation.invalidate).
IN_FLIGHT = "~"


@dataclass(frozen=True, slots=True)
class Tag:
    """What an entry is trusted under: the client's generation as read, and the epoch of the
    server run it was read from (``""`` for a cache without one)."""

    generation: str
    epoch: str = ""

    @property
    def fillable(self) -> bool:
        return not self.generation.startswith(IN_FLIGHT)


class CacheBackend:
    """Any Django cache: one ``get_many`` per read, the cache's own calls for writes."""

    # Whether this backend hears of changes: then a held entry it does not trust has most
    # likely changed, and the shared one is worth reading with the generation.
    announces = False
    # How long a writer waits after its write before it may report the change as done
    # (push.PushBackend: until no process can trust the old generation any more).
    settle_seconds = 0.0

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.per_thread = threading.local()
        # A test seam: called with the name of each protocol step (docs/design.md), if set.
        self.on_step: Callable[[str], None] | None = None

    def step(self, name: str) -> None:
        if self.on_step is not None:
            self.on_step(name)

    @property
    def cache(self) -> BaseCache:
        # caches[alias] goes through asgiref's Local on every call, which costs a warm request
        # more than its decision: the same backend instance, kept per thread as Django does.
        try:
            cache: BaseCache = self.per_thread.cache
        except AttributeError:
            cache = self.per_thread.cache = caches[self.alias]
        return cache

    def read(self, gen_name: str, entry_name: str | None) -> tuple[Tag | None, Any]:
        """The client's generation and the shared entry (None when not asked or absent), in
        one round trip, from the server that decides trust."""
        if entry_name is None:
            return self._tag(self.cache.get(gen_name), ""), None
        found = self.cache.get_many([gen_name, entry_name])
        return self._tag(found.get(gen_name), ""), found.get(entry_name)

    def trusts(self, gen_name: str, tag: Tag) -> bool:
        """Whether an entry held under ``tag`` is current without asking: never, here."""
        return False

    def fill(self, entry_name: str, tag: Tag, entry: Any) -> None:
        self.cache.set(entry_name, (tag.generation, tag.epoch, entry), conf.CACHE_TIMEOUT)

    def lease(self, gen_name: str, token: str) -> None:
        """``token`` as the client's generation unless it has one: entries loaded from now on
        may be filled under it, and a change written since replaces it."""
        self.cache.add(gen_name, token, conf.CACHE_TIMEOUT)

    def write(self, tokens: dict[str, str], timeout: int, step: str = "generations written") -> None:
        """New generations; raises when they are not all written. ``step`` names the moment
        after the write (before WAIT, on Redis) for the test seam."""
        self.cache.set_many(tokens, timeout)
        self.step(step)

    def forget(self, gen_names: set[str]) -> None:
        """This process replaced these generations: trust nothing held under them."""

    def close(self) -> None:
        """Release connections of this backend's own."""

    @staticmethod
    def _tag(generation: Any, epoch: str) -> Tag | None:
        return Tag(generation, epoch) if isinstance(generation, str) else None


def entry_under(value: Any, tag: Tag) -> Any:
    """The entry of a shared ``value`` if it was filled under ``tag``, else None."""
    if isinstance(value, tuple) and len(value) == 3 and value[0] == tag.generation and value[1] == tag.epoch:
        return value[2]
    return None
