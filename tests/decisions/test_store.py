"""The cache protocol: cost per request, no stale fill, fail closed, retried invalidation."""

from __future__ import annotations

import logging
import pickle
from collections import Counter
from typing import Any

import pytest
from django.core.cache import caches
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from drf_llm_keys import decisions
from drf_llm_keys.decisions import Tag, invalidation, state
from drf_llm_keys.decisions.backends import CacheBackend
from drf_llm_keys.decisions.entries import load_decision
from drf_llm_keys.decisions.names import decision_name, generation_name
from drf_llm_keys.models import APIKey
from tests.support import bearer, wait_until
from tests.support.caches import CountingCache

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/clients/protected-bot/echo/"


@pytest.fixture
def counting(monkeypatch) -> CountingCache:
    proxy = CountingCache(caches["default"])
    monkeypatch.setattr(CacheBackend, "cache", property(lambda backend: proxy))
    return proxy


def warm(api, plaintext: str) -> None:
    assert api.get(URL, **bearer(plaintext)).status_code == 200


# --- cost per request -----------------------------------------------------------------


def test_warm_request_runs_no_sql(api, key, django_assert_num_queries):
    _, plaintext = key
    warm(api, plaintext)
    with django_assert_num_queries(0):
        response = api.get(URL, **bearer(plaintext))
    assert response.json()["user"] == "owner"


def test_warm_request_makes_one_cache_round_trip(api, key, counting, settings):
    # Without push invalidation (or on a cache that cannot announce; tests/decisions/test_push.py).
    settings.DRF_LLM_KEYS = {"PUSH_INVALIDATION": False}
    _, plaintext = key
    warm(api, plaintext)
    counting.calls.clear()
    warm(api, plaintext)
    assert sum(counting.calls.values()) == 1
    decisions.get_decision_cache().held.entries.clear()  # a process that has not seen the entry yet
    counting.calls.clear()
    warm(api, plaintext)
    assert counting.calls == Counter(get_many=1)


def test_warm_public_request_runs_no_sql_and_one_round_trip(
    api, public_client, counting, django_assert_num_queries, settings
):
    settings.DRF_LLM_KEYS = {"PUSH_INVALIDATION": False}
    api.get("/clients/public-bot/echo/")
    counting.calls.clear()
    with django_assert_num_queries(0):
        assert api.get("/clients/public-bot/echo/").status_code == 200
    assert sum(counting.calls.values()) == 1


def test_warm_refusal_runs_no_sql(api, key, django_assert_num_queries):
    api.get(URL, **bearer("llmk_000000000000." + "A" * 43))
    with django_assert_num_queries(0):
        assert api.get(URL, **bearer("llmk_000000000000." + "A" * 43)).status_code == 401


def test_cold_request_runs_at_most_two_sql_queries(api, key):
    _, plaintext = key
    api.get(URL, **bearer(plaintext))  # records last use: not part of the decision
    caches["default"].delete(generation_name("protected-bot"))
    with CaptureQueriesContext(connection) as queries:
        assert api.get(URL, **bearer(plaintext)).status_code == 200
    assert len(queries) <= 2, [q["sql"] for q in queries]


def test_held_entries_share_their_owner_and_client_and_are_unchanged(
    api, make_key, protected_client, django_assert_num_queries
):
    made = [make_key(protected_client) for _ in range(2)]  # one owner, one client
    for _, plaintext in made:
        warm(api, plaintext)  # loaded here, and filled
    local = decisions.get_decision_cache()
    names = [decision_name("protected-bot", api_key.prefix) for api_key, _ in made]
    loaded = [local.held.get(name)[1] for name in names]
    assert loaded[0]["client"] is loaded[1]["client"]
    assert loaded[0]["key"]["user"] is loaded[1]["key"]["user"]
    local.held.entries.clear()  # as in another process: the shared entries are read
    with django_assert_num_queries(0):
        for _, plaintext in made:
            warm(api, plaintext)
    held = [local.held.get(name) for name in names]
    # Shared as (generation, epoch, entry): held as (Tag(generation, epoch), entry), the key
    # without its prefix (the entry's name has it) and with its digest's bytes.
    shared = [state.get_cache().get(name) for name in names]

    def as_held(entry: dict[str, Any]) -> dict[str, Any]:
        key = {name: value for name, value in entry["key"].items() if name != "prefix"}
        return {**entry, "key": {**key, "digest": bytes.fromhex(key["digest"])}}

    assert held == [(Tag(generation, epoch), as_held(entry)) for generation, epoch, entry in shared]
    assert [type(part) for part in held[0][1]["key"].values()] == [
        type(part) for part in as_held(shared[0][2])["key"].values()
    ]
    first, second = (entry for _, entry in held)
    assert first["client"] is second["client"]
    assert first["key"]["user"] is second["key"]["user"]
    assert first["key"]["scopes"] is second["key"]["scopes"]  # equal lists: one
    assert held[0][0] is held[1][0]  # one client, one generation: one tag
    assert first["key"] is not second["key"]


