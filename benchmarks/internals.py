"""The one place the benchmarks reach into drf_llm_keys' cache internals (to make a
request cold, or to time one step of a warm one): when those move, only this changes."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.cache import cache

from drf_llm_keys import decisions
from drf_llm_keys.decisions import Tag
from drf_llm_keys.decisions.entries import decision_query, load_decision
from drf_llm_keys.decisions.names import decision_name, generation_name
from drf_llm_keys.decisions.push import PushBackend
from drf_llm_keys.instances import api_key_from_entry

__all__ = [
    "api_key_from_entry",
    "channel",
    "decision_name",
    "decision_statements",
    "evict",
    "fill_entry",
    "generation_name",
    "held_token",
    "invalidate",
    "invalidate_unpublished",
    "load_decision",
    "lookup",
]

lookup = decisions.lookup


def channel() -> Any:
    """This process's push channel, or None (then: one GET per warm request)."""
    backend = decisions.get_decision_cache().backend
    return backend.channel() if isinstance(backend, PushBackend) else None


def held_token(entry_name: str) -> Tag:
    """The tag this process holds its entry under."""
    held = decisions.get_decision_cache().held.get(entry_name)
    assert held is not None, f"{entry_name} is not held"
    return held[0]


def fill_entry(entry_name: str, shared: Any) -> None:
    """Fill the entry again as a lookup does (with push: sent on the channel, its reply read
    later); ``shared`` is the cache's value, ``(generation, epoch, entry)``."""
    generation, epoch, entry = shared
    decisions.get_decision_cache().backend.fill(entry_name, Tag(generation, epoch), entry)


def decision_statements(slug: str, prefix: str) -> list[tuple[str, str, list[Any]]]:
    """The cold decision's SQL and its parameters, as ``load_decision`` runs them (psycopg
    prepares it after 5 runs with ``--pg-prepared``)."""
    sql, params = decision_query(slug, prefix, "default").query.sql_with_params()
    return [("through a cursor", sql, list(params))]


def invalidate(slug: str) -> None:
    """What a revocation or any other write does: a new generation for the client."""
    decisions.publish({generation_name(slug)})


def invalidate_unpublished(slug: str) -> None:
    """A new generation for the client written by another process: this one hears of it by
    the announcement (with push) or by its read. The lookup reads the new generation."""
    cache.set(generation_name(slug), uuid.uuid4().hex)


def evict(slug: str, prefix: str) -> None:
    """An empty cache for this client and key, in the cache and in this process."""
    entry = decision_name(slug, prefix)
    cache.delete_many([generation_name(slug), entry])
    decisions.get_decision_cache().held.entries.pop(entry, None)
