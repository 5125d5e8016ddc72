"""The one place the benchmarks reach into drf_llm_keys' cache internals (to make a
request cold, or to time one step of a warm one): when those move, only this changes."""

from __future__ import annotations

from django.core.cache import cache

from drf_llm_keys import cache as llm_cache
from drf_llm_keys import push
from drf_llm_keys.models import api_key_from_entry, load_decision

__all__ = ["api_key_from_entry", "evict", "invalidate", "llm_cache", "load_decision", "push"]


def invalidate(slug: str) -> None:
    """What a revocation or any other write does: a new generation for the client."""
    llm_cache.publish({llm_cache.generation_name(slug)})


def evict(slug: str, prefix: str) -> None:
    """An empty cache for this client and key, in the cache and in this process (the
    last-used marker stays: no UPDATE)."""
    entry = llm_cache.decision_name(slug, prefix)
    cache.delete_many([llm_cache.generation_name(slug), entry])
    llm_cache._held.pop(entry, None)
