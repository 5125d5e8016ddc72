"""What a cold decision costs and keeps: one query, nothing shared for what does not exist,
and bounded state in the process whatever is sent."""

from __future__ import annotations

import secrets

import pytest
from django.conf import settings as django_settings
from django.core.cache import caches
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from model_bakery import baker

from drf_llm_keys import crypto, decisions
from drf_llm_keys.conf import conf
from drf_llm_keys.decisions import entries, get_decision_cache, state
from drf_llm_keys.decisions.entries import load_decision
from drf_llm_keys.decisions.names import decision_name, generation_name
from drf_llm_keys.models import APIKey, LLMClientAPIKey
from tests.support import bearer, databases
from tests.support.databases import prepared_statements
from tests.support.redis import commands

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/clients/{}/echo/"


def random_key() -> str:
    """A well-formed key that no row has."""
    return f"{conf.KEY_PREFIX}{secrets.token_hex(6)}.{secrets.token_urlsafe(32)}"


def get(api, slug: str, plaintext: str | None = None):
    return api.get(URL.format(slug), **(bearer(plaintext) if plaintext else {}))


# --- one query -----------------------------------------------------------------------------


def test_a_keys_first_use_runs_one_query(api, key, django_assert_num_queries):
    _, plaintext = key
    with django_assert_num_queries(1):
        assert get(api, "protected-bot", plaintext).status_code == 200


def test_a_request_after_an_invalidation_runs_one_query(api, key, django_assert_num_queries):
    api_key, plaintext = key
    assert get(api, "protected-bot", plaintext).status_code == 200
    api_key.name = "renamed"
    api_key.save()  # a write to the key: a new generation for its client
    with django_assert_num_queries(1):
        assert get(api, "protected-bot", plaintext).status_code == 200


