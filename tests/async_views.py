"""adrf's async views and a Django Ninja API over the same decision as tests/views.py."""

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from adrf.views import APIView as AsyncAPIView
from django.http import HttpRequest, StreamingHttpResponse
from ninja import NinjaAPI, Router
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from drf_llm_keys import usage
from drf_llm_keys.adrf import DecideOnEventLoop
from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication
from drf_llm_keys.ninja import (
    APIKeyRateThrottle,
    LLMClientAPIKeyAuth,
    aadmit,
    add_exception_handlers,
    admit,
    api_key_of,
    require_model,
    require_scopes,
)
from drf_llm_keys.permissions import HasScopes
from drf_llm_keys.permissions import require_model as drf_require_model
from drf_llm_keys.throttling import APIKeyRateThrottle as DRFAPIKeyRateThrottle


def described(api_key: Any, client: str, user: Any = None) -> dict[str, Any]:
    """What every echo answers: whose request it served, to check for crossovers."""
    return {
        "key": getattr(api_key, "prefix", None),
        "client": client,
        "scopes": getattr(api_key, "scopes", None),
        "user": None if user is None else user.get_username() or None,
    }


# --- adrf ------------------------------------------------------------------------------


class AdrfEcho(AsyncAPIView):
    """adrf as it is: it runs authentication (ours, sync) in a thread."""

    authentication_classes = [LLMClientAPIKeyAuthentication]
    permission_classes = [AllowAny]

    async def get(self, request: Request, llm_client: str) -> Response:
        return Response(described(request.auth, llm_client, request.user))


class AsyncEcho(DecideOnEventLoop, AdrfEcho):
    """The key decided on the event loop."""


class AsyncScopedEcho(AsyncEcho):
    permission_classes = [HasScopes]
    required_scopes = ["chat", "files"]


class AsyncModelEcho(AsyncEcho):
    async def get(self, request: Request, llm_client: str) -> Response:
        drf_require_model(request, request.query_params.get("model", ""))
        return Response(described(request.auth, llm_client, request.user))


class AsyncLimitedEcho(AsyncEcho):
    throttle_classes = [DRFAPIKeyRateThrottle]


class AsyncTokenEcho(AsyncEcho):
    async def get(self, request: Request, llm_client: str) -> Response:
        usage.record_tokens(request, prompt_tokens=int(request.query_params.get("prompt", 0)))
        return Response(described(request.auth, llm_client, request.user))


# --- Django Ninja ------------------------------------------------------------------------

auth = LLMClientAPIKeyAuth()
api = NinjaAPI(urls_namespace="tests-ninja", auth=auth)
add_exception_handlers(api)


@api.get("/clients/{llm_client}/sync/")
def sync_echo(request: HttpRequest, llm_client: str) -> dict[str, Any]:
    return described(api_key_of(request), llm_client)


@api.get("/clients/{llm_client}/async/")
async def async_echo(request: HttpRequest, llm_client: str) -> dict[str, Any]:
    return described(api_key_of(request), llm_client)


@api.get("/clients/{llm_client}/auth/")
async def auth_is(request: HttpRequest, llm_client: str) -> dict[str, Any]:
    return {"auth": repr(request.auth), "is_key": api_key_of(request) is not None}


@api.get("/scoped/{llm_client}/", auth=LLMClientAPIKeyAuth(scopes=["chat", "files"]))
async def scoped_echo(request: HttpRequest, llm_client: str) -> dict[str, Any]:
    return described(api_key_of(request), llm_client)


@api.get("/scoped-in-view/{llm_client}/")
def scoped_in_view(request: HttpRequest, llm_client: str) -> dict[str, Any]:
    require_scopes(request, "chat")
    return described(api_key_of(request), llm_client)


@api.get("/models/{llm_client}/")
async def model_echo(request: HttpRequest, llm_client: str, model: str = "") -> dict[str, Any]:
    require_model(request, model)
    return {"model": model}


