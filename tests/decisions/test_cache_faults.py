"""Cache faults: Redis stopped, paused or flushed, or a backend that raises.

Fail closed: no protected client is ever opened, requests keep being decided from the
database, and the cache is used again once it is back. The library's alias points at a
redis-server of our own (the ``redis_server`` fixture), never at the shared one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from model_bakery import baker

from drf_llm_keys import decisions
from drf_llm_keys.decisions.names import generation_name
from drf_llm_keys.models import APIKey
from tests.support import bearer, harness, wait_until
from tests.support.redis import RedisServer
from tests.support.world import URL, World

pytestmark = pytest.mark.django_db(transaction=True)

# Long enough for a loaded machine, short enough that a frozen Redis costs little.
SOCKET_TIMEOUT = 0.3


@pytest.fixture
def private_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The library's cache alias on the private Redis, empty and answering."""
    if redis_server.process is None:
        redis_server.start()
    redis_server.resume()
    redis_server.flush()
    alias = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": redis_server.url,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": SOCKET_TIMEOUT, "SOCKET_TIMEOUT": SOCKET_TIMEOUT},
    }
    with override_settings(CACHES={**settings.CACHES, "keys": alias}, DRF_LLM_KEYS={"CACHE_ALIAS": "keys"}):
        yield redis_server
    redis_server.resume()


@pytest.fixture
def broken_cache() -> Iterator[None]:
    alias = {"BACKEND": "tests.support.caches.BrokenCache"}
    with override_settings(CACHES={**settings.CACHES, "keys": alias}, DRF_LLM_KEYS={"CACHE_ALIAS": "keys"}):
        yield


def warm_queries(api: Any, world: World) -> int:
    """SQL run by the second of two identical requests: 0 once the cache serves."""
    api.get(URL.format("protected-bot"), **bearer(world.valid_key))
    with CaptureQueriesContext(connections["default"]) as queries:
        api.get(URL.format("protected-bot"), **bearer(world.valid_key))
    return len(queries)


def wait_for_pending_invalidations(timeout: float = 10) -> None:
    wait_until(lambda: not decisions.pending_invalidations(), timeout, "invalidations were not retried")


# --- Redis stopped ------------------------------------------------------------------


@pytest.mark.slow
def test_redis_stopped_decisions_come_from_the_database(api, private_redis, world, caplog):
    world.assert_decisions(api)
    assert warm_queries(api, world) == 0
    private_redis.stop()
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        world.assert_decisions(api)
    assert "cache read failed" in caplog.text
    assert warm_queries(api, world) > 0


@pytest.mark.slow
def test_revoke_while_redis_is_stopped_takes_effect_at_once(api, private_redis, world):
    world.assert_decisions(api)
    private_redis.stop()
    world.revoke_valid()
    world.assert_valid_refused(api)
    assert decisions.pending_invalidations()


@pytest.mark.slow
def test_service_recovers_when_redis_is_back(api, private_redis, world):
    private_redis.stop()
    world.assert_decisions(api)
    private_redis.start()
    world.assert_decisions(api)
    assert warm_queries(api, world) == 0
    world.revoke_valid()
    world.assert_valid_refused(api)


# --- Redis paused (slow) ------------------------------------------------------------


@pytest.mark.slow
def test_redis_paused_decisions_come_from_the_database(api, private_redis, world, settings):
    # With push invalidation, held entries are trusted for PUSH_HEARTBEAT first (test_push).
    settings.DRF_LLM_KEYS = {**settings.DRF_LLM_KEYS, "PUSH_INVALIDATION": False}
    world.assert_decisions(api)
    private_redis.pause()
    started = time.monotonic()
    world.assert_decisions(api)
    assert time.monotonic() - started >= SOCKET_TIMEOUT, "the requests should have waited for Redis"
    private_redis.resume()
    world.assert_decisions(api)
    assert warm_queries(api, world) == 0


