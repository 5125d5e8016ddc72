"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from model_bakery import baker

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
