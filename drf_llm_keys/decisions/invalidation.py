"""Invalidation: after a write commits, a new generation for each client it touched; one
that cannot be written is kept and retried, by the next lookup or by a timer."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from django.db import transaction

from ..conf import conf
from . import state, topology
from .names import generation_name
from .state import DecisionCache, get_decision_cache

logger = logging.getLogger("drf_llm_keys")

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


def has_unpublished_writes(connection: Any) -> bool:
    # Django drops the callbacks of a rolled-back transaction or savepoint from this list.
    return any(
        isinstance(entry[1], _Invalidation) and not entry[1].published for entry in connection.run_on_commit
    )


def publish(names: Iterable[str], attempt: int = 0) -> bool:
    """Write fresh generation tokens now; on failure keep them and retry later."""
    return _publish(get_decision_cache(), names, attempt)


def _publish(local: DecisionCache, names: Iterable[str], attempt: int) -> bool:
    now = time.monotonic()
    with local.pending_lock:
        # Past CACHE_TIMEOUT every entry that the lost token guarded has expired.
        retry = {n: t for n, t in local.pending.items() if now - t < conf.CACHE_TIMEOUT}
        local.pending.clear()
    failed_at = {name: now for name in names} | retry
    if not failed_at:
        return True
    tokens = {name: uuid.uuid4().hex for name in failed_at}
    # With INVALIDATION_REPLICAS, not written until that many replicas have it (topology).
    written = quietly(lambda: topology.write(state.get_cache(), tokens, conf.CACHE_TIMEOUT), "invalidation")
    # Not left to Redis's announcement, which a failed write never sends.
    local.push.forget(set(failed_at))
    if written:
        return True
    with local.pending_lock:
        local.pending.update(failed_at)
    _schedule_retry(local, attempt)
    return False


def pending_invalidations() -> frozenset[str]:
    """Generation keys whose invalidation has not reached the cache yet."""
    local = get_decision_cache()
    with local.pending_lock:
        return frozenset(local.pending)


def flush_pending(local: DecisionCache) -> None:
    if local.pending:
        _publish(local, (), 0)


def _schedule_retry(local: DecisionCache, attempt: int) -> None:
    with local.pending_lock:
        if local.retry_timer is not None or not local.pending:
            return
        delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
        local.retry_timer = threading.Timer(delay, _retry, args=(local, attempt + 1))
        local.retry_timer.daemon = True
        local.retry_timer.start()


def _retry(local: DecisionCache, attempt: int) -> None:
    with local.pending_lock:
        local.retry_timer = None
    _publish(local, (), attempt)


def quietly(operation: Callable[[], Any], what: str) -> bool:
    try:
        operation()
    except Exception:
        logger.warning("drf_llm_keys: cache %s failed", what, exc_info=True)
        return False
    return True
