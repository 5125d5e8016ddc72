"""Django settings for the benchmarks, driven by environment variables set by ``__main__``.

DRF_LLM_KEYS_BENCH_DATABASE_URL  postgres://USER@HOST:PORT/NAME or sqlite:///ABSOLUTE/PATH
DRF_LLM_KEYS_BENCH_PG_PREPARED   set: PostgreSQL with psycopg's prepared statements (--pg-prepared)
DRF_LLM_KEYS_BENCH_REDIS_URL     redis://HOST:PORT/DB (unset: the local-memory cache)
DRF_LLM_KEYS_BENCH_ASGI          set (by the server step) for the ASGI workers

Both cache backends count their round trips (see ``benchmarks.counting``).
"""

import os
import tempfile
from typing import Any
from urllib.parse import urlsplit

import django

SECRET_KEY = "drf-llm-keys-benchmarks-only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
ROOT_URLCONF = "benchmarks.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
    "rest_framework.authtoken",
    "knox",
    "rest_framework_api_key",
    "drf_llm_keys",
]
# Nothing between the server and the view: the differences are the authentication alone.
MIDDLEWARE: list[str] = []

default_database = "sqlite:///" + os.path.join(tempfile.gettempdir(), "drf-llm-keys-bench.sqlite3")
database_url = urlsplit(os.environ.get("DRF_LLM_KEYS_BENCH_DATABASE_URL", default_database))
DATABASES: dict[str, dict[str, Any]]
if database_url.scheme in ("postgres", "postgresql"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": database_url.path.lstrip("/"),
            "USER": database_url.username or "",
            "PASSWORD": database_url.password or "",
            "HOST": database_url.hostname or "",
            "PORT": str(database_url.port or ""),
            # Persistent connections, as any production deployment: without them every
            # request would pay a PostgreSQL connection and the database peers would lose.
            "CONN_MAX_AGE": None,
        }
    }
    if os.environ.get("DRF_LLM_KEYS_BENCH_ASGI") and django.VERSION >= (5, 1):
        # Under ASGI each request has a connection of its own, so persistent ones are not
        # reused (and pile up): Django advises its connection pool instead.
        DATABASES["default"].update(CONN_MAX_AGE=0, OPTIONS={"pool": True})
    if os.environ.get("DRF_LLM_KEYS_BENCH_PG_PREPARED"):
        # psycopg 3 prepares a statement run 5 times on a connection; Django turns that off
        # unless both options are set (for poolers that cannot keep prepared statements).
        DATABASES["default"].setdefault("OPTIONS", {}).update(server_side_binding=True, prepare_threshold=5)
elif database_url.scheme == "sqlite":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": database_url.path,
            "CONN_MAX_AGE": None,
        }
    }
else:
    raise RuntimeError(f"Unsupported DRF_LLM_KEYS_BENCH_DATABASE_URL scheme {database_url.scheme!r}")

redis_url = os.environ.get("DRF_LLM_KEYS_BENCH_REDIS_URL")
# Every cache key the benchmarks write starts with this: they clean up after themselves
# by this prefix and never flush a Redis database that others may share.
CACHE_KEY_PREFIX = "drf-llm-keys-bench"
if redis_url:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            "OPTIONS": {
                "REDIS_CLIENT_CLASS": "benchmarks.counting.CountingRedis",
                "SOCKET_CONNECT_TIMEOUT": 2,
                "SOCKET_TIMEOUT": 2,
            },
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "benchmarks.counting.CountingLocMemCache",
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            # The default of 300 entries would cull the scale runs' working set.
            "OPTIONS": {"MAX_ENTRIES": 10_000_000},
        }
    }

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    # A warning from the package (a cache error, say) must show: it would void the figures.
    "loggers": {"drf_llm_keys": {"handlers": ["console"], "level": "WARNING"}},
}

# The local-memory run is a deliberate single-process measurement.
SILENCED_SYSTEM_CHECKS = ["drf_llm_keys.W001"]
