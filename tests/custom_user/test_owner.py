"""An owner whose ``is_active`` is a property is judged by it, on the cold path and after
every save; the cache holds its answer, never the owner's row or password hash."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from drf_llm_keys import decisions
from drf_llm_keys.decisions.entries import owner_activity_is_computed
from drf_llm_keys.decisions.names import decision_name, generation_name
from tests.custom_user_app.models import Member
from tests.support import bearer, databases

pytestmark = pytest.mark.django_db(transaction=True)


def status(api, plaintext: str) -> int:
    return api.get("/clients/protected-bot/echo/", **bearer(plaintext)).status_code


def test_the_user_models_is_active_is_computed():
    assert owner_activity_is_computed()


def test_a_suspended_owners_key_is_refused_on_the_cold_path(api, make_key, protected_client):
    suspended = Member.objects.create(username="suspended", suspended_at=timezone.now())
    _, plaintext = make_key(protected_client, user=suspended)
    response = api.get("/clients/protected-bot/echo/", **bearer(plaintext))
    assert response.status_code == 401
    assert response.json()["detail"] == "API key owner is inactive or deleted."


def test_an_active_owners_key_works(api, key):
    _, plaintext = key
    response = api.get("/clients/protected-bot/echo/", **bearer(plaintext))
    assert response.status_code == 200
    assert response.json()["user"] == "owner"


@pytest.mark.parametrize("update_fields", [None, ["suspended_at"]])
def test_suspending_the_owner_is_refused_at_once(api, key, owner, update_fields):
    # The property reads a field the library cannot know of: any save invalidates.
    _, plaintext = key
    assert status(api, plaintext) == 200
    owner.suspended_at = timezone.now()
    owner.save(update_fields=update_fields)
    assert status(api, plaintext) == 401


def test_the_cache_holds_the_answer_not_the_row(api, key, owner):
    api_key, plaintext = key
    owner.set_password("a password")
    owner.save()
    assert status(api, plaintext) == 200
    entry = cache.get(decision_name("protected-bot", api_key.prefix))[2]  # (generation, epoch, entry)
    assert entry["key"]["user"] == {"id": owner.pk, "username": "owner", "is_active": True}
    assert owner.password not in repr(entry)


# psycopg 3's prepared statements (psycopg2 has none).
if connection.vendor == "postgresql" and connection.Database.__name__ == "psycopg":

    def test_a_suspended_owner_is_refused_with_psycopg_prepared_statements(api, make_key, protected_client):
        suspended = Member.objects.create(username="suspended", suspended_at=timezone.now())
        _, refused = make_key(protected_client, user=suspended)
        _, served = make_key(protected_client)
        with databases.psycopg_prepared():
            for _ in range(7):  # past PostgreSQL's custom plans
                decisions.publish({generation_name("protected-bot")})
                assert status(api, refused) == 401
                assert status(api, served) == 200
            assert databases.prepared_statements()
