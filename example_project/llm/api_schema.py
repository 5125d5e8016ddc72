"""The example's OpenAPI description (drf-spectacular, served at ``/api/schema/`` with Swagger
UI at ``/api/docs/``): what each endpoint takes and answers, its refusals included, so that
schema-driven tools (Swagger UI, Schemathesis) can call it and check its answers.

The key schemes come from drf-llm-keys' own extension (``drf_llm_keys.contrib.spectacular``).
Imported by the urls only where drf-spectacular is installed, so the views need it not.
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import serializers

from drf_llm_keys.views import KeyInfoSerializer

from . import anthropic, views

OPENAI_ERROR = inline_serializer(
    "OpenAIError",
    {
        "error": inline_serializer(
            "OpenAIErrorDetail",
            {
                "message": serializers.CharField(),
                "type": serializers.CharField(),
                "param": serializers.CharField(allow_null=True),
                "code": serializers.CharField(allow_null=True),
            },
        )
    },
)
ANTHROPIC_ERROR = inline_serializer(
    "AnthropicError",
    {
        "type": serializers.CharField(),
        "error": inline_serializer(
            "AnthropicErrorDetail", {"type": serializers.CharField(), "message": serializers.CharField()}
        ),
    },
)

# Why each refusal happens; every endpoint answers the ones that apply to it.
REFUSALS = {
    400: "The body is not a valid request.",
    401: "The client is protected and the request carries no key, or one that is not valid for it.",
    403: "The key may not use the requested model.",
    404: "No such LLM client, or no such model.",
    415: "The body is not JSON.",
    429: "The key spent its token budget (TOKEN_RATE: Retry-After says when to come back), its spend"
    " budget (code insufficient_quota: not before the period ends), or has MAX_CONCURRENT requests"
    " in flight.",
    503: "The limits cannot be checked (the cache is down).",
    502: "The upstream LLM API failed (LLM_UPSTREAM_URL).",
    504: "The upstream LLM API did not answer in time.",
}


def refusals(error: Any, *statuses: int) -> dict[int, OpenApiResponse]:
    return {status: OpenApiResponse(error, description=REFUSALS[status]) for status in statuses}


def completion_responses(error: Any, *more_statuses: int) -> dict[Any, Any]:
    """A completion: a JSON object, or with ``"stream": true`` server-sent events."""
    return {
        (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="The answer."),
        (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="The answer, streamed."),
        **refusals(error, 400, 401, 403, 404, 415, 429, 503, *more_statuses),
    }


def echo_request(**fields: Any) -> list[OpenApiExample]:
    """A request the local echo model answers: Swagger UI's "Try it out" starts from it."""
    value = {"model": "echo", **fields, "messages": [{"role": "user", "content": "Hello"}]}
    return [OpenApiExample("The echo model", value=value, request_only=True)]


extend_schema_view(
    get=extend_schema(
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, description="The models the key may use."),
            **refusals(OPENAI_ERROR, 401, 404),
        }
    )
)(views.ModelListView)
extend_schema_view(
    get=extend_schema(
        responses={
            200: OpenApiResponse(KeyInfoSerializer, description="The calling key."),
            **refusals(OPENAI_ERROR, 401, 404),
        }
    )
)(views.KeyView)
extend_schema_view(
    post=extend_schema(
        request=views.ChatCompletionRequestSerializer,
        responses=completion_responses(OPENAI_ERROR, 502, 504),
        examples=echo_request(),
    )
)(views.ChatCompletionView)
extend_schema_view(
    post=extend_schema(
        request=anthropic.MessagesRequestSerializer,
        responses=completion_responses(ANTHROPIC_ERROR),
        examples=echo_request(max_tokens=64),
    )
)(anthropic.MessagesView)

urlpatterns = [
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
]
