"""The lookup: a decision entry from this process, from the shared cache, or loaded from the
database and filled in, with the rules that keep a fill from ever being stale."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.db import connections

from ..conf import conf
from . import state, topology
from .invalidation import flush_pending, has_unpublished_writes, quietly
from .names import decision_name, generation_name
from .push import Channel
from .state import DecisionCache, Entry, get_decision_cache

logger = logging.getLogger("drf_llm_keys")

# (client lookup value, key prefix or None) -> {"client": ..., "key": ... or None}
Loader = Callable[[str, "str | None"], Entry]

# What a failed read "found": nothing, and no generation worth creating either.
_UNHEALTHY: dict[str, Any] = {}

# Set in an entry that must answer its own request only (see entries.load_client_entry).
UNCACHEABLE = "uncacheable"

# The only isolation levels where a transaction's snapshot can predate a generation read.
_SNAPSHOT_LEVELS = {"repeatable read", "serializable"}


def lookup(
    client_value: str, prefix: str | None, load: Loader, *, using: str, refresh: bool = False
) -> Entry:
    """The decision entry for a client and a key prefix (or none): cached, or loaded.

    No round trip when this process holds the entry and Redis has announced no change of
    its generation since (``push``); else one: the generation alone when this process holds
    the entry, or the generation and the shared entry together, read from the master. An
    entry is used only under the epoch it was filled in (``topology``).
    """
    local = get_decision_cache()
    flush_pending(local)
    gen_name, entry_name = generation_name(client_value), decision_name(client_value, prefix)
    held = None if refresh else local.held.get(entry_name)
    channel = local.push.channel()
    if channel is not None and held is not None and channel.trusts(gen_name, held[0]):
        return held[1]
    mark = channel.mark() if channel is not None else None
    epoch = ""
    try:
        found = topology.read(state.get_cache(), [gen_name] if held is not None else [gen_name, entry_name])
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
            return held[1]
        cached = found.get(entry_name)
        if not refresh and isinstance(cached, tuple) and cached[0] == tag:
            _hold(local, entry_name, cached)
            entry: Entry = cached[1]
            return entry
    # The generation must be known *before* the rows are read: that is what makes a late
    # write of these rows harmless after an invalidation.
    if gen is None and found is not _UNHEALTHY:
        gen = _ensure_generation(gen_name)
        tag = None if gen is None else topology.tagged(gen, epoch)
    entry = load(client_value, prefix)
    if tag is not None and not entry.get(UNCACHEABLE) and _fill_is_safe(using):
        filled = (tag, entry)
        quietly(lambda: state.get_cache().set(entry_name, filled, conf.CACHE_TIMEOUT), "write")
        _hold(local, entry_name, filled)
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


def _hold(local: DecisionCache, entry_name: str, cached: tuple[str, Entry]) -> None:
    size = conf.LOCAL_ENTRIES
    with local.held_lock:
        local.held[entry_name] = cached
        local.held.move_to_end(entry_name)
        while len(local.held) > size:
            local.held.popitem(last=False)


def _ensure_generation(gen_name: str) -> str | None:
    try:
        cache = state.get_cache()
        token = uuid.uuid4().hex
        if cache.add(gen_name, token, conf.CACHE_TIMEOUT):
            return token
        current = topology.read(cache, [gen_name]).get(gen_name)
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
    if has_unpublished_writes(connection):
        # It may read its own uncommitted writes, and a rollback publishes nothing that
        # would retire what it cached: a rolled-back revoke would stay in force, or a
        # rolled-back "last key revoked" would open a protected client.
        return False
    level = getattr(connection, "isolation_level", None)
    name = str(getattr(level, "name", level)).lower().replace("_", " ")
    return name not in _SNAPSHOT_LEVELS
