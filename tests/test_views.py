"""The key-info view (drf_llm_keys.views.KeyInfoView): a key learns about itself, and
nobody else learns anything."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.urls import path
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

from drf_llm_keys import usage
from drf_llm_keys.models import KeyUsage
from drf_llm_keys.views import KeyInfoView
from tests.support import bearer

pytestmark = pytest.mark.django_db

INFO = "/clients/{}/key/"
TOKENS = "/clients/protected-bot/tokens/?prompt={}&completion={}"


def test_a_key_learns_its_client_restrictions_usage_and_limits(api, settings, make_key, protected_client):
    settings.DRF_LLM_KEYS = {
        "THROTTLE_RATE": "100/hour",
        "TOKEN_RATE": "1000/hour",
        "USAGE_FLUSH_INTERVAL": 3600,
    }
    api_key, plaintext = make_key(protected_client, scopes=["chat"], allowed_models=["gpt-4o*"])
    KeyUsage.objects.create(
        api_key=api_key,
        llm_client=protected_client,
        day=usage.today(),
        requests=3,
        prompt_tokens=30,
        completion_tokens=20,
        cost=Decimal("0.0125"),
        unpriced_tokens=5,
    )
    assert api.get(TOKENS.format(200, 100), **bearer(plaintext)).status_code == 200
    response = api.get(INFO.format("protected-bot"), **bearer(plaintext))
    assert response.status_code == 200
    info = response.json()
    assert {
        k: info[k] for k in ("prefix", "name", "llm_client", "scopes", "allowed_models", "expires_at")
    } == {
        "prefix": api_key.prefix,
        "name": api_key.name,
        "llm_client": "protected-bot",
        "scopes": ["chat"],
        "allowed_models": ["gpt-4o*"],
        "expires_at": None,
    }
    assert info["usage_today"] == {
        "requests": 3,
        "prompt_tokens": 30,
        "completion_tokens": 20,
        "cost": "0.0125",
        "unpriced_tokens": 5,
    }
    assert info["currency"] == "USD"
    assert (info["requests"]["limit"], info["requests"]["remaining"]) == (
        100,
        99,
    )  # the tokens request; this view has no throttle
    assert (info["tokens"]["limit"], info["tokens"]["remaining"]) == (1000, 700)
    assert info["tokens"]["reset"].endswith("s")


def test_without_rates_the_limits_are_null(api, key):
    _, plaintext = key
    info = api.get(INFO.format("protected-bot"), **bearer(plaintext)).json()
    assert (info["requests"], info["tokens"]) == (None, None)
    assert info["usage_today"]["requests"] == 0


@pytest.mark.parametrize("headers", [{}, {"HTTP_AUTHORIZATION": "Bearer llmk_nope.nope"}])
def test_without_a_valid_key_of_the_client_it_is_a_401(api, key, headers):
    response = api.get(INFO.format("protected-bot"), **headers)
    assert response.status_code == 401
    assert response.has_header("WWW-Authenticate")


def test_on_a_public_client_it_is_a_401(api, public_client):
    assert api.get(INFO.format("public-bot")).status_code == 401


def test_it_is_in_the_openapi_schema():
    patterns = [path("clients/<str:llm_client>/key/", KeyInfoView.as_view())]
    schema: dict[str, Any] = SchemaGenerator(patterns=patterns).get_schema(request=None, public=True)
    validate_schema(schema)
    response = schema["paths"]["/clients/{llm_client}/key/"]["get"]["responses"]["200"]
    assert response["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/KeyInfo"
    properties = schema["components"]["schemas"]["KeyInfo"]["properties"]
    assert {"usage_today", "budget", "owner_budget", "max_concurrent"} <= set(properties)
    budget = schema["components"]["schemas"]["Budget"]["properties"]
    assert {"limit", "period", "spent", "remaining", "resets_at"} <= set(budget)
