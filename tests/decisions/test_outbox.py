"""The outbox: every write stores its clients in its own transaction; they stay until their
new generations are in the cache, and any process can publish them again."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.test.utils import CaptureQueriesContext
from model_bakery import baker

from drf_llm_keys import decisions
from drf_llm_keys.decisions import invalidation, state
from drf_llm_keys.decisions.names import generation_name
from drf_llm_keys.models import APIKey, PendingInvalidation
from tests.support import bearer

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/clients/protected-bot/echo/"


def stored() -> list[str]:
    return sorted(PendingInvalidation.objects.values_list("client_value", flat=True))


def generation(client: str = "protected-bot") -> object:
    return state.get_cache().get(generation_name(client))


def revoke(api_key: APIKey) -> None:
    api_key.is_active = False
    api_key.save()


def test_a_write_stores_its_clients_in_its_own_transaction(key):
    api_key, _ = key
    with transaction.atomic():
        revoke(api_key)
        assert stored() == ["protected-bot"]


def test_a_rolled_back_write_stores_nothing(key):
    api_key, _ = key
    with pytest.raises(RuntimeError), transaction.atomic():
        revoke(api_key)
        raise RuntimeError
    assert stored() == []


def test_a_published_invalidation_leaves_no_row(key):
    revoke(key[0])
    assert stored() == []
    assert not decisions.pending_invalidations()


def test_an_invalidation_the_cache_refuses_stays_stored(key, flaky):
    flaky.down = True
    revoke(key[0])
    assert stored() == ["protected-bot"]
    assert generation_name("protected-bot") in decisions.pending_invalidations()


def test_a_bulk_update_stores_every_client_it_touches(make_key, protected_client, public_client, flaky):
    make_key(protected_client)
    make_key(public_client)
    flaky.down = True
    APIKey.objects.update(is_active=False)
    assert stored() == ["protected-bot", "public-bot"]


def test_republish_pending_writes_new_generations_and_empties_the_outbox(
    api, key, make_key, protected_client, flaky
):
    api_key, plaintext = key
    make_key(protected_client)  # keeps the client protected
    assert api.get(URL, **bearer(plaintext)).status_code == 200
    before = generation()
    flaky.down = True
    revoke(api_key)
    decisions.reset()  # the writer is gone: its retries with it
    flaky.down = False
    assert generation() == before, "nothing should have reached the cache yet"
    assert api.get(URL, **bearer(plaintext)).status_code == 200  # the window it closes
    assert invalidation.republish_pending("default") == 1
    assert generation() not in (None, before)
    assert stored() == []
    assert api.get(URL, **bearer(plaintext)).status_code == 401


def test_republish_pending_with_the_cache_down_keeps_the_rows(key, flaky):
    flaky.down = True
    revoke(key[0])
    with pytest.raises(invalidation.CacheUnreachable):
        invalidation.republish_pending("default")
    assert stored() == ["protected-bot"]


def test_a_later_write_of_another_process_publishes_what_one_left(
    key, make_key, public_client, flaky, monkeypatch
):
    api_key, _ = key
    flaky.down = True
    revoke(api_key)
    decisions.reset()  # as if the writer had died; a fresh process comes along
    flaky.down = False
    before = generation()
    monkeypatch.setattr(invalidation, "SWEEP_AGE", 0.0)
    make_key(public_client)  # a write on another client
    assert generation() != before
    assert stored() == []


def test_the_sweep_runs_at_most_once_per_interval(key, make_key, public_client, flaky, monkeypatch):
    monkeypatch.setattr(invalidation, "SWEEP_AGE", 0.0)
    make_key(public_client)  # this process's first sweep
    flaky.down = True
    revoke(key[0])
    flaky.down = False
    with CaptureQueriesContext(transaction.get_connection()) as queries:
        make_key(public_client)
    assert stored() == ["protected-bot"], "swept again within SWEEP_INTERVAL"
    assert not any(
        "SELECT" in q["sql"] and "pendinginvalidation" in q["sql"] for q in queries.captured_queries
    )


def test_wait_published_is_true_at_once_when_nothing_waits(db):
    assert decisions.wait_published(timeout=0)


def test_wait_published_is_false_while_the_cache_refuses(key, flaky):
    flaky.down = True
    revoke(key[0])
    assert not decisions.wait_published(timeout=0.1)
    assert decisions.pending_invalidations()


def test_wait_published_retries_and_is_true_once_the_cache_takes_it(key, flaky):
    before = generation()
    flaky.down = True
    revoke(key[0])
    flaky.down = False
    assert decisions.wait_published(timeout=0.1)
    assert generation() != before
    assert not decisions.pending_invalidations()


def test_wait_published_counts_a_write_under_way_as_not_done(db):
    local = decisions.get_decision_cache()
    local.publishing = 1  # another thread took the names out of pending and is writing
    try:
        assert not decisions.wait_published(timeout=0)
    finally:
        local.publishing = 0


def test_a_client_value_is_stored_as_text(make_key, flaky):
    llm_client = baker.make_recipe("tests.llm_client", slug="bot-\u00e9t\u00e9")
    make_key(llm_client)
    flaky.down = True
    APIKey.objects.update(is_active=False)
    assert stored() == ["bot-\u00e9t\u00e9"]
