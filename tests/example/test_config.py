"""Database and cache settings of the example, from URLs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from example_project.config import cache_settings, database_from_url
from example_project.llm.server import MANAGE_PY


def test_sqlite_url_with_an_absolute_path():
    assert database_from_url("sqlite:////tmp/x/db.sqlite3") == {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": "/tmp/x/db.sqlite3",
    }


def test_sqlite_url_with_a_relative_path():
    assert database_from_url("sqlite:///var/db.sqlite3")["NAME"] == "var/db.sqlite3"


def test_postgres_url():
    assert database_from_url("postgres://me:p%40ss@db.example:6543/llm") == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "llm",
        "USER": "me",
        "PASSWORD": "p@ss",
        "HOST": "db.example",
        "PORT": "6543",
    }


def test_mysql_url_selects_mariadb_or_mysql():
    assert database_from_url("mysql://root@127.0.0.1:3306/llm")["ENGINE"] == "django.db.backends.mysql"


@pytest.mark.parametrize("url", ["oracle://root@localhost/x", "sqlite://", "nonsense"])
def test_other_database_urls_are_refused(url):
    with pytest.raises(ValueError, match="DATABASE_URL"):
        database_from_url(url)


def test_redis_url_selects_django_redis():
    assert (
        cache_settings("redis://127.0.0.1:6379/3", Path("/unused"))["BACKEND"]
        == "django_redis.cache.RedisCache"
    )


def test_without_redis_the_cache_is_files_shared_by_every_process(tmp_path):
    config = cache_settings(None, tmp_path)
    assert config["BACKEND"] == "django.core.cache.backends.filebased.FileBasedCache"
    assert config["LOCATION"] == str(tmp_path)


def test_example_passes_the_system_checks_with_its_default_services(tmp_path):
    # DRF_LLM_KEYS' own checks included: the cache is shared, our class comes first.
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL")}
    env |= {"DJANGO_SETTINGS_MODULE": "example_project.settings", "EXAMPLE_VAR_DIR": str(tmp_path)}
    finished = subprocess.run(
        [sys.executable, str(MANAGE_PY), "check", "--fail-level", "WARNING"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    assert "no issues" in finished.stdout
