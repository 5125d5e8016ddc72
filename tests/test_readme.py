"""The README's install, quick start and example steps, run as written in a new virtual
environment; and the docs' scopes example, in process."""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from model_bakery import baker
from rest_framework.test import APIRequestFactory

from tests.support import ROOT, bearer, free_port, wait_until

README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)
README_URL = "http://127.0.0.1:8000"
README_REDIS = "redis://127.0.0.1:6379/0"
README_PREFIX = "llmk_3f9a2c1b7d4e"  # the example key prefix the README's answers show
# What a user's shell carries between two blocks: where it is, and the key it exported.
# The status first: set -e lets a failure inside an "a && b" list pass.
SHELL_STATE = '\nstatus=$?\nprintf "\\n%s\\n%s\\n%s\\n" "$status" "$PWD" "${KEY:-}"\n'


def steps(heading: str) -> list[tuple[str, str, str]]:
    """(the prose before it, language, code) for each fenced block of the README section."""
    text = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    found, start = [], 0
    for block in FENCE.finditer(text):
        found.append((text[start : block.start()], block.group(1), block.group(2)))
        start = block.end()
    assert found, f"no code under {heading!r}"
    return found


def readme_env(**extra: str) -> dict[str, str]:
    """A user's environment: nothing of this test run's Django, venv or example settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV", "PYTHONPATH", "EXAMPLE_VAR_DIR"}
        and not name.startswith(("DATABASE_URL", "REDIS_URL", "LLM_UPSTREAM_URL"))
    }
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


class Shell:
    """One terminal in the directory that holds the clone, with the README's venv active
    once the install block ran: each block runs in the directory and with the ``KEY`` the
    block before it left."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.cwd = home
        self.env = readme_env(DJANGO_SUPERUSER_PASSWORD="a-local-password-1")

    def run(self, code: str, timeout: float = 300) -> str:
        activate = self.home / ".venv" / "bin" / "activate"
        prologue = f". {activate}\n" if activate.exists() else ""
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", prologue + code + SHELL_STATE],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        failed = f"{code}\n{result.stdout}\n{result.stderr}"
        assert result.returncode == 0, failed
        output, status, cwd, key = result.stdout.rsplit("\n", 4)[:4]
        assert status == "0", failed
        self.cwd = Path(cwd)
        if key:
            self.env["KEY"] = key
        return output

    @property
    def python(self) -> str:
        return str(self.home / ".venv" / "bin" / "python")


def copy_checkout(target: Path) -> None:
    """This checkout's files as a fresh clone has them (tracked or new, none ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's install block, as written, beside a copy of this checkout named as
    the README's clone. The one virtual environment of the session."""
    home = tmp_path_factory.mktemp("readme")
    copy_checkout(home / "drf-llm-keys")
    ((_, language, code),) = steps("Install")[:1]
    assert language == "bash" and "pip install ./drf-llm-keys" in code
    Shell(home).run(code, timeout=600)
    return home


@pytest.fixture
def mysite_server() -> Iterator[dict[str, Any]]:
    """Where the quick start's ``runserver`` runs (filled in by the test), stopped after."""
    started: dict[str, Any] = {}
    yield started
    if "process" in started:
        started["process"].terminate()
        started["process"].wait(timeout=20)


def answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.readme
def test_the_quick_start_works_as_written(installed, redis_server, mysite_server):
    shell = Shell(installed)
    calls: list[tuple[str, int, Any]] = []
    for prose, language, code in steps("Quick start"):
        if language == "python":
            path = re.findall(r"`(mysite/\w+\.py)`", prose)[-1]
            target = shell.cwd / path
            if "Add to the end of" in prose:
                settings = target.read_text() + "\n" + code
                assert README_REDIS in settings
                # A private Redis, not the machine's shared database 0.
                target.write_text(settings.replace(README_REDIS, redis_server.url))
            else:
                target.write_text(code)
        elif "runserver" in code:
            assert code.strip() == "python manage.py runserver"
            port = free_port()
            mysite_server["process"] = subprocess.Popen(
                [shell.python, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
                cwd=shell.cwd,
                env=shell.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_until(functools.partial(answers, port), 60, "runserver did not answer")
            base_url = f"http://127.0.0.1:{port}"
        elif "curl" in code:
            curl_code = code.replace(README_URL, base_url)
            calls = run_curl_lines(shell, curl_code)
        else:
            shell.run(code.replace("createsuperuser", "createsuperuser --noinput"))

    key = shell.env["KEY"]
    assert key.startswith("llmk_")
    public, protected_without, protected_bearer, protected_header, unknown = calls
    assert "public-bot" in public[0] and "$KEY" not in public[0] and public[1] == 200
    assert "support-bot" in protected_without[0] and "$KEY" not in protected_without[0]
    assert protected_without[1] == 401
    assert "Bearer $KEY" in protected_bearer[0] and protected_bearer[1] == 200
    assert "X-API-Key: $KEY" in protected_header[0] and protected_header[1] == 200
    assert protected_bearer[2] == {"client": "support-bot", "key": key.split(".")[0]}
    assert unknown[1] == 404

    # The revoke the text after the block names, for this key: the server refuses it at once.
    (revoke,) = re.findall(r"`(python manage\.py llm_keys revoke PREFIX[^`]*)`", README)
    shell.run(revoke.replace("PREFIX", key.split(".")[0]))
    setup = [line for line in curl_code.splitlines() if line.startswith("URL=")]
    assert curl(shell, setup, protected_bearer[0]) == (401, {"detail": "API key has been revoked."})


def run_curl_lines(shell: Shell, code: str) -> list[tuple[str, int, Any]]:
    """Each ``curl`` line, with the shell lines before it; its status and body must be the
    ones in the comment below it. Returns (line, status, body) for each."""
    lines = code.strip().splitlines()
    setup = [line for line in lines if not line.startswith(("curl", "#"))]
    calls = []
    for line, comment in itertools.pairwise(lines):
        if not line.startswith("curl"):
            continue
        expected_status, expected_body = comment.removeprefix("# ").split(" ", 1)
        status, body = curl(shell, setup, line)
        key_prefix = shell.env.get("KEY", "").split(".")[0]
        expected = json.loads(expected_body.replace(README_PREFIX, key_prefix))
        assert (status, body) == (int(expected_status), expected), line
        calls.append((line, status, body))
    return calls


def curl(shell: Shell, setup: list[str], line: str) -> tuple[int, Any]:
    """A README ``curl`` line after the shell lines it needs: (status, JSON body)."""
    # Output format only: the body, then the status on a line of its own.
    measured = line.replace("curl ", "curl -s -w '\\n%{http_code}' ", 1)
    body, status = shell.run("\n".join([*setup, measured])).rsplit("\n", 1)
    return int(status), json.loads(body)


@pytest.mark.slow
@pytest.mark.readme
def test_the_example_project_steps_work_as_written(installed):
    ((_, language, code),) = steps("Try the example project")
    assert language == "bash"
    output = Shell(installed).run(code)
    assert "All 10 steps behaved as expected." in output
    # The venv is active: the closing hint's python is the one on PATH.
    assert "create your login with  python example_project/manage.py createsuperuser" in output


# --- the docs' examples, in process --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_scopes_and_model_allowlists_example_restricts_its_key(make_key):
    baker.make("auth.User", username="alice")
    scopes_doc = (ROOT / "docs" / "scopes.md").read_text()
    namespace: dict[str, object] = {}
    exec(re.search(r"```python\n(.*?)```", scopes_doc, re.DOTALL).group(1), namespace)  # type: ignore[union-attr]
    view = namespace["ChatCompletions"].as_view()  # type: ignore[attr-defined]
    factory = APIRequestFactory()

    def status(plaintext: str, model: str) -> int:
        request = factory.post("/", {"model": model}, format="json", **bearer(plaintext))
        response = view(request, llm_client="batch-bot")
        return int(response.status_code)

    plaintext = str(namespace["plaintext"])
    assert status(plaintext, "gpt-4o-mini") == 200
    assert status(plaintext, "echo-2") == 200
    assert status(plaintext, "gpt-4o") == 403
    _, files_only = make_key(namespace["bot"], scopes=["files"])
    assert status(files_only, "gpt-4o-mini") == 403


def test_the_readme_stays_short():
    assert len(README.splitlines()) <= 200


def test_no_page_installs_the_package_from_pypi():
    """drf-llm-keys is not on PyPI: every install line names the clone (``./drf-llm-keys``)."""
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "example_project").rglob("*.*")]
    from_pypi = re.compile(r"pip install [^`\n]*(?<![./\w-])[\"']?drf-llm-keys\b(?![/\w-])")
    found = [
        f"{page.relative_to(ROOT)}: {line.strip()}"
        for page in pages
        if page.suffix in {".md", ".py"}
        for line in page.read_text().splitlines()
        if from_pypi.search(line) and "fails" not in line
    ]
    assert found == []


@pytest.mark.django_db(transaction=True)
def test_the_key_management_python_example_runs_as_written(owner, protected_client):
    """docs/key-management.md's "From Python" block, top to bottom, on one client."""
    section = (ROOT / "docs" / "key-management.md").read_text().split("\n## From Python\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]
    namespace: dict[str, Any] = {"client": protected_client, "alice": owner}
    exec(code, namespace)
    # Created, rotated by client, rotated by key, and the jobs key (revoked at the end).
    assert protected_client.api_key_links.count() == 4
    assert namespace["made_public"] == []
