"""Prices per model (drf_llm_keys.prices) and the cost usage.record_tokens records with the
tokens: exact decimals; a model without a price is recorded as unpriced, never as free."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from drf_llm_keys import usage
from drf_llm_keys.checks import check_prices
from drf_llm_keys.models import KeyUsage
from drf_llm_keys.prices import Price, cost_of, price_of
from tests.support import bearer

pytestmark = pytest.mark.django_db(transaction=True)

PRICES = {
    "gpt-4o": {"input": "2.50", "output": "10.00", "cached_input": "1.25"},
    "gpt-4o*": {"input": "0.15", "output": "0.60"},
    "gpt-*": {"input": "1", "output": "2"},
    "echo": {"input": "0.10", "output": "0.20"},
}
METERED = "/clients/protected-bot/tokens/metered/?prompt=10&chunks=4&model=echo"


@pytest.fixture
def priced(settings: Any) -> None:
    settings.DRF_LLM_KEYS = {"PRICES": PRICES, "USAGE_FLUSH_INTERVAL": 3600}


def test_an_exact_name_beats_a_pattern_and_the_longest_pattern_wins(priced):
    assert price_of("gpt-4o") == Price(Decimal("2.50"), Decimal("10.00"), Decimal("1.25"))
    assert price_of("gpt-4o-mini") == Price(Decimal("0.15"), Decimal("0.60"), Decimal("0.15"))
    assert price_of("gpt-3.5-turbo") == Price(Decimal(1), Decimal(2), Decimal(1))
    assert price_of("claude-3") is None


def test_a_cost_is_exact_with_cached_input_at_its_own_price(priced):
    price = price_of("gpt-4o")
    assert price is not None
    # 1,000 fresh input at 2.50, 3,000 cached at 1.25, 500 output at 10.00, per million
    assert cost_of(price, 4000, 500, cached_prompt_tokens=3000) == Decimal("0.01125")


def record(
    api: Any, plaintext: str, model: str | None, prompt: int, completion: int, cached: int = 0
) -> None:
    response = api.get("/clients/protected-bot/echo/", **bearer(plaintext))
    assert response.status_code == 200
    usage.record_tokens(
        response.wsgi_request,
        prompt_tokens=prompt,
        completion_tokens=completion,
        model=model,
        cached_prompt_tokens=cached,
    )


def stored(api_key: Any) -> tuple[Decimal, int, int, int]:
    row = KeyUsage.objects.get(api_key=api_key)
    return row.cost, row.unpriced_tokens, row.prompt_tokens, row.completion_tokens


def test_priced_tokens_add_their_cost_and_others_are_counted_as_unpriced(api, priced, key):
    api_key, plaintext = key
    record(api, plaintext, "gpt-4o", 4000, 500, cached=3000)  # 0.01125
    record(api, plaintext, "gpt-4o-mini", 1_000_000, 1_000_000)  # 0.75
    record(api, plaintext, "claude-3", 7, 3)  # no price: unpriced, not free
    record(api, plaintext, None, 5, 5)  # no model: unpriced too
    assert usage.flush()
    assert stored(api_key) == (Decimal("0.76125"), 20, 1_004_012, 1_000_508)


def test_a_metered_stream_is_priced_at_its_model(api, priced, key):
    api_key, plaintext = key
    response = api.get(METERED, **bearer(plaintext))
    assert len(b"".join(response.streaming_content)) == 4 * 1024
    response.close()
    assert usage.flush()
    # 10 prompt tokens at 0.10 and 4 completion tokens at 0.20, per million
    assert stored(api_key) == (Decimal("0.0000018"), 0, 10, 4)


def test_cached_prompt_tokens_beyond_the_prompt_are_a_programming_error(api, priced, key):
    with pytest.raises(ValueError, match="cached prompt tokens"):
        usage.record_tokens(object(), prompt_tokens=1, cached_prompt_tokens=2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "price",
    [
        {"input": 2.5, "output": "10"},  # a float is not an exact price
        {"input": "-1", "output": "10"},
        {"input": "1"},
        {"input": "1", "output": "2", "cache": "1"},
        {"input": "one", "output": "2"},
        {"input": "NaN", "output": "2"},
        "2.50",
    ],
)
def test_a_malformed_price_is_a_configuration_error(settings, price):
    settings.DRF_LLM_KEYS = {"PRICES": {"gpt-4o": price}}
    (error,) = check_prices()
    assert error.id == "drf_llm_keys.E006"
    assert "gpt-4o" in error.msg


def test_well_formed_prices_pass_the_check(priced):
    assert check_prices() == []
