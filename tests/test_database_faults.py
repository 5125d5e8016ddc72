"""Database faults: a write that rolls back changes nothing, an outage is a clean 503.

Transactional tests: ``on_commit`` really runs, or really does not, as in production.
"""

from __future__ import annotations

import logging

import pytest
from django.db import connections, transaction
from django.test.utils import CaptureQueriesContext

from drf_llm_keys.models import APIKey, LLMClientAPIKey
from tests.support import bearer
from tests.support.databases import database_outage

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/clients/{}/echo/"
DEFAULT_URL = "/default/clients/{}/echo/"


class Rollback(Exception):
    pass


@pytest.fixture
def key(make_key, protected_client):
    """A key on a client that a second key keeps protected when the first is revoked."""
    make_key(protected_client)
    return make_key(protected_client)


def warm(api, slug: str, plaintext: str) -> None:
    assert api.get(URL.format(slug), **bearer(plaintext)).status_code == 200
    with CaptureQueriesContext(connections["default"]) as queries:
        assert api.get(URL.format(slug), **bearer(plaintext)).status_code == 200
    assert len(queries) == 0, "the key's entries should be cached by now"


# --- a write that rolls back ------------------------------------------------------------


def test_revoke_rolled_back_keeps_the_cached_key_working(api, key):
    api_key, plaintext = key
    warm(api, "protected-bot", plaintext)
    with pytest.raises(Rollback), transaction.atomic():
        api_key.is_active = False
        api_key.save()
        raise Rollback
    assert APIKey.objects.get(pk=api_key.pk).is_active
    # The write retired the client's entries before it rolled back (an in-flight
    # generation): the decision comes from the database until that generation expires.
    with CaptureQueriesContext(connections["default"]) as queries:
        response = api.get(URL.format("protected-bot"), **bearer(plaintext))
    assert response.status_code == 200, response.content
    assert len(queries) == 1


def test_bulk_revoke_rolled_back_keeps_the_key_working(api, key):
    api_key, plaintext = key
    warm(api, "protected-bot", plaintext)
    with pytest.raises(Rollback), transaction.atomic():
        APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
        raise Rollback
    assert api.get(URL.format("protected-bot"), **bearer(plaintext)).status_code == 200


def test_request_inside_a_rolled_back_revoke_does_not_cache_the_revoke(api, key):
    # A reader inside the writing transaction sees the uncommitted revoke; what it reads
    # must not outlive the rollback in the shared cache.
    api_key, plaintext = key
    with pytest.raises(Rollback), transaction.atomic():
        api_key.is_active = False
        api_key.save()
        assert api.get(URL.format("protected-bot"), **bearer(plaintext)).status_code == 401
        raise Rollback
    response = api.get(URL.format("protected-bot"), **bearer(plaintext))
    assert response.status_code == 200, response.content


def test_last_key_check_inside_a_rolled_back_revoke_does_not_open_the_client(api, key, protected_client):
    # The pattern of a "refuse to revoke the last key" check: revoke, look, roll back.
    with pytest.raises(Rollback), transaction.atomic():
        APIKey.objects.update(is_active=False)
        assert not LLMClientAPIKey.has_active_api_key(protected_client, invalidate=True)
        raise Rollback
    assert LLMClientAPIKey.has_active_api_key(protected_client)
    assert api.get(URL.format("protected-bot")).status_code == 401


def test_revoke_rolled_back_to_a_savepoint_keeps_the_key_working(api, key):
    api_key, plaintext = key
    with transaction.atomic():
        with pytest.raises(Rollback), transaction.atomic():
            APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
            assert api.get(URL.format("protected-bot"), **bearer(plaintext)).status_code == 401
            raise Rollback
        assert api.get(URL.format("protected-bot"), **bearer(plaintext)).status_code == 200
    assert api.get(URL.format("protected-bot"), **bearer(plaintext)).status_code == 200


def test_revoke_committed_after_a_rollback_takes_effect(api, key):
    api_key, plaintext = key
    warm(api, "protected-bot", plaintext)
    with pytest.raises(Rollback), transaction.atomic():
        APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
        raise Rollback
    APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
    assert api.get(URL.format("protected-bot"), **bearer(plaintext)).status_code == 401


# --- an outage ----------------------------------------------------------------------


@pytest.mark.parametrize("url", [URL, DEFAULT_URL], ids=["per-view", "default-classes"])
def test_cold_request_during_a_database_outage_is_a_clean_503(api, key, tmp_path, caplog, url):
    _, plaintext = key
    with database_outage(tmp_path), caplog.at_level(logging.ERROR, logger="drf_llm_keys"):
        response = api.get(url.format("protected-bot"), **bearer(plaintext))
    assert response.status_code == 503, response.content
    assert response.json() == {"detail": "API key verification is temporarily unavailable. Try again later."}
    assert "Traceback" not in response.content.decode()
    assert "database unavailable" in caplog.text


def test_unknown_client_during_a_database_outage_is_a_503_not_public(api, db, tmp_path):
    with database_outage(tmp_path):
        response = api.get(URL.format("never-seen"))
    assert response.status_code == 503, response.content


def test_warm_key_is_served_from_the_cache_during_a_database_outage(api, key, tmp_path, caplog):
    # The last-used write fails too: it is logged, and the request is still served.
    api_key, plaintext = key
    warm(api, "protected-bot", plaintext)
    with database_outage(tmp_path):
        response = api.get(URL.format("protected-bot"), **bearer(plaintext))
    assert response.status_code == 200, response.content
    assert response.json() == {"user": "owner", "key": api_key.prefix}


def test_warm_refusals_stay_refusals_during_a_database_outage(api, key, tmp_path):
    _, plaintext = key
    wrong_secret = plaintext[:-4] + ("AAAA" if not plaintext.endswith("AAAA") else "BBBB")
    refusals = [{}, bearer(wrong_secret)]
    for headers in refusals:  # decisions are cached per (client, key prefix): warm each
        assert api.get(URL.format("protected-bot"), **headers).status_code == 401
    with database_outage(tmp_path):
        for headers in refusals:
            assert api.get(URL.format("protected-bot"), **headers).status_code == 401


def test_service_recovers_when_the_database_is_back(api, key, tmp_path):
    _, plaintext = key
    with database_outage(tmp_path):
        assert api.get(URL.format("protected-bot"), **bearer(plaintext)).status_code == 503
    assert api.get(URL.format("protected-bot"), **bearer(plaintext)).status_code == 200
    assert api.get(URL.format("protected-bot")).status_code == 401
