"""Fixtures that run the example project in a real server (``manage.py runserver`` in its own
process) on the test database, with a cache this process shares with it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import anthropic
import openai
import pytest
from django.db import connection
from django.test import override_settings

from example_project.config import cache_settings
from example_project.llm.server import running_server

from .standin import StandIn, running_standin


def database_url() -> str:
    """The test database, as the example's DATABASE_URL."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(settings['NAME']).resolve()}"
    if connection.vendor in ("postgresql", "mysql"):
        scheme = "postgres" if connection.vendor == "postgresql" else "mysql"
        credentials = quote(settings["USER"] or "", safe="")
        if settings["PASSWORD"]:
            credentials += ":" + quote(settings["PASSWORD"], safe="")
        port = settings["PORT"] or (5432 if scheme == "postgres" else 3306)
        return f"{scheme}://{credentials}@{settings['HOST'] or '127.0.0.1'}:{port}/{settings['NAME']}"
    raise RuntimeError(f"The example does not run on {connection.vendor}")


@pytest.fixture(scope="module")
def example_env(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The server's environment, and this process switched to the same cache: Redis in the
    Redis run, else the example's default, a file-based cache in a temporary directory."""
    var_dir = tmp_path_factory.mktemp("example-var")
    redis_url = os.environ.get("DRF_LLM_KEYS_TEST_REDIS_URL", "")
    env = {
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": redis_url,
        "EXAMPLE_VAR_DIR": str(var_dir),
        "LLM_UPSTREAM_URL": "",
    }
    with override_settings(CACHES={"default": cache_settings(redis_url, var_dir / "cache")}):
        yield env


@pytest.fixture(scope="module")
def example_server(example_env: dict[str, str]) -> Iterator[str]:
    """The example's base URL, answering with the local echo model."""
    with running_server(example_env) as url:
        yield url


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    with running_standin() as server:
        yield server


@pytest.fixture(scope="module")
def forwarding_server(example_env: dict[str, str], standin: StandIn) -> Iterator[str]:
    """The example's base URL, forwarding to the stand-in upstream."""
    env = {**example_env, "LLM_UPSTREAM_URL": standin.url, "LLM_UPSTREAM_API_KEY": "upstream-secret"}
    with running_server(env) as url:
        yield url


def openai_client(base_url: str, slug: str, key: str = "no-key") -> openai.OpenAI:
    """The official client, pointed at one LLM client; no retries, so a refusal shows at once."""
    return openai.OpenAI(base_url=f"{base_url}/v1/clients/{slug}", api_key=key, max_retries=0, timeout=30)


def anthropic_client(base_url: str, slug: str, key: str = "no-key") -> anthropic.Anthropic:
    """The official client on the Messages endpoint; no retries, so a refusal shows at once."""
    return anthropic.Anthropic(
        base_url=f"{base_url}/anthropic/clients/{slug}", api_key=key, max_retries=0, timeout=30
    )
