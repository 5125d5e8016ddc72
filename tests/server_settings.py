"""Settings of the server and mutator processes that multi-process tests start.

The test settings, plus what a child process needs to share its parent's state: the test
database (``DRF_LLM_KEYS_TEST_DB_NAME``), the cache (``DRF_LLM_KEYS_TEST_REDIS_URL`` or
``DRF_LLM_KEYS_TEST_CACHE_DIR``), the parent's cache key prefix and, for fault tests, short
Redis timeouts.
"""

import os

from tests.settings import *  # noqa: F403

ROOT_URLCONF = "tests.server_urls"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
MIDDLEWARE = ["tests.server_urls.served_by", *MIDDLEWARE]  # noqa: F405

if "DRF_LLM_KEYS_TEST_CACHE_KEY_PREFIX" in os.environ:
    CACHES["default"]["KEY_PREFIX"] = os.environ["DRF_LLM_KEYS_TEST_CACHE_KEY_PREFIX"]  # noqa: F405
if "DRF_LLM_KEYS_TEST_REDIS_TIMEOUT" in os.environ and "OPTIONS" in CACHES["default"]:  # noqa: F405
    timeout = float(os.environ["DRF_LLM_KEYS_TEST_REDIS_TIMEOUT"])
    CACHES["default"]["OPTIONS"].update(SOCKET_CONNECT_TIMEOUT=timeout, SOCKET_TIMEOUT=timeout)  # noqa: F405

# The library's settings a test gives its servers, as JSON (tests/test_asgi_servers.py).
if "DRF_LLM_KEYS_TEST_SETTINGS" in os.environ:
    import json

    DRF_LLM_KEYS = json.loads(os.environ["DRF_LLM_KEYS_TEST_SETTINGS"])

# Warnings (cache fallbacks, failed invalidations) go to stderr, where the harness keeps them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"drf_llm_keys": {"handlers": ["stderr"], "level": "WARNING", "propagate": False}},
}

# Several processes write to one SQLite file here. A deferred transaction that reads, then
# writes (a bulk revoke does) fails at once with "database is locked" when another
# process writes meanwhile; an IMMEDIATE one waits its turn (Django 5.1+).
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # noqa: F405
    import django

    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20  # noqa: F405
    if django.VERSION >= (5, 1):
        DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"  # noqa: F405

# Servers keep their connections, as deployments do, in every multi-process test and soak.
if DATABASES["default"]["ENGINE"].endswith("postgresql"):  # noqa: F405
    DATABASES["default"]["CONN_MAX_AGE"] = 60  # noqa: F405
