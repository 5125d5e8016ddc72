"""OpenAI-compatible endpoints per LLM client: ``/v1/clients/<slug>/chat/completions`` and
``/v1/clients/<slug>/models``. Who may call them is decided by drf-llm-keys alone: the
client's slug comes from the ``llm_client`` URL kwarg (``CLIENT_URL_KWARG``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.db import models
from django.http import StreamingHttpResponse
from rest_framework import exceptions, serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from drf_llm_keys import get_client_model, limits
from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication
from drf_llm_keys.conf import conf
from drf_llm_keys.permissions import allows_model, require_model
from drf_llm_keys.throttling import TokenRateThrottle
from drf_llm_keys.usage import MeteredStream
from drf_llm_keys.views import KeyInfoView

from . import accounting, echo, upstream
from .errors import openai_exception_handler


class JSONOnlyNegotiation(DefaultContentNegotiation):
    """Answer JSON (or a stream) whatever ``Accept`` says, as OpenAI's API does."""

    def select_renderer(
        self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        return renderers[0], renderers[0].media_type


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant", "tool"])
    # A string or a list of content parts; the echo model reads the text parts.
    content = serializers.JSONField(required=False, allow_null=True)


class ChatCompletionRequestSerializer(serializers.Serializer):
    """What the endpoint checks; other parameters (temperature, tools...) go upstream as sent."""

    model = serializers.CharField()
    messages = MessageSerializer(many=True, allow_empty=False)
    stream = serializers.BooleanField(default=False)
    stream_options = serializers.DictField(required=False, allow_null=True)
    max_tokens = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    max_completion_tokens = serializers.IntegerField(min_value=1, required=False, allow_null=True)


class OpenAICompatibleView(APIView):
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser]
    content_negotiation_class = JSONOnlyNegotiation

    def get_exception_handler(self) -> Any:
        # On the view, not in settings: the endpoints answer in OpenAI's shape in any project.
        return openai_exception_handler

    def get_llm_client_or_404(self) -> models.Model:
        value = self.kwargs[conf.CLIENT_URL_KWARG]
        llm_client = get_client_model()._default_manager.filter(**{conf.CLIENT_LOOKUP_FIELD: value}).first()
        if llm_client is None:
            raise exceptions.NotFound(f"No LLM client {value!r}.", code="client_not_found")
        return llm_client


class ModelListView(OpenAICompatibleView):
    """``GET models``, authenticated by ``DEFAULT_AUTHENTICATION_CLASSES``."""

    def get(self, request: Request, **kwargs: Any) -> Response:
        self.get_llm_client_or_404()
        listing: dict[str, Any] = (
            upstream.models() if upstream.configured() else {"object": "list", "data": echo.models()}
        )
        # Only the models the caller's key may use (all of them for a public client).
        listing["data"] = [
            m
            for m in listing.get("data") or []
            if isinstance(m, dict) and allows_model(request, str(m.get("id")))
        ]
        return Response(listing)


class KeyView(KeyInfoView):
    """``GET key``: the calling key's client, limits, budgets and usage (drf-llm-keys'
    ``KeyInfoView``), refusals in OpenAI's error shape."""

    def get_exception_handler(self) -> Any:
        return openai_exception_handler


class CompletionView(OpenAICompatibleView):
    """What every completion endpoint does around its model: only the key decides who calls;
    a key over its token budget (``DRF_LLM_KEYS["TOKEN_RATE"]``) gets a 429 and a model
    outside its allowlist a 403, before anything reaches a model; and each answer's tokens
    are counted for the key. A subclass reads its API's request (``request_serializer``)
    and answers in its shape (``complete``)."""

    # Its own classes, so that only the key decides: with SessionAuthentication after ours
    # (the default), a browser's session would authenticate a public client's POST and make
    # it need a CSRF token.
    authentication_classes = [LLMClientAPIKeyAuthentication]
    throttle_classes = [TokenRateThrottle]
    request_serializer: type[serializers.Serializer]
    model_not_found = "The model {model!r} does not exist."

    def post(self, request: Request, **kwargs: Any) -> Response | StreamingHttpResponse:
        self.get_llm_client_or_404()
        serializer = self.request_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        body: dict[str, Any] = serializer.validated_data
        require_model(request, body["model"])
        # A slot of the key's in-flight cap, and its budgets' room for the worst case: 429
        # before anything reaches a model; settled when the response ends.
        limits.admit(request, model=body["model"], **accounting.worst_case(body))
        return self.complete(request, body)

    def complete(self, request: Request, body: dict[str, Any]) -> Response | StreamingHttpResponse:
        raise NotImplementedError

    def echo(
        self,
        request: Request,
        body: dict[str, Any],
        answer: Callable[[list[dict[str, Any]]], dict[str, Any]],
        events: Callable[[list[dict[str, Any]]], Iterator[tuple[bytes, int]]],
    ) -> Response | StreamingHttpResponse:
        """The echo model's ``answer``, or its ``events`` when streaming (each with the
        completion tokens it carries), its tokens counted: a stream's, as far as it was sent."""
        if body["model"] != echo.MODEL_ID:
            raise exceptions.NotFound(
                self.model_not_found.format(model=body["model"]), code="model_not_found"
            )
        messages = [dict(message) for message in body["messages"]]
        tokens = echo.usage(messages, echo.reply_to(messages))
        if body["stream"]:
            return event_stream(
                MeteredStream(
                    request, events(messages), prompt_tokens=tokens["prompt_tokens"], model=echo.MODEL_ID
                )
            )
        accounting.record_usage(request, tokens, echo.MODEL_ID)
        return Response(answer(messages))


class ChatCompletionView(CompletionView):
    """``POST chat/completions``, streamed as server-sent events when ``stream`` is true."""

    request_serializer = ChatCompletionRequestSerializer

    def complete(self, request: Request, body: dict[str, Any]) -> Response | StreamingHttpResponse:
        if upstream.configured():
            if body["stream"]:
                lines = upstream.chat_completion_stream(request.data)
                return event_stream(accounting.upstream_events(request, lines, body["model"]))
            reply = upstream.chat_completion(request.data)
            accounting.record_usage(request, reply.get("usage"), body["model"])
            return Response(reply)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return self.echo(
            request,
            body,
            echo.completion,
            lambda messages: accounting.echo_events(echo.completion_chunks(messages, include_usage)),
        )


def event_stream(lines: Iterable[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(lines, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on as it comes
    return response
