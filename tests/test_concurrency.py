"""Revocation under concurrency: gunicorn workers serve while another process rotates keys.

Every request and every key change is recorded with its time (see ``tests.support.harness``); no
request may be accepted with a key retired before it began, and no valid request refused.
The longer form is ``scripts/soak.py``.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from model_bakery import baker

from tests.support import harness

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CLIENTS = ["bot-a", "bot-b", "bot-c"]


@pytest.fixture
def clients(db: None) -> list[str]:
    baker.make(get_user_model(), username="owner", is_active=True)
    baker.make_recipe("tests.llm_client", slug="bot-a")
    baker.make_recipe("tests.llm_client", slug="bot-b")
    baker.make_recipe("tests.protected_client", slug="bot-c")
    return CLIENTS


def assert_invariants_held(verdict: harness.Verdict) -> None:
    print(verdict.summary())
    assert verdict.accepted_after_retirement == [], verdict.summary()
    assert verdict.accepted_wrong_key == [], verdict.summary()
    assert verdict.valid_refused == [], verdict.summary()
    assert verdict.server_errors == [], verdict.server_log[-3000:]


def test_two_server_processes_never_accept_a_retired_key_nor_refuse_a_valid_one(clients, tmp_path):
    env = harness.child_environment(cache_dir=str(tmp_path / "cache"))
    verdict = harness.run(env, clients, "owner", duration=5, threads=4, rate=150)
    assert_invariants_held(verdict)
    # The run proves something only if it covered the cases.
    assert verdict.server_processes >= 2
    assert verdict.key_changes >= 30
    assert verdict.after_retirement >= 30
    assert verdict.by_kind["in service"] >= 100
    assert verdict.by_status[200] >= 100
