"""example_project/README.md's walkthrough, run as written against the running example:
create a user, a client and a key; call it with each client package; revoke the key with
``--keep-protected``; the same key then gets a 401. And the production server it names,
gunicorn, serving the example with several workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from drf_llm_keys import keys
from tests.support import free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent.parent
SECTION = (
    (ROOT / "example_project" / "README.md").read_text().split("## Running the server and calling it\n")[1]
)
SECTION = SECTION.split("\n## ", 1)[0]
BASH = re.findall(r"```bash\n(.*?)```", SECTION, re.DOTALL)
PYTHON = re.findall(r"```python\n(.*?)```", SECTION, re.DOTALL)
README_URL = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the README's commands run: a clone's root whose virtual environment lives
    elsewhere (the main README's install puts it beside the clone), so that a command that
    assumes ``.venv/`` in the clone fails here as it does for that user."""
    root = tmp_path_factory.mktemp("clone") / "drf-llm-keys"
    root.mkdir()
    (root / "example_project").symlink_to(ROOT / "example_project")
    return root


def user_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` in a shell with this test run's virtual environment active, as ``activate``
    leaves it: ``python``, ``gunicorn`` and the rest found on ``PATH``."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, **env, "VIRTUAL_ENV": sys.prefix, "PATH": path}


def shell(script: str, env: dict[str, str], base_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A README block in bash, in the clone's root with the virtual environment active, against
    the test server. ``createsuperuser`` runs without its password prompt: no terminal here."""
    script = script.replace(README_URL, base_url)
    script = script.replace("createsuperuser", "createsuperuser --noinput")
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=user_env({**env, "DJANGO_SUPERUSER_PASSWORD": "a-local-password-1"}),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def run_python(block: str, base_url: str, key: str, monkeypatch: Any, capsys: Any) -> str:
    monkeypatch.setenv("KEY", key)
    exec(block.replace(README_URL, base_url), {})
    return str(capsys.readouterr().out)


def test_the_walkthrough_does_what_it_says(example_server, example_env, clone, monkeypatch, capsys):
    server_block, setup_block, revoke_block = BASH[:3]
    assert "runserver" in server_block  # the test's server stands in for it

    setup = shell(setup_block + 'echo "KEY=$KEY"\n', example_env, example_server, clone)
    assert setup.returncode == 0, setup.stderr
    key = setup.stdout.rsplit("KEY=", 1)[1].strip()
    assert key.startswith("llmk_")

    openai_out, anthropic_out, langchain_out = (
        run_python(block, example_server, key, monkeypatch, capsys) for block in PYTHON
    )
    assert openai_out == "['echo']\necho: Hello\necho: Hi"
    assert anthropic_out == langchain_out == "echo: Hello\n"

    revoke = shell(
        revoke_block.replace("curl -i", "curl -s -i"), {**example_env, "KEY": key}, example_server, clone
    )
    assert revoke.returncode == 0, revoke.stderr
    assert "refused from now on" in revoke.stdout and "my-bot" in revoke.stdout
    assert "HTTP/1.1 401" in revoke.stdout and "API key has been revoked." in revoke.stdout

    for block in PYTHON:
        with pytest.raises((openai.AuthenticationError, anthropic.AuthenticationError)):
            run_python(block, example_server, key, monkeypatch, capsys)


@pytest.mark.slow
def test_gunicorn_serves_the_example_as_the_readme_says(example_env, clone, make_key, protected_client):
    """The README's gunicorn command, on a free port: both workers serve a key, and refuse it
    once it is revoked here."""
    (command,) = re.findall(r"`(gunicorn [^`]+)`", SECTION)
    port = free_port()
    command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    assert f"--bind 127.0.0.1:{port}" in command
    api_key, plaintext = make_key(protected_client)
    make_key(protected_client)  # another active key: the client stays protected
    server = subprocess.Popen(
        [*command.split(), "--access-logfile", "-"],
        cwd=clone,
        env=user_env(example_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/v1/clients/protected-bot/models"
    try:

        def serves() -> bool:
            try:
                return httpx.get(url, timeout=5).status_code == 401
            except httpx.TransportError:
                assert server.poll() is None, "gunicorn exited"
                return False

        wait_until(serves, 60, "gunicorn did not answer")
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1/clients/protected-bot", api_key=plaintext, max_retries=0
        )
        # gunicorn's sync workers close each connection: either worker may take the next one.
        for _ in range(6):
            assert [model.id for model in client.models.list()] == ["echo"]
        keys.revoke_key(api_key)
        for _ in range(6):
            with pytest.raises(openai.AuthenticationError) as refused:
                client.models.list()
            assert refused.value.body["message"] == "API key has been revoked."  # type: ignore[index]
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert output.count("Booting worker") == 2, output
