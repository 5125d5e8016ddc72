"""Usage per key (drf_llm_keys.usage): counted in the process, written by flush() as
additions, never on a request's path; a database error keeps the counts for later."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.db import connection, connections, transaction
from django.db.models.signals import pre_delete
from django.test.utils import CaptureQueriesContext
from model_bakery import baker

from drf_llm_keys import usage
from drf_llm_keys.asgi import get_asgi_application
from drf_llm_keys.models import APIKey, KeyUsage
from tests.support import bearer, harness
from tests.support.databases import database_outage
from tests.support.proxy import Proxy

pytestmark = pytest.mark.django_db(transaction=True)

ECHO = "/clients/{}/echo/"
TOKENS = "/clients/{}/tokens/?prompt={}&completion={}"
STREAM = "/clients/{}/tokens/stream/?prompt={}&completion={}"


def stored(api_key: APIKey) -> list[tuple[Any, ...]]:
    """The key's rows as (client slug, day, requests, prompt tokens, completion tokens)."""
    rows = KeyUsage.objects.filter(api_key=api_key).order_by("llm_client__slug", "day")
    return [
        (row.llm_client.slug, row.day, row.requests, row.prompt_tokens, row.completion_tokens)  # type: ignore[attr-defined]
        for row in rows
    ]


def pending_requests() -> int:
    return sum(figures[0] for figures in usage.counter.pending().values())


@pytest.fixture
def quiet(settings: Any) -> None:
    """No background flush during the test: only flush() writes."""
    settings.DRF_LLM_KEYS = {"USAGE_FLUSH_INTERVAL": 3600}


# --- what is counted ---------------------------------------------------------------------


def test_requests_of_a_key_are_counted_per_key_client_and_day(api, quiet, make_key, protected_client):
    other = baker.make_recipe("tests.llm_client", slug="other-bot")
    api_key, plaintext = make_key(protected_client, other)
    for slug in ["protected-bot"] * 3 + ["other-bot"] * 2:
        assert api.get(ECHO.format(slug), **bearer(plaintext)).status_code == 200
    assert usage.flush()
    today = usage.today()
    assert stored(api_key) == [("other-bot", today, 2, 0, 0), ("protected-bot", today, 3, 0, 0)]


def test_refused_and_anonymous_requests_are_not_counted(api, quiet, key, make_key, public_client):
    _, plaintext = key
    _, other_plaintext = make_key(public_client)  # makes public-bot protected: use its key elsewhere
    assert api.get(ECHO.format("protected-bot")).status_code == 401
    assert api.get(ECHO.format("protected-bot"), **bearer(other_plaintext)).status_code == 401
    assert api.get(ECHO.format("protected-bot"), **bearer(plaintext[:-1] + "x")).status_code == 401
    assert usage.counter.pending() == {}


def test_a_public_clients_requests_are_not_counted(api, quiet, public_client):
    assert api.get(ECHO.format("public-bot")).status_code == 200
    assert api.get(TOKENS.format("public-bot", 5, 5)).status_code == 200
    assert usage.counter.pending() == {}


def test_tokens_reported_by_the_view_are_counted(api, quiet, key):
    api_key, plaintext = key
    assert api.get(TOKENS.format("protected-bot", 12, 30), **bearer(plaintext)).status_code == 200
    assert api.get(TOKENS.format("protected-bot", 1, 2), **bearer(plaintext)).status_code == 200
    assert usage.flush()
    assert stored(api_key) == [("protected-bot", usage.today(), 2, 13, 32)]


def test_tokens_reported_at_the_end_of_a_stream_are_counted(api, quiet, key):
    api_key, plaintext = key
    response = api.get(STREAM.format("protected-bot", 7, 11), **bearer(plaintext))
    assert usage.counter.pending()  # the request is counted; its tokens come with the body's end
    assert b"".join(response.streaming_content) == b"streamed reply"
    response.close()
    assert usage.flush()
    assert stored(api_key) == [("protected-bot", usage.today(), 1, 7, 11)]


METERED = "/clients/protected-bot/tokens/metered/?prompt={}&chunks={}"


def test_a_metered_stream_read_to_its_end_records_every_token(api, quiet, key):
    api_key, plaintext = key
    response = api.get(METERED.format(3, 5), **bearer(plaintext))
    assert len(b"".join(response.streaming_content)) == 5 * 1024
    assert usage.flush()
    assert stored(api_key) == [("protected-bot", usage.today(), 1, 3, 5)]


