"""Invalidation: a write that changes a decision gives each client it touched a new generation.

Three moments (docs/design.md, "An invalidation"):
1. In the write's transaction: the clients are stored in the outbox, and each generation is
   set to an *in-flight* value (``backends.IN_FLIGHT``) under which nothing is ever filled
   or trusted. Whatever a reader loads while the change is uncommitted answers its own
   request only, and a writer that dies after its commit has already retired every entry.
2. After the commit: a fresh token per generation, written to the master (and, behind
   Sentinel, to every server it lists); the outbox rows are deleted. A write that fails is
   kept and retried, by a timer and by the next write.
3. ``wait_published()``: the code that reports a change as done (``drf_llm_keys.keys``, the
   command, the admin) waits until the tokens are written and, with push, one heartbeat
   more, after which no process can still trust an entry of the old generation.

Rows left in the outbox (a process that died, or could not reach the cache) are published
by any process after its own publish, at most every ``SWEEP_INTERVAL`` seconds, and by every
``llm_keys`` command; publishing a client twice only costs one reload.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from ..conf import conf
from . import outbox
from .backends import IN_FLIGHT, log_fault
from .names import generation_name
from .state import DecisionCache, get_decision_cache

RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# A process looks for rows that others left in the outbox at most this often (seconds)...
SWEEP_INTERVAL = 10.0
# ...and leaves rows younger than this (seconds) to the process that wrote them.
SWEEP_AGE = 5.0
# Seconds an in-flight generation lives if its writer never replaces it (a rollback, a crash).
IN_FLIGHT_TIMEOUT = 60


class CacheUnreachable(Exception):
    """New generations could not be written; they are kept and retried in this process."""


class _Invalidation:
    """The ``on_commit`` callback of a write; while it waits, its transaction is dirty."""

    def __init__(self, names: set[str], rows: list[Any], using: str) -> None:
        self.names, self.rows, self.using = names, rows, using
        self.published = False

    def __call__(self) -> None:
        self.published = True
        local = get_decision_cache()
        local.backend.step("committed")
        if not _publish(local, self.names, 0):
            return  # the rows stay in the outbox
        with outbox.quiet(self.using, "clear"):
            outbox.clear(self.rows, self.using)
        _sweep(local, self.using)


def invalidate(client_values: Iterable[Any], using: str) -> None:
    """Make every cached decision of these clients unusable, in every process, once the
    transaction on ``using`` commits (at once outside a transaction)."""
    values = {str(value) for value in client_values if value is not None}
    if not values:
        return
    local = get_decision_cache()
    rows = outbox.record(values, using)
    names = {generation_name(value) for value in values}
    callback = _Invalidation(names, rows, using)
    unpublished = local.per_thread.__dict__.setdefault("unpublished", {})
    if not connections[using].in_atomic_block:
        unpublished.pop(using, None)  # every transaction that wrote has ended
    else:
        in_flight = {name: IN_FLIGHT + uuid.uuid4().hex for name in names}
        try:
            local.backend.write(in_flight, IN_FLIGHT_TIMEOUT, step="in flight written")
        except Exception as exc:  # the commit's write and the outbox still stand
            log_fault("invalidation", exc)
        local.backend.forget(names)
        unpublished.setdefault(using, []).append(callback)
    transaction.on_commit(callback, using=using)


def publish(names: Iterable[str]) -> bool:
    """Write fresh generation tokens now; on failure keep them and retry later."""
    return _publish(get_decision_cache(), names, 0)


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
    written = True
    try:
        local.backend.write({name: uuid.uuid4().hex for name in failed_at}, conf.CACHE_TIMEOUT)
    except Exception as exc:
        log_fault("invalidation", exc)
        written = False
    local.backend.forget(set(failed_at))
    with local.pending_lock:
        local.publishing -= 1
        if written:
            local.written_at = time.monotonic()
        else:
            local.pending.update(failed_at)
    if not written:
        _schedule_retry(local, attempt)
    return written


def wait_published(timeout: float | None = None) -> bool:
    """Whether every invalidation of this process has taken effect in every process,
    retrying for up to ``timeout`` seconds (default ``PUBLISH_TIMEOUT``).

    Written, and with push one ``PUSH_HEARTBEAT`` later: the moment from which no process
    can trust the old generation. For code that must not report a change as done before:
    ``drf_llm_keys.keys``, the ``llm_keys`` command and the admin call it.
    """
    local = get_decision_cache()
    deadline = time.monotonic() + (conf.PUBLISH_TIMEOUT if timeout is None else timeout)
    for attempt in itertools.count():
        if local.pending:
            _publish(local, (), attempt)
        with local.pending_lock:
            done = not local.pending and not local.publishing
        if done:
            settled = local.written_at + local.backend.settle_seconds - time.monotonic()
            if settled > 0:
                time.sleep(settled)
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)], remaining))
    return False  # pragma: no cover  # the loop returns


def publish_clients(client_values: Iterable[str]) -> int:
    """New generations for these clients now, in batches; returns how many. Raises
    ``CacheUnreachable`` at the first batch that cannot be written (it is kept and retried)."""
    count = 0
    values = iter(client_values)
    while batch := list(itertools.islice(values, outbox.BATCH)):
        if not publish({generation_name(str(value)) for value in batch}):
            raise CacheUnreachable(
                f"The cache {conf.CACHE_ALIAS!r} could not be reached to write new generations."
            )
        count += len(batch)
    return count


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
    """Generation names whose invalidation has not reached the cache yet."""
    local = get_decision_cache()
    with local.pending_lock:
        return frozenset(local.pending)


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
