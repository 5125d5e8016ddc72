"""last_used_at is noted in the process and written with the usage counts, never per request."""

import logging
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from drf_llm_keys import usage
from drf_llm_keys.models import APIKey
from tests.support import bearer, harness
from tests.support.databases import database_outage

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/clients/protected-bot/echo/"


def last_used_updates(queries: CaptureQueriesContext) -> list[str]:
    return [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].lstrip().upper().startswith("UPDATE") and "last_used_at" in q["sql"]
    ]


def set_columns(sql: str) -> list[str]:
    assignments = sql.split(" SET ", 1)[1].split(" WHERE ", 1)[0]
    return re.findall(r'^\s*[`"]?(\w+)[`"]?\s*=', assignments)


def test_requests_write_no_last_used_at_until_the_flush(api, key):
    api_key, plaintext = key
    api.get(URL, **bearer(plaintext))  # cold
    with CaptureQueriesContext(connection) as queries:
        for _ in range(25):
            assert api.get(URL, **bearer(plaintext)).status_code == 200
    assert len(queries) == 0, [q["sql"] for q in queries]
    api_key.refresh_from_db()
    assert api_key.last_used_at is None
    assert usage.flush()
    api_key.refresh_from_db()
    assert timezone.now() - api_key.last_used_at < timedelta(seconds=30)


def test_a_flush_writes_last_used_at_of_every_key_in_one_update(api, make_key, protected_client):
    made = [make_key(protected_client) for _ in range(3)]
    for _, plaintext in made * 2:
        assert api.get(URL, **bearer(plaintext)).status_code == 200
    with CaptureQueriesContext(connection) as queries:
        assert usage.flush()
    (sql,) = last_used_updates(queries)
    assert set_columns(sql) == ["last_used_at"]
    stored = APIKey.objects.filter(pk__in=[api_key.pk for api_key, _ in made])
    assert all(value is not None for value in stored.values_list("last_used_at", flat=True))


def test_the_write_leaves_updated_at_alone(api, key):
    api_key, plaintext = key
    updated_at = api_key.updated_at
    api.get(URL, **bearer(plaintext))
    usage.flush()
    api_key.refresh_from_db()
    assert api_key.updated_at == updated_at
    assert api_key.last_used_at is not None


def test_a_later_use_already_stored_is_never_moved_back(api, key):
    api_key, plaintext = key
    later = timezone.now() + timedelta(hours=1)  # written by another process, say
    APIKey.objects.filter(pk=api_key.pk).update(last_used_at=later)
    api.get(URL, **bearer(plaintext))
    usage.flush()
    api_key.refresh_from_db()
    assert api_key.last_used_at == later


def test_an_older_use_stored_is_moved_forward(api, key):
    api_key, plaintext = key
    earlier = timezone.now() - timedelta(days=3)
    APIKey.objects.filter(pk=api_key.pk).update(last_used_at=earlier)
    api.get(URL, **bearer(plaintext))
    usage.flush()
    api_key.refresh_from_db()
    assert api_key.last_used_at > earlier + timedelta(days=2)


def test_a_refused_request_records_no_use(api, make_key, protected_client):
    api_key, plaintext = make_key(protected_client, expires_at=timezone.now() - timedelta(days=1))
    assert api.get(URL, **bearer(plaintext)).status_code == 401
    usage.flush()
    api_key.refresh_from_db()
    assert api_key.last_used_at is None


def test_a_failed_flush_keeps_the_last_use_for_the_next(api, key, monkeypatch):
    api_key, plaintext = key
    api.get(URL, **bearer(plaintext))

    def failing(*args, **kwargs):
        raise RuntimeError("database down")

    monkeypatch.setattr(usage, "write_counts", failing)
    assert not usage.flush()
    monkeypatch.undo()
    assert usage.flush()
    api_key.refresh_from_db()
    assert api_key.last_used_at is not None


def test_the_last_uses_waiting_are_bounded_by_usage_max_pending(
    api, make_key, protected_client, settings, tmp_path, caplog
):
    settings.DRF_LLM_KEYS = {"USAGE_MAX_PENDING": 2, "USAGE_FLUSH_INTERVAL": 3600}
    made = [make_key(protected_client) for _ in range(4)]
    for _, plaintext in made:  # cold: needs the database
        assert api.get(URL, **bearer(plaintext)).status_code == 200
        harness.wait_until(lambda: not usage.counter.pending(), 10, "no early write")
    before = timezone.now()
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        with database_outage(tmp_path):  # writes fail: the last uses wait, bounded
            assert api.get(URL, **bearer(made[0][1])).status_code == 200
            harness.wait_until(lambda: "could not write usage counts" in caplog.text, 10, "no write")
            for _, plaintext in made[1:]:
                assert api.get(URL, **bearer(plaintext)).status_code == 200
            assert len(usage.counter.pending()) == 2
    usage.flush()
    assert APIKey.objects.filter(last_used_at__gte=before).count() == 2
