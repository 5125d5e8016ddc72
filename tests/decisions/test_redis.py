"""Redis topologies (drf_llm_keys.decisions.redis and push): generations come from the
master, an entry is used only under the epoch it was filled in, writes wait for replicas when
asked to, and the channel needs both of its connections to answer.

Every server here is a real redis-server of the test's own: a replica made with
``--replicaof``, a restart from a real RDB file, a failover by promoting a real replica.
After each revoke returns, every request is counted: a revoked key accepted, a valid key
refused and a 5xx must all be 0, in this process and in another one.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from drf_llm_keys import decisions
from drf_llm_keys.decisions import get_decision_cache, push
from drf_llm_keys.decisions.backends import CacheBackend
from drf_llm_keys.decisions.names import generation_name
from drf_llm_keys.models import APIKey
from tests.support import bearer, wait_until
from tests.support.harness import Worker
from tests.support.proxy import Proxy
from tests.support.redis import (
    HEARTBEAT,
    RedisServer,
    cache_config,
    channel_ports,
    commands,
    detach,
    in_sync,
    master_and_replica,
    running_sentinel,
)
from tests.support.world import URL

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

Ask = Callable[[str], int]


class Keys:
    """Two keys of the protected client: one stays valid, one is revoked by the test."""

    def __init__(self, make_key: Any, protected_client: Any) -> None:
        self.valid, self.valid_key = make_key(protected_client)
        self.gone, self.gone_key = make_key(protected_client)

    def revoke(self) -> None:
        APIKey.objects.filter(pk=self.gone.pk).update(is_active=False)


def askers(api: Any, workers: list[Worker]) -> list[Ask]:
    def here(key: str) -> int:
        return int(api.get(URL.format("protected-bot"), **bearer(key)).status_code)

    return [here, *(lambda key, w=w: w.status("protected-bot", key) for w in workers)]


def warm_up(asks: list[Ask], keys: Keys) -> None:
    # Cold, then confirmed under the channel: each process trusts its entries from then on.
    for ask in asks:
        for _ in range(3):
            assert ask(keys.valid_key) == 200
            assert ask(keys.gone_key) == 200


def tally(asks: list[Ask], keys: Keys, rounds: int = 10) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(rounds):
        for ask in asks:
            for key, name in ((keys.gone_key, "revoked"), (keys.valid_key, "valid")):
                status = ask(key)
                verdict = "5xx" if status >= 500 else "accepted" if status == 200 else "refused"
                seen[f"{name} {verdict}"] += 1
    return seen


def assert_clean(seen: Counter[str], asks: list[Ask], rounds: int = 10) -> None:
    assert seen == {"revoked refused": rounds * len(asks), "valid accepted": rounds * len(asks)}


def raw_generation(server: RedisServer) -> bytes | None:
    value: bytes | None = server.client().get(f"drf-llm-keys-tests:1:{generation_name('protected-bot')}")
    return value


# --- Redis replicas ----------------------------------------------------------------------


def test_a_lagging_replica_never_gets_a_revoked_key_trusted(
    api, settings, start_worker, tmp_path, make_key, protected_client
):
    with master_and_replica(tmp_path) as (master, replica):
        # django-redis reads the replicas of a LOCATION list (the master is the first).
        config = cache_config([master.url, replica.url], timeout=2)
        settings.CACHES = {"default": config}
        asks = askers(api, [start_worker(config)])
        keys = Keys(make_key, protected_client)
        warm_up(asks, keys)
        wait_until(lambda: in_sync(master, replica), 10, "the replica in sync")
        detach(replica)
        keys.revoke()
        assert raw_generation(replica) not in (raw_generation(master), None), "the replica should lag"
        assert_clean(tally(asks, keys), asks)


def test_invalidation_replicas_waits_for_a_replica_to_acknowledge(settings, tmp_path, caplog):
    with master_and_replica(tmp_path) as (master, replica):
        settings.CACHES = {"default": cache_config([master.url, replica.url], timeout=2)}
        settings.DRF_LLM_KEYS = {"INVALIDATION_REPLICAS": 1}
        wait_until(lambda: in_sync(master, replica), 10, "the replica in sync")
        name = generation_name("protected-bot")
        assert decisions.publish({name})
        assert raw_generation(replica) == raw_generation(master) is not None
        detach(replica)
        with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
            assert not decisions.publish({name}), "no replica acknowledged: not written"
        assert "0 of 1 replicas acknowledged" in caplog.text
        assert decisions.pending_invalidations() == {name}, "kept, to be retried"
        decisions.reset()


# --- lost acknowledged writes ------------------------------------------------------------


def test_a_restart_from_a_snapshot_older_than_the_revoke_brings_no_revoked_key_back(
    api, settings, start_worker, tmp_path, make_key, protected_client
):
    server = RedisServer(tmp_path, args=("--dbfilename", "snapshot.rdb")).start()
    try:
        config = cache_config(server, timeout=2)
        settings.CACHES = {"default": config}
        asks = askers(api, [start_worker(config)])
        keys = Keys(make_key, protected_client)
        warm_up(asks, keys)
        server.client().save()
        before = raw_generation(server)
        keys.revoke()  # neither process asks again before the restart: each holds its entry
        server.kill()
        server.start()  # from snapshot.rdb, taken before the revoke
        assert raw_generation(server) == before, "the snapshot should bring the old generation back"
        asks.append(askers(api, [start_worker(config)])[1])  # and a process started afterwards
        assert_clean(tally(asks, keys), asks)
    finally:
        server.stop()


def test_a_failover_to_a_replica_that_missed_the_revoke_brings_no_revoked_key_back(
    api, settings, start_worker, tmp_path, make_key, protected_client
):
    with master_and_replica(tmp_path) as (master, replica):
        proxy = Proxy(master.port)  # the address clients know, moved at the failover
        try:
            config = cache_config(proxy.url, timeout=2)
            settings.CACHES = {"default": config}
            asks = askers(api, [start_worker(config)])
            keys = Keys(make_key, protected_client)
            warm_up(asks, keys)
            wait_until(lambda: in_sync(master, replica), 10, "the replica in sync")
            detach(replica)  # asynchronous replication: it misses what comes next
            before = raw_generation(replica)
            keys.revoke()  # neither process asks again before the failover
            assert raw_generation(master) != before
            master.kill()
            replica.client().replicaof("no", "one")
            proxy.point_to(replica.port)
            assert raw_generation(replica) == before, "the new master should have the old generation"
            asks.append(askers(api, [start_worker(config)])[1])  # and a process started afterwards
            assert_clean(tally(asks, keys), asks)
        finally:
            proxy.close()


# --- push liveness -----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tracker", "subscriber"])
def test_a_silently_lost_channel_connection_ends_trust_within_the_heartbeat(
    api, redis_server, settings, start_worker, make_key, protected_client, which, caplog
):
    redis_server.flush()
    proxy = Proxy(redis_server.port)  # this process reaches Redis through it; the worker does not
    try:
        settings.CACHES = {"default": cache_config(proxy.url)}
        settings.DRF_LLM_KEYS = {"PUSH_HEARTBEAT": HEARTBEAT}
        keys = Keys(make_key, protected_client)
        asks = askers(api, [])
        warm_up(asks, keys)

        def trusted() -> bool:
            before = commands(redis_server)
            assert asks[0](keys.valid_key) == 200
            return commands(redis_server) == before

        # A ping answered late on a loaded machine costs a read: trusted again at the next answer.
        wait_until(trusted, 10 * HEARTBEAT, "trusted through the channel")
        (port,) = channel_ports(redis_server, which)
        proxy.link_of(port).cut_server_side()
        # Redis drops the connection (and with it the tracking, or where it sends it); this
        # process is told nothing.
        wait_until(
            lambda: all(c["addr"] != f"127.0.0.1:{port}" for c in redis_server.client().client_list()),
            5,
            "gone",
        )
        worker = start_worker(cache_config(redis_server, timeout=2))
        assert worker.manage("llm_keys", "revoke", keys.gone.prefix) == "ok"
        with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
            # The bound: trusted for at most PUSH_HEARTBEAT after the last answered ping.
            deadline = time.monotonic() + 2 * HEARTBEAT
            while time.monotonic() < deadline:
                asks[0](keys.valid_key)
                time.sleep(HEARTBEAT / 10)
            assert_clean(tally(asks, keys), asks)
        # On a loaded machine the live connection's answer may be late too: then both are named.
        silent = [
            r.getMessage()
            for r in caplog.records
            if "no answer from the invalidation channel" in r.getMessage()
        ]
        assert any(which in message for message in silent), silent
    finally:
        proxy.close()


# --- caches the channel cannot serve -----------------------------------------------------


def test_a_sharded_cache_is_a_plain_cache_one_get_per_request(api, redis_server, settings, world, caplog):
    redis_server.flush()
    config = cache_config([redis_server.url])
    config["OPTIONS"]["CLIENT_CLASS"] = "django_redis.client.ShardClient"
    settings.CACHES = {"default": config}
    # Shards keys over several servers: no master to read, no channel (state.backend_for).
    assert type(get_decision_cache().backend) is CacheBackend
    with caplog.at_level(logging.INFO, logger="drf_llm_keys"):
        for _ in range(3):
            world.assert_decisions(api)
        before = commands(redis_server)
        api.get(URL.format("protected-bot"), **bearer(world.valid_key))
        assert commands(redis_server) == before + 1
        world.revoke_valid()
        world.assert_valid_refused(api)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "drf_llm_keys"]


# --- Sentinel ----------------------------------------------------------------------------


def test_a_sentinel_failover_to_a_replica_that_missed_the_revoke_and_the_channel_follows(
    api, settings, start_worker, tmp_path, make_key, protected_client, monkeypatch
):
    monkeypatch.setattr(push, "RETRY_DELAY", 0.2)  # this process reopens its channel soon
    with (
        master_and_replica(tmp_path) as (master, replica),
        running_sentinel(tmp_path / "s", master) as sentinel,
    ):
        wait_until(lambda: sentinel.replicas() == 1, 15, "Sentinel knows the replica")
        config = sentinel.cache_config()
        settings.CACHES = {"default": config}
        asks = askers(api, [start_worker(config)])
        keys = Keys(make_key, protected_client)
        extra, extra_key = make_key(protected_client)
        warm_up(asks, keys)
        wait_until(lambda: in_sync(master, replica), 10, "the replica in sync")
        detach(replica)  # the failover will promote it without the revoke
        before = raw_generation(replica)
        keys.revoke()
        master.kill()
        wait_until(lambda: sentinel.master_port() == replica.port, 30, "Sentinel promoted the replica")
        assert raw_generation(replica) == before, "the new master should have the old generation"
        asks.append(askers(api, [start_worker(config)])[1])
        assert_clean(tally(asks, keys), asks)
        # This process's channel reopened on the new master: a warm request asks nothing
        # there, and a revoke by another process is refused here at once.
        wait_until(lambda: get_decision_cache().backend.channel() is not None, 10, "the channel reopened")
        for _ in range(3):
            assert asks[0](extra_key) == 200
        calls = commands(replica)
        assert asks[0](extra_key) == 200
        assert commands(replica) == calls
        trusted = raw_generation(replica)
        assert start_worker(config).manage("llm_keys", "revoke", extra.prefix) == "ok"
        # Just after a failover Sentinel may still answer "no master" to a new process: its
        # invalidation is then retried, and lands within a second.
        wait_until(lambda: raw_generation(replica) != trusted, 10, "the revoke's invalidation landed")
        assert asks[0](extra_key) == 401
