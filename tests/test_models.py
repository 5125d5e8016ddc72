"""Models, key material, and the seed's classmethods."""

from __future__ import annotations

import string
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.db.models import Value
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from model_bakery import baker

from drf_llm_keys import crypto, get_client_model, keys
from drf_llm_keys.models import APIKey, LLMClient, LLMClientAPIKey, ReactivationError
from tests.support import bearer

pytestmark = pytest.mark.django_db


def q(column: str) -> str:
    """A column as this database quotes it in SQL (MariaDB: backticks)."""
    return connection.ops.quote_name(column)


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


@pytest.mark.parametrize("key_prefix", ["acme.key_", "acme key_", "ácme_", "x" * 29, ""])
def test_a_key_prefix_no_key_could_authenticate_with_mints_no_key(owner, key_prefix):
    # A dot would split the key in the wrong place, a space would break the header, and
    # a longer prefix does not fit the column: each key would be shown once, never to work.
    with override_settings(DRF_LLM_KEYS={"KEY_PREFIX": key_prefix}):
        with pytest.raises(ImproperlyConfigured, match="KEY_PREFIX"):
            APIKey.objects.create_key(user=owner, name="ci")
    assert not APIKey.objects.exists()


def test_the_longest_key_prefix_works(api, owner, protected_client):
    with override_settings(DRF_LLM_KEYS={"KEY_PREFIX": "a-B_" * 7}):
        api_key, plaintext = APIKey.objects.create_key(user=owner, name="ci")
    LLMClientAPIKey.objects.create(llm_client=protected_client, api_key=api_key)
    assert api.get("/clients/protected-bot/echo/", **bearer(plaintext)).status_code == 200


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


# --- saves write what changed; revocation is final ------------------------------------


def updates(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]


def test_a_save_writes_only_the_fields_changed_since_the_row_was_read(key):
    api_key = APIKey.objects.get(pk=key[0].pk)
    api_key.description = "edited"
    with CaptureQueriesContext(connection) as queries:
        api_key.save()
    (sql,) = updates(queries)
    assert q("description") in sql and q("updated_at") in sql
    assert q("is_active") not in sql and q("name") not in sql and q("digest") not in sql


def test_a_save_that_changes_nothing_writes_nothing(key):
    api_key = APIKey.objects.get(pk=key[0].pk)
    api_key.description = api_key.description  # set, but to what was read
    with CaptureQueriesContext(connection) as queries:
        api_key.save()
    assert queries.captured_queries == []  # no UPDATE, and no invalidation (no outbox row)


def test_a_list_changed_in_place_is_written(key):
    api_key = APIKey.objects.get(pk=key[0].pk)
    api_key.scopes.append("chat")
    api_key.save()
    assert APIKey.objects.get(pk=api_key.pk).scopes == ["chat"]


def test_a_second_save_writes_only_what_changed_after_the_first(key):
    api_key = APIKey.objects.get(pk=key[0].pk)
    api_key.name = "renamed"
    api_key.save()
    with CaptureQueriesContext(connection) as queries:
        api_key.save()
    assert updates(queries) == []


def test_explicit_update_fields_are_written_as_given(key):
    api_key = APIKey.objects.get(pk=key[0].pk)
    with CaptureQueriesContext(connection) as queries:
        api_key.save(update_fields=["name"])
    (sql,) = updates(queries)
    assert q("name") in sql


def test_a_refreshed_instance_compares_with_what_it_read_again(key):
    api_key = APIKey.objects.get(pk=key[0].pk)
    APIKey.objects.filter(pk=api_key.pk).update(description="from elsewhere")
    api_key.refresh_from_db()
    with CaptureQueriesContext(connection) as queries:
        api_key.save()
    assert updates(queries) == []
    assert APIKey.objects.get(pk=api_key.pk).description == "from elsewhere"


