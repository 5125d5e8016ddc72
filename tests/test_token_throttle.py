"""Token budgets per key (throttling.TokenRateThrottle, fed by usage.record_tokens), and
what counting costs a request: nothing, on Redis as measured by Redis itself."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from drf_llm_keys import keys, usage
from drf_llm_keys.checks import check_throttle_rates
from tests.support import bearer, harness
from tests.support.redis import CONTROL_COMMANDS, cache_config, commands

pytestmark = pytest.mark.django_db

TOKENS = "/clients/{}/tokens/?prompt={}&completion={}"
ECHO = "/clients/{}/echo/"


def spend(api: Any, plaintext: str | None, prompt: int, completion: int, slug: str = "protected-bot") -> int:
    headers = bearer(plaintext) if plaintext else {}
    status: int = api.get(TOKENS.format(slug, prompt, completion), **headers).status_code
    return status


def test_a_key_over_its_budget_gets_429_with_retry_after(api, settings, key):
    settings.DRF_LLM_KEYS = {"TOKEN_RATE": "10/hour"}
    _, plaintext = key
    assert spend(api, plaintext, 4, 2) == 200  # 6 spent
    assert spend(api, plaintext, 3, 3) == 200  # admitted under the budget; 12 spent
    refused = api.get(TOKENS.format("protected-bot", 0, 0), **bearer(plaintext))
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 3600


def test_a_refused_request_spends_no_tokens(api, settings, key):
    settings.DRF_LLM_KEYS = {"TOKEN_RATE": "5/hour", "USAGE_FLUSH_INTERVAL": 3600}
    _, plaintext = key
    assert spend(api, plaintext, 5, 0) == 200
    assert spend(api, plaintext, 5, 0) == 429
    (figures,) = usage.counter.pending().values()
    assert figures[1:3] == (5, 0)


def test_each_key_and_client_has_its_own_budget(api, settings, make_key, protected_client):
    other = protected_client.__class__.objects.create(name="Other", slug="other-bot")
    _, first = make_key(protected_client, other)
    _, second = make_key(protected_client)
    settings.DRF_LLM_KEYS = {"TOKEN_RATE": "10/hour"}
    assert [spend(api, first, 10, 0), spend(api, first, 0, 0)] == [200, 429]
    assert [spend(api, second, 10, 0), spend(api, second, 0, 0)] == [200, 429]
    assert [spend(api, first, 10, 0, "other-bot"), spend(api, first, 0, 0, "other-bot")] == [200, 429]


def test_a_rotated_key_and_its_replacement_share_one_budget(api, settings, key):
    """With 1,000 tokens an hour, the old key spends 1,200 and is refused; its replacement
    is refused in the same hour, and so is the replacement of the replacement."""
    settings.DRF_LLM_KEYS = {"TOKEN_RATE": "1000/hour"}
    old, old_plaintext = key
    assert spend(api, old_plaintext, 700, 500) == 200
    assert spend(api, old_plaintext, 0, 0) == 429
    new, new_plaintext = keys.rotate_key(old)
    assert spend(api, new_plaintext, 0, 0) == 429
    _, newest_plaintext = keys.rotate_key(new)
    assert spend(api, newest_plaintext, 0, 0) == 429
    assert new.allowance == old.prefix


def test_a_client_budget_overrides_the_default_and_none_lifts_it(api, settings, make_key, protected_client):
    other = protected_client.__class__.objects.create(name="Other", slug="other-bot")
    _, plaintext = make_key(protected_client, other)
    settings.DRF_LLM_KEYS = {
        "TOKEN_RATE": "1000/hour",
        "TOKEN_RATES": {"protected-bot": "10/minute", "other-bot": None},
    }
    assert [spend(api, plaintext, 10, 0), spend(api, plaintext, 0, 0)] == [200, 429]
    assert [spend(api, plaintext, 5000, 0, "other-bot") for _ in range(2)] == [200, 200]


def test_without_a_budget_nothing_is_limited(api, key):
    _, plaintext = key
    assert [spend(api, plaintext, 10**9, 10**9) for _ in range(3)] == [200, 200, 200]


def test_anonymous_requests_to_a_public_client_have_no_budget(api, settings, public_client):
    settings.DRF_LLM_KEYS = {"TOKEN_RATE": "1/hour"}
    assert [spend(api, None, 10, 10, "public-bot") for _ in range(3)] == [200, 200, 200]


def test_a_cache_error_lets_requests_through_and_is_logged(api, settings, key, caplog):
    settings.DRF_LLM_KEYS = {"TOKEN_RATE": "1/hour"}
    _, plaintext = key
    spend(api, plaintext, 0, 0)  # fills the decision cache while it works
    settings.CACHES = {"default": {"BACKEND": "tests.support.caches.BrokenCache"}}
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        assert [spend(api, plaintext, 5, 5) for _ in range(2)] == [200, 200]
    assert "throttle counter unavailable, request allowed" in caplog.text
    assert "throttle counter unavailable, not counted" in caplog.text


def test_a_bad_token_rate_is_a_system_check_error(settings):
    settings.DRF_LLM_KEYS = {"TOKEN_RATE": "lots", "TOKEN_RATES": {"bot": "5/fortnight"}}
    errors = check_throttle_rates()
    assert [e.id for e in errors] == ["drf_llm_keys.E004", "drf_llm_keys.E004"]
    assert "TOKEN_RATE" in errors[0].msg and "TOKEN_RATES" in errors[1].msg


# --- cost on Redis, counted by Redis -----------------------------------------------------


@pytest.fixture
def on_redis(redis_server: harness.RedisServer, settings: Any) -> Iterator[harness.RedisServer]:
    redis_server.resume()
    redis_server.flush()
    settings.CACHES = {"default": cache_config(redis_server)}
    yield redis_server


def warm(api: Any, plaintext: str, path: str) -> None:
    for _ in range(3):  # cold, then confirmed under push invalidation: warm from then on
        assert api.get(path, **bearer(plaintext)).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_counting_adds_no_round_trip_and_no_sql_to_a_warm_request(api, on_redis, settings, key):
    settings.DRF_LLM_KEYS = {"USAGE_FLUSH_INTERVAL": 3600}
    _, plaintext = key
    warm(api, plaintext, ECHO.format("protected-bot"))
    before, counted = commands(on_redis), usage.counter.pending()
    with CaptureQueriesContext(connection) as queries:
        assert api.get(ECHO.format("protected-bot"), **bearer(plaintext)).status_code == 200
    assert commands(on_redis) == before
    assert len(queries) == 0, [q["sql"] for q in queries]
    ((name, figures),) = usage.counter.pending().items()
    assert figures[0] == counted[name][0] + 1


@pytest.mark.django_db(transaction=True)
def test_tokens_cost_no_round_trip_without_a_budget(api, on_redis, settings, key):
    settings.DRF_LLM_KEYS = {"USAGE_FLUSH_INTERVAL": 3600}
    _, plaintext = key
    warm(api, plaintext, TOKENS.format("protected-bot", 1, 1))
    before = commands(on_redis)
    assert spend(api, plaintext, 1, 1) == 200
    assert commands(on_redis) == before


@pytest.mark.django_db(transaction=True)
def test_a_budget_costs_one_read_before_and_one_increment_after(api, on_redis, settings, key):
    settings.DRF_LLM_KEYS = {"USAGE_FLUSH_INTERVAL": 3600, "TOKEN_RATE": "1000000/day"}
    _, plaintext = key
    warm(api, plaintext, TOKENS.format("protected-bot", 1, 1))
    before = calls(on_redis)
    assert spend(api, plaintext, 1, 1) == 200
    delta = {name: n - before.get(name, 0) for name, n in calls(on_redis).items() if n != before.get(name, 0)}
    # Two round trips: the throttle's GET, and django-redis' incr, one EVAL of a script that
    # runs EXISTS and INCRBY inside Redis.
    assert delta == {"get": 1, "eval": 1, "exists": 1, "incrby": 1}


def calls(server: harness.RedisServer) -> dict[str, int]:
    stats = server.client().info("commandstats")
    named = {name[len("cmdstat_") :]: value["calls"] for name, value in stats.items()}
    return {name: n for name, n in named.items() if name not in CONTROL_COMMANDS}