@api.get("/limited/{llm_client}/sync/", throttle=APIKeyRateThrottle())
def limited_sync(request: HttpRequest, llm_client: str) -> dict[str, Any]:
    return described(api_key_of(request), llm_client)


@api.get("/limited/{llm_client}/async/", throttle=APIKeyRateThrottle())
async def limited_async(request: HttpRequest, llm_client: str) -> dict[str, Any]:
    return described(api_key_of(request), llm_client)


@api.get("/tokens/{llm_client}/")
async def token_echo(request: HttpRequest, llm_client: str, prompt: int = 0) -> dict[str, Any]:
    usage.record_tokens(request, prompt_tokens=prompt)
    return described(api_key_of(request), llm_client)


@api.get("/admitted/{llm_client}/sync/")
def admitted_sync(
    request: HttpRequest, llm_client: str, model: str = "", max_tokens: int = 0
) -> dict[str, Any]:
    admit(request, model=model or None, max_tokens=max_tokens)
    return described(api_key_of(request), llm_client)


@api.get("/admitted/{llm_client}/async/")
async def admitted_async(
    request: HttpRequest, llm_client: str, model: str = "", max_tokens: int = 0
) -> dict[str, Any]:
    await aadmit(request, model=model or None, max_tokens=max_tokens)
    return described(api_key_of(request), llm_client)


# Opened by a test: admitted_stream's body waits for it before its last chunk (10 s at most).
STREAM_GATE = threading.Event()


@api.get("/admitted/{llm_client}/stream/")
async def admitted_stream(request: HttpRequest, llm_client: str, wait: bool = False) -> StreamingHttpResponse:
    await aadmit(request)

    async def body() -> AsyncIterator[bytes]:
        yield b"xx"
        for _ in range(1000 if wait else 0):
            if STREAM_GATE.is_set():
                break
            await asyncio.sleep(0.01)
        yield b"x"

    return StreamingHttpResponse(body())


@api.get("/metered/{llm_client}/")
async def metered_stream(
    request: HttpRequest, llm_client: str, chunks: int, size: int = 1024, prompt: int = 0
) -> StreamingHttpResponse:
    """``chunks`` chunks of ``size`` bytes, one completion token each, through
    ``usage.AsyncMeteredStream`` with ``prompt`` prompt tokens."""

    async def pairs() -> AsyncIterator[tuple[bytes, int]]:
        for _ in range(chunks):
            await asyncio.sleep(0)  # as a model's stream waits for its next chunk
            yield b"x" * size, 1

    return StreamingHttpResponse(usage.AsyncMeteredStream(request, pairs(), prompt_tokens=prompt))


@api.get("/by-name/{name}/", auth=LLMClientAPIKeyAuth(client="name"))
async def by_name(request: HttpRequest, name: str) -> dict[str, Any]:
    return described(api_key_of(request), name)


@api.get("/by-callable/", auth=LLMClientAPIKeyAuth(client=lambda request: request.GET.get("bot")))
def by_callable(request: HttpRequest) -> dict[str, Any]:
    return described(api_key_of(request), str(request.GET.get("bot")))


@api.get("/no-client/")
def no_client(request: HttpRequest) -> dict[str, Any]:
    return {"reached": True}


# The same object on a Router of an API that has no auth of its own.
router = Router(auth=auth)


@router.get("/clients/{llm_client}/")
async def routed(request: HttpRequest, llm_client: str) -> dict[str, Any]:
    return described(api_key_of(request), llm_client)


routed_api = NinjaAPI(urls_namespace="tests-ninja-routed")
routed_api.add_router("/", router)
add_exception_handlers(routed_api)

# Without add_exception_handlers: the same statuses and bodies, without their headers.
bare_api = NinjaAPI(urls_namespace="tests-ninja-bare", auth=auth)


@bare_api.get("/clients/{llm_client}/")
def bare(request: HttpRequest, llm_client: str) -> dict[str, Any]:
    return described(api_key_of(request), llm_client)
