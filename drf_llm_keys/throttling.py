"""Request rates per API key (per client IP on public clients), and token budgets per API key,
each one budget across processes (counted in ``windows``)."""

from __future__ import annotations

import time

from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from . import headers, usage, windows
from .authentication import CLIENT_ATTRIBUTE, LLMClientAPIKeyAuthentication
from .conf import conf
from .decisions import Entry
from .decisions.entries import client_entry
from .models import APIKey

# Importable from here as before.
parse_rate = windows.parse_rate


def key_counter_name(client_value: str, api_key: APIKey, seconds: int, window: int) -> str:
    """The request counter of a key (and the keys that replace it) on a client, in a window."""
    return windows.throttle_name(client_value, f"key:{api_key.allowance}", seconds, window)


class WindowThrottle(BaseThrottle):
    """A throttle counted in fixed windows: a refusal waits for the end of the window."""

    def __init__(self) -> None:
        self.retry_at: float | None = None

    def wait(self) -> float | None:
        return None if self.retry_at is None else max(0.0, self.retry_at - time.time())


class APIKeyRateThrottle(WindowThrottle):
    """Limit each API key's requests to an LLM client, and each IP's while the client is public.

    The rate is ``DRF_LLM_KEYS["THROTTLE_RATES"][client lookup value]``, else ``THROTTLE_RATE``
    for requests with a key and ``ANONYMOUS_THROTTLE_RATE`` for the others. Each key (or
    IP) has one budget per client, counted in fixed windows in the shared cache with an
    atomic increment, so concurrent requests in any process never overspend it. Views that
    are not an LLM client's are not throttled here.
    """

    # The authenticator whose hook finds the request's client; a subclass of it may differ.
    authentication_class = LLMClientAPIKeyAuthentication

    def allow_request(self, request: Request, view: APIView) -> bool:
        client = self.get_client(request)
        if client is None or client["id"] is None:
            return True  # not an LLM client's view, or an unknown client (a 404, or the view's)
        # The stored spelling: "BOT" for "bot" (MariaDB collations) must not get a budget of its own.
        lookup = str(client["lookup"])
        api_key = request.auth if isinstance(request.auth, APIKey) else None
        limit = parse_rate(self.get_rate(lookup, keyed=api_key is not None))
        if limit is None:
            return True
        requests, seconds = limit
        window = windows.current(seconds)
        if api_key is not None:
            name = key_counter_name(lookup, api_key, seconds, window)
        else:
            name = windows.throttle_name(lookup, f"ip:{self.get_ident(request)}", seconds, window)
        count = self.hit(name, seconds)
        if count is None:
            return True
        headers.note_limit(request, "requests", requests, requests - count, windows.end_of(window, seconds))
        if count <= requests:
            return True
        self.retry_at = windows.end_of(window, seconds)
        headers.note_refusal(request, self.retry_at)
        return False

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
        return windows.add(name, 1, timeout)


class TokenRateThrottle(WindowThrottle):
    """Refuse a key's requests once its tokens in the current window reach its budget.

    The budget is ``DRF_LLM_KEYS["TOKEN_RATES"][client lookup value]``, else ``TOKEN_RATE``
    (``"100000/minute"``: tokens per fixed window), per key and client. Tokens are counted
    by ``usage.record_tokens`` after each response, in the shared cache, so a budget spent
    in one process refuses in every other. Deciding costs one cache GET, on the views that
    list this class only. Requests without one of our keys are not limited here.
    """

    def allow_request(self, request: Request, view: APIView) -> bool:
        subject = usage.subject_of(request)
        budget = None if subject is None else usage.token_budget(subject)
        if subject is None or budget is None:
            return True
        tokens, seconds = budget
        window = windows.current(seconds)
        spent = windows.read(usage.token_counter_name(subject, seconds, window))
        # A cache outage lets requests through: a budget protects spending, not access.
        if spent is None:
            return True
        headers.note_limit(request, "tokens", tokens, tokens - spent, windows.end_of(window, seconds))
        if spent < tokens:
            return True
        self.retry_at = windows.end_of(window, seconds)
        headers.note_refusal(request, self.retry_at)
        return False
