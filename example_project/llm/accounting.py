"""Each completion's tokens, counted for the caller's key by drf-llm-keys
(``drf_llm_keys.usage``): they show in ``llm_keys usage``, spend the key's token budget
(``TOKEN_RATE``, enforced by ``TokenRateThrottle`` on the completion views) and settle what
``limits.admit`` reserved on its budgets (``worst_case``). Streams go
through ``MeteredStream``, which records the tokens sent however the stream ends (a client
that disconnects mid-stream included)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from rest_framework.request import Request

from drf_llm_keys.usage import MeteredStream, record_tokens

from . import echo

# What a completion may produce when its request sets no max_tokens: reserved on the key's
# budget before the model runs (drf_llm_keys.limits), settled at its real cost after.
DEFAULT_MAX_TOKENS = 4096


def worst_case(body: dict[str, Any]) -> dict[str, int]:
    """``limits.admit``'s bound of a request: its prompt's tokens, at most the bytes of its
    messages (a byte-level tokenizer makes no more tokens than bytes, plus a few per message
    for the chat format), and the completion's ``max_tokens``."""
    sent = [body.get("system"), *(message.get("content") for message in body["messages"])]
    prompt = len(json.dumps(sent, ensure_ascii=False).encode()) + 8 * len(sent)
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    return {"prompt_tokens": prompt, "max_tokens": int(limit)}


def record_usage(request: Request, usage: Any, model: str) -> None:
    """Count an OpenAI ``usage`` object (``prompt_tokens``, ``completion_tokens``), if any,
    priced at ``model``'s price (``DRF_LLM_KEYS["PRICES"]``)."""
    if not isinstance(usage, dict):
        return
    try:
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return  # an upstream's odd figures must not turn its answer into our error
    record_tokens(request, prompt_tokens=max(0, prompt), completion_tokens=max(0, completion), model=model)


def echo_events(chunks: Iterable[dict[str, Any]]) -> Iterator[tuple[bytes, int]]:
    """The echo model's chunks as server-sent events, each with its words as tokens."""
    for chunk in chunks:
        delta = chunk["choices"][0]["delta"] if chunk["choices"] else {}
        yield echo.server_sent_event(chunk), echo.count_tokens(delta.get("content") or "")
    yield echo.DONE_EVENT, 0


def upstream_events(request: Request, lines: Iterator[bytes], model: str) -> MeteredStream[bytes]:
    """An upstream's server-sent events as they come, each content delta charged one token
    (what OpenAI-compatible APIs send per event); the ``usage`` the upstream reports at the
    end (asked with ``stream_options.include_usage``) replaces those estimates."""
    estimated = 0

    def events() -> Iterator[tuple[bytes, int]]:
        nonlocal estimated
        for line in lines:
            tokens = 0
            if line.startswith(b"data: {"):
                try:
                    event = json.loads(line[len(b"data: ") :])
                except ValueError:
                    event = None  # not ours to judge: relayed as it came
                usage = event.get("usage") if isinstance(event, dict) else None
                if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                    stream.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    tokens = int(usage["completion_tokens"]) - estimated  # a correction, either way
                elif isinstance(event, dict) and _content_of(event):
                    tokens = 1
            estimated += tokens
            yield line, tokens

    stream = MeteredStream(request, events(), model=model)
    return stream


def _content_of(event: dict[str, Any]) -> str:
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    delta = choices[0].get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""
