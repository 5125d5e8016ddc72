"""Errors in OpenAI's JSON shape, ``{"error": {"message", "type", "param", "code"}}``, which
the ``openai`` package turns into its exceptions (``AuthenticationError`` for a 401, ...);
under the Messages API's URLs, in Anthropic's."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

# Where urls.py mounts Anthropic's Messages API: Django's own 404 and 500 take its shape there.
ANTHROPIC_PATH = "/anthropic/"
# Anthropic's error type for each status; other 4xx are invalid requests, 5xx api errors.
ANTHROPIC_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}

# The code OpenAI's clients see for each refusal; DRF's own code otherwise.
CODES = {
    exceptions.NotAuthenticated: "missing_api_key",
    exceptions.AuthenticationFailed: "invalid_api_key",
}


class UpstreamError(exceptions.APIException):
    """The upstream API could not be reached or failed: the server's problem, not the caller's."""

    status_code = status.HTTP_502_BAD_GATEWAY
    default_detail = "The upstream LLM API failed."
    default_code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status_code = status.HTTP_504_GATEWAY_TIMEOUT
    default_detail = "The upstream LLM API did not answer in time."
    default_code = "upstream_timeout"


class UpstreamRefused(exceptions.APIException):
    """An upstream 4xx about the request itself (bad parameter, unknown model, rate limit):
    relayed with its status and body, which is already in OpenAI's shape."""

    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        super().__init__(detail="The upstream LLM API refused the request.", code="upstream_refused")
        self.status_code = status_code
        self.body = body


def error_body(
    message: str, status_code: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    kind = "server_error" if status_code >= 500 else "invalid_request_error"
    if status_code == status.HTTP_429_TOO_MANY_REQUESTS:
        kind = "rate_limit_error"
    if status_code == status.HTTP_403_FORBIDDEN:  # e.g. a model the key may not use
        kind = "permission_error"
    if code == "insufficient_quota":  # a spent budget: OpenAI's type, which is not to retry
        kind = "insufficient_quota"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def anthropic_error_body(message: str, status_code: int) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``, which the ``anthropic`` package
    turns into its exceptions."""
    default = "api_error" if status_code >= 500 else "invalid_request_error"
    return {
        "type": "error",
        "error": {"type": ANTHROPIC_ERROR_TYPES.get(status_code, default), "message": message},
    }


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler (status, ``WWW-Authenticate``, ``Retry-After``), with OpenAI's body."""
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # not an API error: Django's 500, answered by ``server_error`` below
    if isinstance(exc, UpstreamRefused):
        response.data = exc.body
        return response
    message, code, param = (
        _describe(exc) if isinstance(exc, exceptions.APIException) else (str(exc), None, None)
    )
    response.data = error_body(message, response.status_code, code, param)
    return response


def _describe(exc: exceptions.APIException) -> tuple[str, str | None, str | None]:
    detail: Any = exc.detail
    path = ""
    # A validation error: report its first problem, as OpenAI reports one ``param``.
    while isinstance(detail, (dict, list)):
        items = detail.items() if isinstance(detail, dict) else enumerate(detail)
        first = next(((key, value) for key, value in items if value), None)
        if first is None:
            break
        key, detail = first
        if isinstance(key, int):  # DRF reports items of a list field by index
            path += f".{key}" if not isinstance(detail, str) else ""
        elif key != "non_field_errors":
            path = f"{path}.{key}" if path else key
    param = path or None
    code = CODES.get(type(exc)) or getattr(detail, "code", None) or exc.default_code
    message = str(detail) if detail else str(exc.default_detail)
    if param is not None:
        message = f"{param}: {message}"
    return message, code, param


def _django_error(request: HttpRequest, message: str, status_code: int, code: str) -> JsonResponse:
    """Django's own 404 or 500 (no view answered), in the shape the caller's client reads."""
    if request.path_info.startswith(ANTHROPIC_PATH):
        return JsonResponse(anthropic_error_body(message, status_code), status=status_code)
    return JsonResponse(error_body(message, status_code, code), status=status_code)


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _django_error(request, f"No endpoint {request.path}.", status.HTTP_404_NOT_FOUND, "not_found")


def server_error(request: HttpRequest) -> JsonResponse:
    return _django_error(request, "The server failed.", status.HTTP_500_INTERNAL_SERVER_ERROR, "server_error")
