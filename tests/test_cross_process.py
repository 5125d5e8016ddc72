"""Revocation reaches another OS process at once, through the shared cache."""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.cache import caches
from django.core.management import call_command
from django.urls import reverse

from drf_llm_keys import keys
from drf_llm_keys.decisions.names import decision_name
from drf_llm_keys.models import APIKey, LLMClientAPIKey
from tests.support.harness import Worker, worker_environment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def worker(settings, tmp_path) -> Iterator[Worker]:
    env = worker_environment(settings, str(tmp_path / "cache"))
    process = Worker(env)
    yield process
    process.stop()


def test_a_key_revoked_here_is_refused_there_at_once(worker, make_key, protected_client):
    make_key(protected_client)
    api_key, plaintext = make_key(protected_client)
    assert worker.status("protected-bot", plaintext) == 200
    # The other process answered from its database read and filled the shared cache...
    assert caches["default"].get(decision_name("protected-bot", api_key.prefix)) is not None
    assert worker.status("protected-bot", plaintext) == 200
    api_key.is_active = False
    api_key.save()
    # ...and the revoke made here reaches it with no delay.
    assert worker.status("protected-bot", plaintext) == 401


def test_a_key_mapped_here_protects_the_client_there_at_once(worker, make_key, public_client):
    api_key, plaintext = make_key()
    assert worker.status("public-bot") == 200
    LLMClientAPIKey.objects.create(llm_client=public_client, api_key=api_key)
    assert worker.status("public-bot") == 401
    assert worker.status("public-bot", plaintext) == 200


def test_a_bulk_revoke_here_is_refused_there_at_once(worker, make_key, protected_client):
    make_key(protected_client)
    api_key, plaintext = make_key(protected_client)
    assert worker.status("protected-bot", plaintext) == 200
    APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
    assert worker.status("protected-bot", plaintext) == 401


def test_a_scope_change_here_is_applied_there_at_once(worker, make_key, protected_client):
    api_key, plaintext = make_key(protected_client, scopes=["chat", "files"])
    assert worker.status("/scoped/protected-bot/echo/", plaintext) == 200
    assert worker.status("/scoped/protected-bot/echo/", plaintext) == 200
    keys.update_restrictions(api_key, scopes=["chat"])
    assert worker.status("/scoped/protected-bot/echo/", plaintext) == 403
    api_key.scopes = ["chat", "files"]
    api_key.save()
    assert worker.status("/scoped/protected-bot/echo/", plaintext) == 200


# --- budgets and caps: held in the key's entry there, changed here ---------------------------

INFO = "/clients/protected-bot/key/"


def held_info(worker: Worker, plaintext: str) -> dict:
    worker.json(INFO, plaintext)  # its decision now held there
    return worker.json(INFO, plaintext)


def test_a_budget_set_here_through_keys_is_applied_there_at_once(worker, key, owner):
    api_key, plaintext = key
    assert held_info(worker, plaintext)["budget"] is None
    keys.set_budget(api_key, "25", "month")
    keys.set_max_concurrent(api_key, 3)
    info = worker.json(INFO, plaintext)
    assert (info["budget"]["limit"], info["budget"]["period"], info["max_concurrent"]) == ("25", "month", 3)


def test_an_owner_budget_set_here_by_the_command_is_applied_there_at_once(worker, key, owner):
    _, plaintext = key
    assert held_info(worker, plaintext)["owner_budget"] is None
    call_command(
        "llm_keys", "budget", "--owner", "owner", "--limit", "100", "--period", "week", stdout=StringIO()
    )
    assert worker.json(INFO, plaintext)["owner_budget"]["limit"] == "100"
    call_command("llm_keys", "budget", "--owner", "owner", "--clear", stdout=StringIO(), stderr=StringIO())
    assert worker.json(INFO, plaintext)["owner_budget"] is None


def test_a_budget_saved_here_in_the_admin_is_applied_there_at_once(worker, key, admin_client):
    api_key, plaintext = key
    assert held_info(worker, plaintext)["budget"] is None
    change = reverse("admin:drf_llm_keys_apikey_change", args=[api_key.pk])
    form = {
        "name": api_key.name,
        "user": api_key.user_id,
        "description": "",
        "expires_at_0": "",
        "expires_at_1": "",
        "scopes": "",
        "allowed_models": "",
        "budget_limit": "7.5",
        "budget_period": "day",
        "max_concurrent": "2",
    }
    assert admin_client.post(change, form).status_code == 302
    info = worker.json(INFO, plaintext)
    assert (info["budget"]["limit"], info["budget"]["period"], info["max_concurrent"]) == ("7.5", "day", 2)
