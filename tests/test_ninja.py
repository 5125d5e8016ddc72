"""Django Ninja's front door (drf_llm_keys.ninja): what request.auth is, the security scheme,
scopes, models, limits and usage, in sync and async operations (tests/async_views.py)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from drf_llm_keys import signals, usage
from drf_llm_keys.ninja import ANONYMOUS, LLMClientAPIKeyAuth
from tests.async_views import api
from tests.support import bearer, over_asgi

pytestmark = pytest.mark.django_db

OPERATIONS = pytest.mark.parametrize("kind", ["sync", "async"])


def get(path: str, **meta: str) -> Any:
    return over_asgi("get", path, **meta)


def test_request_auth_is_the_key(key):
    _, plaintext = key
    assert get("/ninja/clients/protected-bot/auth/", **bearer(plaintext)).json() == {
        "auth": f"<APIKey {key[0].prefix} active=True>",
        "is_key": True,
    }


def test_a_public_clients_request_passes_with_request_auth_anonymous(public_client):
    # Ninja takes a falsy answer for a refusal: the marker is truthy.
    assert bool(ANONYMOUS)
    response = get("/ninja/clients/public-bot/auth/")
    assert response.json() == {"auth": "drf_llm_keys.ninja.ANONYMOUS", "is_key": False}


def test_an_operation_that_names_no_client_is_refused_by_ninja(db):
    response = Client().get("/ninja/no-client/", HTTP_AUTHORIZATION="Bearer whatever")
    assert response.status_code == 401
    assert response.json() == {"detail": "Unauthorized"}


def test_the_client_may_come_from_another_path_parameter(key):
    api_key, plaintext = key
    assert get("/ninja/by-name/protected-bot/").status_code == 401
    assert get("/ninja/by-name/protected-bot/", **bearer(plaintext)).json()["key"] == api_key.prefix


def test_the_client_may_come_from_a_callable(key):
    api_key, plaintext = key
    assert Client().get("/ninja/by-callable/?bot=protected-bot").status_code == 401
    found = Client().get("/ninja/by-callable/?bot=protected-bot", **bearer(plaintext))
    assert found.json()["key"] == api_key.prefix


def test_without_the_exception_handlers_the_refusal_keeps_its_status_and_body(key):
    response = get("/ninja-bare/clients/protected-bot/")
    assert response.status_code == 401
    assert response.json() == {"detail": "This LLM client requires an API key."}
    assert "WWW-Authenticate" not in response


def test_the_security_scheme_is_in_the_openapi_document():
    schema = api.get_openapi_schema()
    assert schema["components"]["securitySchemes"]["LLMClientAPIKeyAuth"] == {
        "type": "http",
        "scheme": "bearer",
    }
    operation = schema["paths"]["/ninja/clients/{llm_client}/async/"]["get"]
    assert operation["security"] == [{"LLMClientAPIKeyAuth": []}]


def test_scopes_on_the_auth_answer_403_as_drf_does(make_key, protected_client):
    _, chat_only = make_key(protected_client, scopes=["chat"])
    _, both = make_key(protected_client, scopes=["chat", "files"])
    drf = Client().get("/scoped/protected-bot/echo/", **bearer(chat_only))
    ninja = get("/ninja/scoped/protected-bot/", **bearer(chat_only))
    assert (
        (ninja.status_code, ninja.json())
        == (drf.status_code, drf.json())
        == (
            403,
            {"detail": "API key lacks scope(s): files."},
        )
    )
    assert get("/ninja/scoped/protected-bot/", **bearer(both)).json()["scopes"] == ["chat", "files"]


def test_require_scopes_in_an_operation(make_key, protected_client, public_client):
    _, files_only = make_key(protected_client, scopes=["files"])
    refused = Client().get("/ninja/scoped-in-view/protected-bot/", **bearer(files_only))
    assert (refused.status_code, refused.json()) == (403, {"detail": "API key lacks scope(s): chat."})
    assert Client().get("/ninja/scoped-in-view/public-bot/").status_code == 200  # no key: public


def test_require_model_answers_403_as_drf_does(make_key, protected_client):
    _, plaintext = make_key(protected_client, allowed_models=["gpt-4o*"])
    assert get("/ninja/models/protected-bot/?model=gpt-4o-mini", **bearer(plaintext)).status_code == 200
    drf = Client().get("/models/protected-bot/echo/?model=o1", **bearer(plaintext))
    ninja = get("/ninja/models/protected-bot/?model=o1", **bearer(plaintext))
    assert (ninja.status_code, ninja.json()) == (drf.status_code, drf.json())
    assert ninja.json() == {"detail": "API key may not use model 'o1'."}


@OPERATIONS
def test_limits_answer_429_as_drf_does(kind, key, settings):
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "2/minute"}
    _, plaintext = key
    url = f"/ninja/limited/protected-bot/{kind}/"
    responses = [get(url, **bearer(plaintext)) for _ in range(3)]
    assert [response.status_code for response in responses] == [200, 200, 429]
    refused = responses[-1]
    wait = int(refused["Retry-After"])
    assert 0 < wait <= 60
    assert refused.json() == {
        "detail": f"Request was throttled. Expected available in {wait} second{'s' if wait != 1 else ''}."
    }


def test_limits_are_shared_with_the_drf_views(key, settings):
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "2/minute"}
    _, plaintext = key
    assert get("/async/limited/protected-bot/echo/", **bearer(plaintext)).status_code == 200
    assert get("/ninja/limited/protected-bot/async/", **bearer(plaintext)).status_code == 200
    assert get("/ninja/limited/protected-bot/sync/", **bearer(plaintext)).status_code == 429


def test_public_clients_are_limited_per_ip(public_client, settings):
    settings.DRF_LLM_KEYS = {"ANONYMOUS_THROTTLE_RATE": "1/minute"}
    assert get("/ninja/limited/public-bot/async/").status_code == 200
    assert get("/ninja/limited/public-bot/async/").status_code == 429


def test_usage_is_counted_per_key_and_client(key, protected_client):
    api_key, plaintext = key
    get("/ninja/tokens/protected-bot/?prompt=5", **bearer(plaintext))
    Client().get("/ninja/clients/protected-bot/sync/", **bearer(plaintext))
    ((name, counts),) = usage.counter.pending().items()
    assert name[:2] == (api_key.pk, protected_client.pk)
    assert counts[:3] == (2, 5, 0)


@OPERATIONS
def test_a_refusal_is_signalled_by_the_ninja_auth(kind, key):
    received: list[dict[str, Any]] = []

    def receive(**kwargs: Any) -> None:
        received.append(kwargs)

    signals.authentication_refused.connect(receive)
    try:
        assert get(f"/ninja/clients/protected-bot/{kind}/").status_code == 401
    finally:
        signals.authentication_refused.disconnect(receive)
    (event,) = received
    assert event["sender"] is LLMClientAPIKeyAuth
    assert (event["llm_client"], event["reason"]) == ("protected-bot", "This LLM client requires an API key.")
