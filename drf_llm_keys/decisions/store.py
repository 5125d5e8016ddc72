"""The lookup: a decision entry from this process, from the shared cache, or loaded from the
database and filled in, with the rules that keep a fill from ever being stale."""

from __future__ import annotations

import datetime
import logging
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from django.db import connections

from ..conf import conf
from . import state, topology
from .invalidation import flush_pending, has_unpublished_writes, quietly
from .names import decision_names
from .push import LEARNED, Channel, usable
from .state import DecisionCache, Entry, get_decision_cache

logger = logging.getLogger("drf_llm_keys")

# (client lookup value, key prefix or None) -> {"client": ..., "key": ... or None}
Loader = Callable[[str, "str | None"], Entry]

# What a failed read "found": nothing, and no generation worth creating either.
_UNHEALTHY: dict[str, Any] = {}

# Set in an entry that must answer its own request only (see entries.load_decision).
UNCACHEABLE = "uncacheable"
# Set in an entry for a presented key that no row has: never written to the shared cache, and
# held apart, at most UNKNOWN_KEY_ENTRIES of them per process.
UNKNOWN_KEY = "unknown_key"
UNKNOWN_KEY_ENTRIES = 1024

# The only isolation levels where a transaction's snapshot can predate a generation read.
_SNAPSHOT_LEVELS = {"repeatable read", "serializable"}


def lookup(
    client_value: str, prefix: str | None, load: Loader, *, using: str, refresh: bool = False
) -> Entry:
    """The decision entry for a client and a key prefix (or none): cached, or loaded.

    No round trip when this process holds the entry and Redis has announced no change of
    its generation since (``push``), nor for the first entry of the client it needs after
    a change whose new generation it learned from the writer (``Channel.claim``); else
    one: the generation and the shared entry together (the generation alone for an entry
    held without push), read from the master. An entry is used only under the epoch it was
    filled in (``topology``).
    """
    local = get_decision_cache()
    flush_pending(local)
    gen_name, entry_name = decision_names(client_value, prefix)
    held = None if refresh else (local.held.get(entry_name) or local.unknown_keys.get(entry_name))
    channel = local.push.channel()
    if channel is not None and held is not None:
        known = channel.known(gen_name)
        if usable(held[0], known):
            return _used(local, entry_name, held)
        if known is not None and known.endswith(LEARNED) and channel.claim(gen_name, known):
            # Retired, and the writer's token learned: its rows, loaded now, are what the
            # token stands for (Channel.learn). A write since is announced and retires it.
            return _loaded(local, channel, (gen_name, entry_name), load(client_value, prefix), known, using)
    mark = channel.mark() if channel is not None else None
    epoch = ""
    # Without push a held entry is read here on every request: its generation alone then.
    # With push, a held entry not trusted was most likely retired: the process that loaded
    # it first may have filled the shared entry already, which saves this one the query.
    names = [gen_name, entry_name] if held is None or channel is not None else [gen_name]
    try:
        found = topology.read(state.get_cache(), names)
        # After the read: the epoch must be that of the server run the read reached.
        epoch = _epoch(local, channel)
    except Exception:
        logger.warning("drf_llm_keys: cache read failed, using the database", exc_info=True)
        found = _UNHEALTHY
    gen = found.get(gen_name)
    tag = None if gen is None else topology.tagged(gen, epoch)
    if tag is not None:
        if channel is not None:
            channel.confirm(gen_name, tag, mark)
        if held is not None and held[0] == tag:
            return _used(local, entry_name, held)
        cached = found.get(entry_name)
        if not refresh and isinstance(cached, tuple) and cached[0] == tag:
            entry: Entry = _compact(local, cached[1])
            _hold(local, local.held, entry_name, (tag, entry), conf.LOCAL_ENTRIES)
            return entry
    entry = load(client_value, prefix)
    if found is _UNHEALTHY:
        return entry
    if tag is not None:
        return _loaded(local, channel, (gen_name, entry_name), entry, tag, using)
    # Made only now, for a client that exists: an unknown one never gets a generation.
    # Made after the rows were read, so only if none was there: a write that landed
    # since the read above made one, and these rows may predate it.
    created = uuid.uuid4().hex
    tag = topology.tagged(created, epoch)
    return _loaded(local, channel, (gen_name, entry_name), entry, tag, using, created)