def test_request_user_costs_no_query_for_its_cached_fields(key, django_assert_num_queries):
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication

    _, plaintext = key

    def authenticate() -> Any:
        request = Request(
            APIRequestFactory().get("/", **bearer(plaintext)),
            parser_context={"kwargs": {"llm_client": "protected-bot"}},
        )
        return LLMClientAPIKeyAuthentication().authenticate(request)

    authenticate()
    with django_assert_num_queries(0):
        user, api_key = authenticate()
        assert (user.is_authenticated, user.is_active, user.get_username()) == (True, True, "owner")
        assert (api_key.prefix, api_key.is_active, api_key.user_id) == (key[0].prefix, True, user.pk)
    with django_assert_num_queries(1):  # a field the cache does not hold loads on demand
        assert user.email == key[0].user.email


# --- no stale fill --------------------------------------------------------------------


def test_a_reader_that_loaded_before_a_revoke_cannot_fill_its_stale_entry(make_key, protected_client):
    """Interleave: reader misses and loads the key (active); the revoke commits and
    invalidates; only then does the reader write its entry. The next read must not trust it."""
    make_key(protected_client)
    api_key, _ = make_key(protected_client)

    def load_then_revoke(client_value: str, prefix: str | None) -> dict[str, Any]:
        entry = load_decision(client_value, prefix)  # the slow reader's read: still active
        APIKey.objects.filter(pk=api_key.pk).update(is_active=False)  # commits, invalidates
        return entry

    stale = decisions.lookup("protected-bot", api_key.prefix, load_then_revoke, using="default")
    assert stale["key"]["is_active"] is True  # what the slow reader saw, and wrote late
    fresh = decisions.lookup("protected-bot", api_key.prefix, load_decision, using="default")
    assert fresh["key"]["is_active"] is False


def test_a_reader_that_finds_no_generation_cannot_fill_a_stale_entry(make_key, protected_client):
    """Same interleaving when the generation is missing (evicted, or never written)."""
    make_key(protected_client)
    api_key, _ = make_key(protected_client)
    caches["default"].clear()

    def load_then_revoke(client_value: str, prefix: str | None) -> dict[str, Any]:
        entry = load_decision(client_value, prefix)
        api_key.is_active = False
        api_key.save()  # commits, invalidates
        return entry

    decisions.lookup("protected-bot", api_key.prefix, load_then_revoke, using="default")
    fresh = decisions.lookup("protected-bot", api_key.prefix, load_decision, using="default")
    assert fresh["key"]["is_active"] is False


def test_a_lookup_that_finds_no_generation_leases_one_and_the_next_lookup_fills(
    key, django_assert_num_queries
):
    """With no generation, the rows read may predate a change whose generation was lost: they
    answer this request only, and a new generation is leased (SET NX) for the next lookup."""
    cache, prefix = caches["default"], key[0].prefix
    cache.clear()
    entry = decisions.lookup("protected-bot", prefix, load_decision, using="default")
    assert entry["key"]["is_active"] is True
    leased = cache.get(generation_name("protected-bot"))
    assert isinstance(leased, str), "a generation should have been leased"
    assert cache.get(decision_name("protected-bot", prefix)) is None, "rows read before the lease: not filled"
    decisions.lookup("protected-bot", prefix, load_decision, using="default")
    assert cache.get(decision_name("protected-bot", prefix))[0] == leased
    assert cache.get(generation_name("protected-bot")) == leased
    decisions.get_decision_cache().held.entries.clear()  # as another process: the shared entry
    with django_assert_num_queries(0):
        decisions.lookup("protected-bot", prefix, load_decision, using="default")


def test_a_lease_never_replaces_a_generation(key):
    """A change written between the generation read and the lease wins: SET NX."""
    cache, name = caches["default"], generation_name("protected-bot")
    cache.clear()

    def load_then_change(client_value: str, prefix: str | None) -> dict[str, Any]:
        entry = load_decision(client_value, prefix)
        cache.set(name, "written-meanwhile")  # another process's invalidation
        return entry

    decisions.lookup("protected-bot", key[0].prefix, load_then_change, using="default")
    assert cache.get(name) == "written-meanwhile"


