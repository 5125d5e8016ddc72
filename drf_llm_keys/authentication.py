"""DRF's front door to the decision (``access``): sync views, and adrf's async views."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from .access import CLIENT_ATTRIBUTE, ClientKeyCheck, ServiceUnavailable, lookup_value
from .conf import conf
from .models import APIKey

__all__ = ["CLIENT_ATTRIBUTE", "LLMClientAPIKeyAuthentication", "ServiceUnavailable"]

# Where drf_llm_keys.adrf leaves the answer it decided on the event loop, on Django's request.
DECIDED_ATTRIBUTE = "drf_llm_keys_decided"


class Decided:
    """An answer made ahead of DRF's authentication: its result, or the refusal to raise."""

    __slots__ = ("error", "result")

    def __init__(self, result: tuple[Any, APIKey] | None, error: Exception | None = None) -> None:
        self.result, self.error = result, error

    def answer(self) -> tuple[Any, APIKey] | None:
        if self.error is not None:
            raise self.error
        return self.result


class LLMClientAPIKeyAuthentication(ClientKeyCheck, BaseAuthentication):
    """Authenticate requests to an LLM client's endpoints with an API key mapped to it.

    Returns ``None`` (anonymous, or another authenticator's turn) for views that are not
    an LLM client's and for public clients; ``(owner, api_key)`` for a valid key; raises
    for everything else on a protected client; 404 for a client that does not exist. List it
    first in ``DEFAULT_AUTHENTICATION_CLASSES``: DRF answers 401 with ``WWW-Authenticate``
    only for the first class.
    """

    def authenticate(self, request: Request) -> tuple[Any, APIKey] | None:
        decided: Decided | None = getattr(getattr(request, "_request", request), DECIDED_ATTRIBUTE, None)
        if decided is not None:  # on the event loop, before adrf's dispatch (drf_llm_keys.adrf)
            return decided.answer()
        client_value = self.get_client_lookup_value(request)
        return None if client_value is None else self.check(request, client_value)

    async def aauthenticate(self, request: Request) -> tuple[Any, APIKey] | None:
        """``authenticate`` for the event loop: no thread hop for a decision this process
        holds, one for a decision that needs the database (``ClientKeyCheck.acheck``)."""
        if _view_finds_client(request):
            # get_llm_client() is the project's code and may query: in a thread.
            return await sync_to_async(self.authenticate)(request)
        client_value = self.get_client_lookup_value(request)
        return None if client_value is None else await self.acheck(request, client_value)

    # --- hooks --------------------------------------------------------------------

    def get_client_lookup_value(self, request: Request) -> str | None:
        """The request's client as its lookup value, or None when there is none."""
        context = getattr(request, "parser_context", None) or {}
        view = context.get("view")
        if view is not None and hasattr(view, "get_llm_client"):
            return lookup_value(view.get_llm_client())  # the client, or its lookup value
        return lookup_value((context.get("kwargs") or {}).get(conf.CLIENT_URL_KWARG))


def _view_finds_client(request: Request) -> bool:
    view = (getattr(request, "parser_context", None) or {}).get("view")
    return view is not None and hasattr(view, "get_llm_client")
