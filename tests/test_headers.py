"""OpenAI's x-ratelimit-* headers on a limited key's responses, and retry-after-ms beside
Retry-After on a rate's 429 (drf_llm_keys.headers, through its middleware)."""

from __future__ import annotations

from typing import Any

import pytest

from drf_llm_keys.headers import reset_text
from tests.support import bearer

pytestmark = pytest.mark.django_db

TOKENS = "/clients/protected-bot/tokens/?prompt={}&completion={}"


def get(api: Any, plaintext: str, prompt: int = 0, completion: int = 0) -> Any:
    return api.get(TOKENS.format(prompt, completion), **bearer(plaintext))


def seconds_of(text: str) -> float:
    hours, _, rest = text.rpartition("h")
    minutes, _, rest = rest.rpartition("m")
    return float(hours or 0) * 3600 + float(minutes or 0) * 60 + float(rest.removesuffix("s"))


def test_each_response_tells_the_requests_left_in_the_window(api, settings, key):
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "2/hour"}
    _, plaintext = key
    first, second = get(api, plaintext), get(api, plaintext)
    assert [first["x-ratelimit-limit-requests"], second["x-ratelimit-limit-requests"]] == ["2", "2"]
    assert [first["x-ratelimit-remaining-requests"], second["x-ratelimit-remaining-requests"]] == ["1", "0"]
    assert 0 < seconds_of(first["x-ratelimit-reset-requests"]) <= 3600
    assert not first.has_header("x-ratelimit-limit-tokens")  # no token budget set


def test_a_rate_429_carries_retry_after_and_retry_after_ms(api, settings, key):
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "1/hour"}
    _, plaintext = key
    assert get(api, plaintext).status_code == 200
    refused = get(api, plaintext)
    assert refused.status_code == 429
    wait_ms = int(refused["retry-after-ms"])
    assert 0 < wait_ms <= 3_600_000
    assert abs(int(refused["Retry-After"]) - wait_ms / 1000) <= 1
    assert refused["x-ratelimit-remaining-requests"] == "0"


def test_each_response_tells_the_tokens_left_and_a_spent_budget_says_when_it_comes_back(api, settings, key):
    settings.DRF_LLM_KEYS = {"TOKEN_RATE": "10/minute"}
    _, plaintext = key
    first = get(api, plaintext, 4, 2)  # checked before it spends: all 10 left
    second = get(api, plaintext)
    assert [first["x-ratelimit-remaining-tokens"], second["x-ratelimit-remaining-tokens"]] == ["10", "4"]
    assert second["x-ratelimit-limit-tokens"] == "10"
    assert 0 < seconds_of(second["x-ratelimit-reset-tokens"]) <= 60
    get(api, plaintext, 4, 0)
    refused = get(api, plaintext)
    assert refused.status_code == 429
    assert refused["x-ratelimit-remaining-tokens"] == "0"
    assert 0 < int(refused["retry-after-ms"]) <= 60_000


def test_an_unlimited_key_gets_no_rate_limit_headers(api, key):
    _, plaintext = key
    response = get(api, plaintext)
    assert response.status_code == 200
    assert not [name for name in response.headers if name.lower().startswith(("x-ratelimit", "retry-after"))]


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.5, "0.5s"), (1, "1s"), (360, "6m0s"), (3661.25, "1h1m1.25s"), (-3, "0s")]
)
def test_reset_times_read_as_openai_writes_them(seconds, text):
    assert reset_text(seconds) == text
