"""Each completion's tokens, counted for the caller's key by drf-llm-keys
(``drf_llm_keys.usage.record_tokens``): they show in ``llm_keys usage`` and spend the key's
token budget (``TOKEN_RATE``, enforced by ``TokenRateThrottle`` on the completion view)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from rest_framework.request import Request

from drf_llm_keys.usage import record_tokens


def record_usage(request: Request, usage: Any) -> None:
    """Count an OpenAI ``usage`` object (``prompt_tokens``, ``completion_tokens``), if any."""
    if not isinstance(usage, dict):
        return
    try:
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return  # an upstream's odd figures must not turn its answer into our error
    record_tokens(request, prompt_tokens=max(0, prompt), completion_tokens=max(0, completion))


def then(lines: Iterator[bytes], finished: Callable[[], None]) -> Iterator[bytes]:
    """The stream's lines, then ``finished()`` once the last one is sent (the view has
    returned by then: record_tokens takes what it needs from the request)."""
    yield from lines
    finished()


def upstream_events(request: Request, lines: Iterator[bytes]) -> Iterator[bytes]:
    """An upstream's server-sent events as they come, counting the ``usage`` it reports
    (an OpenAI-compatible API sends it when asked with ``stream_options.include_usage``)."""
    reported: list[Any] = []
    for line in lines:
        if line.startswith(b"data: {") and b'"usage"' in line:
            try:
                reported.append(json.loads(line[len(b"data: ") :]).get("usage"))
            except ValueError:
                pass  # not ours to judge: relayed as it came
        yield line
    record_usage(request, next((usage for usage in reversed(reported) if usage), None))
