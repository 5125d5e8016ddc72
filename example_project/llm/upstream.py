"""Forwarding to an OpenAI-compatible upstream API (``settings.LLM_UPSTREAM_URL``), with the
standard library only. The caller's key never leaves this server: the upstream gets
``LLM_UPSTREAM_API_KEY``."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from django.conf import settings

from .errors import UpstreamError, UpstreamRefused, UpstreamTimeout

# Upstream statuses about the caller's request, relayed as they are. Others (401/403: the
# server's own upstream key is wrong; 5xx) are the server's failure: a 502.
RELAYED_STATUSES = {400, 404, 409, 413, 422, 429}

# settings.LLM_UPSTREAM_<NAME>, read at call time; a project without them uses the echo model.
UPSTREAM_DEFAULTS = {"URL": "", "API_KEY": "", "TIMEOUT": 60.0}


def upstream_setting(name: str) -> Any:
    return getattr(settings, f"LLM_UPSTREAM_{name}", UPSTREAM_DEFAULTS[name])


def configured() -> bool:
    return bool(upstream_setting("URL"))


def models() -> dict[str, Any]:
    return _read_json(_open("GET", "models"))


def chat_completion(body: dict[str, Any]) -> dict[str, Any]:
    return _read_json(_open("POST", "chat/completions", body))


def chat_completion_stream(body: dict[str, Any]) -> Iterator[bytes]:
    """The upstream's server-sent events, line by line, as they arrive.

    The request is sent before the first line is asked for, so refusals still raise
    before the response starts.
    """
    response = _open("POST", "chat/completions", body)

    def lines() -> Iterator[bytes]:
        with response:
            try:
                yield from response
            except (OSError, http.client.HTTPException):
                # Too late for a status: end the stream with an error event the client can read.
                error = {
                    "error": {"message": "The upstream LLM API stream broke off.", "type": "server_error"}
                }
                yield b"data: " + json.dumps(error).encode() + b"\n\n"

    return lines()


def _open(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    url = upstream_setting("URL").rstrip("/") + "/" + path
    headers = {"Accept": "application/json"}
    if upstream_setting("API_KEY"):
        headers["Authorization"] = f"Bearer {upstream_setting('API_KEY')}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        return urllib.request.urlopen(request, timeout=float(upstream_setting("TIMEOUT")))
    except urllib.error.HTTPError as exc:
        with exc:
            raise _refusal(exc.code, exc.read()) from exc
    except TimeoutError as exc:
        raise UpstreamTimeout() from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise UpstreamTimeout() from exc
        raise UpstreamError(f"The upstream LLM API could not be reached: {exc.reason}.") from exc
    except (OSError, http.client.HTTPException) as exc:  # e.g. it hung up without answering
        raise UpstreamError(f"The upstream LLM API failed: {exc!r}.") from exc


def _refusal(status_code: int, raw: bytes) -> Exception:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if status_code in RELAYED_STATUSES and isinstance(body, dict) and isinstance(body.get("error"), dict):
        return UpstreamRefused(status_code, body)
    return UpstreamError(f"The upstream LLM API answered {status_code}.")


def _read_json(response: Any) -> dict[str, Any]:
    with response:
        try:
            raw = response.read()
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc
        except (OSError, http.client.HTTPException) as exc:
            raise UpstreamError("The upstream LLM API connection broke off.") from exc
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise UpstreamError("The upstream LLM API answered with invalid JSON.") from exc
    if not isinstance(body, dict):
        raise UpstreamError("The upstream LLM API answered with unexpected JSON.")
    return body