def test_a_client_save_writes_only_what_changed(protected_client):
    llm_client = LLMClient.objects.get(pk=protected_client.pk)
    llm_client.name = "Renamed"
    with CaptureQueriesContext(connection) as queries:
        llm_client.save()
    (sql,) = updates(queries)
    assert q("name") in sql and q("slug") not in sql and q("require_api_key") not in sql


@pytest.mark.django_db(transaction=True)  # the revoke's invalidation runs at its commit
def test_an_instance_read_before_a_revoke_and_saved_after_it_leaves_the_key_revoked(api, key, make_key):
    make_key(key[0].client_links.get().llm_client)  # the client stays protected
    api_key, plaintext = key
    stale = APIKey.objects.get(pk=api_key.pk)  # read while active
    keys.revoke_key(api_key)
    assert api.get("/clients/protected-bot/echo/", **bearer(plaintext)).status_code == 401
    stale.description = "edited after the revoke"
    stale.save()
    stored = APIKey.objects.get(pk=api_key.pk)
    assert (stored.is_active, stored.description) == (False, "edited after the revoke")
    assert api.get("/clients/protected-bot/echo/", **bearer(plaintext)).status_code == 401


def revoked_key(make_key: Any, protected_client: LLMClient) -> APIKey:
    api_key, _ = make_key(protected_client)
    APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
    return api_key


def reactivate_loaded(api_key: APIKey) -> None:
    loaded = APIKey.objects.get(pk=api_key.pk)
    loaded.is_active = True
    loaded.save()


def reactivate_stale(api_key: APIKey) -> None:
    # Read before the revoke (api_key is), then written with is_active named.
    api_key.save(update_fields=["is_active"])


def reactivate_built(api_key: APIKey) -> None:
    row = APIKey.objects.values().get(pk=api_key.pk)
    APIKey(**{**row, "is_active": True}).save()


def reactivate_by_update(api_key: APIKey) -> None:
    APIKey.objects.filter(pk=api_key.pk).update(is_active=True)


def reactivate_by_base_manager(api_key: APIKey) -> None:
    APIKey._base_manager.filter(pk=api_key.pk).update(is_active=Value(True))


def reactivate_in_bulk(api_key: APIKey) -> None:
    api_key.is_active = True
    APIKey.objects.bulk_update([api_key], ["is_active", "name"])


@pytest.mark.parametrize(
    "reactivate",
    [
        reactivate_loaded,
        reactivate_stale,
        reactivate_built,
        reactivate_by_update,
        reactivate_by_base_manager,
        reactivate_in_bulk,
    ],
)
def test_no_write_makes_a_revoked_key_active_again(make_key, protected_client, reactivate):
    make_key(protected_client)
    api_key = revoked_key(make_key, protected_client)
    with pytest.raises(ReactivationError, match=f"Key {api_key.prefix} is revoked, and revocation is final"):
        reactivate(api_key)
    assert APIKey.objects.get(pk=api_key.pk).is_active is False


@pytest.mark.parametrize("reactivate", [reactivate_loaded, reactivate_by_update, reactivate_in_bulk])
def test_a_refused_write_leaves_the_callers_transaction_usable(make_key, protected_client, reactivate):
    api_key = revoked_key(make_key, protected_client)
    with transaction.atomic():
        with pytest.raises(ReactivationError):
            reactivate(api_key)
        APIKey.objects.filter(pk=api_key.pk).update(description="still writable")
    assert APIKey.objects.get(pk=api_key.pk).description == "still writable"


def test_setting_active_keys_active_and_revoked_ones_inactive_is_allowed(make_key, protected_client):
    active, _ = make_key(protected_client)
    revoked = revoked_key(make_key, protected_client)
    revoked.is_active = False
    assert APIKey.objects.bulk_update([active, revoked], ["is_active"]) == 2
    assert APIKey.objects.filter(pk=active.pk).update(is_active=True) == 1
    assert list(APIKey.objects.order_by("pk").values_list("is_active", flat=True)) == [True, False]