# Server-side binding and prepare_threshold are psycopg 3's; psycopg2 has neither.
ON_PSYCOPG_3 = connection.Database.__name__ == "psycopg"
if "postgresql" in django_settings.DATABASES["default"]["ENGINE"] and ON_PSYCOPG_3:

    def test_decisions_are_the_same_with_psycopg_prepared_statements(
        make_key, protected_client, public_client
    ):
        # What docs/ecosystem.md suggests on PostgreSQL: server-side binding, statements
        # prepared (here at once), and so parameters typed by the server, not spelled out.
        api_key, _ = make_key(protected_client, scopes=["chat"], allowed_models=["gpt-4o-mini"])
        cases = [
            ("protected-bot", api_key.prefix),
            ("protected-bot", "llmk_000000000000"),
            ("protected-bot", None),
            ("public-bot", api_key.prefix),
            ("no-such-bot", None),
            ("a\x00b", None),
        ]
        expected = [load_decision(value, prefix) for value, prefix in cases]
        saved = dict(connection.settings_dict["OPTIONS"])
        connection.close()
        connection.settings_dict["OPTIONS"].update(server_side_binding=True, prepare_threshold=0)
        decisions.reset()  # the statement is built again, for this connection
        try:
            for _ in range(2):
                assert [load_decision(value, prefix) for value, prefix in cases] == expected
            with connection.cursor() as cursor:
                cursor.execute("SELECT statement FROM pg_prepared_statements")
                prepared = [row[0] for row in cursor.fetchall()]
            assert any("LIMIT 1) IS NOT NULL" in statement for statement in prepared), prepared
        finally:
            connection.close()
            connection.settings_dict["OPTIONS"] = saved

    def decisions_of(cases):
        return [load_decision(value, prefix) for value, prefix in cases]

    @pytest.fixture
    def cases(make_key, protected_client, public_client):
        """Every kind of row the statement can return, and none."""
        api_key, _ = make_key(protected_client, scopes=["chat"], allowed_models=["gpt-4o-mini"])
        revoked, _ = make_key(protected_client, is_active=False)
        return [
            ("protected-bot", api_key.prefix),
            ("protected-bot", revoked.prefix),
            ("protected-bot", "llmk_000000000000"),
            ("protected-bot", None),
            ("public-bot", api_key.prefix),
            ("no-such-bot", None),
        ]

    @pytest.fixture
    def kept_connection():
        with databases.kept_connection() as kept:
            yield kept

    def test_a_kept_connection_runs_the_statement_prepared_with_the_same_decisions(
        cases, kept_connection, django_assert_num_queries
    ):
        kept_connection.settings_dict["CONN_MAX_AGE"] = 0
        expected = decisions_of(cases)
        assert not prepared_statements()
        kept_connection.settings_dict["CONN_MAX_AGE"] = 60
        with CaptureQueriesContext(kept_connection) as first:
            assert load_decision(*cases[0]) == expected[0]
        assert first[0]["sql"].startswith("PREPARE drf_llm_keys_decision_")
        assert first[1]["sql"].startswith("EXECUTE drf_llm_keys_decision_")
        # Past PostgreSQL's five custom plans, so the generic plan answers too.
        for _ in range(4):
            with django_assert_num_queries(len(cases)) as captured:
                assert decisions_of(cases) == expected
            assert all(query["sql"].startswith("EXECUTE ") for query in captured)
        assert len(prepared_statements()) == 1

    def test_a_prepared_statement_takes_the_pk_as_lookup_value(
        settings, cases, protected_client, kept_connection
    ):
        settings.DRF_LLM_KEYS = {"CLIENT_LOOKUP_FIELD": "pk"}  # an integer parameter
        prefix = cases[0][1]
        for _ in range(7):  # past the custom plans
            decision = load_decision(str(protected_client.pk), prefix)
            assert decision["client"]["id"] == protected_client.pk
            assert decision["key"]["prefix"] == prefix
            assert load_decision(str(protected_client.pk + 1000), prefix)["client"]["id"] is None
        assert prepared_statements()

    @pytest.mark.parametrize(
        "setting",
        ["in a transaction", "PREPARE_DECISION_QUERY off", "CONN_MAX_AGE 0", "a transaction pooler"],
    )
    def test_the_statement_runs_unprepared_where_preparing_could_break_or_would_not_pay(
        cases, kept_connection, settings, setting
    ):
        expected = decisions_of(cases)
        kept_connection.close()
        decisions.reset()
        if setting == "PREPARE_DECISION_QUERY off":
            settings.DRF_LLM_KEYS = {"PREPARE_DECISION_QUERY": False}
        elif setting == "CONN_MAX_AGE 0":
            kept_connection.settings_dict["CONN_MAX_AGE"] = 0
        elif setting == "a transaction pooler":  # what Django asks of PgBouncer's users
            kept_connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] = True
        try:
            with CaptureQueriesContext(kept_connection) as captured:
                if setting == "in a transaction":
                    with transaction.atomic():
                        assert decisions_of(cases) == expected
                else:
                    assert decisions_of(cases) == expected
        finally:
            kept_connection.settings_dict.pop("DISABLE_SERVER_SIDE_CURSORS", None)
        statements = [query["sql"] for query in captured if query["sql"].startswith("SELECT")]
        assert len(statements) == len(cases), captured.captured_queries
        assert not prepared_statements()

    @pytest.mark.parametrize("how", ["DEALLOCATE ALL", "DISCARD ALL"])
    def test_a_statement_dropped_behind_the_librarys_back_is_prepared_again(cases, kept_connection, how):
        expected = decisions_of(cases)
        with kept_connection.cursor() as cursor:
            cursor.execute(how)  # a pooler's reset, say
        with CaptureQueriesContext(kept_connection) as captured:
            assert decisions_of(cases[:1]) == expected[:1]  # answered unprepared
            assert decisions_of(cases) == expected
        sql = [query["sql"].split(" ", 1)[0] for query in captured]
        assert sql[:4] == ["EXECUTE", "SELECT", "PREPARE", "EXECUTE"], sql

    def test_a_connection_that_keeps_losing_the_statement_stops_preparing_it(cases, kept_connection):
        # A transaction pooler moving the connection's sessions: each loss costs a failed
        # EXECUTE, so after PREPARES_PER_CONNECTION of them the plain statement runs.
        expected = decisions_of(cases)  # the first PREPARE
        for _ in range(entries.PREPARES_PER_CONNECTION - 1):  # lost, and prepared again
            with kept_connection.cursor() as cursor:
                cursor.execute("DEALLOCATE ALL")
            assert decisions_of(cases) == expected
        with kept_connection.cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")
        with CaptureQueriesContext(kept_connection) as captured:
            assert decisions_of(cases) == expected
            assert decisions_of(cases) == expected
        sql = [query["sql"].split(" ", 1)[0] for query in captured]
        assert sql == ["EXECUTE", *["SELECT"] * (2 * len(cases))], sql
        assert not prepared_statements()

    def test_a_statement_prepared_in_the_session_already_is_used(cases, kept_connection, caplog):
        expected = decisions_of(cases)
        decisions.reset()  # a new DecisionQuery, which has not seen this session
        with CaptureQueriesContext(kept_connection) as captured:
            assert decisions_of(cases) == expected
        assert captured[0]["sql"].startswith("PREPARE ")
        assert all(query["sql"].startswith("EXECUTE ") for query in captured.captured_queries[1:])
        assert "could not be prepared" not in caplog.text

    def test_a_schema_change_that_alters_the_result_is_survived(cases, kept_connection):
        # A migration run while workers hold the statement: PostgreSQL refuses the old plan
        # ("cached plan must not change result type").
        expected = decisions_of(cases)
        table = APIKey._meta.db_table
        length = APIKey._meta.get_field("name").max_length
        with kept_connection.cursor() as cursor:
            cursor.execute(f'ALTER TABLE "{table}" ALTER COLUMN "name" TYPE text')
        try:
            with CaptureQueriesContext(kept_connection) as captured:
                assert decisions_of(cases) == expected
                assert decisions_of(cases) == expected
        finally:
            with kept_connection.cursor() as cursor:
                cursor.execute(f'ALTER TABLE "{table}" ALTER COLUMN "name" TYPE varchar({length})')
        sql = [query["sql"].split(" ", 1)[0] for query in captured]
        assert sql[:5] == ["EXECUTE", "DEALLOCATE", "SELECT", "PREPARE", "EXECUTE"], sql
        assert set(sql[5:]) == {"EXECUTE"}, sql


