"""The decision cache: every cache key and the invalidation protocol, in one package.

The protocol (generations, no stale fill, push invalidation, fail closed) is described once,
in docs/design.md ("The caching protocol").

The parts, each importing only the ones before it: ``names`` (the cache keys), ``push``
(the Redis announcement channel), ``state`` (what this process keeps, on one object per
cache alias), ``outbox`` (the clients of committed writes, until published),
``invalidation`` (new generations after a commit, retried until written), ``store`` (the
lookup) and ``entries`` (what an entry holds, loaded from the models; not
imported here, since the models import ``invalidation``).
"""

from .invalidation import invalidate, pending_invalidations, publish, wait_published
from .state import DecisionCache, Entry, get_cache, get_decision_cache, reset
from .store import lookup

__all__ = [
    "DecisionCache",
    "Entry",
    "get_cache",
    "get_decision_cache",
    "invalidate",
    "lookup",
    "pending_invalidations",
    "publish",
    "reset",
    "wait_published",
]
