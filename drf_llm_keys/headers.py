"""OpenAI's rate-limit headers on the responses of limited requests, and ``retry-after-ms``
on a rate's 429 (the ``openai`` client prefers it to ``Retry-After``).

The throttles note what they counted on the request (``note_limit``, ``note_refusal``);
``middleware.LimitsMiddleware`` writes it on the response: ``x-ratelimit-limit-requests``,
``x-ratelimit-remaining-requests``, ``x-ratelimit-reset-requests`` and the same three for
``-tokens``. A request no throttle counted (no rate, a cache outage) gets none of them.
"""

from __future__ import annotations

import math
import time
from typing import Any

from django.http import HttpRequest, HttpResponseBase

# Where the throttles leave what they counted, on Django's request (DRF's reads through).
LIMITS_ATTRIBUTE = "drf_llm_keys_limits"
RETRY_AT_ATTRIBUTE = "drf_llm_keys_retry_at"
# Headers a refusal asks for as they are (drf_llm_keys.limits).
EXTRA_ATTRIBUTE = "drf_llm_keys_headers"


def _django_request(request: Any) -> Any:
    return getattr(request, "_request", request)


def note_limit(request: Any, kind: str, limit: int, remaining: int, reset_at: float) -> None:
    """A throttle counted ``kind`` ("requests" or "tokens") for this request."""
    target = _django_request(request)
    limits = getattr(target, LIMITS_ATTRIBUTE, None)
    if limits is None:
        limits = {}
        setattr(target, LIMITS_ATTRIBUTE, limits)
    limits[kind] = (limit, max(0, remaining), reset_at)


def note_refusal(request: Any, retry_at: float) -> None:
    """A throttle refused the request until ``retry_at`` (a ``time.time()`` value)."""
    target = _django_request(request)
    setattr(target, RETRY_AT_ATTRIBUTE, max(retry_at, getattr(target, RETRY_AT_ATTRIBUTE, 0.0)))


def note_headers(request: Any, **values: str) -> None:
    """Headers for the response as they are: ``x-should-retry`` of a spent budget."""
    target = _django_request(request)
    extra = getattr(target, EXTRA_ATTRIBUTE, None)
    if extra is None:
        extra = {}
        setattr(target, EXTRA_ATTRIBUTE, extra)
    extra.update({name.replace("_", "-"): value for name, value in values.items()})


def reset_text(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: "1s", "6m0s", "1h0m0s"."""
    seconds = max(0.0, seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, rest = divmod(rest, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


def add_headers(request: HttpRequest, response: HttpResponseBase) -> None:
    now = time.time()
    for kind, (limit, remaining, reset_at) in getattr(request, LIMITS_ATTRIBUTE, {}).items():
        response[f"x-ratelimit-limit-{kind}"] = str(limit)
        response[f"x-ratelimit-remaining-{kind}"] = str(remaining)
        response[f"x-ratelimit-reset-{kind}"] = reset_text(reset_at - now)
    for name, value in getattr(request, EXTRA_ATTRIBUTE, {}).items():
        response[name] = value
    retry_at = getattr(request, RETRY_AT_ATTRIBUTE, None)
    if retry_at is not None and response.status_code == 429:
        wait = max(0.0, retry_at - now)
        response["retry-after-ms"] = str(math.ceil(wait * 1000))
        if not response.has_header("Retry-After"):
            response["Retry-After"] = str(math.ceil(wait))
