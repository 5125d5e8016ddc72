import re
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from drf_llm_keys import last_used
from tests.support import bearer

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/clients/protected-bot/echo/"


def updates(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("UPDATE")]


def set_columns(sql: str) -> list[str]:
    assignments = sql.split(" SET ", 1)[1].split(" WHERE ", 1)[0]
    return re.findall(r'[`"]?(\w+)[`"]?\s*=', assignments)


def test_many_requests_write_last_used_at_once(api, key):
    _, plaintext = key
    with CaptureQueriesContext(connection) as queries:
        for _ in range(25):
            assert api.get(URL, **bearer(plaintext)).status_code == 200
    assert len(updates(queries)) == 1, updates(queries)


def test_the_write_is_an_update_of_last_used_at_alone(api, key):
    api_key, plaintext = key
    with CaptureQueriesContext(connection) as queries:
        api.get(URL, **bearer(plaintext))
    (sql,) = updates(queries)
    assert set_columns(sql) == ["last_used_at"]
    assert str(api_key.pk) in sql.split(" WHERE ", 1)[1]


def test_the_use_is_recorded_with_the_current_time(api, key):
    api_key, plaintext = key
    api.get(URL, **bearer(plaintext))
    api_key.refresh_from_db()
    assert timezone.now() - api_key.last_used_at < timedelta(seconds=30)


def test_the_write_leaves_updated_at_alone(api, key):
    api_key, plaintext = key
    updated_at = api_key.updated_at
    api.get(URL, **bearer(plaintext))
    api_key.refresh_from_db()
    assert api_key.updated_at == updated_at
    assert api_key.last_used_at is not None


def test_the_next_write_comes_after_last_used_resolution(api, key, settings):
    settings.DRF_LLM_KEYS = {"LAST_USED_RESOLUTION": 1}
    _, plaintext = key
    with CaptureQueriesContext(connection) as queries:
        for _ in range(3):
            api.get(URL, **bearer(plaintext))
        time.sleep(1.2)
        for _ in range(3):
            api.get(URL, **bearer(plaintext))
    assert len(updates(queries)) == 2, updates(queries)


def test_recording_a_use_keeps_the_warm_path_free_of_sql(api, key):
    _, plaintext = key
    api.get(URL, **bearer(plaintext))  # cold: loads the entries and records the use
    with CaptureQueriesContext(connection) as queries:
        assert api.get(URL, **bearer(plaintext)).status_code == 200
    assert len(queries) == 0, [q["sql"] for q in queries]


def test_each_key_is_recorded_on_its_own(api, key, make_key, protected_client):
    _, first = key
    _, second = make_key(protected_client)
    with CaptureQueriesContext(connection) as queries:
        for plaintext in (first, second, first, second):
            api.get(URL, **bearer(plaintext))
    assert len(updates(queries)) == 2


def test_a_refused_request_records_no_use(api, make_key, protected_client):
    api_key, plaintext = make_key(protected_client, expires_at=timezone.now() - timedelta(days=1))
    assert api.get(URL, **bearer(plaintext)).status_code == 401
    api_key.refresh_from_db()
    assert api_key.last_used_at is None


def test_one_claim_wins_among_concurrent_claimants(key):
    # The claim is an atomic add in the shared cache, so it holds across processes too.
    api_key, _ = key
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def claim() -> None:
        barrier.wait()
        results.append(last_used.claim_last_used(api_key.prefix))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