@pytest.mark.parametrize("read", [0, 1, 3])
def test_a_metered_stream_closed_by_the_server_records_the_chunks_sent(api, quiet, key, read):
    """What a WSGI server does when a client disconnects: a write fails and it calls the
    response's close(). The chunk whose write failed is not charged."""
    api_key, plaintext = key
    response = api.get(METERED.format(3, 5), **bearer(plaintext))
    chunks = iter(response.streaming_content)
    for _ in range(read):
        next(chunks)
    response.close()
    response.close()  # recorded once
    assert usage.flush()
    assert stored(api_key) == [("protected-bot", usage.today(), 1, 3, max(0, read - 1))]


def test_a_metered_stream_whose_producer_fails_records_the_chunks_sent(api, quiet, key):
    api_key, plaintext = key
    response = api.get(METERED.format(3, 5) + "&fail_at=2", **bearer(plaintext))
    with pytest.raises(RuntimeError, match="broke off"):
        b"".join(response.streaming_content)
    response.close()
    assert usage.flush()
    assert stored(api_key) == [("protected-bot", usage.today(), 1, 3, 2)]


def test_negative_token_counts_are_a_programming_error(api, quiet, key):
    with pytest.raises(ValueError, match="cannot be negative"):
        usage.record_tokens(object(), prompt_tokens=-1)  # type: ignore[arg-type]


# --- flushing ----------------------------------------------------------------------------


def test_each_flush_adds_to_the_stored_figures(api, quiet, key):
    api_key, plaintext = key
    for requests in (2, 3, 1):
        for _ in range(requests):
            api.get(TOKENS.format("protected-bot", 1, 1), **bearer(plaintext))
        assert usage.flush()
    assert stored(api_key) == [("protected-bot", usage.today(), 6, 6, 6)]
    assert usage.counter.pending() == {}


def test_the_portable_path_adds_too(api, quiet, key, monkeypatch):
    monkeypatch.setattr(usage, "UPSERT_VENDORS", frozenset())
    api_key, plaintext = key
    for _ in range(2):
        api.get(TOKENS.format("protected-bot", 4, 5), **bearer(plaintext))
        api.get(TOKENS.format("protected-bot", 4, 5), **bearer(plaintext))
        assert usage.flush()
    assert stored(api_key) == [("protected-bot", usage.today(), 4, 16, 20)]


def test_counts_of_a_deleted_key_are_dropped_and_the_others_written(api, quiet, make_key, protected_client):
    kept, kept_plaintext = make_key(protected_client)
    deleted, deleted_plaintext = make_key(protected_client)
    api.get(ECHO.format("protected-bot"), **bearer(kept_plaintext))
    api.get(ECHO.format("protected-bot"), **bearer(deleted_plaintext))
    deleted.is_active = False
    deleted.save()
    deleted.delete()
    assert usage.flush()
    assert stored(kept) == [("protected-bot", usage.today(), 1, 0, 0)]
    assert KeyUsage.objects.count() == 1


def test_deleting_a_key_deletes_its_history(api, quiet, make_key, protected_client):
    api_key, plaintext = make_key(protected_client)
    make_key(protected_client)
    api.get(ECHO.format("protected-bot"), **bearer(plaintext))
    assert usage.flush()
    assert KeyUsage.objects.filter(api_key=api_key).count() == 1
    api_key.delete()
    assert KeyUsage.objects.count() == 0


