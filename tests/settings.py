"""Test settings: SQLite and the local-memory cache by default; environment variables switch
to real servers (see docs/development.md).

DRF_LLM_KEYS_TEST_DATABASE_URL  postgres://USER@HOST:PORT/NAME   (PostgreSQL)
                                mysql://USER@HOST:PORT/NAME      (MariaDB or MySQL, mysqlclient)
DRF_LLM_KEYS_TEST_REDIS_URL     redis://HOST:PORT/DB               (django-redis)
DRF_LLM_KEYS_TEST_CACHE         the default cache as JSON (set by tests for their worker processes)
"""

import json
import os
import tempfile
from urllib.parse import urlsplit

SECRET_KEY = "drf-llm-keys-tests-only"
USE_TZ = True
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The admin's scripts and styles, served by the live server of tests/test_admin_browser.py.
STATIC_URL = "/static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rest_framework",
    "drf_spectacular",  # the schema test (tests/test_schema.py)
    "drf_llm_keys",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "drf_llm_keys.middleware.LimitsMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

database_url = os.environ.get("DRF_LLM_KEYS_TEST_DATABASE_URL")
if database_url:
    url = urlsplit(database_url)
    engines = {"postgres": "postgresql", "postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
    if url.scheme not in engines:
        raise RuntimeError(f"Unsupported DRF_LLM_KEYS_TEST_DATABASE_URL scheme {url.scheme!r}")
    DATABASES = {
        "default": {
            "ENGINE": f"django.db.backends.{engines[url.scheme]}",
            "NAME": url.path.lstrip("/") or "test",
            "USER": url.username or "",
            "PASSWORD": url.password or "",
            "HOST": url.hostname or "",
            "PORT": str(url.port or ""),
        }
    }
    if engines[url.scheme] == "mysql":  # MariaDB through mysqlclient, the driver Django documents
        DATABASES["default"]["OPTIONS"] = {"charset": "utf8mb4"}
        DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
else:
    # A file, not :memory:, so that a second process can open the same test database.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": "drf_llm_keys_tests.sqlite3",
            "TEST": {"NAME": os.path.join(tempfile.gettempdir(), f"drf_llm_keys_test_{os.getpid()}.sqlite3")},
        }
    }


def own_test_database(suffix: str) -> None:
    """For a settings variant whose suite runs in a process of its own (tests/swapped/,
    tests/custom_user/): a test database of its own, beside the one of the run that starts it."""
    database = DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        name = f"drf_llm_keys_test_{suffix}_{os.getpid()}.sqlite3"
        database["TEST"] = {"NAME": os.path.join(os.path.dirname(database["TEST"]["NAME"]), name)}
    else:
        database["TEST"] = {**database.get("TEST", {}), "NAME": f"test_{database['NAME']}_{suffix}"}


# A worker process started by a test opens the test database its parent made.
if os.environ.get("DRF_LLM_KEYS_TEST_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["DRF_LLM_KEYS_TEST_DB_NAME"]

redis_url = os.environ.get("DRF_LLM_KEYS_TEST_REDIS_URL")
cache_dir = os.environ.get("DRF_LLM_KEYS_TEST_CACHE_DIR")
if os.environ.get("DRF_LLM_KEYS_TEST_CACHE"):
    # A worker process started by a test: its parent's default cache, as JSON.
    CACHES = {"default": json.loads(os.environ["DRF_LLM_KEYS_TEST_CACHE"])}
elif redis_url:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": "drf-llm-keys-tests",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
        }
    }
elif cache_dir:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": cache_dir}
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

if os.environ.get("DRF_LLM_KEYS_TEST_SETTINGS"):
    # A worker process started by a test: the library's settings it was given, as JSON.
    DRF_LLM_KEYS = json.loads(os.environ["DRF_LLM_KEYS_TEST_SETTINGS"])

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "drf_llm_keys.authentication.LLMClientAPIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# Django 6.1 replaces EMAIL_BACKEND and the other EMAIL_* settings by MAILERS, and warns when
# it sends mail (the error reports in tests/test_secrets.py) without it. Older versions
# ignore it; on every version the test runner swaps in the local-memory backend.
MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}

# The local-memory cache is the point of the default run; the warning is for projects.
SILENCED_SYSTEM_CHECKS = ["drf_llm_keys.W001"]
