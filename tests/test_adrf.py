"""adrf's async views: the key decided on the event loop (drf_llm_keys.adrf), a decision
the process holds with no thread hop, one that needs the database with one."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication
from drf_llm_keys.decisions import store
from drf_llm_keys.models import LLMClient
from tests.support import bearer, over_asgi

pytestmark = pytest.mark.django_db

ON_LOOP = "/async/clients/{}/echo/"


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Each decision lookup: its thread, and whether an event loop runs there."""
    seen: list[tuple[int, bool]] = []
    lookup = store.lookup

    def recorded(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        seen.append((threading.get_ident(), on_loop))
        return lookup(*args, **kwargs)

    monkeypatch.setattr(store, "lookup", recorded)
    return seen


def get(path: str, **meta: str) -> Any:
    return over_asgi("get", path, **meta)


# Committed rows: a decision read inside the test's open transaction is not held (store).
@pytest.mark.django_db(transaction=True)
def test_a_held_decision_is_made_on_the_event_loop_without_a_thread_hop(key, lookups):
    api_key, plaintext = key
    get(ON_LOOP.format("protected-bot"), **bearer(plaintext))  # cold: loads, then held
    lookups.clear()
    response = get(ON_LOOP.format("protected-bot"), **bearer(plaintext))
    assert response.json()["key"] == api_key.prefix
    assert [on_loop for _, on_loop in lookups] == [True]  # once, on the loop: no retry in a thread


def test_a_decision_that_needs_the_database_takes_one_thread_hop(key, lookups):
    api_key, plaintext = key
    response = get(ON_LOOP.format("protected-bot"), **bearer(plaintext))
    assert response.json()["key"] == api_key.prefix
    # Tried on the loop, where it may not query, then made in a thread.
    assert [on_loop for _, on_loop in lookups] == [True, False]


def test_a_refusal_decided_on_the_loop_is_answered_by_adrf_as_a_401(key, lookups):
    response = get(ON_LOOP.format("protected-bot"))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    # Decided once, not again by the authentication adrf runs in its thread.
    assert len([on_loop for _, on_loop in lookups if on_loop]) == 1


def test_a_view_that_finds_its_client_decides_in_a_thread(key, lookups):
    api_key, plaintext = key

    class View:
        def get_llm_client(self) -> Any:
            return LLMClient.objects.get(slug="protected-bot")  # a query: never on the loop

    request = Request(
        APIRequestFactory().get("/", **bearer(plaintext)), parser_context={"view": View(), "kwargs": {}}
    )
    _, found = async_to_sync(LLMClientAPIKeyAuthentication().aauthenticate)(request)
    assert found.prefix == api_key.prefix
    assert [on_loop for _, on_loop in lookups] == [False]


def test_aauthenticate_leaves_views_without_a_client_to_others(lookups):
    request = Request(APIRequestFactory().get("/"), parser_context={"kwargs": {}})
    assert async_to_sync(LLMClientAPIKeyAuthentication().aauthenticate)(request) is None
    assert lookups == []


def test_adrf_as_it_is_decides_in_its_thread(key, lookups):
    api_key, plaintext = key
    response = get("/adrf/clients/protected-bot/echo/", **bearer(plaintext))
    assert response.json()["key"] == api_key.prefix
    assert [on_loop for _, on_loop in lookups] == [False]


def test_scopes_are_checked_after_a_decision_on_the_loop(make_key, protected_client):
    _, chat_only = make_key(protected_client, scopes=["chat"])
    _, both = make_key(protected_client, scopes=["chat", "files"])
    refused = get("/async/scoped/protected-bot/echo/", **bearer(chat_only))
    assert refused.status_code == 403
    assert refused.json() == {"detail": "API key lacks scope(s): files."}
    assert get("/async/scoped/protected-bot/echo/", **bearer(both)).status_code == 200


def test_models_are_checked_after_a_decision_on_the_loop(make_key, protected_client):
    _, plaintext = make_key(protected_client, allowed_models=["gpt-4o*"])
    url = "/async/models/protected-bot/echo/?model={}"
    assert get(url.format("gpt-4o-mini"), **bearer(plaintext)).status_code == 200
    refused = get(url.format("o1"), **bearer(plaintext))
    assert refused.status_code == 403
    assert refused.json() == {"detail": "API key may not use model 'o1'."}


def test_limits_count_requests_decided_on_the_loop(key, settings):
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "2/minute"}
    _, plaintext = key
    statuses = [get("/async/limited/protected-bot/echo/", **bearer(plaintext)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