# SQLite runs one writer at a time (a second one gets "database is locked"): no race to test.
if "sqlite" not in django_settings.DATABASES["default"]["ENGINE"]:

    @pytest.mark.parametrize("delete", ["instance", "queryset"])
    def test_a_usage_write_during_a_delete_makes_the_writer_wait_not_the_delete_fail(
        key, protected_client, delete
    ):
        """The race a soak found on PostgreSQL: a usage row committed between the delete's
        collection of related rows and its commit failed the delete's foreign-key check."""
        api_key, _ = key
        inserted, failures = threading.Event(), []

        def writer() -> None:
            try:
                with transaction.atomic():
                    if connection.vendor == "postgresql":
                        # Checked now, not at commit: the row's reference holds the key's row.
                        connection.cursor().execute("SET CONSTRAINTS ALL IMMEDIATE")
                    KeyUsage.objects.create(
                        api_key_id=api_key.pk,
                        llm_client_id=protected_client.pk,
                        day=usage.today(),
                        requests=1,
                    )
                    inserted.set()
                    time.sleep(0.5)  # the delete starts meanwhile
            except Exception as exc:  # the writer's own failure is the other acceptable outcome
                failures.append(exc)
            finally:
                connection.close()

        thread = threading.Thread(target=writer)
        thread.start()
        assert inserted.wait(10)
        if delete == "instance":
            api_key.delete()
        else:
            APIKey.objects.filter(pk=api_key.pk).delete()
        thread.join(10)
        assert not APIKey.objects.filter(pk=api_key.pk).exists()
        assert not KeyUsage.objects.filter(api_key_id=api_key.pk).exists()
        assert failures == []

    def lock_waits() -> int:
        """Statements of other connections waiting for a lock now."""
        if connection.vendor == "postgresql":
            sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        else:
            # MariaDB: innodb_trx does not show every wait (not one in the optimizer's read
            # of a row); a statement of these tests running for 200 ms is waiting.
            sql = (
                "SELECT count(*) FROM information_schema.processlist "
                "WHERE command = 'Query' AND id != CONNECTION_ID() AND time_ms >= 200"
            )
        # A connection of its own: inside a transaction, PostgreSQL's pg_stat_activity is a
        # snapshot taken at its first read.
        observer = connections.create_connection("default")
        try:
            with observer.cursor() as cursor:
                cursor.execute(sql)
                return int(cursor.fetchone()[0])
        finally:
            observer.close()

    @pytest.mark.parametrize("delete", ["key", "keys", "client"])
    def test_a_usage_write_and_a_delete_of_its_key_or_client_do_not_deadlock(key, protected_client, delete):
        """The deadlock a soak found on PostgreSQL: the writer updated a usage row of the key,
        then waited for the key's or the client's row (a new day's row refers to them), which
        the delete had locked and held while it waited to delete that usage row."""
        api_key, _ = key
        KeyUsage.objects.create(api_key=api_key, llm_client=protected_client, day=usage.today(), requests=1)
        today = (usage.today() - usage.EPOCH).days
        # Today's row is updated, then tomorrow's inserted (its references are checked).
        counts = {(api_key.pk, protected_client.pk, day): [1, 2, 3] for day in (today, today + 1)}
        deleting, failures = threading.Event(), []

        def writer() -> None:
            try:
                assert deleting.wait(10)
                usage.write_counts(counts, {api_key.pk: time.time()})
            except Exception as exc:
                failures.append(exc)
            finally:
                connection.close()

        def hold(**kwargs: Any) -> None:
            # Sent by the delete with the key's row locked, before it deletes the usage rows.
            deleting.set()
            harness.wait_until(
                lambda: lock_waits() >= 1 or failures, 10, "the writer never waited for a lock"
            )

        thread = threading.Thread(target=writer)
        thread.start()
        pre_delete.connect(hold, sender=KeyUsage, dispatch_uid="test.hold")
        try:
            if delete == "key":
                api_key.delete()
            elif delete == "keys":
                APIKey.objects.filter(pk=api_key.pk).delete()
            else:
                protected_client.delete()
        finally:
            pre_delete.disconnect(dispatch_uid="test.hold", sender=KeyUsage)
            thread.join(10)
        assert failures == []
        assert not KeyUsage.objects.exists()  # and the writer's counts dropped with them
        assert APIKey.objects.filter(pk=api_key.pk).exists() == (delete == "client")


def test_a_background_timer_writes_the_counts_within_the_interval(api, settings, key):
    settings.DRF_LLM_KEYS = {"USAGE_FLUSH_INTERVAL": 0.05}
    api_key, plaintext = key
    for _ in range(3):
        api.get(ECHO.format("protected-bot"), **bearer(plaintext))
    harness.wait_until(lambda: stored(api_key) == [("protected-bot", usage.today(), 3, 0, 0)], 10, "no write")
    assert usage.counter.pending() == {}


def test_half_full_waiting_counters_are_written_at_once_not_dropped(
    api, settings, make_key, protected_client, caplog
):
    # An hour's interval, room for 4 counters, 12 keys used: waiting for the interval
    # would drop the counts of 8 keys.
    settings.DRF_LLM_KEYS = {"USAGE_FLUSH_INTERVAL": 3600, "USAGE_MAX_PENDING": 4}
    made = [make_key(protected_client) for _ in range(12)]
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        for _, plaintext in made:
            assert api.get(ECHO.format("protected-bot"), **bearer(plaintext)).status_code == 200
            # A database that keeps up: each early write ends before the next request.
            harness.wait_until(lambda: len(usage.counter.pending()) < 2, 10, "no early write")
        assert usage.flush()
    assert "dropped" not in caplog.text
    for api_key, _ in made:
        assert stored(api_key) == [("protected-bot", usage.today(), 1, 0, 0)]


