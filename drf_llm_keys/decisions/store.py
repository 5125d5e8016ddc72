"""The lookup: a decision entry held by this process, shared in the cache, or loaded from
the database and filled in, by the rules that keep a stale entry from ever being trusted
(docs/design.md, "The caching protocol")."""

from __future__ import annotations

import datetime
import sys
import uuid
from collections.abc import Callable
from typing import Any

from django.db import connections

from .backends import Tag, entry_under, log_fault
from .names import decision_names
from .state import DecisionCache, Entry, HeldDecision, HeldKey, get_decision_cache

# (client lookup value, key prefix or None) -> {"client": ..., "key": ... or None}
Loader = Callable[[str, "str | None"], Entry]

# Set in an entry that must answer its own request only (see entries.load_decision).
UNCACHEABLE = "uncacheable"
# Set in an entry for a presented key that no row has: held apart, never shared.
UNKNOWN_KEY = "unknown_key"

# The only isolation levels where a transaction's snapshot can predate a generation read.
_SNAPSHOT_LEVELS = {"repeatable read", "serializable"}


def lookup(
    client_value: str, prefix: str | None, load: Loader, *, using: str, refresh: bool = False
) -> HeldDecision:
    """The decision entry for a client and a key prefix (or none), as held (``held_form``).

    Held and trusted: no round trip (with push, while Redis announced no change). Else one
    round trip reads the generation, and the shared entry unless one is held; an entry is
    used only under the tag it was filled under. Else the rows are loaded, and filled in
    under the generation read before them. With no generation, the rows may predate a
    change whose generation was lost: they answer this request only, and a new generation
    is leased for the lookups that follow.
    """
    local = get_decision_cache()
    backend = local.backend
    gen_name, entry_name = decision_names(client_value, prefix)
    held = None if refresh else (local.held.get(entry_name) or local.unknown_keys.get(entry_name))
    if held is not None and backend.trusts(gen_name, held[0]):
        return held[1]
    try:
        tag, shared = backend.read(gen_name, entry_name if held is None or backend.announces else None)
    except Exception as exc:  # fail closed: the database decides, and nothing is kept
        log_fault("read", exc)
        return held_form(local, load(client_value, prefix))
    backend.step("generation read")
    if tag is not None and held is not None and held[0] == tag:
        return held[1]
    if tag is not None and not refresh:
        cached = entry_under(shared, tag)
        if cached is not None:
            entry = held_form(local, cached)
            local.held.put(entry_name, (_shared_tag(local, tag), entry))
            return entry
    loaded = load(client_value, prefix)
    backend.step("rows read")
    entry = held_form(local, loaded)
    if loaded.get(UNCACHEABLE):
        return entry
    if tag is None:
        _lease(local, gen_name)
    elif tag.fillable and _fill_is_safe(local, using):
        _fill(local, entry_name, _shared_tag(local, tag), loaded, entry)
    return entry


def _fill(local: DecisionCache, entry_name: str, tag: Tag, loaded: Entry, entry: HeldDecision) -> None:
    if loaded.get(UNKNOWN_KEY):  # one per random key sent: kept here, bounded apart
        local.unknown_keys.put(entry_name, (tag, entry))
        return
    backend = local.backend
    backend.step("before fill")
    try:
        backend.fill(entry_name, tag, loaded)
    except Exception as exc:
        log_fault("write", exc)
    backend.step("after fill")
    # Held either way: used only while a read (or the channel) finds its tag current.
    local.held.put(entry_name, (tag, entry))


def _lease(local: DecisionCache, gen_name: str) -> None:
    try:
        local.backend.lease(gen_name, uuid.uuid4().hex)
    except Exception as exc:
        log_fault("write", exc)
    local.backend.step("leased")


def held_form(local: DecisionCache, entry: Entry) -> HeldDecision:
    """An entry as this process holds it: slots, not dictionaries (``state.HeldKey``), the
    digest's bytes, and each part equal to another entry's part one object (``shared``): an
    owner's fields, a client's state, a key's restriction lists, the tag. (Read from the
    shared cache, each entry has its own copy of them until then.)"""
    key = entry.get("key")
    if key is not None:
        parts = {name: _part(local, value) for name, value in key.items()}
        parts["digest"] = bytes.fromhex(key["digest"])
        key = HeldKey(parts)
    return HeldDecision({**entry, "client": _part(local, entry["client"]), "key": key})


def _part(local: DecisionCache, value: Any) -> Any:
    if type(value) is dict:
        return shared(local, {sys.intern(name): part for name, part in value.items()})
    if type(value) is list and _PLAIN.issuperset(map(type, value)):
        # Nothing changes a held list (api_key_from_entry copies them): equal ones are one.
        return _intern(local, (list, len(value), *map(type, value), *value), value)
    return value


def _shared_tag(local: DecisionCache, tag: Tag) -> Tag:
    # The client's entries are held under one tag, and one copy of its generation.
    held: Tag = _intern(local, (Tag, tag.generation, tag.epoch), tag)
    return held


def _intern(local: DecisionCache, name: tuple[Any, ...], value: Any) -> Any:
    table = local.shared_parts
    if len(table) >= local.held.size:
        table.clear()
    return table.setdefault(name, value)


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
    held: Entry = _intern(local, (local.shared_parts.setdefault(shape, shape), *values), part)
    return held


# Values a shared part may hold: immutable, and equal only to values of their own kind.
_PLAIN = frozenset({str, int, bool, float, type(None), datetime.datetime, datetime.date, uuid.UUID})


def _fill_is_safe(local: DecisionCache, using: str) -> bool:
    """False inside a transaction that wrote a decision and has not committed, or whose
    snapshot may be older than the generation read.

    Under REPEATABLE READ (MySQL's, or one set in OPTIONS) a read inside an open
    transaction can return rows from before an invalidation that the reader already saw.
    """
    connection = connections[using]
    unpublished: dict[str, Any] = local.per_thread.__dict__.setdefault("unpublished", {})
    if not connection.in_atomic_block:
        unpublished.pop(using, None)  # every transaction that wrote has ended
        return True
    # Its own uncommitted writes may be in the rows, and a rollback publishes nothing.
    if any(not invalidation.published for invalidation in unpublished.get(using, ())):
        return False
    level = getattr(connection, "isolation_level", None)
    name = str(getattr(level, "name", level)).lower().replace("_", " ")
    return name not in _SNAPSHOT_LEVELS
