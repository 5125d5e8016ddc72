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


def test_the_removed_last_used_resolution_is_an_unknown_setting():
    with override_settings(DRF_LLM_KEYS={"LAST_USED_RESOLUTION": 60}):
        messages = checks.check_settings()
    assert ids(messages) == ["drf_llm_keys.E002"]
    assert "'LAST_USED_RESOLUTION'" in messages[0].msg


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CACHE_TIMEOUT", 0),
        ("CACHE_TIMEOUT", "300s"),
        ("CACHE_TIMEOUT", None),
        ("LOCAL_ENTRIES", -1),
        ("PUSH_HEARTBEAT", 0),
        ("INVALIDATION_REPLICAS", -1),
        ("PUBLISH_TIMEOUT", -0.5),
        ("USAGE_FLUSH_INTERVAL", 0),
        ("USAGE_MAX_PENDING", 0),
        ("USAGE_MAX_PENDING", "many"),
    ],
)
def test_a_numeric_setting_out_of_its_range_is_an_error(name, value):
    with override_settings(DRF_LLM_KEYS={name: value}):
        messages = checks.check_settings()
    assert ids(messages) == ["drf_llm_keys.E005"]
    assert name in messages[0].msg and repr(value) in messages[0].msg


@pytest.mark.parametrize(
    "values",
    [
        {"CACHE_TIMEOUT": 1, "LOCAL_ENTRIES": 0, "PUSH_HEARTBEAT": 0.05, "INVALIDATION_REPLICAS": 0},
        {"PUBLISH_TIMEOUT": 0, "USAGE_FLUSH_INTERVAL": 0.05, "USAGE_MAX_PENDING": 1, "CACHE_TIMEOUT": "60"},
    ],
)
def test_numeric_settings_at_their_bounds_pass(values):
    with override_settings(DRF_LLM_KEYS=values):
        assert ids(checks.check_settings()) == []


@pytest.mark.parametrize(
    "values",
    [
        {"KEY_PREFIX": "acme.key_"},
        {"KEY_PREFIX": ""},
        {"KEY_PREFIX": "x" * 29},
        {"AUTH_KEYWORDS": "Bearer"},  # a string: its letters would be the keywords
        {"AUTH_KEYWORDS": []},
        {"AUTH_KEYWORDS": ["Api Key"]},
    ],
)
def test_a_key_format_setting_no_request_could_match_is_an_error(values):
    with override_settings(DRF_LLM_KEYS=values):
        messages = checks.check_settings()
    assert ids(messages) == ["drf_llm_keys.E008"]
    assert next(iter(values)) in messages[0].msg


def test_key_format_settings_of_other_shapes_pass():
    with override_settings(DRF_LLM_KEYS={"KEY_PREFIX": "sk-acme_", "AUTH_KEYWORDS": ("Bearer",)}):
        assert ids(checks.check_settings()) == []


@pytest.mark.parametrize("field", ["name", "no_such_field"])
def test_lookup_field_must_be_unique(field):
    with override_settings(DRF_LLM_KEYS={"CLIENT_LOOKUP_FIELD": field}):
        assert ids(checks.check_settings()) == ["drf_llm_keys.E003"]


@pytest.mark.parametrize("field", ["pk", "id", "slug"])
def test_a_unique_lookup_field_or_pk_passes(field):
    # "pk" is a lookup the decision supports (tests/test_authentication.py): not an error.
    with override_settings(DRF_LLM_KEYS={"CLIENT_LOOKUP_FIELD": field}):
        assert ids(checks.check_settings()) == []


@pytest.mark.parametrize(
    ("classes", "expected"),
    [([OURS, SESSION], []), ([SESSION, OURS], ["drf_llm_keys.W003"]), ([SESSION], [])],
)
def test_our_class_must_come_first(classes, expected):
    with override_settings(REST_FRAMEWORK={"DEFAULT_AUTHENTICATION_CLASSES": classes}):
        assert ids(checks.check_authentication_order()) == expected


def test_the_test_project_passes_every_check():
    call_command("check", fail_level="WARNING")


@pytest.mark.parametrize(
    "limits",
    [
        {"MAX_CONCURRENT": 0},
        {"MAX_CONCURRENT": "4"},
        {"MAX_CONCURRENT": True},
        {"MAX_CONCURRENT_RATES": {"bot": -1}},
    ],
)
def test_an_in_flight_cap_that_is_not_a_positive_integer_is_an_error(limits):
    with override_settings(DRF_LLM_KEYS=limits):
        assert ids(checks.check_limits()) == ["drf_llm_keys.E007"]


def test_an_in_flight_cap_without_the_middleware_is_a_warning(settings):
    settings.DRF_LLM_KEYS = {"MAX_CONCURRENT_RATES": {"bot": 4}}
    assert ids(checks.check_limits()) == []  # the test project lists the middleware
    settings.MIDDLEWARE = [name for name in settings.MIDDLEWARE if name != checks.LIMITS_MIDDLEWARE]
    assert ids(checks.check_limits()) == ["drf_llm_keys.W006"]


@pytest.mark.parametrize(
    ("engine", "expected"),
    [
        ("django.contrib.sessions.backends.db", []),
        ("django.contrib.sessions.backends.file", []),
        ("django.contrib.sessions.backends.cache", ["drf_llm_keys.W007"]),
        ("django.contrib.sessions.backends.cached_db", ["drf_llm_keys.W007"]),
        ("django.contrib.sessions.backends.signed_cookies", ["drf_llm_keys.W007"]),
    ],
)
def test_a_session_engine_that_would_keep_a_new_key_outside_the_database_is_a_warning(
    settings, engine, expected
):
    settings.SESSION_ENGINE = engine
    assert ids(checks.check_session_engine()) == expected
