"""Models, key material, and the seed's classmethods."""

from __future__ import annotations

import string

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError
from django.test import override_settings
from model_bakery import baker

from drf_llm_keys import crypto, get_client_model
from drf_llm_keys.models import APIKey, LLMClient, LLMClientAPIKey

pytestmark = pytest.mark.django_db


def test_create_key_returns_the_key_and_its_plaintext(owner):
    api_key, plaintext = APIKey.objects.create_key(user=owner, name="ci", description="for CI")
    assert api_key.pk is not None
    assert (api_key.user, api_key.name, api_key.description) == (owner, "ci", "for CI")
    assert plaintext.startswith("llmk_")
    assert plaintext.startswith(api_key.prefix + ".")


def test_plaintext_is_printable_ascii_without_spaces(owner):
    _, plaintext = APIKey.objects.create_key(user=owner, name="ci")
    assert set(plaintext) <= set(string.ascii_letters + string.digits + "_-.")


def test_secret_holds_at_least_128_random_bits(owner):
    _, plaintext = APIKey.objects.create_key(user=owner, name="ci")
    secret = plaintext.split(".", 1)[1]
    assert len(secret) * 6 >= 256  # url-safe base64: 6 bits a character
    secrets = {APIKey.objects.create_key(user=owner, name="ci")[1].split(".")[1] for _ in range(50)}
    assert len(secrets) == 50


def test_only_a_digest_is_stored(owner):
    api_key, plaintext = APIKey.objects.create_key(user=owner, name="ci")
    stored = APIKey.objects.filter(pk=api_key.pk).values().get()
    assert plaintext not in {str(value) for value in stored.values()}
    assert plaintext.split(".")[1] not in str(stored)
    assert crypto.key_matches(plaintext, stored["digest"])


def test_key_prefix_setting_marks_new_keys(owner):
    with override_settings(DRF_LLM_KEYS={"KEY_PREFIX": "acme_"}):
        api_key, plaintext = APIKey.objects.create_key(user=owner, name="ci")
    assert plaintext.startswith("acme_") and api_key.prefix.startswith("acme_")
    assert crypto.split_key(plaintext) == api_key.prefix


def test_prefixes_are_unique(owner):
    api_key, _ = APIKey.objects.create_key(user=owner, name="a")
    with pytest.raises(IntegrityError):
        APIKey.objects.create(user=owner, name="b", prefix=api_key.prefix, digest="0" * 64)


def test_digest_stays_out_of_the_repr(owner):
    api_key, _ = APIKey.objects.create_key(user=owner, name="ci")
    assert api_key.digest not in repr(api_key) and api_key.digest not in str(api_key)


@pytest.mark.parametrize(
    "candidate",
    ["", "llmk_abc", "llmk_abc.", "llmk_abc.short", ".x", "llmk abc." + "A" * 43, "llmk_abc." + "A" * 44],
)
def test_split_key_rejects_what_is_not_a_key(candidate):
    assert crypto.split_key(candidate) is None


def test_a_mapping_is_unique_per_client_and_key(make_key, protected_client):
    api_key, _ = make_key(protected_client)
    with pytest.raises(IntegrityError):
        LLMClientAPIKey.objects.create(llm_client=protected_client, api_key=api_key)


def test_deleting_the_owner_keeps_the_key(key, owner):
    api_key, _ = key
    owner.delete()
    api_key.refresh_from_db()
    assert api_key.user is None and api_key.client_links.count() == 1


# --- has_active_api_key and get_cached_objects ----------------------------------------


def test_has_active_api_key(make_key, protected_client, public_client):
    assert LLMClientAPIKey.has_active_api_key(protected_client) is False
    make_key(protected_client)
    assert LLMClientAPIKey.has_active_api_key(protected_client, invalidate=True) is True
    assert LLMClientAPIKey.has_active_api_key(public_client) is False


def test_has_active_api_key_counts_an_expired_key_as_active(make_key, protected_client):
    from datetime import timedelta

    from django.utils import timezone

    make_key(protected_client, expires_at=timezone.now() - timedelta(days=1))
    assert LLMClientAPIKey.has_active_api_key(protected_client) is True


def test_has_active_api_key_ignores_revoked_keys(make_key, protected_client):
    make_key(protected_client, is_active=False)
    assert LLMClientAPIKey.has_active_api_key(protected_client) is False


@pytest.mark.django_db(transaction=True)  # fills wait for the writes' commit
def test_has_active_api_key_is_cached(key, protected_client, django_assert_num_queries):
    LLMClientAPIKey.has_active_api_key(protected_client)
    with django_assert_num_queries(0):
        assert LLMClientAPIKey.has_active_api_key(protected_client) is True


@pytest.mark.django_db(transaction=True)  # fills wait for the writes' commit
def test_invalidate_reloads_from_the_database(key, protected_client, django_assert_num_queries):
    LLMClientAPIKey.has_active_api_key(protected_client)
    with django_assert_num_queries(1):
        assert LLMClientAPIKey.has_active_api_key(protected_client, invalidate=True) is True


def test_get_cached_objects_lists_the_mappings_of_active_keys(make_key, protected_client):
    active, _ = make_key(protected_client)
    make_key(protected_client, is_active=False)
    rows = list(LLMClientAPIKey.get_cached_objects(llm_client=protected_client))
    assert [row.api_key for row in rows] == [active]


@pytest.mark.django_db(transaction=True)  # fills wait for the writes' commit
def test_get_cached_objects_is_empty_for_a_public_client_without_a_query(
    public_client, django_assert_num_queries
):
    LLMClientAPIKey.has_active_api_key(public_client)
    with django_assert_num_queries(0):
        assert list(LLMClientAPIKey.get_cached_objects(llm_client=public_client)) == []


def test_get_cached_objects_without_a_client_lists_every_active_mapping(make_key, protected_client):
    other = baker.make_recipe("tests.llm_client", slug="other-bot")
    make_key(protected_client)
    make_key(other)
    make_key(other, is_active=False)
    assert LLMClientAPIKey.get_cached_objects().count() == 2


# --- the swappable client model -------------------------------------------------------


def test_get_client_model_defaults_to_llm_client():
    assert get_client_model() is LLMClient


def test_get_client_model_follows_the_setting():
    with override_settings(DRF_LLM_KEYS_CLIENT_MODEL="auth.Group"):
        from django.contrib.auth.models import Group

        assert get_client_model() is Group


@pytest.mark.parametrize("value", ["nonsense", "drf_llm_keys.Missing"])
def test_get_client_model_explains_a_bad_setting(value):
    with override_settings(DRF_LLM_KEYS_CLIENT_MODEL=value), pytest.raises(ImproperlyConfigured):
        get_client_model()
