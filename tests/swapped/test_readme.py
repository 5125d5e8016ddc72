"""docs/client-model.md ("Your own client model") is the code this suite runs, and its
example works."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from model_bakery import baker

from tests.support import bearer

ROOT = Path(__file__).resolve().parent.parent.parent
SECTION = (ROOT / "docs" / "client-model.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, re.DOTALL)


def readme_file(name: str) -> str:
    """The part of the README's first block under the comment ``# deployments/<name>``."""
    part = BLOCKS[0].split(f"# deployments/{name}", 1)[1].split("\n", 1)[1]
    return re.split(r"\n\n\n# ", part, maxsplit=1)[0].strip()


@pytest.mark.parametrize("name", ["models.py", "admin.py"])
def test_the_readmes_files_are_the_test_apps(name):
    assert readme_file(name) == (ROOT / "tests" / "swapped_app" / name).read_text().strip()


@pytest.mark.django_db(transaction=True)
def test_the_readmes_example_gives_a_working_key_for_the_deployment(api, capsys):
    baker.make("auth.User", username="alice")
    exec(BLOCKS[1], {})
    plaintext = capsys.readouterr().out.strip()
    assert api.get("/clients/eu-bot/echo/").status_code == 401
    response = api.get("/clients/eu-bot/echo/", **bearer(plaintext))
    assert response.json()["user"] == "alice"
