"""When a key was last used: noted with the usage counts of the process (``usage``), at no
cost to the request, and written with them, every ``USAGE_FLUSH_INTERVAL`` seconds.

A flush writes the ``last_used_at`` of every key used since the last one in one UPDATE per
``BATCH_SIZE`` keys, and never moves it back: another process may have written a later use.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db.models import Case, DateTimeField, F, Q, Value, When
from django.utils import timezone

from .models import APIKey

# Keys per UPDATE: each takes three parameters, well below every backend's limit.
BATCH_SIZE = 250


def write_last_used(uses: Mapping[Any, float], using: str) -> None:
    """Set ``last_used_at`` of these keys (by pk) to these times (``time.time()``), unless
    it is later already."""
    items = sorted(uses.items(), key=lambda item: str(item[0]))
    for start in range(0, len(items), BATCH_SIZE):
        batch = items[start : start + BATCH_SIZE]
        used_at = Case(
            *(When(pk=pk, then=Value(_as_datetime(moment))) for pk, moment in batch),
            output_field=DateTimeField(),
        )
        later = Q(last_used_at__isnull=True) | Q(last_used_at__lt=used_at)
        # The base manager's queryset: an update of last_used_at alone invalidates nothing.
        APIKey._base_manager.using(using).filter(pk__in=[pk for pk, _ in batch]).update(
            last_used_at=Case(When(later, then=used_at), default=F("last_used_at"))
        )


def _as_datetime(moment: float) -> datetime.datetime:
    aware = datetime.datetime.fromtimestamp(moment, tz=datetime.timezone.utc)
    return aware if settings.USE_TZ else timezone.make_naive(aware)
