"""Anthropic's Messages API per LLM client: ``POST /anthropic/clients/<slug>/v1/messages``,
so the official ``anthropic`` package works with ``base_url=http://HOST/anthropic/clients/<slug>``.

The key comes in the ``x-api-key`` header, which is drf-llm-keys' default ``HEADER``. The
key's model allowlist, token budget and usage count as on the OpenAI-compatible endpoints
(the same ``CompletionView``). The echo model answers (an upstream, when configured, serves
the OpenAI-compatible endpoints only), and errors take Anthropic's shape, so the package
raises its own exceptions (``AuthenticationError`` for a 401, ``PermissionDeniedError`` for
a model the key may not use, ``RateLimitError`` over the budget, ...).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from django.http import StreamingHttpResponse
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from . import echo
from .errors import anthropic_error_body, openai_exception_handler
from .views import CompletionView


class AnthropicMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["user", "assistant"])
    # A string or a list of content blocks; the echo model reads the text blocks.
    content = serializers.JSONField()


class MessagesRequestSerializer(serializers.Serializer):
    model = serializers.CharField()
    max_tokens = serializers.IntegerField(min_value=1)
    messages = AnthropicMessageSerializer(many=True, allow_empty=False)
    system = serializers.JSONField(required=False)
    stream = serializers.BooleanField(default=False)


def anthropic_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """The same statuses and headers (``WWW-Authenticate``) as the OpenAI endpoints, in
    Anthropic's body: ``{"type": "error", "error": {"type": ..., "message": ...}}``."""
    response = openai_exception_handler(exc, context)
    if response is None:
        return None
    response.data = anthropic_error_body(response.data["error"]["message"], response.status_code)
    return response


class MessagesView(CompletionView):
    """``POST v1/messages``, streamed as Anthropic's server-sent events when ``stream`` is
    true; keys, allowlists, token budgets and accounting as on the OpenAI endpoints."""

    request_serializer = MessagesRequestSerializer
    model_not_found = "model: {model}"  # Anthropic's wording

    def get_exception_handler(self) -> Any:
        return anthropic_exception_handler

    def complete(self, request: Request, body: dict[str, Any]) -> Response | StreamingHttpResponse:
        return self.echo(request, body, message, message_events)


def message(messages: list[dict[str, Any]]) -> dict[str, Any]:
    reply = echo.reply_to(messages)
    return {
        **_message_start(),
        "content": [{"type": "text", "text": reply}],
        "stop_reason": "end_turn",
        "usage": _usage(messages, reply),
    }


def message_events(messages: list[dict[str, Any]]) -> Iterator[tuple[bytes, int]]:
    """The reply as Anthropic's stream: message_start, one text block in word-sized
    deltas, message_delta with the stop reason and usage, message_stop; each event with
    the output tokens it carries."""
    reply = echo.reply_to(messages)
    start = {**_message_start(), "usage": {**_usage(messages, ""), "output_tokens": 0}}
    yield _event("message_start", {"message": start}), 0
    yield _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}), 0
    for chunk in echo.completion_chunks(messages):
        piece = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
        if piece:
            delta = {"index": 0, "delta": {"type": "text_delta", "text": piece}}
            yield _event("content_block_delta", delta), echo.count_tokens(piece)
    yield _event("content_block_stop", {"index": 0}), 0
    yield (
        _event(
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": _usage(messages, reply)["output_tokens"]},
            },
        ),
        0,
    )
    yield _event("message_stop", {}), 0


def _message_start() -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": echo.MODEL_ID,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }


def _usage(messages: list[dict[str, Any]], reply: str) -> dict[str, int]:
    counted = echo.usage(messages, reply)
    return {"input_tokens": counted["prompt_tokens"], "output_tokens": counted["completion_tokens"]}


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