@pytest.mark.slow
def test_revoke_while_redis_is_paused_is_retried_until_it_lands(api, private_redis, world):
    # Redis keeps the old entries through a pause: the new generation must still reach it,
    # here by the retry timer alone (no request of this process flushes it).
    world.assert_decisions(api)
    generation = generation_name("protected-bot")
    before = private_redis.client().keys(f"*{generation}")
    assert before, "the client's generation should be in Redis"
    stored = private_redis.client().get(before[0])
    private_redis.pause()
    world.revoke_valid()
    assert generation in decisions.pending_invalidations()
    private_redis.resume()
    wait_for_pending_invalidations()
    assert private_redis.client().get(before[0]) != stored
    world.assert_valid_refused(api)


@pytest.mark.slow
def test_revoke_while_redis_is_paused_is_refused_during_the_pause(api, private_redis, world):
    world.assert_decisions(api)
    private_redis.pause()
    world.revoke_valid()
    world.assert_valid_refused(api)


# --- Redis flushed ------------------------------------------------------------------


@pytest.mark.slow
def test_redis_flushed_mid_run_changes_no_decision(api, private_redis, world):
    world.assert_decisions(api)
    private_redis.flush()
    world.assert_decisions(api)
    assert warm_queries(api, world) == 0
    world.revoke_valid()
    private_redis.flush()
    world.assert_valid_refused(api)


@pytest.mark.slow
def test_redis_flushed_between_a_revoke_and_the_next_request(api, private_redis, world):
    world.assert_decisions(api)
    world.revoke_valid()
    private_redis.flush()
    world.assert_valid_refused(api)
    world.assert_valid_refused(api)


# --- a backend that raises ------------------------------------------------------------


def test_raising_cache_decisions_come_from_the_database(api, world, broken_cache, caplog):
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        world.assert_decisions(api)
    assert "cache read failed" in caplog.text


def test_raising_cache_revoke_takes_effect_and_is_kept_for_retry(api, world, broken_cache):
    world.assert_decisions(api)
    world.revoke_valid()
    world.assert_valid_refused(api)
    assert generation_name("protected-bot") in decisions.pending_invalidations()


def test_raising_cache_never_opens_a_protected_client_whose_keys_all_go(api, world, broken_cache):
    APIKey.objects.filter(client_links__llm_client=world.protected).update(is_active=False)
    # Every key revoked: the client is public now, by the design; the flagged one is not.
    assert api.get(URL.format("protected-bot")).json() == {"user": None, "key": None}
    assert api.get(URL.format("flagged-bot")).status_code == 401


def test_raising_cache_owner_deactivated_is_refused(api, world, broken_cache):
    get_user_model()._default_manager.filter(pk=world.valid.user_id).update(is_active=False)
    world.assert_valid_refused(api)


# --- the same, with several processes -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["stop", "pause", "flush"])
def test_server_processes_keep_the_invariants_through_redis_faults(redis_server, tmp_path, fault):
    if redis_server.process is None:
        redis_server.start()
    redis_server.resume()
    redis_server.flush()
    baker.make(get_user_model(), username="owner", is_active=True)
    clients = ["bot-a", "bot-b"]
    baker.make_recipe("tests.llm_client", slug="bot-a")
    baker.make_recipe("tests.protected_client", slug="bot-b")
    env = harness.child_environment(
        cache_dir=str(tmp_path / "cache"), redis_url=redis_server.url, DRF_LLM_KEYS_TEST_REDIS_TIMEOUT="0.25"
    )
    faults = harness.Faults(redis_server, fault, every=2, length=0.7, offset=0.5, grace_after=1.0)
    verdict = harness.run(env, clients, "owner", duration=4, threads=4, rate=120, faults=faults)
    print(verdict.summary(), f"{faults.count} faults")
    assert faults.count >= 2
    assert verdict.accepted_after_retirement == [], verdict.summary()
    assert verdict.accepted_wrong_key == [], verdict.summary()
    assert verdict.valid_refused == [], verdict.summary()
    assert verdict.server_errors == [], verdict.server_log[-3000:]
    assert verdict.after_retirement >= 20
    if fault != "flush":
        assert "cache read failed" in verdict.server_log
