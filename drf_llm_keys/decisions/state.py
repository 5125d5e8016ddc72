"""What one process keeps of the decision cache: one object per cache alias, built on first
use, renewed in a forked child and dropped by ``reset()``."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

from django.core.cache import BaseCache, caches

from ..conf import conf
from .push import Push

Entry = dict[str, Any]


def get_cache() -> BaseCache:
    """The shared cache the library uses (``CACHE_ALIAS``).

    Every use goes through ``state.get_cache()``: one place to put a double (a counting or
    failing cache) in front of it.
    """
    # caches[alias] goes through asgiref's Local on every call, which costs a warm request
    # more than its decision; the same backend instance, kept per thread (as Django's own
    # handler does for sync code) until reset() or a change of CACHES drops this object.
    per_thread = get_decision_cache().per_thread
    try:
        cache: BaseCache = per_thread.cache
    except AttributeError:
        cache = per_thread.cache = caches[conf.CACHE_ALIAS]
    return cache


class DecisionCache:
    """This process's part of the decision cache on one cache alias."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        # Entries this process has seen, by name, with their generation: checked against the
        # shared generation on every use, so they save the entry's transfer, never a round
        # trip or a revocation. Least recently used first.
        self.held: OrderedDict[str, tuple[str, Entry]] = OrderedDict()
        # The same for keys no row has, which are never written to the shared cache:
        # bounded apart, so that a flood of random keys cannot push out the entries above.
        self.unknown_keys: OrderedDict[str, tuple[str, Entry]] = OrderedDict()
        self.held_lock = threading.Lock()
        # Equal parts of held entries as one object (store.shared): an owner's fields, a
        # client's state; and the shapes of parts. Emptied when it outgrows LOCAL_ENTRIES.
        self.shared_parts: dict[Any, Any] = {}
        # What entries.load_decision builds once per database: its statement and converters.
        self.queries: dict[Any, Any] = {}
        # Generation keys whose new token could not be written, with when that first failed.
        self.pending: dict[str, float] = {}
        self.pending_lock = threading.Lock()
        self.publishing = 0  # writes of new generations under way (invalidation.wait_published)
        self.last_sweep: dict[str, float] = {}  # by database alias (invalidation._sweep)
        self.retry_timer: threading.Timer | None = None
        self.push = Push()
        # The master's epoch (topology) and when it was read, for lookups without a channel.
        self.epoch: tuple[str, float] | None = None
        self.per_thread = threading.local()

    def close(self) -> None:
        """Stop the retry timer and close the push channel."""
        with self.pending_lock:
            if self.retry_timer is not None:
                self.retry_timer.cancel()
                self.retry_timer = None
        self.push.close()


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


def reset() -> None:
    """Forget what this process keeps: held entries, pending invalidations, push channels.

    Run when a setting it depends on changes (``override_settings``) and between tests; the
    shared cache is left alone.
    """
    with _registry.lock:
        dropped, _registry.by_alias = list(_registry.by_alias.values()), {}
    for decision_cache in dropped:
        decision_cache.close()
