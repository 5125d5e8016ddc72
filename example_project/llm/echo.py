"""The deterministic local model that answers when no upstream is configured: it repeats
the last user message, so replies are predictable in demos and tests."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

MODEL_ID = "echo"
OWNER = "drf-llm-keys-example"
# A fixed date, so that the model list is the same on every run.
MODEL_CREATED = 1_735_689_600  # 2025-01-01T00:00:00Z

# A word with the whitespace after it: the stream's pieces join back into the reply.
_PIECE = re.compile(r"\S+\s*|\s+")


def models() -> list[dict[str, Any]]:
    return [{"id": MODEL_ID, "object": "model", "created": MODEL_CREATED, "owned_by": OWNER}]


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of parts of which text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def reply_to(messages: list[dict[str, Any]]) -> str:
    user_texts = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    return f"echo: {user_texts[-1]}" if user_texts else "echo: (no user message)"


def count_tokens(text: str) -> int:
    # Words stand in for tokens: deterministic and good enough for a usage figure.
    return len(text.split())


def usage(messages: list[dict[str, Any]], reply: str) -> dict[str, int]:
    prompt = sum(count_tokens(text_of(m.get("content"))) for m in messages)
    completion = count_tokens(reply)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(messages: list[dict[str, Any]]) -> dict[str, Any]:
    reply = reply_to(messages)
    return {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage(messages, reply),
    }


def completion_chunks(
    messages: list[dict[str, Any]], include_usage: bool = False
) -> Iterator[dict[str, Any]]:
    """The reply as ``chat.completion.chunk`` objects, one word each, as a stream sends them."""
    reply = reply_to(messages)
    base = {
        "id": _completion_id(),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL_ID,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    yield chunk({"role": "assistant", "content": ""})
    for piece in _PIECE.findall(reply):
        yield chunk({"content": piece})
    yield chunk({}, "stop")
    if include_usage:
        yield {**base, "choices": [], "usage": usage(messages, reply)}


def server_sent_event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


# What ends an OpenAI stream.
DONE_EVENT = b"data: [DONE]\n\n"


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