def test_inside_a_transaction_an_invalidation_writes_an_in_flight_generation_at_once(key):
    """Nothing read while the change is uncommitted is ever filled under it."""
    api_key, _ = key
    cache, name = caches["default"], generation_name("protected-bot")
    before = cache.get(name)
    with transaction.atomic():
        api_key.name = "renamed"
        api_key.save()
        in_flight = cache.get(name)
        assert in_flight != before and in_flight.startswith("~")
        with transaction.atomic():  # another reader, say, in its own savepoint: no fill
            decisions.lookup("protected-bot", api_key.prefix, load_decision, using="default")
    assert cache.get(decision_name("protected-bot", api_key.prefix)) is None
    after = cache.get(name)
    assert after not in (before, in_flight) and not after.startswith("~"), "replaced at commit"


def test_no_fill_inside_a_repeatable_read_transaction(key, monkeypatch):
    """Its snapshot may predate an invalidation that the reader has already seen."""
    assert caches["default"].get(generation_name("protected-bot")) is not None  # else no fill anyway
    monkeypatch.setattr(connection, "isolation_level", "repeatable read", raising=False)
    with transaction.atomic():
        decisions.lookup("protected-bot", key[0].prefix, load_decision, using="default")
    assert caches["default"].get(decision_name("protected-bot", key[0].prefix)) is None


def test_fill_outside_a_transaction(key):
    decisions.lookup("protected-bot", key[0].prefix, load_decision, using="default")
    assert caches["default"].get(decision_name("protected-bot", key[0].prefix)) is not None


# --- fail closed ----------------------------------------------------------------------


def test_cache_outage_falls_back_to_the_database_and_stays_closed(api, key, flaky, caplog):
    _, plaintext = key
    flaky.down = True
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        assert api.get(URL).status_code == 401
        assert api.get(URL, **bearer(plaintext)).status_code == 200
        assert api.get(URL, **bearer("llmk_000000000000." + "A" * 43)).status_code == 401
    assert "cache read failed" in caplog.text


def test_revoke_during_a_cache_outage_is_refused_from_the_database(
    api, key, make_key, protected_client, flaky
):
    make_key(protected_client)
    api_key, plaintext = key
    warm(api, plaintext)
    flaky.down = True
    APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
    assert api.get(URL, **bearer(plaintext)).status_code == 401


def test_unreachable_redis_fails_closed(api, key, settings):
    settings.CACHES = {
        **settings.CACHES,
        "unreachable": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    _, plaintext = key
    with override_settings(DRF_LLM_KEYS={"CACHE_ALIAS": "unreachable"}):
        assert api.get(URL).status_code == 401
        assert api.get(URL, **bearer(plaintext)).status_code == 200


def test_failed_invalidation_is_kept_and_retried_by_the_timer(
    api, key, make_key, protected_client, flaky, caplog, monkeypatch
):
    # The read path never publishes: the retry timer (and wait_published) do.
    monkeypatch.setattr(invalidation, "RETRY_DELAYS", (0.05,))
    make_key(protected_client)
    api_key, plaintext = key
    warm(api, plaintext)
    flaky.down = True
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
    assert "invalidation failed" in caplog.text
    assert generation_name("protected-bot") in decisions.pending_invalidations()
    flaky.down = False
    # Out of pending once the timer takes it, written a moment later: wait for both.
    local = decisions.get_decision_cache()
    wait_until(
        lambda: not decisions.pending_invalidations() and not local.publishing,
        5,
        "the retry timer never wrote it",
    )
    assert api.get(URL, **bearer(plaintext)).status_code == 401


def test_failed_invalidation_is_retried_in_the_background(
    key, make_key, protected_client, flaky, monkeypatch
):
    monkeypatch.setattr(invalidation, "RETRY_DELAYS", (0.05,))
    api_key, _ = key
    flaky.down = True
    APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
    flaky.down = False
    timer = decisions.get_decision_cache().retry_timer
    assert timer is not None
    timer.join(2)
    assert decisions.pending_invalidations() == frozenset()


# --- what the cache holds -------------------------------------------------------------


def test_cache_holds_no_plaintext_and_no_password_hash(api, key, owner):
    owner.set_password("correct horse battery staple")
    owner.save()
    _, plaintext = key
    warm(api, plaintext)
    api.get(URL, **bearer("llmk_000000000000." + "A" * 43))
    stored = dump_cache()
    assert stored, "the cache should hold entries by now"
    for secret in (plaintext, plaintext.split(".")[1], owner.password):
        assert secret.encode() not in stored


def dump_cache() -> bytes:
    backend = caches["default"]
    if hasattr(backend, "_cache"):  # local memory: values are pickles already
        return b"".join(backend._cache.values()) + pickle.dumps(list(backend._cache))
    client = backend.client.get_client()
    return b"".join(client.dump(name) or b"" for name in client.keys("*")) + b"".join(client.keys("*"))
