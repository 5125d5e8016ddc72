"""Database and cache settings from URLs, shared by ``settings`` and the end-to-end tests
(which must configure the test process exactly like the server they start)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# Entries a file-based cache keeps before culling; the default (300) is small for key entries.
FILE_CACHE_MAX_ENTRIES = 10_000


def database_from_url(url: str) -> dict[str, Any]:
    """``postgres://USER:PASSWORD@HOST:PORT/NAME``, ``mysql://...`` (MariaDB, MySQL), or
    ``sqlite:///relative/path``, ``sqlite:////absolute/path``."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        name = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not name:
            raise ValueError(f"DATABASE_URL {url!r} names no SQLite file")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": name}
    engines = {"postgres": "postgresql", "postgresql": "postgresql", "mysql": "mysql"}
    if parts.scheme in engines:
        return {
            "ENGINE": f"django.db.backends.{engines[parts.scheme]}",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    raise ValueError(f"DATABASE_URL {url!r}: use postgres://..., mysql://... or sqlite:///...")


def cache_settings(redis_url: str | None, cache_dir: Path) -> dict[str, Any]:
    """Redis when a URL is given, else a file-based cache: both are shared by every process
    on the host, which is what lets a key revoked in one process be refused by the others."""
    if redis_url:
        return {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": "drf-llm-keys-example",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
        }
    return {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(cache_dir),
        "OPTIONS": {"MAX_ENTRIES": FILE_CACHE_MAX_ENTRIES},
    }
