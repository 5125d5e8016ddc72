"""Fixed-window counters in the shared cache: the request throttle's and the token budget's.

A rate such as ``"100/minute"`` is a budget per fixed window of 60 seconds. Each window has
a counter of its own in the cache (named by ``throttle_name``, hashed, so no key or IP
appears in it), raised with an atomic increment, so every process spends the same budget.
A counter outlives its window by less than one window and is never read after it.
"""

from __future__ import annotations

import hashlib
import logging
import time

from django.core.exceptions import ImproperlyConfigured

from .decisions.names import client_id, key_name
from .decisions.state import get_cache

logger = logging.getLogger("drf_llm_keys")

# DRF's rate format: "100/minute" reads as 100 per 60 seconds.
PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """``(amount, seconds)`` of a rate such as ``"100/minute"``; None means no limit."""
    if rate is None:
        return None
    count, _, period = rate.partition("/")
    try:
        amount, seconds = int(count), PERIODS[period[:1]]
    except (ValueError, KeyError):
        amount, seconds = -1, 0
    if amount < 0:
        raise ImproperlyConfigured(
            f"Invalid DRF_LLM_KEYS throttle rate {rate!r}: use 'N/second', 'N/minute', 'N/hour' "
            "or 'N/day', or None for no limit."
        )
    return amount, seconds


def throttle_name(client_value: str, ident: str, duration: int, window: int) -> str:
    """The counter of one key or client IP on one client, in one window."""
    # Hashed: an IP may come from a client-sent X-Forwarded-For, of any length and charset.
    hashed = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return key_name("t", f"{client_id(client_value)}.{hashed}.{duration}.{window}")


def current(seconds: int) -> int:
    """The number of the window of ``seconds`` that is running now."""
    return int(time.time() // seconds)


def end_of(window: int, seconds: int) -> float:
    """When the window ends, as a ``time.time()`` value (what ``Retry-After`` counts down to)."""
    return float((window + 1) * seconds)


def add(name: str, amount: int, timeout: int) -> int | None:
    """Add ``amount`` to the counter ``name`` and return its new value; None when the cache
    cannot be reached (logged: the callers let the request through)."""
    store = get_cache()
    try:
        try:
            return int(store.incr(name, amount))
        except ValueError:  # the window's first count, or one racing with it
            if store.add(name, amount, timeout):
                return amount
            return int(store.incr(name, amount))
    except Exception:
        logger.warning("drf_llm_keys: throttle counter unavailable, not counted", exc_info=True)
        return None


def read(name: str) -> int | None:
    """The counter's value (0 before its first count); None when the cache cannot be reached."""
    try:
        return int(get_cache().get(name) or 0)
    except Exception:
        logger.warning("drf_llm_keys: throttle counter unavailable, request allowed", exc_info=True)
        return None
