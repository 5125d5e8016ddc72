"""docs/budgets.md's examples run as written: its console sessions answer what it shows
(times aside), and its Python block runs."""

from __future__ import annotations

import re
import shlex
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from model_bakery import baker

from drf_llm_keys import usage
from drf_llm_keys.models import APIKey, KeyUsage, OwnerBudget
from tests.support import ROOT
from tests.test_command import run

pytestmark = pytest.mark.django_db

DOC = (ROOT / "docs" / "budgets.md").read_text()
DOC_PREFIX = "llmk_3f9a2c1b7d4e"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, re.DOTALL)


def sessions() -> list[tuple[str, str]]:
    """Each ``$ python manage.py ...`` line of the console blocks, with what it prints."""
    found = []
    for block in blocks("console"):
        for command in re.split(r"^\$ ", block, flags=re.MULTILINE)[1:]:
            line, _, printed = command.partition("\n")
            found.append((line, printed))
    return found


@pytest.fixture
def production(protected_client: Any) -> APIKey:
    alice = baker.make(get_user_model(), username="alice")
    api_key, _ = APIKey.objects.create_key(user=alice, name="production")
    api_key.client_links.create(llm_client=protected_client)
    KeyUsage.objects.create(
        api_key=api_key, llm_client=protected_client, day=usage.today(), cost=Decimal("3.25")
    )
    return api_key


def test_the_console_sessions_print_what_the_page_shows(production):
    assert len(sessions()) == 7
    for line, printed in sessions():
        words = shlex.split(line.replace(DOC_PREFIX, production.prefix))
        assert words[:3] == ["python", "manage.py", "llm_keys"]
        out, _ = run(*words[3:])
        expected = printed.replace(DOC_PREFIX, production.prefix)
        assert TIME.sub("<time>", out) == TIME.sub("<time>", expected), line


def test_the_python_block_runs(production, protected_client):
    namespace: dict[str, Any] = {"api_key": production, "alice": production.user, "client": protected_client}
    block = blocks("python")[0]  # "From Python"; the enforcement section's need a view
    exec(block, namespace)
    production.refresh_from_db()
    assert (production.budget_limit, production.max_concurrent) == (None, None)
    assert not OwnerBudget.objects.exists()
    batch = APIKey.objects.get(name="batch")
    assert (batch.max_concurrent, batch.budget_limit, batch.budget_period) == (2, Decimal(5), "day")