@pytest.mark.parametrize(
    ("slug", "credentials", "status"),
    [
        ("protected-bot", "random", 401),  # an unknown key
        ("protected-bot", None, 401),
        ("public-bot", None, 200),
        ("public-bot", "random", 200),
        ("no-such-bot", "random", 404),  # no such client
    ],
)
def test_every_cold_decision_runs_one_query(
    api, key, public_client, django_assert_num_queries, slug, credentials, status
):
    plaintext = random_key() if credentials == "random" else None
    with django_assert_num_queries(1):
        assert get(api, slug, plaintext).status_code == status


def test_the_statement_is_built_once_per_database_and_dropped_by_reset(api, key):
    _, plaintext = key
    get(api, "protected-bot", plaintext)
    built = dict(get_decision_cache().queries)
    assert len(built) == 1
    get(api, "protected-bot", random_key())
    assert get_decision_cache().queries == built  # the same object, not rebuilt
    decisions.reset()
    assert get_decision_cache().queries == {}


@pytest.mark.parametrize("value", ["abc", "99999999999999999999999", "-99999999999999999999999", "1\x00"])
def test_a_value_the_lookup_field_cannot_hold_names_no_client_without_a_query(
    settings, protected_client, django_assert_num_queries, value
):
    settings.DRF_LLM_KEYS = {"CLIENT_LOOKUP_FIELD": "pk"}
    with django_assert_num_queries(0):
        decision = load_decision(value, None, using="default")
    assert decision["client"]["id"] is None


def test_the_pk_as_lookup_field_finds_the_client(settings, protected_client):
    settings.DRF_LLM_KEYS = {"CLIENT_LOOKUP_FIELD": "pk"}
    decision = load_decision(str(protected_client.pk), None, using="default")
    assert decision["client"]["id"] == protected_client.pk
    assert decision["client"]["require_api_key"] is False


def test_a_key_of_another_client_loads_without_this_clients_mapping(make_key, protected_client):
    other = baker.make_recipe("tests.llm_client", slug="other-bot")
    api_key, _ = make_key(other)
    make_key(protected_client)  # protected-bot has a key of its own
    decision = load_decision("protected-bot", api_key.prefix, using="default")
    assert decision["key"]["id"] == api_key.pk
    assert decision["key"]["client_ids"] == []
    assert load_decision("other-bot", api_key.prefix, using="default")["key"]["client_ids"] == [other.pk]


