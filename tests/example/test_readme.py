"""example_project/README.md's walkthrough, run as written against the running example:
create a user, a client and a key; call it with each client package; revoke the key with
``--keep-protected``; the same key then gets a 401."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent.parent
SECTION = (
    (ROOT / "example_project" / "README.md").read_text().split("## Running the server and calling it\n")[1]
)
SECTION = SECTION.split("\n## ", 1)[0]
BASH = re.findall(r"```bash\n(.*?)```", SECTION, re.DOTALL)
PYTHON = re.findall(r"```python\n(.*?)```", SECTION, re.DOTALL)
README_URL = "http://127.0.0.1:8000"


def shell(script: str, env: dict[str, str], base_url: str) -> subprocess.CompletedProcess[str]:
    """A README block in bash, in the repository, with this venv's Python and the test server.
    ``createsuperuser`` runs without its password prompt: no terminal here."""
    script = script.replace(".venv/bin/python", sys.executable).replace(README_URL, base_url)
    script = script.replace("createsuperuser", "createsuperuser --noinput")
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env={**os.environ, **env, "DJANGO_SUPERUSER_PASSWORD": "a-local-password-1"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def run_python(block: str, base_url: str, key: str, monkeypatch: Any, capsys: Any) -> str:
    monkeypatch.setenv("KEY", key)
    exec(block.replace(README_URL, base_url), {})
    return str(capsys.readouterr().out)


def test_the_walkthrough_does_what_it_says(example_server, example_env, monkeypatch, capsys):
    server_block, setup_block, revoke_block = BASH[:3]
    assert "runserver" in server_block  # the test's server stands in for it

    setup = shell(setup_block + 'echo "KEY=$KEY"\n', example_env, example_server)
    assert setup.returncode == 0, setup.stderr
    key = setup.stdout.rsplit("KEY=", 1)[1].strip()
    assert key.startswith("llmk_")

    openai_out, anthropic_out, langchain_out = (
        run_python(block, example_server, key, monkeypatch, capsys) for block in PYTHON
    )
    assert openai_out == "['echo']\necho: Hello\necho: Hi"
    assert anthropic_out == langchain_out == "echo: Hello\n"

    revoke = shell(revoke_block.replace("curl -i", "curl -s -i"), {**example_env, "KEY": key}, example_server)
    assert revoke.returncode == 0, revoke.stderr
    assert "refused from now on" in revoke.stdout and "my-bot" in revoke.stdout
    assert "HTTP/1.1 401" in revoke.stdout and "API key has been revoked." in revoke.stdout

    for block in PYTHON:
        with pytest.raises((openai.AuthenticationError, anthropic.AuthenticationError)):
            run_python(block, example_server, key, monkeypatch, capsys)
