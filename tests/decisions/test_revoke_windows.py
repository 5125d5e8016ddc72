"""Three windows in which a revoked key used to be accepted after its revoke returned, each
reproduced as an operator's setup meets it (the fourth, an admin form read from a lagging
replica, is in tests/test_replicas.py). ``test_protocol.py`` covers the same events at
every step of the protocol; these run the whole path, with no test seam."""

from __future__ import annotations

import time
from typing import Any

import pytest
from model_bakery import baker

from drf_llm_keys import decisions
from drf_llm_keys.decisions.entries import load_decision
from drf_llm_keys.models import APIKey
from tests.support import bearer, wait_until
from tests.support.harness import Worker, worker_env
from tests.support.redis import (
    HEARTBEAT,
    RedisServer,
    master_and_replica,
    running_sentinel,
)
from tests.support.world import URL

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def accepted(api: Any, readers: list[Worker], plaintext: str, seconds: float) -> int:
    """How many requests with ``plaintext`` were served, here and in each reader, during
    ``seconds``."""
    served = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        served += api.get(URL.format("protected-bot"), **bearer(plaintext)).status_code == 200
        served += sum(r.status("protected-bot", plaintext) == 200 for r in readers)
    return served


@pytest.mark.parametrize("push", [True, False], ids=["push", "no-push"])
def test_a_revoke_after_a_failover_whose_old_master_stays_up_is_refused_at_once(
    api, settings, tmp_path, make_key, push
):
    with (
        master_and_replica(tmp_path) as (master, replica),
        running_sentinel(tmp_path / "sentinel", master) as sentinel,
    ):
        wait_until(lambda: sentinel.replicas() == 1, 15, "Sentinel knows the replica")
        config = sentinel.cache_config()
        settings.CACHES = {"default": config}
        settings.DRF_LLM_KEYS = {"PUSH_HEARTBEAT": HEARTBEAT, "PUSH_INVALIDATION": push}
        env = worker_env(config, settings.DRF_LLM_KEYS)
        readers = [Worker(env), Worker(env)]
        try:
            protected = baker.make_recipe("tests.llm_client", slug="protected-bot")
            revoked, revoked_key = make_key(protected)
            make_key(protected)
            assert accepted(api, readers, revoked_key, 0.3) > 0  # warm everywhere
            sentinel.client.execute_command("SENTINEL", "FAILOVER", sentinel.service)
            wait_until(lambda: sentinel.master_port() == replica.port, 30, "Sentinel names the replica")
            assert master.client().info("replication")["role"] == "master", "the old master is up"
            writer = Worker(env)  # a new process: it asks Sentinel, and finds the new master
            try:
                assert writer.manage("llm_keys", "revoke", revoked.prefix) == "ok"
            finally:
                writer.stop()
            assert accepted(api, readers, revoked_key, 2.0) == 0
        finally:
            for reader in readers:
                reader.stop()


def test_a_generation_lost_after_a_first_read_lets_no_pre_revoke_entry_in(
    api, pushed: RedisServer, pushed_env, make_key
):
    protected = baker.make_recipe("tests.llm_client", slug="protected-bot")
    revoked, revoked_key = make_key(protected)
    make_key(protected)
    writer = Worker(pushed_env)
    reader = Worker(pushed_env)
    try:
        prefix = revoked.prefix

        def load_then_revoke_and_flush(client_value: str, key_prefix: str | None) -> dict[str, Any]:
            entry = load_decision(client_value, key_prefix)  # the key is valid in these rows
            assert writer.manage("llm_keys", "revoke", prefix) == "ok"
            pushed.flush()  # the revoke's generation is lost
            return entry

        pushed.flush()  # no generation: this is the client's first read
        decisions.lookup("protected-bot", prefix, load_then_revoke_and_flush, using="default")
        assert not APIKey.objects.get(pk=revoked.pk).is_active
        assert accepted(api, [reader], revoked_key, 1.0) == 0
    finally:
        writer.stop()
        reader.stop()


def test_a_writer_killed_after_its_commit_leaves_no_revoked_key_accepted(api, pushed_env, make_key):
    protected = baker.make_recipe("tests.llm_client", slug="protected-bot")
    revoked, revoked_key = make_key(protected)
    make_key(protected)
    reader = Worker(pushed_env)
    try:
        assert accepted(api, [reader], revoked_key, 0.3) > 0
        dying = Worker(pushed_env)
        assert dying.ask("die-after-commit") == "armed"
        dying.ask(f"manage llm_keys revoke {revoked.prefix}")
        assert dying.process.wait(10) == -9, "killed between its commit and its publish"
        assert not APIKey.objects.get(pk=revoked.pk).is_active
        assert accepted(api, [reader], revoked_key, 1.0) == 0
        # The operator's natural retry publishes again rather than "nothing changed".
        again = Worker(pushed_env)
        try:
            assert again.manage("llm_keys", "revoke", revoked.prefix) == "ok"
        finally:
            again.stop()
        assert accepted(api, [reader], revoked_key, 0.5) == 0
    finally:
        reader.stop()
