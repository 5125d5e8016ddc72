"""The outbox: the clients a write made stale, stored in the write's own transaction until
their new generations are in the cache.

``invalidation.invalidate()`` adds one row per client to the write's transaction; the
process that commits publishes the new generations, then deletes its rows. Rows left
behind (that process died, or could not reach the cache) are published again by
``invalidation.republish_pending()``. Only committed rows are ever seen by another
process, so nothing is published before the write it invalidates is visible.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any

from django.db import DatabaseError, connections, models, transaction

from ..models import PendingInvalidation

logger = logging.getLogger("drf_llm_keys")

# Rows per statement: within every backend's limit on query parameters.
BATCH = 500


def _rows(using: str) -> models.QuerySet[PendingInvalidation]:
    rows: models.QuerySet[PendingInvalidation] = PendingInvalidation._base_manager.using(using)
    return rows


def record(client_values: Collection[str], using: str) -> list[Any]:
    """Store these clients in the current transaction on ``using``; returns the rows' pks."""
    rows = _rows(using)
    objs = [rows.model(client_value=value) for value in client_values]
    rows.bulk_create(objs, batch_size=BATCH)
    return [obj.pk for obj in objs]


def due(using: str, before: datetime, limit: int = BATCH) -> list[tuple[Any, str]]:
    """``(pk, client value)`` of the oldest rows written before ``before``."""
    found = _rows(using).filter(created_at__lt=before).order_by("created_at")
    return list(found.values_list("pk", "client_value")[:limit])


def clear(pks: Sequence[Any], using: str) -> None:
    for start in range(0, len(pks), BATCH):
        _rows(using).filter(pk__in=pks[start : start + BATCH]).delete()


@contextmanager
def quiet(using: str, what: str) -> Iterator[None]:
    """Log a database error instead of raising it: for work that runs after a commit, where
    a raise would reach the code that committed. Rows it leaves are published again later."""
    # In a transaction (a test's, or a caller's around captured callbacks) a savepoint keeps
    # a failure from breaking it.
    in_atomic = connections[using].in_atomic_block
    try:
        with transaction.atomic(using=using) if in_atomic else nullcontext():
            yield
    except DatabaseError:
        logger.warning("drf_llm_keys: outbox %s failed", what, exc_info=True)