def _loaded(
    local: DecisionCache,
    channel: Channel | None,
    names: tuple[str, str],
    entry: Entry,
    tag: str,
    using: str,
    created: str | None = None,
) -> Entry:
    """``entry``, loaded from the database, held under ``tag`` and written to the shared
    cache (under the plain tag of a learned one), where the rules allow it; ``created``, a
    generation to make first (``SET NX``): the entry is used only if that wins."""
    if entry.get(UNCACHEABLE) or not _fill_is_safe(using):
        return entry
    gen_name, entry_name = names
    if entry.get(UNKNOWN_KEY):
        # An unknown key: kept in this process only (one is made per random key sent).
        if created is None:
            _hold(local, local.unknown_keys, entry_name, (tag, entry), UNKNOWN_KEY_ENTRIES)
        return entry
    filled = (tag.removesuffix(LEARNED), entry)
    cache = state.get_cache()
    # With a channel the fill (and the new generation before it) costs no round trip: the
    # replies are read later. Held here either way: used only once a read finds its tag.
    new = None if created is None else (gen_name, created)
    if channel is None or not channel.fill(cache, entry_name, filled, new):
        if created is not None and not _new_generation(gen_name, created):
            return entry
        quietly(lambda: cache.set(entry_name, filled, conf.CACHE_TIMEOUT), "write")
    _hold(local, local.held, entry_name, (tag, entry), conf.LOCAL_ENTRIES)
    return entry


def _epoch(local: DecisionCache, channel: Channel | None) -> str:
    """The master's epoch: the channel's while it is proven; read now when the channel has
    just failed (its server run may be what ended); without a channel, read at most every
    ``PUSH_HEARTBEAT`` seconds (the bound on trusting a restored snapshot without push)."""
    now = time.monotonic()
    if channel is not None:
        proven = channel.proven_epoch()
        if proven is not None:
            return proven
    else:
        known = local.epoch
        if known is not None and now - known[1] < conf.PUSH_HEARTBEAT:
            return known[0]
    current = topology.epoch(state.get_cache())
    local.epoch = (current, now)
    return current


def _used(local: DecisionCache, entry_name: str, held: tuple[str, Entry]) -> Entry:
    """A held entry, moved to the recently used end of its table."""
    try:
        local.held.move_to_end(entry_name)
    except KeyError:  # an unknown key's, or dropped by another thread since
        if entry_name in local.unknown_keys:
            local.unknown_keys.move_to_end(entry_name)
    return held[1]


def _hold(
    local: DecisionCache,
    table: OrderedDict[str, tuple[str, Entry]],
    entry_name: str,
    cached: tuple[str, Entry],
    size: int,
) -> None:
    with local.held_lock:
        table[entry_name] = cached
        table.move_to_end(entry_name)
        while len(table) > size:
            table.popitem(last=False)


def _compact(local: DecisionCache, value: Entry) -> Entry:
    """An entry read from the shared cache, as held: its dictionaries' keys interned (an
    unpickled entry has its own copy of every one), and its parts of plain values made
    ``shared``. About half the memory of the entry as read. An entry loaded here has
    literal keys already; ``entries.load_decision`` shares its parts itself."""
    compacted: Entry = {}
    for name, part in value.items():
        if type(part) is dict:
            part = shared(local, _compact(local, part))
        compacted[sys.intern(name)] = part
    return compacted


def shared(local: DecisionCache, part: Entry) -> Entry:
    """``part`` or an equal dictionary held already: an owner's fields, a client's state,
    one object for every entry that has them. Nothing changes a held entry, so sharing its
    parts is safe; a part with other than plain values is returned as it is."""
    values = part.values()
    if not _PLAIN.issuperset(map(type, values)):
        return part
    # Its names and their values' types (True == 1, but a client's "id" of True is not one
    # of 1): one tuple per shape of part, held once.
    shape = (*part, *map(type, values))
    table = local.shared_parts
    if len(table) >= conf.LOCAL_ENTRIES:
        table.clear()
    held: Entry = table.setdefault((table.setdefault(shape, shape), *values), part)
    return held


# Values a shared part may hold: immutable, and equal only to values of their own kind.
_PLAIN = frozenset({str, int, bool, float, type(None), datetime.datetime, datetime.date, uuid.UUID})


def _new_generation(gen_name: str, token: str) -> bool:
    """Whether ``token`` is now the client's first generation: False when one exists (or
    the cache failed)."""
    try:
        return bool(state.get_cache().add(gen_name, token, conf.CACHE_TIMEOUT))
    except Exception:
        logger.warning("drf_llm_keys: cache write failed", exc_info=True)
        return False


def _fill_is_safe(using: str) -> bool:
    """False inside a transaction that wrote a decision and has not committed, or whose
    snapshot may be older than the generation read.

    Under REPEATABLE READ (MySQL's, or one set in OPTIONS) a read inside an open
    transaction can return rows from before an invalidation that the reader already saw.
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        return True
    if has_unpublished_writes(connection):
        # It may read its own uncommitted writes, and a rollback publishes nothing that
        # would retire what it cached: a rolled-back revoke would stay in force, or a
        # rolled-back "last key revoked" would open a protected client.
        return False
    level = getattr(connection, "isolation_level", None)
    name = str(getattr(level, "name", level)).lower().replace("_", " ")
    return name not in _SNAPSHOT_LEVELS
