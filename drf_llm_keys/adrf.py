"""adrf's async views with the key decided on the event loop.

adrf runs a view's ``initial()`` (authentication, permissions, throttles) in a thread, and
calls ``authenticate`` there. ``DecideOnEventLoop``, listed before adrf's view class, decides
the key first, on the event loop (``LLMClientAPIKeyAuthentication.aauthenticate``: no thread
hop for a decision the process holds), and hands the answer to the authentication that
adrf then runs: it is used as is, not decided twice.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponseBase
from rest_framework.exceptions import APIException
from rest_framework.request import Request

from .authentication import DECIDED_ATTRIBUTE, Decided, LLMClientAPIKeyAuthentication

__all__ = ["DecideOnEventLoop"]


class DecideOnEventLoop:
    """Mixin for adrf views (``class View(DecideOnEventLoop, adrf.views.APIView)``).

    Only when ``LLMClientAPIKeyAuthentication`` is the view's first authentication class:
    after another, ours runs only if that one passes, as DRF does it.
    """

    async def async_dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        authenticators = self.get_authenticators()  # type: ignore[attr-defined]
        if authenticators and isinstance(authenticators[0], LLMClientAPIKeyAuthentication):
            context = {"view": self, "args": args, "kwargs": kwargs}
            try:
                decided = Decided(
                    await authenticators[0].aauthenticate(Request(request, parser_context=context))
                )
            except APIException as exc:
                decided = Decided(None, exc)
            setattr(request, DECIDED_ATTRIBUTE, decided)
        response: HttpResponseBase = await super().async_dispatch(request, *args, **kwargs)  # type: ignore[misc]
        return response
