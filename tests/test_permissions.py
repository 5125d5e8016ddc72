"""Scopes and model allowlists (drf_llm_keys.permissions): answered from the key's cache
entry, and a change takes effect at once, here and in every other process."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.exceptions import PermissionDenied

from drf_llm_keys import keys
from drf_llm_keys.decisions.entries import load_decision
from drf_llm_keys.instances import api_key_from_entry
from drf_llm_keys.models import APIKey
from drf_llm_keys.permissions import HasScopes, allows_model, require_model
from tests.support import bearer
from tests.support.redis import commands

# Transactions commit, so that the decision cache is filled as in production.
pytestmark = pytest.mark.django_db(transaction=True)

SCOPED = "/scoped/{}/echo/"
MODELS = "/models/{}/echo/"


def get(api: Any, url: str, plaintext: str | None = None, **params: str) -> Any:
    return api.get(url, params, **(bearer(plaintext) if plaintext else {}))


def key_entry(prefix: str) -> dict[str, Any]:
    """What a cold decision on protected-bot loads for the key."""
    entry: dict[str, Any] = load_decision("protected-bot", prefix, using="default")["key"]
    return entry


def assert_warm(api: Any, url: str, plaintext: str, **params: str) -> None:
    """Served from the cache: what follows proves an invalidation, not a cold read."""
    with CaptureQueriesContext(connection) as queries:
        get(api, url, plaintext, **params)
    assert len(queries) == 0, [q["sql"] for q in queries]


# --- HasScopes ---------------------------------------------------------------------------


def test_a_key_with_every_required_scope_is_served(api, make_key, protected_client):
    api_key, plaintext = make_key(protected_client, scopes=["chat", "files", "admin"])
    response = get(api, SCOPED.format("protected-bot"), plaintext)
    assert response.status_code == 200, response.content
    assert response.json() == {
        "key": api_key.prefix,
        "scopes": ["chat", "files", "admin"],
        "allowed_models": [],
        "has_chat": True,
    }


def test_a_key_without_scopes_is_unrestricted(api, key):
    _, plaintext = key
    assert get(api, SCOPED.format("protected-bot"), plaintext).status_code == 200


@pytest.mark.parametrize(
    ("scopes", "missing"),
    [(["chat"], "files"), (["files"], "chat"), (["other"], "chat, files")],
)
def test_a_key_missing_a_scope_is_refused_naming_it(api, make_key, protected_client, scopes, missing):
    _, plaintext = make_key(protected_client, scopes=scopes)
    response = get(api, SCOPED.format("protected-bot"), plaintext)
    assert response.status_code == 403
    assert response.json() == {"detail": f"API key lacks scope(s): {missing}."}
    assert response.data["detail"].code == "insufficient_scope"


def test_a_public_clients_anonymous_requests_pass(api, public_client):
    response = get(api, SCOPED.format("public-bot"))
    assert response.status_code == 200
    assert response.json() == {"key": None}


def test_a_protected_client_still_refuses_a_request_without_a_key(api, key):
    assert get(api, SCOPED.format("protected-bot")).status_code == 401


def test_a_request_another_authenticator_let_in_is_not_restricted(api, public_client, owner):
    # The session authenticates the user on a public client: request.auth is no key of ours.
    api.force_login(owner)
    response = api.get("/scoped-default/public-bot/echo/")
    assert response.status_code == 200
    assert response.json() == {"user": "owner", "key": None}


def test_the_default_authenticators_restrict_our_keys_alike(api, make_key, protected_client):
    _, plaintext = make_key(protected_client, scopes=["files"])
    response = get(api, "/scoped-default/protected-bot/echo/", plaintext)
    assert response.status_code == 403
    assert response.json() == {"detail": "API key lacks scope(s): chat."}


@pytest.mark.parametrize("required", [None, "chat", {"chat"}])
def test_a_view_without_a_list_of_required_scopes_is_a_configuration_error(required):
    view = SimpleNamespace() if required is None else SimpleNamespace(required_scopes=required)
    request = SimpleNamespace(auth=None)
    with pytest.raises(ImproperlyConfigured, match="required_scopes"):
        HasScopes().has_permission(request, view)  # type: ignore[arg-type]


def test_an_empty_list_of_required_scopes_needs_none(make_key, protected_client):
    api_key, _ = make_key(protected_client, scopes=["chat"])
    request = SimpleNamespace(auth=api_key)
    assert HasScopes().has_permission(request, SimpleNamespace(required_scopes=[]))  # type: ignore[arg-type]


# --- models ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status"),
    [("gpt-4o", 200), ("gpt-4o-mini", 200), ("echo", 200), ("gpt-4", 403), ("echo-2", 403), ("", 403)],
)
def test_a_key_may_use_the_models_it_lists(api, make_key, protected_client, model, status):
    _, plaintext = make_key(protected_client, allowed_models=["gpt-4o*", "echo"])
    response = get(api, MODELS.format("protected-bot"), plaintext, model=model)
    assert response.status_code == status, response.content
    if status == 403:
        assert response.json() == {"detail": f"API key may not use model '{model}'."}


def test_a_key_without_a_model_list_may_use_any_model(api, key):
    _, plaintext = key
    assert get(api, MODELS.format("protected-bot"), plaintext, model="anything").status_code == 200


def test_a_public_client_may_use_any_model(api, public_client):
    assert get(api, MODELS.format("public-bot"), model="anything").status_code == 200


def test_require_model_refuses_with_a_code_for_clients(make_key):
    api_key, _ = make_key(allowed_models=["echo"])
    request = SimpleNamespace(auth=api_key)
    with pytest.raises(PermissionDenied) as refused:
        require_model(request, "gpt-4o")  # type: ignore[arg-type]
    assert refused.value.get_codes() == "model_not_allowed"
    assert allows_model(request, "echo")  # type: ignore[arg-type]
    assert allows_model(SimpleNamespace(auth="a token of another authenticator"), "gpt-4o")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("patterns", "name", "allowed"),
    [
        ([], "anything", True),
        (["*"], "anything", True),
        (["gpt-4o"], "gpt-4o", True),
        (["gpt-4o"], "GPT-4o", False),  # exact, case included
        (["gpt-4o"], "gpt-4o-mini", False),
        (["gpt-4o*"], "gpt-4o", True),
        (["gpt-4o*"], "gpt-4", False),
        (["a", "b*"], "bee", True),
    ],
)
def test_allows_model(patterns, name, allowed):
    assert APIKey(allowed_models=patterns).allows_model(name) is allowed


@pytest.mark.parametrize(
    ("scopes", "names", "held"),
    [
        ([], ("anything",), True),
        (["a", "b"], ("a",), True),
        (["a", "b"], ("a", "b"), True),
        (["a", "b"], ("a", "c"), False),
        (["a"], (), True),
    ],
)
def test_has_scopes_needs_all_of_them(scopes, names, held):
    assert APIKey(scopes=scopes).has_scopes(*names) is held


@pytest.mark.parametrize("stored", ["chat", {"chat": True}, 7])
def test_a_value_written_around_validation_grants_nothing(make_key, protected_client, stored):
    api_key, _ = make_key(protected_client)
    APIKey.objects.filter(pk=api_key.pk).update(scopes=stored, allowed_models=stored)
    api_key = api_key_from_entry(key_entry(api_key.prefix), api_key.prefix, "default")
    assert not api_key.has_scopes("c")
    assert not api_key.has_scopes("chat")
    assert not api_key.allows_model("c")


# --- the cached entry --------------------------------------------------------------------


def test_a_warm_scoped_request_runs_no_sql(api, django_assert_num_queries, make_key, protected_client):
    _, plaintext = make_key(protected_client, scopes=["chat", "files"], allowed_models=["echo"])
    get(api, SCOPED.format("protected-bot"), plaintext)
    get(api, MODELS.format("protected-bot"), plaintext, model="echo")
    with django_assert_num_queries(0):
        assert get(api, SCOPED.format("protected-bot"), plaintext).json()["allowed_models"] == ["echo"]
        assert get(api, MODELS.format("protected-bot"), plaintext, model="echo").status_code == 200
        assert get(api, MODELS.format("protected-bot"), plaintext, model="gpt-4o").status_code == 403


def test_a_warm_scoped_request_makes_no_cache_round_trip(api, pushed, make_key, protected_client):
    _, plaintext = make_key(protected_client, scopes=["chat", "files"], allowed_models=["echo"])
    for _ in range(3):  # cold, then confirmed under the push channel: warm from then on
        assert get(api, SCOPED.format("protected-bot"), plaintext).status_code == 200
    before = commands(pushed)
    with CaptureQueriesContext(connection) as queries:
        assert get(api, SCOPED.format("protected-bot"), plaintext).status_code == 200
        assert get(api, MODELS.format("protected-bot"), plaintext, model="gpt-4o").status_code == 403
    assert commands(pushed) == before
    assert len(queries) == 0, [q["sql"] for q in queries]


def test_the_key_is_rebuilt_with_its_lists_loaded(make_key, protected_client, django_assert_num_queries):
    api_key, _ = make_key(protected_client, scopes=["chat"], allowed_models=["echo"])
    entry = key_entry(api_key.prefix)
    with django_assert_num_queries(0):
        rebuilt = api_key_from_entry(entry, api_key.prefix, "default")
        assert (rebuilt.scopes, rebuilt.allowed_models) == (["chat"], ["echo"])
        rebuilt.scopes.append("admin")  # a view changing its copy...
        assert api_key_from_entry(entry, api_key.prefix, "default").scopes == [
            "chat"
        ]  # ...changes no other request's


def test_an_entry_without_the_lists_reads_them_from_the_database(make_key, protected_client):
    # Written by a version that did not hold them: never taken as "unrestricted".
    api_key, _ = make_key(protected_client, scopes=["chat"], allowed_models=["echo"])
    entry = {k: v for k, v in key_entry(api_key.prefix).items() if k not in ("scopes", "allowed_models")}
    rebuilt = api_key_from_entry(entry, api_key.prefix, "default")
    assert (rebuilt.scopes, rebuilt.allowed_models) == (["chat"], ["echo"])
    assert not rebuilt.has_scopes("files")


# --- a change takes effect at once -------------------------------------------------------


def change_by_save(api_key: APIKey, scopes: list[str]) -> None:
    api_key.scopes = scopes
    api_key.save()


def change_by_update_fields(api_key: APIKey, scopes: list[str]) -> None:
    api_key.scopes = scopes
    api_key.save(update_fields=["scopes"])


def change_by_bulk_update(api_key: APIKey, scopes: list[str]) -> None:
    APIKey.objects.filter(pk=api_key.pk).update(scopes=scopes)


def change_by_keys(api_key: APIKey, scopes: list[str]) -> None:
    keys.update_restrictions(api_key, scopes=scopes)


CHANGES = [change_by_save, change_by_update_fields, change_by_bulk_update, change_by_keys]


@pytest.mark.parametrize("change", CHANGES)
def test_a_scope_change_takes_effect_on_the_next_request(api, make_key, protected_client, change):
    api_key, plaintext = make_key(protected_client, scopes=["chat", "files"])
    assert get(api, SCOPED.format("protected-bot"), plaintext).status_code == 200
    assert_warm(api, SCOPED.format("protected-bot"), plaintext)
    change(api_key, ["chat"])
    assert get(api, SCOPED.format("protected-bot"), plaintext).status_code == 403
    change(api_key, [])
    assert get(api, SCOPED.format("protected-bot"), plaintext).status_code == 200


@pytest.mark.parametrize("bulk", [False, True])
def test_a_model_change_takes_effect_on_the_next_request(api, make_key, protected_client, bulk):
    api_key, plaintext = make_key(protected_client)
    url = MODELS.format("protected-bot")
    assert get(api, url, plaintext, model="gpt-4o").status_code == 200
    assert_warm(api, url, plaintext, model="gpt-4o")
    if bulk:
        APIKey.objects.filter(pk=api_key.pk).update(allowed_models=["echo"])
    else:
        keys.update_restrictions(api_key, allowed_models=["echo"])
    assert get(api, url, plaintext, model="gpt-4o").status_code == 403
    assert get(api, url, plaintext, model="echo").status_code == 200


def test_a_change_here_is_applied_by_another_process_on_its_next_request(
    pushed_worker,
    pushed,
    make_key,
    protected_client,
):
    api_key, plaintext = make_key(protected_client, scopes=["chat", "files"], allowed_models=["echo"])
    scoped, models = SCOPED.format("protected-bot"), MODELS.format("protected-bot") + "?model=echo"
    for _ in range(3):
        assert pushed_worker.status(scoped, plaintext) == 200
        assert pushed_worker.status(models, plaintext) == 200
    before = commands(pushed)
    assert pushed_worker.status(scoped, plaintext) == 200
    assert commands(pushed) == before, "the other process should trust its entry"

    keys.update_restrictions(api_key, scopes=["chat"], allowed_models=["gpt-4o*"])
    assert pushed_worker.status(scoped, plaintext) == 403
    assert pushed_worker.status(models, plaintext) == 403

    APIKey.objects.filter(pk=api_key.pk).update(scopes=[], allowed_models=[])
    assert pushed_worker.status(scoped, plaintext) == 200
    assert pushed_worker.status(models, plaintext) == 200
