"""Every write that changes a decision takes effect at once, after a warm cache."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from model_bakery import baker

from drf_llm_keys.models import APIKey, LLMClient, LLMClientAPIKey
from tests.support import bearer

pytestmark = pytest.mark.django_db(transaction=True)


def status(api, slug: str, plaintext: str | None = None) -> int:
    headers = bearer(plaintext) if plaintext else {}
    return api.get(f"/clients/{slug}/echo/", **headers).status_code


def is_public(api, slug: str) -> bool:
    return api.get(f"/clients/{slug}/echo/").status_code == 200


# Django's own code and some projects' go through the base manager: it invalidates too.
MANAGERS = pytest.mark.parametrize("manager", ["objects", "_base_manager"])


@pytest.fixture
def two_keys(make_key, protected_client):
    """Two keys on one client, so that losing one leaves the client protected."""
    first, first_plaintext = make_key(protected_client)
    make_key(protected_client)
    return first, first_plaintext


# --- keys -----------------------------------------------------------------------------


def test_revoking_a_key_with_save_is_refused_at_once(api, two_keys):
    api_key, plaintext = two_keys
    assert status(api, "protected-bot", plaintext) == 200
    api_key.is_active = False
    api_key.save()
    assert status(api, "protected-bot", plaintext) == 401


@MANAGERS
def test_revoking_a_key_with_a_queryset_update_is_refused_at_once(api, two_keys, manager):
    api_key, plaintext = two_keys
    assert status(api, "protected-bot", plaintext) == 200
    getattr(APIKey, manager).filter(prefix=api_key.prefix).update(is_active=False)
    assert status(api, "protected-bot", plaintext) == 401


def test_expiring_a_key_is_refused_at_once(api, two_keys):
    api_key, plaintext = two_keys
    assert status(api, "protected-bot", plaintext) == 200
    api_key.expires_at = timezone.now() - timedelta(seconds=1)
    api_key.save(update_fields=["expires_at"])
    assert status(api, "protected-bot", plaintext) == 401


def test_extending_an_expired_key_is_accepted_at_once(api, make_key, protected_client):
    api_key, plaintext = make_key(protected_client, expires_at=timezone.now() - timedelta(days=1))
    assert status(api, "protected-bot", plaintext) == 401
    APIKey.objects.filter(pk=api_key.pk).bulk_update(
        [APIKey(pk=api_key.pk, expires_at=timezone.now() + timedelta(days=1))], ["expires_at"]
    )
    assert status(api, "protected-bot", plaintext) == 200


def test_deleting_a_key_is_refused_at_once(api, two_keys):
    api_key, plaintext = two_keys
    assert status(api, "protected-bot", plaintext) == 200
    api_key.delete()
    assert status(api, "protected-bot", plaintext) == 401


def test_deleting_keys_with_a_queryset_is_refused_at_once(api, two_keys):
    api_key, plaintext = two_keys
    assert status(api, "protected-bot", plaintext) == 200
    APIKey.objects.filter(pk=api_key.pk).delete()
    assert status(api, "protected-bot", plaintext) == 401


def test_revoking_the_last_key_makes_the_client_public_at_once(api, key):
    api_key, _ = key
    assert not is_public(api, "protected-bot")
    APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
    assert is_public(api, "protected-bot")


def test_recording_last_use_does_not_invalidate(api, key, django_assert_num_queries):
    api_key, plaintext = key
    assert status(api, "protected-bot", plaintext) == 200
    APIKey.objects.filter(pk=api_key.pk).update(last_used_at=timezone.now())
    api_key.save(update_fields=["last_used_at"])
    with django_assert_num_queries(0):
        assert status(api, "protected-bot", plaintext) == 200


# --- mappings -------------------------------------------------------------------------


def test_mapping_a_key_protects_a_public_client_at_once(api, public_client, make_key):
    _, plaintext = make_key()
    assert is_public(api, "public-bot")
    LLMClientAPIKey.objects.create(llm_client=public_client, api_key=APIKey.objects.get())
    assert not is_public(api, "public-bot")
    assert status(api, "public-bot", plaintext) == 200


def test_mapping_keys_in_bulk_protects_at_once(api, public_client, make_key):
    api_key, plaintext = make_key()
    assert is_public(api, "public-bot")
    LLMClientAPIKey.objects.bulk_create([LLMClientAPIKey(llm_client=public_client, api_key=api_key)])
    assert status(api, "public-bot") == 401
    assert status(api, "public-bot", plaintext) == 200


def test_mapping_a_key_to_a_second_client_opens_it_at_once(api, key, make_key):
    api_key, plaintext = key
    other = baker.make_recipe("tests.llm_client", slug="other-bot")
    make_key(other)
    assert status(api, "other-bot", plaintext) == 401
    LLMClientAPIKey.objects.create(llm_client=other, api_key=api_key)
    assert status(api, "other-bot", plaintext) == 200


def test_unmapping_a_key_is_refused_at_once(api, two_keys, protected_client):
    api_key, plaintext = two_keys
    assert status(api, "protected-bot", plaintext) == 200
    LLMClientAPIKey.objects.get(api_key=api_key).delete()
    assert status(api, "protected-bot", plaintext) == 401


def test_unmapping_with_a_queryset_is_refused_at_once(api, two_keys):
    api_key, plaintext = two_keys
    assert status(api, "protected-bot", plaintext) == 200
    LLMClientAPIKey.objects.filter(api_key=api_key).delete()
    assert status(api, "protected-bot", plaintext) == 401


@MANAGERS
def test_moving_a_mapping_with_a_queryset_update_is_seen_at_once(api, two_keys, manager):
    api_key, plaintext = two_keys
    other = baker.make_recipe("tests.llm_client", slug="other-bot")
    assert status(api, "protected-bot", plaintext) == 200
    assert is_public(api, "other-bot")
    getattr(LLMClientAPIKey, manager).filter(api_key=api_key).update(llm_client=other)
    assert status(api, "protected-bot", plaintext) == 401
    assert status(api, "other-bot") == 401
    assert status(api, "other-bot", plaintext) == 200


def test_moving_a_mapping_with_save_is_seen_at_once(api, key):
    api_key, plaintext = key
    other = baker.make_recipe("tests.llm_client", slug="other-bot")
    assert status(api, "protected-bot") == 401
    link = LLMClientAPIKey.objects.get(api_key=api_key)
    link.llm_client = other
    link.save()
    assert is_public(api, "protected-bot")  # its only key moved away
    assert status(api, "other-bot", plaintext) == 200


# --- clients --------------------------------------------------------------------------


def test_require_api_key_protects_at_once(api, public_client):
    assert is_public(api, "public-bot")
    public_client.require_api_key = True
    public_client.save()
    assert status(api, "public-bot") == 401


@MANAGERS
def test_require_api_key_with_a_queryset_update_protects_at_once(api, public_client, manager):
    assert is_public(api, "public-bot")
    getattr(LLMClient, manager).filter(pk=public_client.pk).update(require_api_key=True)
    assert status(api, "public-bot") == 401


def test_changing_the_slug_moves_the_protection_at_once(api, key, protected_client):
    _, plaintext = key
    assert status(api, "protected-bot") == 401
    assert status(api, "renamed-bot") == 404  # unknown slug: cached as "no such client"
    protected_client.slug = "renamed-bot"
    protected_client.save()
    assert status(api, "renamed-bot") == 401
    assert status(api, "renamed-bot", plaintext) == 200
    assert status(api, "protected-bot") == 404  # the old slug names no client


def test_changing_the_slug_with_a_queryset_update_moves_the_protection_at_once(api, key, protected_client):
    assert status(api, "protected-bot") == 401
    assert status(api, "renamed-bot") == 404
    LLMClient.objects.filter(pk=protected_client.pk).update(slug="renamed-bot")
    assert status(api, "renamed-bot") == 401
    assert status(api, "protected-bot") == 404


def test_creating_a_client_replaces_a_cached_unknown_slug(api, make_key):
    assert status(api, "new-bot") == 404
    new = LLMClient.objects.create(name="New", slug="new-bot", require_api_key=True)
    assert status(api, "new-bot") == 401
    _, plaintext = make_key(new)
    assert status(api, "new-bot", plaintext) == 200


def test_bulk_created_client_replaces_a_cached_unknown_slug(api):
    assert status(api, "new-bot") == 404
    LLMClient.objects.bulk_create([LLMClient(name="New", slug="new-bot", require_api_key=True)])
    assert status(api, "new-bot") == 401


def test_deleting_a_client_forgets_it_at_once(api, key, protected_client):
    _, plaintext = key
    assert status(api, "protected-bot", plaintext) == 200
    protected_client.delete()
    assert status(api, "protected-bot", plaintext) == 404


def test_saving_a_client_name_changes_nothing(api, key, protected_client, django_assert_num_queries):
    assert status(api, "protected-bot") == 401
    protected_client.name = "Renamed"
    protected_client.save(update_fields=["name"])
    with django_assert_num_queries(0):
        assert status(api, "protected-bot") == 401


# --- owners ---------------------------------------------------------------------------


def test_deactivating_the_owner_is_refused_at_once(api, key, owner):
    _, plaintext = key
    assert status(api, "protected-bot", plaintext) == 200
    owner.is_active = False
    owner.save()
    assert status(api, "protected-bot", plaintext) == 401


def test_deleting_the_owner_keeps_the_key_refused_and_the_client_protected(api, key, owner):
    api_key, plaintext = key
    assert status(api, "protected-bot", plaintext) == 200
    owner.delete()
    assert status(api, "protected-bot", plaintext) == 401
    assert status(api, "protected-bot") == 401
    assert APIKey.objects.get(pk=api_key.pk).user_id is None


def test_a_login_does_not_invalidate_the_owners_keys(api, key, owner, django_assert_num_queries):
    _, plaintext = key
    assert status(api, "protected-bot", plaintext) == 200
    owner.last_login = timezone.now()
    with django_assert_num_queries(1):  # the UPDATE alone: no lookup of the owner's keys
        owner.save(update_fields=["last_login"])
    with django_assert_num_queries(0):
        assert status(api, "protected-bot", plaintext) == 200


def test_a_new_user_costs_no_lookup_of_keys(django_assert_num_queries):
    with django_assert_num_queries(1):
        baker.make(get_user_model(), username="fresh")


# --- transactions ---------------------------------------------------------------------


def test_invalidation_waits_for_the_commit(api, two_keys):
    api_key, plaintext = two_keys
    assert status(api, "protected-bot", plaintext) == 200
    with transaction.atomic():
        APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
        # Not committed: other connections still see an active key; this one sees its own
        # write, and the cached entries were retired by the write itself.
        assert status(api, "protected-bot", plaintext) == 401
    assert status(api, "protected-bot", plaintext) == 401


def test_a_rolled_back_revoke_leaves_the_key_working(api, two_keys):
    api_key, plaintext = two_keys
    assert status(api, "protected-bot", plaintext) == 200
    with pytest.raises(RuntimeError), transaction.atomic():
        APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
        raise RuntimeError("abort")
    assert status(api, "protected-bot", plaintext) == 200
    assert APIKey.objects.get(pk=api_key.pk).is_active