# --- nothing shared for what does not exist -------------------------------------------------


def test_an_unknown_slug_gets_no_generation(api):
    assert get(api, "no-such-bot", random_key()).status_code == 404
    assert caches["default"].get(generation_name("no-such-bot")) is None
    assert not get_decision_cache().held and not get_decision_cache().unknown_keys


def test_an_unknown_key_is_never_written_to_the_shared_cache(api, key):
    _, plaintext = key
    get(api, "protected-bot", plaintext)
    unknown = random_key()
    assert get(api, "protected-bot", unknown).status_code == 401
    assert caches["default"].get(decision_name("protected-bot", unknown.partition(".")[0])) is None


def test_a_repeated_unknown_key_is_refused_from_the_process(api, key, django_assert_num_queries):
    _, plaintext = key
    get(api, "protected-bot", plaintext)
    unknown = random_key()
    assert get(api, "protected-bot", unknown).status_code == 401
    with django_assert_num_queries(0):
        assert get(api, "protected-bot", unknown).status_code == 401


def test_unknown_keys_are_held_apart_and_bounded(api, key, monkeypatch):
    monkeypatch.setattr(get_decision_cache().unknown_keys, "size", 3)
    _, plaintext = key
    get(api, "protected-bot", plaintext)
    held_before = dict(get_decision_cache().held.entries)
    for _ in range(10):
        assert get(api, "protected-bot", random_key()).status_code == 401
    assert len(get_decision_cache().unknown_keys) == 3
    assert get_decision_cache().held.entries == held_before  # nothing pushed out


def test_a_key_made_later_under_a_refused_prefix_is_served(api, key, owner, protected_client):
    # Its mapping gives the client a new generation, which the held refusal was taken under.
    plaintext = random_key()
    assert get(api, "protected-bot", plaintext).status_code == 401
    assert get_decision_cache().unknown_keys
    api_key = APIKey.objects.create(
        user=owner, name="late", prefix=plaintext.partition(".")[0], digest=crypto.hash_key(plaintext)
    )
    LLMClientAPIKey.objects.create(llm_client=protected_client, api_key=api_key)
    assert get(api, "protected-bot", plaintext).status_code == 200


# --- least recently used ---------------------------------------------------------------------


def test_a_hit_keeps_an_entry_from_being_the_next_dropped(api, make_key, protected_client, settings):
    settings.DRF_LLM_KEYS = {"LOCAL_ENTRIES": 2}
    (_, first), (_, second), (_, third) = (make_key(protected_client) for _ in range(3))
    for plaintext in (first, second, first, third):  # first is used again before third comes
        assert get(api, "protected-bot", plaintext).status_code == 200
    held = get_decision_cache().held
    names = {decision_name("protected-bot", p.partition(".")[0]): p for p in (first, second, third)}
    assert [names[name] for name in held.entries] == [first, third]


# --- hostile traffic on Redis ------------------------------------------------------------------


@pytest.mark.slow
def test_unknown_slugs_and_keys_write_nothing_to_redis_and_push_nothing_out(api, pushed, world):
    for _ in range(3):  # cold, confirmed, warm: every legitimate entry held and trusted
        world.assert_decisions(api)
    local = get_decision_cache()
    held = dict(local.held.entries)
    channel = local.backend.channel()
    assert channel is not None
    keys_before, announced_before = pushed.client().dbsize(), channel.announcements
    for number in range(1000):
        assert get(api, f"unknown-{number}", random_key()).status_code == 404
        assert get(api, "protected-bot", random_key()).status_code == 401
    assert pushed.client().dbsize() == keys_before
    channel.known("")  # reads whatever Redis has announced since
    assert channel.announcements == announced_before
    assert local.held.entries == held
    assert len(local.unknown_keys) <= state.UNKNOWN_KEY_ENTRIES
    before = commands(pushed)
    world.assert_decisions(api)  # still warm: no round trip
    assert commands(pushed) == before