def test_waiting_counters_are_bounded_and_the_drop_is_logged(
    api, settings, make_key, protected_client, caplog, tmp_path
):
    settings.DRF_LLM_KEYS = {"USAGE_FLUSH_INTERVAL": 3600, "USAGE_MAX_PENDING": 1}
    first, first_plaintext = make_key(protected_client)
    second, second_plaintext = make_key(protected_client)
    for plaintext in (first_plaintext, second_plaintext):  # cold: needs the database
        api.get(ECHO.format("protected-bot"), **bearer(plaintext))
        # Room for one counter: the next key's would be dropped until this one is written.
        harness.wait_until(lambda: not usage.counter.pending(), 10, "no early write")
    assert usage.flush()
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        with database_outage(tmp_path):  # the early write fails: the counts wait for the interval
            api.get(ECHO.format("protected-bot"), **bearer(first_plaintext))
            harness.wait_until(lambda: "could not write usage counts" in caplog.text, 10, "no early write")
            for _ in range(2):
                api.get(ECHO.format("protected-bot"), **bearer(first_plaintext))
                api.get(ECHO.format("protected-bot"), **bearer(second_plaintext))
            assert caplog.text.count("could not write usage counts") == 1  # no retry at once
            assert len(usage.counter.pending()) == 1
        assert usage.flush()
    assert "2 usage counts dropped" in caplog.text
    assert stored(first) == [("protected-bot", usage.today(), 4, 0, 0)]
    assert stored(second) == [("protected-bot", usage.today(), 1, 0, 0)]


# --- the request's cost ------------------------------------------------------------------


def test_counting_adds_no_sql_to_a_warm_request(api, quiet, key, django_assert_num_queries):
    _, plaintext = key
    api.get(ECHO.format("protected-bot"), **bearer(plaintext))  # cold: fills, records last use
    with django_assert_num_queries(0):
        assert api.get(ECHO.format("protected-bot"), **bearer(plaintext)).status_code == 200
    assert pending_requests() == 2


# --- faults ------------------------------------------------------------------------------


def test_a_database_error_during_flush_keeps_the_counts_and_spares_requests(
    api, quiet, key, tmp_path, caplog
):
    api_key, plaintext = key
    api.get(ECHO.format("protected-bot"), **bearer(plaintext))  # cold: needs the database
    with database_outage(tmp_path):
        with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
            assert api.get(ECHO.format("protected-bot"), **bearer(plaintext)).status_code == 200
            assert not usage.flush()
            assert api.get(TOKENS.format("protected-bot", 2, 3), **bearer(plaintext)).status_code == 200
    assert "could not write usage counts, kept for the next flush" in caplog.text
    assert pending_requests() == 3
    assert usage.flush()
    assert stored(api_key) == [("protected-bot", usage.today(), 3, 2, 3)]


# A connection through a proxy that can cut it: a server on a port, not SQLite's file
# (MariaDB's driver does not build here: run on PostgreSQL only).
if django_settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):

    @pytest.fixture
    def database_proxy() -> Iterator[Proxy]:
        """The default connection through a proxy to the database (new connections only)."""
        saved = dict(connection.settings_dict)
        proxy = Proxy(int(saved["PORT"] or 5432))
        connection.close()
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(proxy.port))
        try:
            yield proxy
        finally:
            connection.close()
            connection.settings_dict.clear()
            connection.settings_dict.update(saved)
            proxy.close()

    def test_a_flush_whose_commit_answer_is_lost_is_not_counted_again(
        api, quiet, key, database_proxy, caplog
    ):
        """The write's COMMIT reaches the database, which commits; its answer never comes
        back. The retry finds the write done: 20 requests stay 20, not 40."""
        api_key, plaintext = key
        for _ in range(20):
            assert api.get(ECHO.format("protected-bot"), **bearer(plaintext)).status_code == 200
        connection.close()  # the requests' connection was opened before the proxy's
        database_proxy.lose_next_commit_answer()
        with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
            assert not usage.flush()
        assert "could not write usage counts, kept for the next flush" in caplog.text
        assert pending_requests() == 20  # its outcome unknown to the process
        assert stored(api_key) == [("protected-bot", usage.today(), 20, 0, 0)]  # yet committed
        assert api.get(ECHO.format("protected-bot"), **bearer(plaintext)).status_code == 200
        assert usage.flush()
        assert pending_requests() == 0
        assert stored(api_key) == [("protected-bot", usage.today(), 21, 0, 0)]


