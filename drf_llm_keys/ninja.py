"""Django Ninja's front door to the decision (``access``).

``LLMClientAPIKeyAuth()`` is one object for ``auth=`` on a ``NinjaAPI``, a ``Router`` or an
operation, sync or async alike: called by a sync operation it answers at once; called on
the event loop (an async operation) it returns a coroutine, which Ninja awaits, so a
decision this process holds is made there with no thread hop.

What ``request.auth`` is: the ``APIKey`` that authenticated the request, or ``ANONYMOUS``
for a public client's request. Ninja takes a falsy answer for a refusal, so an anonymous
request cannot be ``None`` here as it is in DRF; ``api_key_of(request)`` gives the key or
``None``.

Refusals are raised as ``Refused`` (a ``ninja.errors.HttpError``): Ninja answers them with
the status and ``{"detail": ...}`` body DRF gives them. ``add_exception_handlers(api)``
adds their headers (``WWW-Authenticate`` on a 401, ``Retry-After`` on a 429) and answers
Ninja's throttles' 429 as DRF does.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import HttpError
from ninja.errors import Throttled as NinjaThrottled
from ninja.security.base import AuthBase
from ninja.throttling import BaseThrottle
from rest_framework import exceptions

from . import limits, permissions, throttling
from .access import ClientKeyCheck, lookup_value, meta_name
from .conf import conf
from .models import APIKey

__all__ = [
    "ANONYMOUS",
    "APIKeyRateThrottle",
    "LLMClientAPIKeyAuth",
    "Refused",
    "TokenRateThrottle",
    "aadmit",
    "add_exception_handlers",
    "admit",
    "api_key_of",
    "require_model",
    "require_scopes",
]


class Anonymous:
    """``request.auth`` of a request served without a key: truthy, as Ninja needs."""

    def __repr__(self) -> str:
        return "drf_llm_keys.ninja.ANONYMOUS"


ANONYMOUS = Anonymous()

Answer = APIKey | Anonymous | None


class Refused(HttpError):
    """A refusal (a DRF ``APIException``, kept as ``refusal``) as Ninja raises errors: its
    status, its message as the body's ``detail``, and the headers DRF would send with it."""

    def __init__(self, exc: exceptions.APIException, auth_header: str | None = None) -> None:
        super().__init__(exc.status_code, str(exc.detail))
        self.refusal = exc
        self.headers: dict[str, str] = {}
        if auth_header is not None:
            self.headers["WWW-Authenticate"] = auth_header
        wait = getattr(exc, "wait", None)
        if wait is not None:
            self.headers["Retry-After"] = str(int(wait))


class LLMClientAPIKeyAuth(ClientKeyCheck, AuthBase):
    """Authenticate a Ninja operation's requests with an API key mapped to its LLM client.

    ``client``: the path parameter that names the client (default: the ``CLIENT_URL_KWARG``
    setting, read at call time), or a callable taking the request and returning the client
    (an instance or its lookup value) or ``None``; it runs where the operation runs, on the
    event loop for an async one, so it must not query there. ``scopes``: scopes the key
    must hold, else 403.

    A request whose operation names no client is not ours: ``None``, so Ninja asks the next
    ``auth`` callable, if any, and otherwise answers 401.
    """

    openapi_type = "http"
    openapi_scheme = "bearer"

    def __init__(
        self, client: str | Callable[[HttpRequest], Any] | None = None, scopes: Sequence[str] = ()
    ) -> None:
        self.client = client
        self.scopes = tuple(scopes)
        super().__init__()
        # Ninja then hands a coroutine of ours to the event loop, and uses any other answer
        # as it is: one object serves sync and async operations.
        self.is_async = True

    def __call__(self, request: HttpRequest) -> Answer | Coroutine[Any, Any, Answer]:
        client_value = self.get_client_lookup_value(request)
        if client_value is None:
            return None
        if _on_event_loop():
            return self._answer_async(request, client_value)
        try:
            return self.answer(request, self.check(request, client_value))
        except exceptions.APIException as exc:
            raise self.refusal(request, exc) from None

    async def _answer_async(self, request: HttpRequest, client_value: str) -> Answer:
        try:
            return self.answer(request, await self.acheck(request, client_value))
        except exceptions.APIException as exc:
            raise self.refusal(request, exc) from None

    def answer(self, request: HttpRequest, granted: tuple[Any, APIKey] | None) -> Answer:
        """What ``request.auth`` becomes: the key, or ``ANONYMOUS`` for a public client."""
        if granted is None:
            return ANONYMOUS
        api_key = granted[1]
        missing = permissions.missing_scopes(api_key, self.scopes)
        if missing:
            raise exceptions.PermissionDenied(
                permissions.lacks_scopes_message(missing), code="insufficient_scope"
            )
        return api_key

    def refusal(self, request: HttpRequest, exc: exceptions.APIException) -> Refused:
        unauthenticated = isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed))
        return Refused(exc, self.authenticate_header(request) if unauthenticated else None)

    def request_meta(self, request: Any) -> dict[str, Any]:
        meta: dict[str, Any] = request.META
        if "HTTP_AUTHORIZATION" in meta or meta_name(conf.HEADER) in meta:
            return meta
        # Ninja's TestClient writes a header as HTTP_Authorization, where servers (and Django's
        # test client) write HTTP_AUTHORIZATION: both are read.
        if any(name.startswith("HTTP_") and not name.isupper() for name in meta):
            return {name.upper() if name.startswith("HTTP_") else name: value for name, value in meta.items()}
        return meta

    def get_client_lookup_value(self, request: HttpRequest) -> str | None:
        """The request's client as its lookup value, or None when there is none."""
        if callable(self.client):
            return lookup_value(self.client(request))
        match = request.resolver_match
        return None if match is None else lookup_value(match.kwargs.get(self.client or conf.CLIENT_URL_KWARG))


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def api_key_of(request: HttpRequest) -> APIKey | None:
    """The key that authenticated the request; None for none (a public client's request)."""
    api_key = getattr(request, "auth", None)
    return api_key if isinstance(api_key, APIKey) else None


