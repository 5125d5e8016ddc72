"""Usage figures as the database holds them."""

from __future__ import annotations

from typing import Any

from drf_llm_keys.models import KeyUsage


def figures(api_key: Any) -> tuple[int, int, int]:
    rows = KeyUsage.objects.filter(api_key=api_key)
    return (
        sum(r.requests for r in rows),
        sum(r.prompt_tokens for r in rows),
        sum(r.completion_tokens for r in rows),
    )