if "sqlite" in django_settings.DATABASES["default"]["ENGINE"]:

    def test_a_write_that_finds_sqlite_locked_by_another_process_waits_its_turn(api, quiet, key):
        api_key, plaintext = key
        assert api.get(ECHO.format("protected-bot"), **bearer(plaintext)).status_code == 200
        # Another process in the middle of its own write (a second worker's flush at exit).
        other = sqlite3.connect(
            connection.settings_dict["NAME"], isolation_level=None, check_same_thread=False
        )
        other.execute("BEGIN IMMEDIATE")
        ends = threading.Timer(0.3, other.execute, ["COMMIT"])
        ends.start()
        try:
            assert usage.flush()
        finally:
            ends.join()
            other.close()
        assert stored(api_key) == [("protected-bot", usage.today(), 1, 0, 0)]


def test_a_background_flush_that_fails_tries_again(api, settings, key, caplog):
    api_key, plaintext = key
    settings.DRF_LLM_KEYS = {"USAGE_FLUSH_INTERVAL": 0.05}
    table = KeyUsage._meta.db_table
    with connection.schema_editor() as editor:  # a real failure: the table is not there
        editor.alter_db_table(KeyUsage, table, f"{table}_away")
    try:
        with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
            api.get(ECHO.format("protected-bot"), **bearer(plaintext))
            harness.wait_until(lambda: "could not write usage counts" in caplog.text, 10, "no failed write")
    finally:
        with connection.schema_editor() as editor:
            editor.alter_db_table(KeyUsage, f"{table}_away", table)
    harness.wait_until(lambda: stored(api_key) != [], 10, "no retry")
    assert stored(api_key) == [("protected-bot", usage.today(), 1, 0, 0)]


# --- concurrency -------------------------------------------------------------------------


def test_threads_flushing_at_once_add_up_exactly(quiet, key, protected_client):
    """Each thread has its own counter and database connection; all flush together, again
    and again, into the same (key, client, day) row."""
    api_key, _ = key
    subject = usage.Subject(api_key.pk, protected_client.pk, "protected-bot", api_key.prefix)
    threads, rounds = 4, 5
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work() -> None:
        counter = usage.UsageCounter()
        try:
            for _ in range(rounds):
                for _ in range(10):
                    counter.add(subject, requests=1, prompt_tokens=3, completion_tokens=2)
                barrier.wait()
                while not counter.flush():  # SQLite may be locked for a moment: kept, retried
                    pass
        except BaseException as exc:
            errors.append(exc)
        finally:
            counter.reset()
            connections.close_all()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    total = threads * rounds * 10
    assert stored(api_key) == [("protected-bot", usage.today(), total, 3 * total, 2 * total)]


def test_a_forked_child_starts_with_no_counts_of_its_parent(api, quiet, key):
    api_key, plaintext = key
    for _ in range(3):
        api.get(ECHO.format("protected-bot"), **bearer(plaintext))
    subject = usage.Subject(api_key.pk, None, "protected-bot", api_key.prefix)
    pid = os.fork()
    if pid == 0:
        inherited = usage.counter.pending()
        usage.counter.add(subject, requests=1)
        timer = usage.counter._timer
        own = usage.counter.pending()
        ok = inherited == {} and len(own) == 1 and timer is not None and timer.is_alive()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pending_requests() == 3
    assert usage.flush()
    assert stored(api_key) == [("protected-bot", usage.today(), 3, 0, 0)]


def test_writing_usage_invalidates_no_decision(api, quiet, key):
    _, plaintext = key
    api.get(ECHO.format("protected-bot"), **bearer(plaintext))
    assert usage.flush()
    with CaptureQueriesContext(connection) as queries:
        assert api.get(ECHO.format("protected-bot"), **bearer(plaintext)).status_code == 200
    assert len(queries) == 0, [q["sql"] for q in queries]


@pytest.mark.django_db(transaction=True)
def test_the_asgi_lifespan_shutdown_writes_what_waits(api, quiet, key):
    """drf_llm_keys.asgi: startup answered, and at shutdown the waiting counts written
    (what uvicorn runs before it ends its process without atexit)."""
    api_key, plaintext = key
    assert api.get(TOKENS.format("protected-bot", 4, 6), **bearer(plaintext)).status_code == 200
    received = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, str]:
        return next(received)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    async_to_sync(get_asgi_application())({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert stored(api_key) == [("protected-bot", usage.today(), 1, 4, 6)]
