"""Invalidation: after a write commits, a new generation for each client it touched; one
that cannot be written is kept and retried, by the next lookup or by a timer.

The clients are also stored in the write's transaction (``outbox``), so that a process that
dies before its cache write, or gives up on it, loses nothing: ``republish_pending()``
publishes what the outbox still holds, run by any process after one of its own publishes
(at most every ``SWEEP_INTERVAL`` seconds) and by ``llm_keys invalidate --pending``.
Publishing a client twice is harmless: a new generation only costs one reload.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..conf import conf
from . import outbox, state
from .names import generation_name
from .state import DecisionCache, get_decision_cache

logger = logging.getLogger("drf_llm_keys")

RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# A process looks for rows that others left in the outbox at most this often (seconds)...
SWEEP_INTERVAL = 10.0
# ...and leaves rows younger than this (seconds) to the process that wrote them.
SWEEP_AGE = 5.0


class CacheUnreachable(Exception):
    """New generations could not be written; they are kept and retried in this process."""


class _Invalidation:
    """The ``on_commit`` callback of a write; while it waits, its transaction is dirty."""

    def __init__(self, names: set[str], rows: list[Any], using: str) -> None:
        self.names, self.rows, self.using = names, rows, using
        self.published = False

    def __call__(self) -> None:
        self.published = True
        if not publish(self.names):
            return  # the rows stay in the outbox, for republish_pending()
        with outbox.quiet(self.using, "clear"):
            outbox.clear(self.rows, self.using)
        _sweep(get_decision_cache(), self.using)


def invalidate(client_values: Iterable[Any], using: str) -> None:
    """Make every cached decision of these clients unusable, in every process, once the
    transaction on ``using`` commits (at once outside a transaction)."""
    values = {str(value) for value in client_values if value is not None}
    if values:
        rows = outbox.record(values, using)
        names = {generation_name(value) for value in values}
        transaction.on_commit(_Invalidation(names, rows, using), using=using)


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
        # Out of ``pending`` but not written yet: wait_published() must not count them done.
        local.publishing += bool(failed_at)
    if not failed_at:
        return True
    tokens = {name: uuid.uuid4().hex for name in failed_at}
    # With INVALIDATION_REPLICAS, not written until that many replicas have it (topology).
    written = quietly(lambda: local.push.write(state.get_cache(), tokens), "invalidation")
    # Not left to Redis's announcement, which a failed write never sends.
    local.push.forget(set(failed_at))
    with local.pending_lock:
        local.publishing -= 1
        if not written:
            local.pending.update(failed_at)
    if not written:
        _schedule_retry(local, attempt)
    return written


def wait_published(timeout: float | None = None) -> bool:
    """Whether every invalidation of this process has reached the cache, retrying for up to
    ``timeout`` seconds (default ``PUBLISH_TIMEOUT``); at once when none is waiting.

    For code that must not report a change as done while other processes may still decide
    as before it: ``drf_llm_keys.keys``, the ``llm_keys`` command and the admin call it.
    """
    local = get_decision_cache()
    deadline = time.monotonic() + (conf.PUBLISH_TIMEOUT if timeout is None else timeout)
    for attempt in itertools.count():
        if local.pending:
            _publish(local, (), attempt)
        with local.pending_lock:
            if not local.pending and not local.publishing:
                return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)], remaining))
    return False


def publish_clients(client_values: Iterable[str]) -> int:
    """New generations for these clients now, in batches; returns how many. Raises
    ``CacheUnreachable`` at the first batch that cannot be written (it is kept and retried)."""
    count = 0
    batch: list[str] = []
    for value in client_values:
        batch.append(str(value))
        if len(batch) == outbox.BATCH:
            count += _publish_batch(batch)
            batch = []
    return count + (_publish_batch(batch) if batch else 0)


def _publish_batch(values: list[str]) -> int:
    if not publish({generation_name(value) for value in values}):
        raise CacheUnreachable(
            f"The cache {conf.CACHE_ALIAS!r} could not be reached to write new generations."
        )
    return len(values)


def republish_pending(using: str, older_than: float = 0.0, batches: int | None = None) -> int:
    """Publish again what the outbox on ``using`` holds from before ``older_than`` seconds
    ago, deleting it once written; returns how many rows. Raises ``CacheUnreachable``."""
    before = timezone.now() - timedelta(seconds=older_than)
    count = 0
    while batches is None or batches > 0:
        rows = outbox.due(using, before)
        if not rows:
            break
        publish_clients({value for _, value in rows})
        outbox.clear([pk for pk, _ in rows], using)
        count += len(rows)
        batches = None if batches is None else batches - 1
    return count


def _sweep(local: DecisionCache, using: str) -> None:
    """One batch of what other processes left in the outbox, at most every SWEEP_INTERVAL:
    a cost on the write path only (one indexed SELECT, usually empty)."""
    now = time.monotonic()
    if now - local.last_sweep.get(using, float("-inf")) < SWEEP_INTERVAL:
        return
    local.last_sweep[using] = now
    try:
        with outbox.quiet(using, "sweep"):
            republish_pending(using, older_than=SWEEP_AGE, batches=1)
    except CacheUnreachable:
        pass  # kept and retried by this process; the rows stay for the next sweep


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
