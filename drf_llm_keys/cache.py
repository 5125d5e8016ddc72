"""Every cache key and the invalidation protocol, in one place.

Each client (by its lookup value) and each key (by its prefix) has an *entry* and a
*generation*: a random token. An entry is stored together with the generation read
*before* its rows were loaded, and is used only while that generation is still current.
An invalidation writes a new token after the transaction commits, so:

* every process sees it at once (the generation lives in the shared cache);
* no stale fill: a reader that loaded rows before the invalidation tags them with the old
  token, and its late write is never trusted;
* a warm request is one ``get_many`` (one round trip): generations, entries and the
  last-used marker together.

A cache error never opens anything: the reader falls back to the database and logs a
warning. An invalidation that cannot be written is logged and retried; until it lands,
other processes may trust their entries for at most ``CACHE_TIMEOUT`` seconds.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from django.core.cache import BaseCache, caches
from django.db import connections, transaction

from .conf import conf

logger = logging.getLogger("drf_llm_keys")

Entry = dict[str, Any]
Loader = Callable[[], Entry]

# What a failed read "found": nothing, and no generation worth creating either.
_UNHEALTHY: dict[str, Any] = {}

# Set in an entry that must answer this request only (see models.load_client_entry).
UNCACHEABLE = "uncacheable"

# The only isolation levels where a transaction's snapshot can predate a generation read.
_SNAPSHOT_LEVELS = {"repeatable read", "serializable"}


@dataclass(frozen=True)
class Stale:
    """What a write made stale: client lookup values and key prefixes."""

    clients: frozenset[str] = field(default_factory=frozenset)
    keys: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, clients: Iterable[Any] = (), keys: Iterable[Any] = ()) -> Stale:
        return cls(
            frozenset(str(c) for c in clients if c is not None),
            frozenset(str(k) for k in keys if k is not None),
        )

    def __or__(self, other: Stale) -> Stale:
        return Stale(self.clients | other.clients, self.keys | other.keys)

    def __bool__(self) -> bool:
        return bool(self.clients or self.keys)


class Lookup(NamedTuple):
    client: Entry
    key: Entry | None
    # True when some process recorded a use of this key within LAST_USED_RESOLUTION.
    recently_used: bool


def get_cache() -> BaseCache:
    return caches[conf.CACHE_ALIAS]


def _client_id(value: str) -> str:
    # Hashed: lookup values may hold characters some backends refuse in keys.
    raw = f"{conf.CLIENT_LOOKUP_FIELD}={value}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:32]


def _name(kind: str, ident: str) -> str:
    return f"{conf.CACHE_KEY_PREFIX}:1:{kind}:{ident}"


def client_names(value: str) -> tuple[str, str]:
    """(generation, entry) cache keys of a client lookup value."""
    ident = _client_id(value)
    return _name("cg", ident), _name("c", ident)


def key_names(prefix: str) -> tuple[str, str]:
    """(generation, entry) cache keys of an API key prefix."""
    return _name("kg", prefix), _name("k", prefix)


def last_used_name(prefix: str) -> str:
    return _name("u", prefix)


def throttle_name(client_value: str, ident: str, duration: int, window: int) -> str:
    """The request counter of one key or client IP on one client, in one throttle window."""
    # Hashed: an IP may come from a client-sent X-Forwarded-For, of any length and charset.
    hashed = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return _name("t", f"{_client_id(client_value)}.{hashed}.{duration}.{window}")


def generation_names(stale: Stale) -> set[str]:
    names = {client_names(value)[0] for value in stale.clients}
    return names | {key_names(prefix)[0] for prefix in stale.keys}


def lookup(
    client_value: str,
    prefix: str | None,
    load_client: Callable[[str], Entry],
    load_key: Callable[[str], Entry],
    *,
    using: str,
    refresh: bool = False,
) -> Lookup:
    """The client's entry and, when a prefix is given, the key's: cached or loaded."""
    _flush_pending()
    client_gen, client_entry = client_names(client_value)
    names = [client_gen, client_entry]
    if prefix is not None:
        key_gen, key_entry = key_names(prefix)
        names += [key_gen, key_entry, last_used_name(prefix)]
    try:
        found = get_cache().get_many(names)
    except Exception:
        logger.warning("drf_llm_keys: cache read failed, using the database", exc_info=True)
        found = _UNHEALTHY
    healthy = found is not _UNHEALTHY

    fills: dict[str, Any] = {}
    client = None if refresh else _current(found, client_gen, client_entry)
    if client is None:
        client = _load(lambda: load_client(client_value), client_gen, client_entry, found, fills)
    key = None
    if prefix is not None:
        key = _current(found, key_gen, key_entry)
        if key is None:
            key = _load(lambda: load_key(prefix), key_gen, key_entry, found, fills)
    if healthy and fills and _fill_is_safe(using):
        _quietly(lambda: get_cache().set_many(fills, conf.CACHE_TIMEOUT), "write")
    recently_used = not healthy or (prefix is not None and last_used_name(prefix) in found)
    return Lookup(client, key, recently_used)


def _current(found: dict[str, Any], gen_name: str, entry_name: str) -> Entry | None:
    gen, cached = found.get(gen_name), found.get(entry_name)
    if gen is not None and isinstance(cached, tuple) and cached[0] == gen:
        entry: Entry = cached[1]
        return entry
    return None


def _load(
    loader: Loader, gen_name: str, entry_name: str, found: dict[str, Any], fills: dict[str, Any]
) -> Entry:
    # The generation must be known *before* the rows are read: that is what makes a late
    # write of these rows harmless after an invalidation.
    gen = found.get(gen_name)
    if gen is None and found is not _UNHEALTHY:
        gen = _ensure_generation(gen_name)
    entry = loader()
    if gen is not None and not entry.get(UNCACHEABLE):
        fills[entry_name] = (gen, entry)
    return entry


def _ensure_generation(gen_name: str) -> str | None:
    try:
        cache = get_cache()
        token = uuid.uuid4().hex
        if cache.add(gen_name, token, conf.CACHE_TIMEOUT):
            return token
        current = cache.get(gen_name)
        return current if isinstance(current, str) else None
    except Exception:
        logger.warning("drf_llm_keys: cache read failed, using the database", exc_info=True)
        return None


def _fill_is_safe(using: str) -> bool:
    """False inside a transaction whose snapshot may be older than the generation read.

    Under REPEATABLE READ (MySQL's, or one set in OPTIONS) a read inside an open
    transaction can return rows from before an invalidation that the reader already saw.
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        return True
    level = getattr(connection, "isolation_level", None)
    name = str(getattr(level, "name", level)).lower().replace("_", " ")
    return name not in _SNAPSHOT_LEVELS


def _quietly(operation: Callable[[], Any], what: str) -> bool:
    try:
        operation()
    except Exception:
        logger.warning("drf_llm_keys: cache %s failed", what, exc_info=True)
        return False
    return True


def claim_last_used(prefix: str) -> bool:
    """True for the one process, per LAST_USED_RESOLUTION, that should record a use."""
    try:
        return bool(get_cache().add(last_used_name(prefix), 1, conf.LAST_USED_RESOLUTION))
    except Exception:
        logger.warning("drf_llm_keys: cache write failed", exc_info=True)
        return False


# --- invalidation ---------------------------------------------------------------------

# Generation keys whose new token could not be written, with when that first failed.
_pending: dict[str, float] = {}
_pending_lock = threading.Lock()
_retry_timer: threading.Timer | None = None
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def invalidate(stale: Stale, using: str) -> None:
    """Make ``stale`` entries unusable in every process once the transaction commits."""
    if stale:
        transaction.on_commit(lambda: publish(generation_names(stale)), using=using)


def publish(names: Iterable[str], attempt: int = 0) -> bool:
    """Write fresh generation tokens now; on failure keep them and retry later."""
    now = time.monotonic()
    with _pending_lock:
        # Past CACHE_TIMEOUT every entry that the lost token guarded has expired.
        retry = {n: t for n, t in _pending.items() if now - t < conf.CACHE_TIMEOUT}
        _pending.clear()
    failed_at = {name: now for name in names} | retry
    if not failed_at:
        return True
    tokens = {name: uuid.uuid4().hex for name in failed_at}
    if _quietly(lambda: get_cache().set_many(tokens, conf.CACHE_TIMEOUT), "invalidation"):
        return True
    with _pending_lock:
        _pending.update(failed_at)
    _schedule_retry(attempt)
    return False


def pending_invalidations() -> frozenset[str]:
    """Generation keys whose invalidation has not reached the cache yet."""
    with _pending_lock:
        return frozenset(_pending)


def _flush_pending() -> None:
    if _pending:
        publish(())


def _schedule_retry(attempt: int) -> None:
    global _retry_timer
    with _pending_lock:
        if _retry_timer is not None or not _pending:
            return
        delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
        _retry_timer = threading.Timer(delay, _retry, args=(attempt + 1,))
        _retry_timer.daemon = True
        _retry_timer.start()


def _retry(attempt: int) -> None:
    global _retry_timer
    with _pending_lock:
        _retry_timer = None
    publish((), attempt)
