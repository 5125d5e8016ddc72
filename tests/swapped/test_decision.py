"""The decision per request, the model API and the cache invalidation, on a swapped model."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, models
from model_bakery import baker

from drf_llm_keys import decisions, keys
from drf_llm_keys.decisions.names import generation_name
from drf_llm_keys.models import LLMClientAPIKey
from tests.support import bearer, databases
from tests.swapped_app.models import Deployment

pytestmark = pytest.mark.django_db(transaction=True)  # invalidations run on commit

PER_VIEW = "/clients/{}/echo/"
DEFAULT = "/default/clients/{}/echo/"
ENDPOINTS = pytest.mark.parametrize("url", [PER_VIEW, DEFAULT], ids=["per-view", "default-classes"])


def get(api: Any, slug: str, plaintext: str | None = None, url: str = PER_VIEW) -> Any:
    return api.get(url.format(slug), **(bearer(plaintext) if plaintext else {}))


def assert_refused(response: Any) -> None:
    assert response.status_code == 401, response.content
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.fixture
def two_keys(make_key, protected_client):
    """Two keys on one client, so that revoking one leaves the client protected."""
    first = make_key(protected_client)
    make_key(protected_client)
    return first


# --- the decision table ---------------------------------------------------------------


@ENDPOINTS
def test_a_public_deployment_is_served_anonymously(api, public_client, url):
    response = get(api, "public-bot", url=url)
    assert response.status_code == 200
    assert response.json() == {"user": None, "key": None}


@ENDPOINTS
def test_a_keyed_deployment_refuses_a_request_without_a_key(api, key, url):
    assert_refused(get(api, "protected-bot", url=url))


@ENDPOINTS
def test_a_keyed_deployment_serves_its_own_key(api, key, url):
    api_key, plaintext = key
    response = get(api, "protected-bot", plaintext, url=url)
    assert response.status_code == 200
    assert response.json() == {"user": "owner", "key": api_key.prefix}


def test_a_keyed_deployment_refuses_another_deployments_key(api, make_key, protected_client):
    make_key(protected_client)
    other = baker.make(Deployment, slug="other-bot")
    _, plaintext = make_key(other)
    assert_refused(get(api, "protected-bot", plaintext))
    assert get(api, "other-bot", plaintext).status_code == 200


def test_a_deployment_that_requires_a_key_refuses_without_one(api):
    baker.make(Deployment, slug="strict-bot", require_api_key=True)
    assert_refused(get(api, "strict-bot"))


def test_an_unknown_slug_is_not_found(api):
    assert get(api, "no-such-bot").status_code == 404


def test_a_view_that_finds_the_deployment_itself_is_protected(api, key):
    _, plaintext = key
    assert_refused(api.get("/by-method/Protected/echo/"))
    assert api.get("/by-method/Protected/echo/", **bearer(plaintext)).status_code == 200


def test_a_revoked_key_is_refused_at_once(api, two_keys):
    api_key, plaintext = two_keys
    assert get(api, "protected-bot", plaintext).status_code == 200
    keys.revoke_key(api_key)
    assert_refused(get(api, "protected-bot", plaintext))


def test_revoking_the_only_key_makes_the_deployment_public(api, key):
    api_key, _ = key
    assert_refused(get(api, "protected-bot"))
    assert [c.slug for c in keys.revoke_key(api_key, allow_public=True)] == ["protected-bot"]
    assert get(api, "protected-bot").status_code == 200


def test_a_warm_request_runs_no_sql(api, key, django_assert_num_queries):
    _, plaintext = key
    assert get(api, "protected-bot", plaintext).status_code == 200
    with django_assert_num_queries(0):
        assert get(api, "protected-bot", plaintext).status_code == 200


# psycopg 3's prepared statements (psycopg2 has none).
if connection.vendor == "postgresql" and connection.Database.__name__ == "psycopg":

    def test_the_decision_table_holds_with_psycopg_prepared_statements(
        api, make_key, protected_client, public_client
    ):
        _, plaintext = make_key(protected_client)
        other = baker.make(Deployment, slug="other-bot")
        other_key, other_plaintext = make_key(other)
        with databases.psycopg_prepared():
            slugs = ("protected-bot", "other-bot", "public-bot")
            for _ in range(7):  # past PostgreSQL's custom plans, after an invalidation each
                decisions.publish({generation_name(slug) for slug in slugs})
                assert get(api, "public-bot").status_code == 200
                assert_refused(get(api, "protected-bot"))
                assert get(api, "protected-bot", plaintext).status_code == 200
                assert_refused(get(api, "protected-bot", other_plaintext))
                assert get(api, "other-bot", other_plaintext).status_code == 200
            assert databases.prepared_statements()
            keys.revoke_key(other_key, allow_public=True)
            assert get(api, "other-bot", other_plaintext).json() == {"user": None, "key": None}


# --- has_active_api_key and get_cached_objects ----------------------------------------


def test_has_active_api_key(make_key, protected_client, public_client):
    assert LLMClientAPIKey.has_active_api_key(protected_client) is False
    make_key(protected_client)
    assert LLMClientAPIKey.has_active_api_key(protected_client) is True
    assert LLMClientAPIKey.has_active_api_key(public_client) is False


def test_has_active_api_key_is_cached(key, protected_client, django_assert_num_queries):
    LLMClientAPIKey.has_active_api_key(protected_client)
    with django_assert_num_queries(0):
        assert LLMClientAPIKey.has_active_api_key(protected_client) is True
    with django_assert_num_queries(1):
        assert LLMClientAPIKey.has_active_api_key(protected_client, invalidate=True) is True


def test_get_cached_objects_lists_the_mappings_of_active_keys(make_key, protected_client):
    active, _ = make_key(protected_client)
    make_key(protected_client, is_active=False)
    rows = list(LLMClientAPIKey.get_cached_objects(llm_client=protected_client))
    assert [row.api_key for row in rows] == [active]
    assert rows[0].llm_client == protected_client


def test_get_cached_objects_is_empty_for_a_public_deployment_without_a_query(
    public_client, django_assert_num_queries
):
    LLMClientAPIKey.has_active_api_key(public_client)
    with django_assert_num_queries(0):
        assert list(LLMClientAPIKey.get_cached_objects(llm_client=public_client)) == []


# --- invalidation by writes to the swapped model --------------------------------------


def test_require_api_key_set_with_save_protects_at_once(api, public_client):
    assert get(api, "public-bot").status_code == 200
    public_client.require_api_key = True
    public_client.save()
    assert_refused(get(api, "public-bot"))


def test_require_api_key_set_with_the_models_queryset_protects_at_once(api, public_client):
    assert get(api, "public-bot").status_code == 200
    # The project's own queryset method, on the library's queryset.
    assert Deployment.objects.in_region("us-east").update(require_api_key=True) == 1
    assert_refused(get(api, "public-bot"))


def test_changing_the_slug_with_save_moves_the_protection_at_once(api, key, protected_client):
    _, plaintext = key
    assert_refused(get(api, "protected-bot"))
    assert get(api, "renamed-bot").status_code == 404  # unknown slug
    protected_client.slug = "renamed-bot"
    protected_client.save()
    assert_refused(get(api, "renamed-bot"))
    assert get(api, "renamed-bot", plaintext).status_code == 200
    assert get(api, "protected-bot").status_code == 404  # the old slug names no client


def test_changing_the_slug_with_a_queryset_update_moves_the_protection_at_once(api, key, protected_client):
    assert_refused(get(api, "protected-bot"))
    Deployment.objects.filter(pk=protected_client.pk).update(slug="renamed-bot")
    assert_refused(get(api, "renamed-bot"))
    assert get(api, "protected-bot").status_code == 404


def test_creating_a_deployment_replaces_a_cached_unknown_slug(api):
    assert get(api, "new-bot").status_code == 404
    Deployment.objects.create(name="New", slug="new-bot", require_api_key=True)
    assert_refused(get(api, "new-bot"))


def test_bulk_creating_a_deployment_replaces_a_cached_unknown_slug(api):
    assert get(api, "new-bot").status_code == 404
    Deployment.objects.bulk_create([Deployment(name="New", slug="new-bot", require_api_key=True)])
    assert_refused(get(api, "new-bot"))


def test_deleting_a_deployment_forgets_it_at_once(api, key, protected_client):
    _, plaintext = key
    assert get(api, "protected-bot", plaintext).status_code == 200
    protected_client.delete()
    assert get(api, "protected-bot", plaintext).status_code == 404
    assert not LLMClientAPIKey.objects.exists()


def test_deleting_deployments_with_a_queryset_forgets_them_at_once(api, key, protected_client):
    _, plaintext = key
    assert get(api, "protected-bot", plaintext).status_code == 200
    Deployment.objects.in_region("eu-west").delete()
    assert get(api, "protected-bot", plaintext).status_code == 404


def test_saving_a_field_of_the_project_changes_nothing(api, key, protected_client, django_assert_num_queries):
    assert_refused(get(api, "protected-bot"))
    protected_client.region = "ap-south"
    protected_client.save(update_fields=["region"])
    with django_assert_num_queries(0):
        assert_refused(get(api, "protected-bot"))


def test_deleting_with_a_plain_manager_forgets_the_deployment_at_once(api, key, protected_client):
    _, plaintext = key
    assert get(api, "protected-bot", plaintext).status_code == 200
    Deployment._base_manager.filter(pk=protected_client.pk).delete()  # signals, as with any manager
    assert get(api, "protected-bot", plaintext).status_code == 404


def test_an_update_through_the_base_manager_protects_at_once(api, public_client):
    # The README's model names "objects" as its base manager.
    assert get(api, "public-bot").status_code == 200
    Deployment._base_manager.filter(pk=public_client.pk).update(require_api_key=True)
    assert_refused(get(api, "public-bot"))


def test_an_update_through_a_plain_manager_needs_an_invalidation_by_hand(api, public_client):
    # The README's swappable section says so: only LLMClientQuerySet's update() invalidates.
    assert get(api, "public-bot").status_code == 200
    models.QuerySet(Deployment).filter(pk=public_client.pk).update(require_api_key=True)
    assert get(api, "public-bot").status_code == 200  # still the cached decision
    decisions.invalidate(["public-bot"], using="default")
    assert_refused(get(api, "public-bot"))
