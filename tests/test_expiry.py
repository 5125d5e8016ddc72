import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test import TestCase
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from drf_llm_keys.models import APIKey
from tests.support import bearer

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/clients/protected-bot/echo/"


def committed(write):
    """Run ``write`` as if its transaction committed: the invalidation it queued runs."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        write()


def test_an_expiry_in_the_past_set_by_save_refuses_a_cached_key(api, key):
    api_key, plaintext = key
    assert api.get(URL, **bearer(plaintext)).status_code == 200
    api_key.expires_at = timezone.now() - timedelta(seconds=1)
    committed(api_key.save)
    response = api.get(URL, **bearer(plaintext))
    assert response.status_code == 401
    assert response.json()["detail"] == "API key has expired."


def test_an_expiry_saved_with_update_fields_refuses_a_cached_key(api, key):
    api_key, plaintext = key
    assert api.get(URL, **bearer(plaintext)).status_code == 200
    api_key.expires_at = timezone.now() - timedelta(seconds=1)
    committed(lambda: api_key.save(update_fields=["expires_at"]))
    assert api.get(URL, **bearer(plaintext)).status_code == 401


def test_an_expiry_set_by_queryset_update_refuses_a_cached_key(api, key):
    api_key, plaintext = key
    assert api.get(URL, **bearer(plaintext)).status_code == 200
    committed(lambda: APIKey.objects.filter(pk=api_key.pk).update(expires_at=timezone.now()))
    assert api.get(URL, **bearer(plaintext)).status_code == 401


def test_extending_an_expired_key_admits_it_again(api, make_key, protected_client):
    api_key, plaintext = make_key(protected_client, expires_at=timezone.now() - timedelta(days=1))
    assert api.get(URL, **bearer(plaintext)).status_code == 401
    api_key.expires_at = timezone.now() + timedelta(days=1)
    committed(api_key.save)
    assert api.get(URL, **bearer(plaintext)).status_code == 200


def test_a_cached_key_is_refused_once_its_expiry_passes_without_any_write(api, make_key, protected_client):
    _api_key, plaintext = make_key(protected_client, expires_at=timezone.now() + timedelta(seconds=0.5))
    assert api.get(URL, **bearer(plaintext)).status_code == 200
    time.sleep(0.6)
    assert api.get(URL, **bearer(plaintext)).status_code == 401


def test_an_expired_key_keeps_its_client_protected(api, make_key, protected_client):
    make_key(protected_client, expires_at=timezone.now() - timedelta(days=1))
    response = api.get(URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_a_last_used_only_save_keeps_the_cached_entries(api, key):
    api_key, plaintext = key
    assert api.get(URL, **bearer(plaintext)).status_code == 200
    api_key.last_used_at = timezone.now()
    committed(lambda: api_key.save(update_fields=["last_used_at"]))
    with CaptureQueriesContext(connection) as queries:
        assert api.get(URL, **bearer(plaintext)).status_code == 200
    assert len(queries) == 0, [q["sql"] for q in queries]
