"""The same OpenAI-compatible endpoints through Django Ninja, as async operations:
``/ninja/v1/clients/<slug>/chat/completions`` (streamed as server-sent events when
``stream`` is true) and ``/ninja/v1/clients/<slug>/models``. drf-llm-keys decides who may
call them, as for the DRF views (``views.py``), and errors have the same OpenAI shape."""

from __future__ import annotations

import io
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from ninja import NinjaAPI
from ninja.errors import Throttled
from rest_framework import exceptions
from rest_framework.parsers import JSONParser

from drf_llm_keys import limits
from drf_llm_keys.ninja import LLMClientAPIKeyAuth, Refused, TokenRateThrottle, require_model
from drf_llm_keys.permissions import allows_model
from drf_llm_keys.usage import AsyncMeteredStream

from . import accounting, echo, upstream
from .errors import openai_exception_handler
from .views import ChatCompletionRequestSerializer

api = NinjaAPI(urls_namespace="llm-ninja", title="LLM clients (Ninja)", auth=LLMClientAPIKeyAuth())


@api.get("/clients/{llm_client}/models")
async def models(request: HttpRequest, llm_client: str) -> dict[str, Any]:
    listing: dict[str, Any] = (
        await sync_to_async(upstream.models)()
        if upstream.configured()
        else {"object": "list", "data": echo.models()}
    )
    # Only the models the caller's key may use (all of them for a public client).
    listing["data"] = [
        m
        for m in listing.get("data") or []
        if isinstance(m, dict) and allows_model(request, str(m.get("id")))
    ]
    return listing


# TokenRateThrottle: a key whose tokens reached its budget gets a 429 before anything is sent.
@api.post("/clients/{llm_client}/chat/completions", throttle=TokenRateThrottle())
async def chat_completion(request: HttpRequest, llm_client: str) -> Any:
    data = JSONParser().parse(io.BytesIO(request.body))  # DRF's parser: DRF's 400 for bad JSON
    serializer = ChatCompletionRequestSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    body: dict[str, Any] = serializer.validated_data
    require_model(request, body["model"])  # a 403 before anything reaches a model
    await limits.aadmit(request, model=body["model"], **accounting.worst_case(body))  # as the DRF view
    if upstream.configured():
        if body["stream"]:
            lines = await sync_to_async(upstream.chat_completion_stream)(data)
            return event_stream(InAThread(accounting.upstream_events(request, lines, body["model"])))
        reply = await sync_to_async(upstream.chat_completion)(data)
        await sync_to_async(accounting.record_usage)(request, reply.get("usage"), body["model"])
        return reply
    if body["model"] != echo.MODEL_ID:
        raise exceptions.NotFound(f"The model {body['model']!r} does not exist.", code="model_not_found")
    messages = [dict(message) for message in body["messages"]]
    if body["stream"]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        pairs = accounting.echo_events(echo.completion_chunks(messages, include_usage))
        prompt = echo.usage(messages, "")["prompt_tokens"]
        # Its tokens recorded however it ends, the client gone included, as the DRF view's.
        return event_stream(
            AsyncMeteredStream(request, as_async(pairs), prompt_tokens=prompt, model=echo.MODEL_ID)
        )
    reply = echo.completion(messages)
    await sync_to_async(accounting.record_usage)(request, reply["usage"], echo.MODEL_ID)
    return reply


async def as_async(pairs: Iterable[tuple[bytes, int]]) -> AsyncIterator[tuple[bytes, int]]:
    for pair in pairs:
        yield pair


class InAThread:
    """A blocking iterator (the upstream's metered stream) as an async one, read in a thread
    item by item; closed with the response (Django calls ``close``), so a client that leaves
    has what was sent recorded."""

    __iter__ = None  # async only: Django streams what iter() accepts as a sync iterator

    def __init__(self, lines: Iterator[bytes]) -> None:
        self.lines = lines

    def __aiter__(self) -> InAThread:
        return self

    async def __anext__(self) -> bytes:
        line = await sync_to_async(next, thread_sensitive=False)(self.lines, None)
        if line is None:
            raise StopAsyncIteration
        return line

    def close(self) -> None:
        close = getattr(self.lines, "close", None)
        if close is not None:
            close()


def event_stream(lines: AsyncIterable[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(lines, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


# --- errors in OpenAI's shape, as the DRF views answer them ------------------------------


def openai_error(request: HttpRequest, exc: Any) -> JsonResponse:
    refusal = exc.refusal if isinstance(exc, Refused) else exc
    answer = openai_exception_handler(refusal, {})
    assert answer is not None  # an APIException always has an answer
    response = JsonResponse(answer.data, status=answer.status_code)
    headers = {**exc.headers} if isinstance(exc, Refused) else {}
    for name in ("WWW-Authenticate", "Retry-After"):
        if name in answer:
            headers[name] = answer[name]
    for name, value in headers.items():
        response[name] = value
    return response


api.add_exception_handler(Refused, openai_error)
api.add_exception_handler(exceptions.APIException, openai_error)
api.add_exception_handler(
    Throttled, lambda request, exc: openai_error(request, exceptions.Throttled(exc.wait))
)
