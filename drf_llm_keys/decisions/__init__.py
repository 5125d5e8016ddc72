"""The decision cache: every cache key and the invalidation protocol, in one package.

Each client (by its lookup value) has a *generation*: a random token. The decision for a
request, the client's state and the presented key's state together, is cached per
(client, key prefix) along with the generation read *before* its rows were loaded, and is
used only while that generation is still current. Every write that changes a decision
writes a new token for each client it touches, after the transaction commits, so:

* every process sees it at once (the generation lives in the shared cache);
* no stale fill: a reader that loaded rows before the invalidation tags them with the old
  token, and its late write is never trusted;
* a warm request is one round trip: the generation and the entry in one ``get_many``,
  or the generation alone when this process already holds an entry under that token;
  none at all on Redis 6+, where ``push`` has Redis announce each generation change to
  every process, so a held entry is trusted until its generation is announced changed.

A cache error never opens anything: the reader falls back to the database and logs a
warning. An invalidation that cannot be written is logged and retried; until it lands,
other processes may trust their entries for at most ``CACHE_TIMEOUT`` seconds;
``wait_published()`` tells whether it has landed. The clients of each write are also kept in
the database (``outbox``) until it lands, so a process that dies first loses nothing.

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
