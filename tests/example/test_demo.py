"""The README's walkthrough: ``migrate`` then ``demo`` on a fresh database, as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from example_project.llm.server import MANAGE_PY, free_port, running_server

pytestmark = pytest.mark.slow

# Long enough for two requests on a busy machine: the old key must still work for step 8.
GRACE = "2"


def defaults_env(var_dir: Path) -> dict[str, str]:
    """The example's defaults in ``var_dir``, whatever this machine's environment says."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "EXAMPLE_VAR_DIR": str(var_dir),
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "LLM_UPSTREAM_URL": "",
        "VIRTUAL_ENV": "",
    }


@pytest.fixture(scope="module")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    var_dir = tmp_path_factory.mktemp("migrated")
    manage(defaults_env(var_dir), "migrate", "--verbosity", "0")
    return var_dir / "db.sqlite3"


@pytest.fixture
def fresh_env(tmp_path: Path, migrated_database: Path) -> dict[str, str]:
    """A freshly migrated SQLite file (a copy: migrating takes a while) and an empty file cache."""
    (tmp_path / "var").mkdir()
    shutil.copy(migrated_database, tmp_path / "var" / "db.sqlite3")
    return defaults_env(tmp_path / "var")


def manage(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MANAGE_PY), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def test_demo_walks_through_every_step_on_a_fresh_database(fresh_env):
    output = manage(fresh_env, "demo", "--grace", GRACE).stdout
    assert "anonymous request: 200" in output
    assert "no key: 401" in output
    assert "demo-other's key: 401" in output
    assert "its key, model echo: 200" in output
    assert "its key, model gpt-4o: 403  error: \"API key may not use model 'gpt-4o'.\"" in output
    assert "within the grace period: 200" in output
    assert "after the grace period: 401" in output
    assert "revoked key llmk_" in output and '401  error: "API key has been revoked."' in output
    assert "All 10 steps behaved as expected." in output
    # The venv's python (not activated here), which a plain "python" may not be.
    command = f"{os.path.relpath(sys.executable)} example_project/manage.py"
    assert f"create your login with  {command} createsuperuser" in output
    assert f"{command} runserver  and open http://127.0.0.1:8000/admin/" in output
    # The server stopped as Ctrl+C stops it, so it wrote the usage it counted at exit.
    report = json.loads(manage(fresh_env, "llm_keys", "usage", "--json").stdout)
    served = sorted((row["client"], row["name"], row["requests"]) for row in report["usage"])
    # The other key: echo, then the refused model (403 comes after authentication). The
    # first key: before its rotation and in the grace period; its replacement: once.
    assert served == [
        ("demo-other", "other bot's key", 2),
        ("demo-protected", "demo key", 1),
        ("demo-protected", "demo key", 2),
    ]
    listed = json.loads(manage(fresh_env, "llm_keys", "list", "--all", "--json").stdout)
    assert all(record["last_used_at"] for record in listed) and len(listed) == 3
    # The other key's budget, spent by its echo answer at the echo model's demo price.
    (budgeted,) = [record for record in listed if record["budget"]]
    assert (budgeted["name"], budgeted["budget"]) == ("other bot's key", {"limit": "0.05", "period": "day"})
    assert f"llm_keys budget {budgeted['prefix']}" in output
    budget = json.loads(manage(fresh_env, "llm_keys", "budget", budgeted["prefix"], "--json").stdout)[
        "budget"
    ]
    assert Decimal(budget["spent"]) > 0
    assert Decimal(budget["spent"]) + Decimal(budget["remaining"]) == Decimal("0.05")


def test_demo_names_the_superuser_to_log_in_to_the_admin_with(fresh_env):
    env = {**fresh_env, "DJANGO_SUPERUSER_PASSWORD": "a-local-demo-password"}
    manage(env, "createsuperuser", "--noinput", "--username", "root", "--email", "root@example.com")
    output = manage(fresh_env, "demo", "--grace", GRACE).stdout
    assert "Log in as root (a superuser of this database)." in output
    assert "createsuperuser" not in output
    assert "a-local-demo-password" not in output
    assert "All 10 steps behaved as expected." in output


def test_demo_runs_again_on_what_it_left(fresh_env):
    manage(fresh_env, "demo", "--grace", GRACE)
    assert "All 10 steps behaved as expected." in manage(fresh_env, "demo", "--grace", GRACE).stdout


def test_demo_drives_a_server_already_running(fresh_env):
    with running_server(fresh_env) as url:
        output = manage(fresh_env, "demo", "--grace", GRACE, "--url", url).stdout
    assert f"Server: {url}" in output
    assert f"Then open {url}/admin/" in output
    assert "All 10 steps behaved as expected." in output


def test_demo_fails_when_the_server_does_not_share_the_cache(fresh_env, tmp_path):
    # The same database, another cache: the server never learns of the rotation.
    database = {"DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'db.sqlite3'}"}
    server_env = {**fresh_env, **database, "EXAMPLE_VAR_DIR": str(tmp_path / "elsewhere")}
    with running_server(server_env) as url:
        finished = manage({**fresh_env, **database}, "demo", "--grace", "0.5", "--url", url, check=False)
    assert finished.returncode == 1
    assert "after the grace period: 200, expected 401" in finished.stderr


def test_demo_refuses_a_grace_period_that_is_not_positive(fresh_env):
    finished = manage(fresh_env, "demo", "--grace", "0", check=False)
    assert finished.returncode == 1
    assert "--grace must be a positive number of seconds." in finished.stderr


def test_demo_answers_with_the_echo_model_even_where_an_upstream_is_configured(fresh_env):
    closed = f"http://127.0.0.1:{free_port()}/v1"  # forwarding there would fail every step
    output = manage({**fresh_env, "LLM_UPSTREAM_URL": closed}, "demo", "--grace", GRACE).stdout
    assert "All 10 steps behaved as expected." in output
