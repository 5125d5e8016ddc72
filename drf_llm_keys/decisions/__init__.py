"""The decision cache: every cache key and the invalidation protocol, in one package.

The protocol is described once, in docs/design.md ("The caching protocol"). The parts, each
importing only the ones before it: ``names`` (the cache keys), ``backends`` (what a tag is,
and any Django cache), ``redis`` and ``push`` (Redis, and Redis that announces changes),
``state`` (what this process keeps, on one object per cache alias), ``outbox`` (the
clients of committed writes, until published), ``invalidation`` (new generations for a
write), ``store`` (the lookup) and ``entries`` (what an entry holds, loaded from the models).
"""

from .backends import Tag
from .entries import client_entry
from .invalidation import invalidate, pending_invalidations, publish, wait_published
from .state import DecisionCache, Entry, get_cache, get_decision_cache, reset
from .store import lookup

__all__ = [
    "DecisionCache",
    "Entry",
    "Tag",
    "client_entry",
    "get_cache",
    "get_decision_cache",
    "invalidate",
    "lookup",
    "pending_invalidations",
    "publish",
    "reset",
    "wait_published",
]
