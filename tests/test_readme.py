"""The README's examples run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from django.core.management import call_command
from model_bakery import baker
from rest_framework.test import APIRequestFactory

from tests.support import bearer

pytestmark = pytest.mark.django_db(transaction=True)

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def python_block(heading: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under {heading!r}"
    return match.group(1)


def test_create_a_client_and_a_key_example_gives_a_working_key(api, capsys):
    baker.make("auth.User", username="alice")
    exec(python_block("Create a client and a key"), {})
    plaintext = capsys.readouterr().out.strip()
    assert api.get("/clients/support-bot/echo/").status_code == 401
    response = api.get("/clients/support-bot/echo/", **bearer(plaintext))
    assert response.json()["user"] == "alice"


def test_quick_start_commands_give_a_working_key(api, capsys):
    """The "Create a client and a key" shell lines, run through ``call_command``."""
    baker.make("auth.User", username="alice")
    section = README.split("### Create a client and a key\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "no bash block under the quick start"
    for line in block.group(1).splitlines():
        line = line.removeprefix("KEY=$(").removesuffix(")")
        program, manage_py, name, *args = shlex.split(line)
        assert (program, manage_py) == ("python", "manage.py")
        call_command(name, *args)
    plaintext = capsys.readouterr().out.strip().splitlines()[-1]
    assert api.get("/clients/support-bot/echo/").status_code == 401
    response = api.get("/clients/support-bot/echo/", **bearer(plaintext))
    assert response.json()["user"] == "alice"


def test_scopes_and_model_allowlists_example_restricts_its_key(make_key):
    baker.make("auth.User", username="alice")
    namespace: dict[str, object] = {}
    exec(python_block("Scopes and model allowlists"), namespace)
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
