from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from model_bakery import baker
from rest_framework.test import APIClient

from drf_llm_keys import decisions, usage
from drf_llm_keys.decisions import backends
from drf_llm_keys.decisions.backends import CacheBackend
from drf_llm_keys.models import APIKey, LLMClient, LLMClientAPIKey
from tests.support.caches import FlakyCache
from tests.support.harness import Worker, worker_env
from tests.support.redis import DJANGO_REDIS, HEARTBEAT, RedisServer, cache_config, running_redis
from tests.support.world import World

MakeKey = Callable[..., tuple[APIKey, str]]

# tests/swapped/ needs a swapped client model, tests/custom_user/ a swapped user model; both
# are fixed at process start: each runs in a process of its own, started by
# tests/test_swapped_model.py.
collect_ignore = ["swapped", "custom_user"]


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    # The Redis run uses a database of its own (see .ci/run): clearing it is safe.
    cache.clear()
    decisions.reset()
    usage.counter.reset()
    backends._fault_logged.clear()  # each test sees its own first fault logged
    yield
    decisions.reset()
    usage.counter.reset()


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FlakyCache]]:
    """The library's cache, failing every call while ``FlakyCache.down`` is set."""
    proxy = FlakyCache()
    monkeypatch.setattr(CacheBackend, "cache", property(lambda backend: proxy))
    yield FlakyCache
    FlakyCache.down = False


@pytest.fixture
def cache_down(flaky: type[FlakyCache], settings: Any) -> type[FlakyCache]:
    """The cache refusing every call, and key operations waiting 0.1 s for it to come back."""
    settings.DRF_LLM_KEYS = {"PUBLISH_TIMEOUT": 0.1}
    flaky.down = True
    return flaky


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def owner(db: None) -> Any:
    return baker.make(get_user_model(), username="owner", is_active=True)


@pytest.fixture
def public_client(db: None) -> LLMClient:
    return baker.make_recipe("tests.llm_client", slug="public-bot")


@pytest.fixture
def protected_client(db: None) -> LLMClient:
    return baker.make_recipe("tests.llm_client", slug="protected-bot")


@pytest.fixture
def make_key(owner: Any) -> MakeKey:
    """Create a key mapped to the given clients; returns ``(api_key, plaintext)``."""

    def make(*clients: LLMClient, user: Any = owner, **fields: Any) -> tuple[APIKey, str]:
        api_key, plaintext = APIKey.objects.create_key(user=user, name="test key", **fields)
        for llm_client in clients:
            LLMClientAPIKey.objects.create(llm_client=llm_client, api_key=api_key)
        return api_key, plaintext

    return make


@pytest.fixture
def key(make_key: MakeKey, protected_client: LLMClient) -> tuple[APIKey, str]:
    return make_key(protected_client)


@pytest.fixture
def world(make_key: MakeKey) -> World:
    return World(make_key)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the module's own, to stop, pause and flush (never the shared one)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """With DRF_LLM_KEYS_TEST_NO_SKIP set (CI sets it), a skipped test fails instead."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("DRF_LLM_KEYS_TEST_NO_SKIP") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but DRF_LLM_KEYS_TEST_NO_SKIP is set: {report.longrepr}"


@pytest.fixture
def pushed(request: pytest.FixtureRequest, redis_server: RedisServer, settings: Any) -> Iterator[RedisServer]:
    """The default cache on the private Redis, push invalidation on (the default).

    django-redis; parametrize it indirectly with ``tests.support.redis.DJANGO`` for Django's own
    Redis backend."""
    redis_server.resume()
    redis_server.flush()
    settings.CACHES = {"default": cache_config(redis_server, backend=getattr(request, "param", DJANGO_REDIS))}
    settings.DRF_LLM_KEYS = {"PUSH_HEARTBEAT": HEARTBEAT}
    yield redis_server
    redis_server.resume()


StartWorker = Callable[[dict[str, Any]], Worker]


@pytest.fixture
def start_worker() -> Iterator[StartWorker]:
    """Start a ``Worker`` whose default cache is ``config``, on this test's database; stopped
    at the end."""
    started: list[Worker] = []

    def start(config: dict[str, Any]) -> Worker:
        started.append(Worker(worker_env(config)))
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def pushed_env(pushed: RedisServer, settings: Any) -> dict[str, str]:
    """The environment of a ``Worker`` on the same Redis (and backend) as ``pushed``; this
    process's cache gets the worker's timeouts too."""
    config = cache_config(pushed, timeout=2, backend=settings.CACHES["default"]["BACKEND"])
    settings.CACHES = {"default": config}
    return worker_env(config)


@pytest.fixture
def pushed_worker(pushed_env: dict[str, str]) -> Iterator[Worker]:
    process = Worker(pushed_env)
    yield process
    process.stop()
