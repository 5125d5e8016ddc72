"""Settings of the example project. Nothing is required from the environment:

DATABASE_URL          postgres://USER@HOST:PORT/NAME or sqlite:///PATH  (default: SQLite in var/)
REDIS_URL             redis://HOST:PORT/DB                  (default: a file-based cache in var/)
EXAMPLE_VAR_DIR       where the default SQLite file and cache live (default: example_project/var)
LLM_UPSTREAM_URL      an OpenAI-compatible base URL, e.g. https://api.openai.com/v1; unset, the
                      local echo model answers
LLM_UPSTREAM_API_KEY  the key sent upstream (never the client's key)
LLM_UPSTREAM_TIMEOUT  seconds (default 60)
LLM_TOKEN_RATE        each key's token budget, e.g. 100000/minute (default: none)
LLM_MAX_CONCURRENT    each key's requests in flight at once, across processes (default: none)
LLM_USAGE_FLUSH_INTERVAL  seconds between writes of the usage counts (default 10)
DJANGO_SECRET_KEY, DJANGO_DEBUG=1, DJANGO_ALLOWED_HOSTS (comma-separated)
"""

import importlib.util
import os
from pathlib import Path

from example_project.config import cache_settings, database_from_url

BASE_DIR = Path(__file__).resolve().parent
VAR_DIR = Path(os.environ.get("EXAMPLE_VAR_DIR") or BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)

# Only for trying the example locally: set DJANGO_SECRET_KEY anywhere else.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-insecure-secret-key-for-local-use-only")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"] + [
    host for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if host
]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    # The admin at /admin/: clients and keys (a new key's plaintext is shown once there).
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_llm_keys",
    "example_project.llm",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # x-ratelimit-* on a limited key's responses, retry-after-ms on a rate's 429.
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
STATIC_URL = "static/"

DATABASES = {
    "default": database_from_url(os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
}
CACHES = {"default": cache_settings(os.environ.get("REDIS_URL"), VAR_DIR / "cache")}

REST_FRAMEWORK = {
    # Ours first: only the first class's WWW-Authenticate makes a refusal a 401 (docs/design.md).
    # Sessions come after it for views that are no LLM client's (none here yet).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "drf_llm_keys.authentication.LLMClientAPIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # The key check is authentication: a public client's endpoints are open to anyone.
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
}

# The OpenAPI document at /api/schema/ and Swagger UI at /api/docs/, where drf-spectacular
# and drf-spectacular-sidecar are installed; the sidecar serves Swagger UI's files from
# here, never from a CDN. The example needs no more than the library otherwise.
API_SCHEMA = all(importlib.util.find_spec(name) for name in ("drf_spectacular", "drf_spectacular_sidecar"))
if API_SCHEMA:
    INSTALLED_APPS += ["drf_spectacular", "drf_spectacular_sidecar"]
    REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "drf_spectacular.openapi.AutoSchema"
SPECTACULAR_SETTINGS = {
    "TITLE": "drf-llm-keys example",
    "DESCRIPTION": "OpenAI- and Anthropic-compatible endpoints per LLM client, keyed by drf-llm-keys.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

DRF_LLM_KEYS = {
    "CLIENT_URL_KWARG": "llm_client",
    "CLIENT_LOOKUP_FIELD": "slug",
    "TOKEN_RATE": os.environ.get("LLM_TOKEN_RATE") or None,
    "MAX_CONCURRENT": int(os.environ["LLM_MAX_CONCURRENT"]) if os.environ.get("LLM_MAX_CONCURRENT") else None,
    "USAGE_FLUSH_INTERVAL": float(os.environ.get("LLM_USAGE_FLUSH_INTERVAL") or 10),
    # Per million tokens: llm_keys usage shows the cost of each key's completions. Echo is
    # free to run; a price makes the demo's figures show what a real model's would.
    # Models without a price (an upstream's, until listed here) are reported as unpriced.
    "CURRENCY": "USD",
    "PRICES": {"echo": {"input": "1.00", "output": "2.00"}},
}

LLM_UPSTREAM_URL = os.environ.get("LLM_UPSTREAM_URL", "")
LLM_UPSTREAM_API_KEY = os.environ.get("LLM_UPSTREAM_API_KEY", "")
LLM_UPSTREAM_TIMEOUT = float(os.environ.get("LLM_UPSTREAM_TIMEOUT", "60"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"drf_llm_keys": {"handlers": ["console"], "level": "INFO"}},
}
