"""System checks: the configuration mistakes that would quietly weaken revocation."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import override_settings

from drf_llm_keys import checks

REDIS = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:6379/0"}
LOCMEM = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
DUMMY = {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}
FILES = {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": "/tmp/x"}
OURS = "drf_llm_keys.authentication.LLMClientAPIKeyAuthentication"
SESSION = "rest_framework.authentication.SessionAuthentication"


def ids(messages) -> list[str]:
    return [message.id for message in messages]


@pytest.mark.parametrize(
    ("config", "expected"),
    [(LOCMEM, ["drf_llm_keys.W001"]), (DUMMY, ["drf_llm_keys.W001"]), (REDIS, []), (FILES, [])],
)
def test_cache_that_processes_cannot_share_is_a_warning(config, expected):
    with override_settings(CACHES={"default": config}):
        assert ids(checks.check_cache()) == expected


def test_unknown_cache_alias_is_an_error():
    with override_settings(DRF_LLM_KEYS={"CACHE_ALIAS": "nope"}):
        assert ids(checks.check_cache()) == ["drf_llm_keys.E001"]


def test_ignore_exceptions_is_a_warning():
    config = {**REDIS, "OPTIONS": {"IGNORE_EXCEPTIONS": True}}
    with override_settings(CACHES={"default": config}):
        assert ids(checks.check_cache()) == ["drf_llm_keys.W002"]


def test_a_sharded_redis_cache_is_a_warning():
    config = {**REDIS, "OPTIONS": {"CLIENT_CLASS": "django_redis.client.ShardClient"}}
    with override_settings(CACHES={"default": config}):
        assert ids(checks.check_cache()) == ["drf_llm_keys.W004"]


SENTINEL = {
    "BACKEND": "django_redis.cache.RedisCache",
    "LOCATION": "redis://mymaster/0",
    "OPTIONS": {"CLIENT_CLASS": "django_redis.client.SentinelClient", "SENTINELS": [("s1", 26379)]},
}
REPLICATED = {**REDIS, "LOCATION": ["redis://primary:6379/0", "redis://replica:6379/0"]}


@pytest.mark.parametrize("config", [SENTINEL, REPLICATED])
def test_replicas_without_invalidation_replicas_is_a_warning(config):
    with override_settings(CACHES={"default": config}):
        assert ids(checks.check_cache()) == ["drf_llm_keys.W005"]
    with override_settings(CACHES={"default": config}, DRF_LLM_KEYS={"INVALIDATION_REPLICAS": 1}):
        assert ids(checks.check_cache()) == []


def test_unknown_setting_is_an_error():
    with override_settings(DRF_LLM_KEYS={"CACHE_TIMOUT": 5}):
        assert ids(checks.check_settings()) == ["drf_llm_keys.E002"]


@pytest.mark.parametrize("field", ["name", "no_such_field"])
def test_lookup_field_must_be_unique(field):
    with override_settings(DRF_LLM_KEYS={"CLIENT_LOOKUP_FIELD": field}):
        assert ids(checks.check_settings()) == ["drf_llm_keys.E003"]


@pytest.mark.parametrize(
    ("classes", "expected"),
    [([OURS, SESSION], []), ([SESSION, OURS], ["drf_llm_keys.W003"]), ([SESSION], [])],
)
def test_our_class_must_come_first(classes, expected):
    with override_settings(REST_FRAMEWORK={"DEFAULT_AUTHENTICATION_CLASSES": classes}):
        assert ids(checks.check_authentication_order()) == expected


def test_the_test_project_passes_every_check():
    call_command("check", fail_level="WARNING")
