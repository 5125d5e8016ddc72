"""Every cache key and the invalidation protocol, in one place.

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
other processes may trust their entries for at most ``CACHE_TIMEOUT`` seconds.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from django.core.cache import BaseCache, caches
from django.db import connections, transaction

from . import push
from .conf import conf

logger = logging.getLogger("drf_llm_keys")

Entry = dict[str, Any]
# (client lookup value, key prefix or None) -> {"client": ..., "key": ... or None}
Loader = Callable[[str, "str | None"], Entry]

# What a failed read "found": nothing, and no generation worth creating either.
_UNHEALTHY: dict[str, Any] = {}

# Set in an entry that must answer its own request only (see models.load_client_entry).
UNCACHEABLE = "uncacheable"

# The only isolation levels where a transaction's snapshot can predate a generation read.
_SNAPSHOT_LEVELS = {"repeatable read", "serializable"}


def get_cache() -> BaseCache:
    return caches[conf.CACHE_ALIAS]


def _client_id(value: str) -> str:
    # Hashed: lookup values may hold characters some backends refuse in keys.
    raw = f"{conf.CLIENT_LOOKUP_FIELD}={value}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:32]


def _name(kind: str, ident: str) -> str:
    return f"{conf.CACHE_KEY_PREFIX}:2:{kind}:{ident}"


def generation_prefix() -> str:
    return _name("g", "")


def generation_name(client_value: str) -> str:
    return generation_prefix() + _client_id(client_value)


def decision_name(client_value: str, prefix: str | None) -> str:
    # Prefixes are checked against crypto's pattern before they get here: safe in a key.
    return _name("d", f"{_client_id(client_value)}:{prefix or ''}")


def last_used_name(prefix: str) -> str:
    return _name("u", prefix)


def throttle_name(client_value: str, ident: str, duration: int, window: int) -> str:
    """The request counter of one key or client IP on one client, in one throttle window."""
    # Hashed: an IP may come from a client-sent X-Forwarded-For, of any length and charset.
    hashed = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return _name("t", f"{_client_id(client_value)}.{hashed}.{duration}.{window}")


def lookup(
    client_value: str, prefix: str | None, load: Loader, *, using: str, refresh: bool = False
) -> Entry:
    """The decision entry for a client and a key prefix (or none): cached, or loaded.

    No round trip when this process holds the entry and Redis has announced no change of
    its generation since (``push``); else one: the generation alone when this process holds
    the entry, or the generation and the shared entry together.
    """
    _flush_pending()
    gen_name, entry_name = generation_name(client_value), decision_name(client_value, prefix)
    held = None if refresh else _held.get(entry_name)
    channel = push.channel()
    if channel is not None and held is not None and channel.trusts(gen_name, held[0]):
        return held[1]
    mark = channel.mark() if channel is not None else None
    try:
        if held is None:
            found = get_cache().get_many([gen_name, entry_name])
        else:
            found = {gen_name: get_cache().get(gen_name)}
    except Exception:
        logger.warning("drf_llm_keys: cache read failed, using the database", exc_info=True)
        found = _UNHEALTHY
    gen = found.get(gen_name)
    if gen is not None:
        if channel is not None:
            channel.confirm(gen_name, gen, mark)
        if held is not None and held[0] == gen:
            return held[1]
        cached = found.get(entry_name)
        if not refresh and isinstance(cached, tuple) and cached[0] == gen:
            _hold(entry_name, cached)
            entry: Entry = cached[1]
            return entry
    # The generation must be known *before* the rows are read: that is what makes a late
    # write of these rows harmless after an invalidation.
    if gen is None and found is not _UNHEALTHY:
        gen = _ensure_generation(gen_name)
    entry = load(client_value, prefix)
    if gen is not None and not entry.get(UNCACHEABLE) and _fill_is_safe(using):
        _quietly(lambda: get_cache().set(entry_name, (gen, entry), conf.CACHE_TIMEOUT), "write")
        _hold(entry_name, (gen, entry))
    return entry


# Entries this process has seen, by name: checked against the shared generation on every
# use, so they save the entry's transfer, never a round trip or a revocation.
_held: OrderedDict[str, tuple[str, Entry]] = OrderedDict()
_held_lock = threading.Lock()


def _hold(entry_name: str, cached: tuple[str, Entry]) -> None:
    size = conf.LOCAL_ENTRIES
    with _held_lock:
        _held[entry_name] = cached
        _held.move_to_end(entry_name)
        while len(_held) > size:
            _held.popitem(last=False)


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
    """False inside a transaction that wrote a decision and has not committed, or whose
    snapshot may be older than the generation read.

    Under REPEATABLE READ (MySQL's, or one set in OPTIONS) a read inside an open
    transaction can return rows from before an invalidation that the reader already saw.
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        return True
    if _has_unpublished_writes(connection):
        # It may read its own uncommitted writes, and a rollback publishes nothing that
        # would retire what it cached: a rolled-back revoke would stay in force, or a
        # rolled-back "last key revoked" would open a protected client.
        return False
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


# --- last use -------------------------------------------------------------------------

# When this process last claimed each prefix: it asks the cache once per resolution.
_claimed_at: dict[str, float] = {}


def claim_last_used(prefix: str) -> bool:
    """True for the one process, per LAST_USED_RESOLUTION, that should record a use."""
    now, resolution = time.monotonic(), conf.LAST_USED_RESOLUTION
    if now - _claimed_at.get(prefix, -resolution) < resolution:
        return False
    _claimed_at[prefix] = now
    try:
        return bool(get_cache().add(last_used_name(prefix), 1, resolution))
    except Exception:
        logger.warning("drf_llm_keys: cache write failed", exc_info=True)
        return False


# --- invalidation ---------------------------------------------------------------------

# Generation keys whose new token could not be written, with when that first failed.
_pending: dict[str, float] = {}
_pending_lock = threading.Lock()
_retry_timer: threading.Timer | None = None
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class _Invalidation:
    """The ``on_commit`` callback of a write; while it waits, its transaction is dirty."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.published = False

    def __call__(self) -> None:
        self.published = True
        publish(self.names)


def invalidate(client_values: Iterable[Any], using: str) -> None:
    """Make every cached decision of these clients unusable, in every process, once the
    transaction on ``using`` commits (at once outside a transaction)."""
    names = {generation_name(str(value)) for value in client_values if value is not None}
    if names:
        transaction.on_commit(_Invalidation(names), using=using)


def _has_unpublished_writes(connection: Any) -> bool:
    # Django drops the callbacks of a rolled-back transaction or savepoint from this list.
    return any(
        isinstance(entry[1], _Invalidation) and not entry[1].published for entry in connection.run_on_commit
    )


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
    written = _quietly(lambda: get_cache().set_many(tokens, conf.CACHE_TIMEOUT), "invalidation")
    # Not left to Redis's announcement, which a failed write never sends.
    push.forget(set(failed_at))
    if written:
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