def require_scopes(request: HttpRequest, *names: str) -> None:
    """Raise ``Refused`` (403) unless the request's key holds every scope named; a request
    without a key (a public client's) passes, as ``permissions.HasScopes`` lets it."""
    api_key = api_key_of(request)
    missing = [] if api_key is None else permissions.missing_scopes(api_key, names)
    if missing:
        denied = exceptions.PermissionDenied(
            permissions.lacks_scopes_message(missing), code="insufficient_scope"
        )
        raise Refused(denied)


def require_model(request: HttpRequest, name: str) -> None:
    """Raise ``Refused`` (403) when the request's key may not use the model ``name``."""
    try:
        permissions.require_model(request, name)  # type: ignore[arg-type]  # it reads request.auth only
    except exceptions.PermissionDenied as exc:
        raise Refused(exc) from None


def admit(request: HttpRequest, **worst_case: Any) -> limits.Admission | None:
    """``limits.admit`` in a Ninja operation: its refusals (429, 403, 503) as ``Refused``."""
    try:
        return limits.admit(request, **worst_case)
    except exceptions.APIException as exc:
        raise Refused(exc) from None


async def aadmit(request: HttpRequest, **worst_case: Any) -> limits.Admission | None:
    """``admit`` for async operations (``limits.aadmit``)."""
    try:
        return await limits.aadmit(request, **worst_case)
    except exceptions.APIException as exc:
        raise Refused(exc) from None


class APIKeyRateThrottle(BaseThrottle):
    """``throttling.APIKeyRateThrottle`` as a Ninja throttle (``throttle=``): the same
    settings, and the same counters as the DRF views on the same clients."""

    counted_by: type[throttling.WindowThrottle] = throttling.APIKeyRateThrottle

    def __init__(self) -> None:
        # Ninja keeps one throttle per operation: each request's wait is its own.
        self._wait: contextvars.ContextVar[float | None] = contextvars.ContextVar("wait", default=None)

    def allow_request(self, request: HttpRequest) -> bool:
        throttle = self.counted_by()
        allowed = throttle.allow_request(request, None)  # type: ignore[arg-type]  # reads no view
        self._wait.set(throttle.wait())
        return allowed

    def wait(self) -> float | None:
        return self._wait.get()


class TokenRateThrottle(APIKeyRateThrottle):
    """``throttling.TokenRateThrottle`` as a Ninja throttle."""

    counted_by = throttling.TokenRateThrottle


def add_exception_handlers(api: NinjaAPI) -> None:
    """Answer ``Refused`` with its headers, and Ninja's throttles' 429 with DRF's body."""

    # Typed Any: Ninja's handler type takes the exception or its class.
    def refused(request: HttpRequest, exc: Any) -> HttpResponse:
        response = api.create_response(request, {"detail": exc.message}, status=exc.status_code)
        for name, value in exc.headers.items():
            response[name] = value
        return response

    def throttled(request: HttpRequest, exc: Any) -> HttpResponse:
        return refused(request, Refused(exceptions.Throttled(exc.wait)))

    api.add_exception_handler(Refused, refused)
    api.add_exception_handler(NinjaThrottled, throttled)
