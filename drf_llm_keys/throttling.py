"""Request rates per API key (per client IP on public clients), one budget across processes."""

from __future__ import annotations

import hashlib
import logging
import time

from django.core.exceptions import ImproperlyConfigured
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from .authentication import CLIENT_ATTRIBUTE, LLMClientAPIKeyAuthentication
from .conf import conf
from .decisions import Entry, state
from .decisions.entries import client_entry
from .decisions.names import client_id, key_name
from .models import APIKey

logger = logging.getLogger("drf_llm_keys")

# DRF's rate format: "100/minute" reads as 100 requests per 60 seconds.
PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def throttle_name(client_value: str, ident: str, duration: int, window: int) -> str:
    """The request counter of one key or client IP on one client, in one throttle window."""
    # Hashed: an IP may come from a client-sent X-Forwarded-For, of any length and charset.
    hashed = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return key_name("t", f"{client_id(client_value)}.{hashed}.{duration}.{window}")


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """``(requests, seconds)`` of a rate such as ``"100/minute"``; None means no limit."""
    if rate is None:
        return None
    count, _, period = rate.partition("/")
    try:
        requests, seconds = int(count), PERIODS[period[:1]]
    except (ValueError, KeyError):
        requests, seconds = -1, 0
    if requests < 0:
        raise ImproperlyConfigured(
            f"Invalid DRF_LLM_KEYS throttle rate {rate!r}: use 'N/second', 'N/minute', 'N/hour' "
            "or 'N/day', or None for no limit."
        )
    return requests, seconds


class APIKeyRateThrottle(BaseThrottle):
    """Limit each API key's requests to an LLM client, and each IP's while the client is public.

    The rate is ``DRF_LLM_KEYS["THROTTLE_RATES"][client lookup value]``, else ``THROTTLE_RATE``
    for requests with a key and ``ANONYMOUS_THROTTLE_RATE`` for the others. Each key (or
    IP) has one budget per client, counted in fixed windows in the shared cache with an
    atomic increment, so concurrent requests in any process never overspend it. Views that
    are not an LLM client's are not throttled here.
    """

    # The authenticator whose hook finds the request's client; a subclass of it may differ.
    authentication_class = LLMClientAPIKeyAuthentication

    def __init__(self) -> None:
        self.retry_at: float | None = None

    def allow_request(self, request: Request, view: APIView) -> bool:
        client = self.get_client(request)
        if client is None or client["id"] is None:
            return True  # not an LLM client's view, or an unknown client (the view's 404)
        # The stored spelling: "BOT" for "bot" (MariaDB collations) must not get a budget of its own.
        lookup = str(client["lookup"])
        api_key = request.auth if isinstance(request.auth, APIKey) else None
        limit = parse_rate(self.get_rate(lookup, keyed=api_key is not None))
        if limit is None:
            return True
        requests, seconds = limit
        ident = f"key:{api_key.prefix}" if api_key is not None else f"ip:{self.get_ident(request)}"
        window = int(time.time() // seconds)
        count = self.hit(throttle_name(lookup, ident, seconds, window), seconds)
        if count is None or count <= requests:
            return True
        self.retry_at = (window + 1) * seconds
        return False

    def wait(self) -> float | None:
        return None if self.retry_at is None else max(0.0, self.retry_at - time.time())

    def get_client(self, request: Request) -> Entry | None:
        """The request's client entry: the one the authenticator found, else looked up."""
        found: Entry | None = getattr(request, CLIENT_ATTRIBUTE, None)
        if found is not None:
            return found
        client_value = self.authentication_class().get_client_lookup_value(request)
        return None if client_value is None else client_entry(client_value)

    def get_rate(self, client_value: str, keyed: bool) -> str | None:
        rates = conf.THROTTLE_RATES
        if client_value in rates:
            return rates[client_value]
        return conf.THROTTLE_RATE if keyed else conf.ANONYMOUS_THROTTLE_RATE

    def hit(self, name: str, timeout: int) -> int | None:
        """Count one request in the window ``name``; None when the cache cannot be reached.

        A cache outage lets requests through: throttling protects capacity, the key check
        (which fails closed) protects access.
        """
        store = state.get_cache()
        try:
            try:
                return int(store.incr(name))
            except ValueError:  # the window's first request, or one racing with it
                if store.add(name, 1, timeout):
                    return 1
                return int(store.incr(name))
        except Exception:
            logger.warning("drf_llm_keys: throttle counter unavailable, request not counted", exc_info=True)
            return None
