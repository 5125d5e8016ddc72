"""What one process keeps of the decision cache: one ``DecisionCache`` per cache alias, built
on first use, renewed in a forked child and dropped by ``reset()``."""

from __future__ import annotations

import datetime
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from django.core.cache import BaseCache, caches

from ..conf import conf
from .backends import CacheBackend, Tag
from .push import PushBackend
from .redis import RedisBackend

Entry = dict[str, Any]


class _Slots(Mapping[str, Any]):
    """A dictionary's items as slots: a held entry is a third of the dictionaries' size.
    Read-only, and equal to a dictionary with the same items. A name it has no slot for
    (an entry of a later version) is left out."""

    __slots__ = ()
    _names: frozenset[str] = frozenset()

    def __init__(self, items: Mapping[str, Any]) -> None:
        for name, value in items.items():
            if name in self._names:
                object.__setattr__(self, name, value)

    def __getitem__(self, name: str) -> Any:
        if name in self._names:
            try:
                return getattr(self, name)
            except AttributeError:  # not set: an entry of an earlier version
                pass
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        names: tuple[str, ...] = self.__slots__
        return (name for name in names if hasattr(self, name))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a held {type(self).__name__} does not change")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"


class HeldKey(_Slots):
    """A key's entry as a process holds it (``entries.load_decision`` says what each is),
    but for its prefix, which the entry's name holds, and with the digest's 32 bytes for
    its 64 hexadecimal digits (``store.held_form``). One more field: one more name here."""

    __slots__ = (  # noqa: RUF023  # in load_decision's order, which iterating follows
        "id",
        "digest",
        "is_active",
        "expires_at",
        "name",
        "client_ids",
        "user",
        "scopes",
        "allowed_models",
        "lineage",
        "budget",
        "owner_budget",
        "max_concurrent",
    )
    _names = frozenset(__slots__)
    id: Any
    digest: bytes
    is_active: bool
    expires_at: datetime.datetime | None
    name: str
    client_ids: list[Any]
    user: Entry | None
    scopes: Any  # a list, unless an entry of an earlier version has none
    allowed_models: Any
    lineage: str
    budget: list[str] | None  # [limit, period] as text (entries._held_budget)
    owner_budget: list[str] | None
    max_concurrent: int | None


class HeldDecision(_Slots):
    """A decision entry as a process holds it: the client's state, the key's or None. (The
    marks that say how an entry is kept are read from it as loaded, and not held.)"""

    __slots__ = ("client", "key")
    _names = frozenset(__slots__)
    client: Entry
    key: HeldKey | None


Held = tuple[Tag, HeldDecision]

# Entries of presented keys that no row has, held apart and never shared: a flood of random
# keys cannot push out the entries of real ones.
UNKNOWN_KEY_ENTRIES = 1024


def backend_for(alias: str) -> CacheBackend:
    """The most the cache ``alias`` can do: chosen once, for the life of its DecisionCache."""
    cache = caches[alias]
    if not RedisBackend.handles(cache):
        return CacheBackend(alias)
    return PushBackend(alias) if conf.PUSH_INVALIDATION else RedisBackend(alias)


class HeldEntries:
    """Entries this process has used, by name, with the tag they were loaded under; least
    recently used dropped first. A held entry saves a transfer, never a check."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[str, Held] = OrderedDict()
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def get(self, name: str) -> Held | None:
        held = self.entries.get(name)
        if held is not None:
            try:
                self.entries.move_to_end(name)
            except KeyError:  # dropped by another thread since
                pass
        return held

    def put(self, name: str, held: Held) -> None:
        with self.lock:
            self.entries[name] = held
            self.entries.move_to_end(name)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)


class DecisionCache:
    """This process's part of the decision cache on one cache alias."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.backend = backend_for(alias)
        self.held = HeldEntries(conf.LOCAL_ENTRIES)
        self.unknown_keys = HeldEntries(UNKNOWN_KEY_ENTRIES)
        # Equal parts of held entries as one object (store.shared), emptied at LOCAL_ENTRIES.
        self.shared_parts: dict[Any, Any] = {}
        # Generation names whose new token could not be written, with when that first failed.
        self.pending: dict[str, float] = {}
        self.pending_lock = threading.Lock()
        self.publishing = 0  # writes of new generations under way (invalidation.wait_published)
        self.written_at = 0.0  # when the last write of generations was acknowledged
        self.last_sweep: dict[str, float] = {}  # by database alias (invalidation.sweep)
        self.retry_timer: threading.Timer | None = None
        # Per thread, as database connections are: the invalidations of open transactions.
        self.per_thread = threading.local()

    def close(self) -> None:
        """Stop the retry timer and close the backend's own connections."""
        with self.pending_lock:
            if self.retry_timer is not None:
                self.retry_timer.cancel()
                self.retry_timer = None
        self.backend.close()


class _Registry:
    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        # In a forked child: the sockets are the parent's (redis-py shuts down only its own
        # pid's), the timer thread is not there, and a lock may have been held by a thread
        # that the child does not have. Start afresh, closing nothing.
        self.lock = threading.Lock()
        self.by_alias: dict[str, DecisionCache] = {}


_registry = _Registry()
os.register_at_fork(after_in_child=_registry.renew)


def get_decision_cache(alias: str | None = None) -> DecisionCache:
    """This process's decision cache on ``alias`` (default: ``CACHE_ALIAS``)."""
    alias = conf.CACHE_ALIAS if alias is None else alias
    found = _registry.by_alias.get(alias)
    if found is None:
        with _registry.lock:
            found = _registry.by_alias.get(alias)
            if found is None:
                found = _registry.by_alias[alias] = DecisionCache(alias)
    return found


def get_cache() -> BaseCache:
    """The shared cache the library uses (``CACHE_ALIAS``), as this thread's backend sees it."""
    return get_decision_cache().backend.cache


def reset() -> None:
    """Forget what this process keeps: held entries, pending invalidations, connections.

    Run when a setting it depends on changes (``override_settings``) and between tests; the
    shared cache is left alone.
    """
    with _registry.lock:
        dropped, _registry.by_alias = list(_registry.by_alias.values()), {}
    for decision_cache in dropped:
        decision_cache.close()
