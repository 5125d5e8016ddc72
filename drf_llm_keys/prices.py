"""What completions cost: prices per model, from ``DRF_LLM_KEYS["PRICES"]``.

A price is per million tokens, for input, output and cached input, as decimals in one
currency (``CURRENCY``). Model names are matched as allowlists match them
(``models.model_pattern_matches``): an exact name first, else the longest trailing-``*``
pattern. A model no entry matches has no price: its tokens are recorded as unpriced,
never as free.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from django.core.exceptions import ImproperlyConfigured

from .conf import conf
from .models import model_pattern_matches

TOKENS_PER_PRICE = Decimal(1_000_000)
# The digits a cost keeps (KeyUsage.cost): a billionth of the currency's unit.
COST_QUANTUM = Decimal("0.000000001")


class Price(NamedTuple):
    """Per million tokens."""

    input: Decimal
    output: Decimal
    cached_input: Decimal


def parse_price(pattern: str, raw: Any) -> Price:
    """``{"input": "2.50", "output": "10", "cached_input": "1.25"}`` as a ``Price``;
    ``cached_input`` defaults to ``input``. Anything else is ImproperlyConfigured."""
    error = ImproperlyConfigured(
        f"DRF_LLM_KEYS['PRICES'][{pattern!r}] must be a dict of non-negative decimal prices per "
        f'million tokens, such as {{"input": "2.50", "output": "10.00", "cached_input": "1.25"}}.'
    )
    if not isinstance(raw, dict) or not {"input", "output"} <= raw.keys() <= set(Price._fields):
        raise error
    values = {}
    for name in Price._fields:
        value = raw.get(name, raw["input"])
        if isinstance(value, float | bool):  # a float is not an exact price; True is not one at all
            raise error
        try:
            values[name] = Decimal(str(value))
        except InvalidOperation:
            raise error from None
        if not values[name].is_finite() or values[name] < 0:
            raise error
    return Price(**values)


def prices() -> dict[str, Price]:
    """Every configured price, checked (``checks.check_prices`` reports a bad one)."""
    return {str(pattern): parse_price(str(pattern), raw) for pattern, raw in conf.PRICES.items()}


def price_of(model: str) -> Price | None:
    """The model's price; None when it has none."""
    configured = prices()
    if model in configured:
        return configured[model]
    matching = [pattern for pattern in configured if model_pattern_matches(pattern, model)]
    return configured[max(matching, key=len)] if matching else None


def cost_of(
    price: Price, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0
) -> Decimal:
    """What the tokens cost at ``price``; ``cached_prompt_tokens`` are part of the prompt's."""
    fresh = prompt_tokens - cached_prompt_tokens
    total = fresh * price.input + cached_prompt_tokens * price.cached_input + completion_tokens * price.output
    return (total / TOKENS_PER_PRICE).quantize(COST_QUANTUM)


def amount_text(value: Decimal) -> str:
    """An amount as exact decimal text without trailing zeros ("0.0125", "3"), never a float."""
    return f"{value.normalize():f}"
