"""Push invalidation (drf_llm_keys.decisions.push): a warm request makes no round trip at all, and
every change Redis announces, or any doubt about the channel, sends requests back to Redis.

Each test runs against a private redis-server, so it runs in every configuration.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import pytest
from django.core.cache import caches
from django.db import connection
from django.db.models import QuerySet
from django.test.utils import CaptureQueriesContext
from django_redis import get_redis_connection

from drf_llm_keys import decisions
from drf_llm_keys.decisions import Tag, get_decision_cache
from drf_llm_keys.decisions.backends import CacheBackend
from drf_llm_keys.decisions.entries import load_decision
from drf_llm_keys.decisions.names import decision_name, generation_name
from drf_llm_keys.decisions.push import Channel, PushBackend
from drf_llm_keys.decisions.redis import RedisBackend
from drf_llm_keys.models import APIKey
from tests.support import bearer, wait_until
from tests.support.redis import (
    DJANGO,
    DJANGO_REDIS,
    HEARTBEAT,
    SOCKET_TIMEOUT,
    RedisServer,
    cache_config,
    commands,
    running_redis,
)
from tests.support.world import URL, World

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# django-redis, and Django's own RedisCache (``cache._cache.get_client(write=True)``).
both_backends = pytest.mark.parametrize("pushed", [DJANGO_REDIS, DJANGO], indirect=True)


def settle(api: Any, world: World) -> None:
    # Cold, then one GET that confirms the generation under the channel: warm from then on.
    for _ in range(3):
        world.assert_decisions(api)


def channel() -> Channel:
    """This process's push channel, opened if it is not yet; fails if there is none."""
    backend = get_decision_cache().backend
    assert isinstance(backend, PushBackend), backend
    opened = backend.channel()
    assert opened is not None and opened.alive
    return opened


# --- the warm path -----------------------------------------------------------------------


@both_backends
def test_warm_requests_make_no_round_trip_and_no_sql(api, pushed, world):
    settle(api, world)
    before = commands(pushed)
    with CaptureQueriesContext(connection) as queries:
        world.assert_decisions(api)
    assert commands(pushed) == before
    assert len(queries) == 0, [q["sql"] for q in queries]


def test_without_push_a_warm_request_makes_one_round_trip(api, pushed, world, settings):
    settings.DRF_LLM_KEYS = {"PUSH_INVALIDATION": False}
    settle(api, world)
    before = commands(pushed)
    api.get(URL.format("protected-bot"), **bearer(world.valid_key))
    assert commands(pushed) == before + 1
    assert type(get_decision_cache().backend) is RedisBackend


# --- what retires a trusted generation ---------------------------------------------------


@both_backends
def test_a_revoke_here_is_refused_at_once(api, pushed, world):
    settle(api, world)
    world.revoke_valid()
    world.assert_valid_refused(api)


def test_a_generation_written_by_another_client_is_announced(api, pushed, world):
    settle(api, world)
    before = commands(pushed)
    assert_announced(api, world)
    assert commands(pushed) > before


def test_a_flush_retires_every_generation(api, pushed, world):
    settle(api, world)
    pushed.flush()
    before = commands(pushed)
    world.assert_decisions(api)
    assert commands(pushed) > before


def test_a_generation_announced_between_read_and_confirm_is_not_trusted(api, pushed, world):
    settle(api, world)
    opened = channel()
    name = generation_name("protected-bot")
    tag = Tag("read-token", opened.epoch)
    mark = opened.mark()
    # Another client's write lands after our read of "read-token": Redis announces it.
    pushed.client().set(f"drf-llm-keys-tests:1:{name}", "written-after-the-read")
    wait_until(lambda: opened.mark() != mark, 5, "the announcement never came")
    opened.confirm(name, tag, mark)
    assert opened.known(name) is None
    opened.confirm(name, tag, opened.mark())
    assert opened.known(name) == tag
    assert get_decision_cache().backend.trusts(name, tag)


# --- the fill: sent on the tracking connection, its reply read later ---------------------


def changed_elsewhere() -> str:
    """A new generation for protected-bot, written by another client: its next request loads
    the decision and fills the shared entry."""
    name = generation_name("protected-bot")
    caches["default"].set(name, "changed-elsewhere")  # not the channel's
    opened = get_decision_cache().backend.opened
    if opened is not None:  # the announcement read: the next lookup does not trust its entry
        wait_until(lambda: opened.known(name) is None, 5, "the change was never announced")
    return "changed-elsewhere"


def shared_entry(world: World) -> Any:
    return caches["default"].get(decision_name("protected-bot", world.valid.prefix))


# Long enough that no heartbeat PING follows a fill on the tracking connection.
QUIET = {"PUSH_HEARTBEAT": 30}


def tracker_command(server: RedisServer) -> str:
    """The last command the tracking connection ran (with ``QUIET``: a fill's, if any)."""
    return next(str(c["cmd"]) for c in server.client().client_list() if "t" in c["flags"])


@both_backends
def test_a_fill_goes_out_on_the_tracking_connection_and_lands(api, pushed, world, settings):
    settings.DRF_LLM_KEYS = QUIET
    settle(api, world)
    token = changed_elsewhere()
    with CaptureQueriesContext(connection) as queries:
        world.assert_decisions(api)
    assert len(queries) > 0
    deadline = time.monotonic() + 5
    while (shared_entry(world) or ("",))[0] != token:
        assert time.monotonic() < deadline, "the fill never reached Redis"
        time.sleep(0.01)
    # On the channel's connection, whose replies no request waits for.
    assert tracker_command(pushed) == "set"
    # Its reply is read, and the channel still trusted: warm again.
    before = commands(pushed)
    world.assert_decisions(api)
    assert commands(pushed) == before
    assert get_decision_cache().backend.opened is not None


def test_a_fill_on_the_channel_is_encoded_as_the_cache_encodes(api, pushed, world, settings):
    config = cache_config(pushed)
    config["OPTIONS"]["COMPRESSOR"] = "django_redis.compressors.zlib.ZlibCompressor"
    settings.CACHES, settings.DRF_LLM_KEYS = {"default": config}, QUIET
    settle(api, world)
    changed_elsewhere()
    world.assert_decisions(api)  # loads and fills, on the channel
    # Read back by the cache as a process that has not loaded them: once they land, no SQL.
    deadline = time.monotonic() + 5
    while True:
        get_decision_cache().held.entries.clear()
        with CaptureQueriesContext(connection) as queries:
            world.assert_decisions(api)
        if not queries:
            break
        assert time.monotonic() < deadline, [q["sql"] for q in queries]
        time.sleep(0.01)
    assert tracker_command(pushed) == "set"  # they went out on the channel


def test_a_refused_fill_is_logged_and_the_channel_stays(api, pushed, world, caplog):
    settle(api, world)
    changed_elsewhere()
    admin = pushed.client()
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)  # every write refused: "OOM command not allowed"
    try:
        with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
            world.assert_decisions(api)  # loads, and sends fills that Redis refuses
            deadline = time.monotonic() + 5
            while "cache write failed" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                world.assert_decisions(api)  # each one reads what has arrived on the channel
                time.sleep(0.01)
        assert "maxmemory" in caplog.text
        assert "channel lost" not in caplog.text
        assert (shared_entry(world) or ("",))[0] != "changed-elsewhere"
        # This process holds what it loaded: warm, no round trip, no SQL.
        before = commands(pushed)
        with CaptureQueriesContext(connection) as queries:
            world.assert_decisions(api)
        assert commands(pushed) == before
        assert len(queries) == 0, [q["sql"] for q in queries]
    finally:
        admin.config_set("maxmemory", 0)


@both_backends
def test_no_generation_leases_one_and_the_next_lookup_fills(api, pushed, world, settings):
    """Redis came back empty: the rows read answer that request only (a change whose generation
    was lost may postdate them); a generation is leased (SET NX, sent on the tracking
    connection like a fill), and the next lookup fills under it."""
    settings.DRF_LLM_KEYS = QUIET
    settle(api, world)
    pushed.flush()  # no client has a generation
    before = reads(pushed)
    with CaptureQueriesContext(connection) as queries:
        assert api.get(URL.format("protected-bot"), **bearer(world.valid_key)).status_code == 200
    assert len(queries) > 0
    assert reads(pushed) == before + 1, "one round trip: the read; the lease is not waited for"
    name = generation_name("protected-bot")
    wait_until(lambda: caches["default"].get(name) is not None, 5, "the lease never reached Redis")
    assert tracker_command(pushed) == "set"
    leased = caches["default"].get(name)
    assert isinstance(leased, str) and not leased.startswith("~")
    assert shared_entry(world) is None, "rows read before the lease must not be filled"
    # The next lookup loads again and fills under the lease, on the channel.
    assert api.get(URL.format("protected-bot"), **bearer(world.valid_key)).status_code == 200
    wait_until(lambda: (shared_entry(world) or ("",))[0] == leased, 5, "the fill never reached Redis")
    assert caches["default"].get(name) == leased
    # Warm from then on: no SQL (a process that holds nothing takes the shared entry).
    get_decision_cache().held.entries.clear()
    with CaptureQueriesContext(connection) as queries:
        for _ in range(3):
            assert api.get(URL.format("protected-bot"), **bearer(world.valid_key)).status_code == 200
    assert len(queries) == 0, [q["sql"] for q in queries]


def test_a_lease_that_loses_the_race_fills_nothing(pushed, world, caplog):
    """The reader finds no generation and loads the key (active); a revoke commits and writes
    the generation first; the reader's lease (SET NX) then fails and nothing is filled."""
    pushed.flush()
    api_key = world.valid

    def load_then_revoke(client_value: str, prefix: str | None) -> dict[str, Any]:
        entry = load_decision(client_value, prefix)
        api_key.is_active = False
        api_key.save()  # commits, writes a new generation (not on the channel)
        return entry

    opened = channel()
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        stale = decisions.lookup("protected-bot", api_key.prefix, load_then_revoke, using="default")
        assert stale["key"]["is_active"] is True  # what the slow reader saw: its request only
        written = caches["default"].get(generation_name("protected-bot"))
        assert written is not None and not written.startswith("~")
        assert shared_entry(world) is None
        get_decision_cache().held.entries.clear()  # as another process: only Redis to go by
        fresh = decisions.lookup("protected-bot", api_key.prefix, load_decision, using="default")
    assert fresh["key"]["is_active"] is False
    assert caches["default"].get(generation_name("protected-bot")) == written
    assert get_decision_cache().backend.opened is opened and opened.alive
    assert "channel lost" not in caplog.text


@both_backends
def test_a_fill_that_cannot_be_sent_is_written_plainly_and_the_channel_dropped(api, pushed, world, caplog):
    """The tracking connection breaks between the read and the fill (its socket shut for
    writing while the entry loads): the entry is written with the cache's own call instead,
    before the lookup returns, and the channel is closed."""
    settle(api, world)
    token = changed_elsewhere()
    opened = channel()

    def load_then_break(client_value: str, prefix: str | None) -> dict[str, Any]:
        entry = load_decision(client_value, prefix)
        opened.tracker._sock.shutdown(socket.SHUT_WR)  # a real send error: EPIPE
        return entry

    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        entry = decisions.lookup("protected-bot", world.valid.prefix, load_then_break, using="default")
    assert entry["key"]["is_active"] is True
    assert "invalidation channel lost" in caplog.text
    assert not opened.alive
    # Written before the lookup returned, under the generation read.
    assert shared_entry(world)[0] == token


def test_without_a_live_channel_the_fill_is_a_plain_write(api, pushed, world, caplog):
    settle(api, world)
    token = changed_elsewhere()
    pushed.client().client_kill_filter(_id=tracking_client_id(pushed))
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        api.get(URL.format("protected-bot"), **bearer(world.valid_key))
    assert "invalidation channel lost" in caplog.text
    # Written and acknowledged before the response: there when the request returns.
    assert shared_entry(world)[0] == token


# --- a change made by another process ----------------------------------------------------


def reads(server: RedisServer) -> int:
    """The GETs and MGETs Redis has run so far."""
    stats = server.client().info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("get", "mget"))


def revoke_elsewhere(world: World) -> None:
    """The valid key revoked by another process: committed, and nothing told this one."""
    QuerySet(APIKey).filter(pk=world.valid.pk).update(is_active=False)  # no signal, no invalidation


@both_backends
def test_a_change_made_elsewhere_is_reloaded_and_shared(api, pushed, world):
    settle(api, world)
    revoke_elsewhere(world)
    # The other process's invalidation: its new generation, written as the backend writes it.
    RedisBackend("default").write({generation_name("protected-bot"): "from-elsewhere"}, 60)
    opened = channel()
    wait_until(lambda: opened.known(generation_name("protected-bot")) is None, 5, "never announced")
    before = reads(pushed)
    with CaptureQueriesContext(connection) as queries:
        world.assert_valid_refused(api)
    assert reads(pushed) > before, "the new generation is read from Redis"
    assert len(queries) == 1, [q["sql"] for q in queries]
    entry_name = decision_name("protected-bot", world.valid.prefix)
    held = get_decision_cache().held.get(entry_name)
    assert held is not None and held[0] == Tag("from-elsewhere", opened.epoch)
    # Shared under that tag: a process that holds nothing takes it, no SQL.
    wait_until(
        lambda: (shared_entry(world) or ("",))[0] == "from-elsewhere", 5, "the fill never reached Redis"
    )
    get_decision_cache().held.entries.clear()
    with CaptureQueriesContext(connection) as queries:
        world.assert_valid_refused(api)
    assert len(queries) == 0, [q["sql"] for q in queries]
    # Warm again: no round trip.
    world.assert_valid_refused(api)
    before = commands(pushed)
    world.assert_valid_refused(api)
    assert commands(pushed) == before


@both_backends
def test_wait_published_returns_a_heartbeat_after_the_write(api, pushed, world):
    """From then on no process can trust an entry of the old generation (push.py)."""
    settle(api, world)
    local = get_decision_cache()
    world.revoke_valid()
    assert local.written_at > 0
    assert decisions.wait_published()
    assert time.monotonic() >= local.written_at + HEARTBEAT
    world.assert_valid_refused(api)


def test_without_push_wait_published_does_not_wait(api, pushed, world, settings):
    settings.DRF_LLM_KEYS = {"PUSH_INVALIDATION": False, "PUSH_HEARTBEAT": 30}
    settle(api, world)
    world.revoke_valid()
    started = time.monotonic()
    assert decisions.wait_published()
    assert time.monotonic() - started < 5, "no heartbeat to wait for without push"
    world.assert_valid_refused(api)


# --- doubt about the channel: back to one GET per request --------------------------------


def tracking_client_id(server: RedisServer) -> int:
    clients = server.client().client_list()
    return next(int(c["id"]) for c in clients if "t" in c["flags"])


@both_backends
@pytest.mark.parametrize("which", ["subscriber", "tracker"])
def test_a_lost_connection_falls_back_then_reconnects(api, pushed, world, which, caplog, settings):
    settings.DRF_LLM_KEYS = QUIET  # no heartbeat PING among the commands counted
    settle(api, world)
    client = pushed.client()
    if which == "subscriber":
        client.client_kill_filter(_type="pubsub")
    else:
        client.client_kill_filter(_id=tracking_client_id(pushed))
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        before = commands(pushed)
        world.assert_decisions(api)
    assert "invalidation channel lost" in caplog.text
    assert commands(pushed) > before
    settle(api, world)  # a new channel, then trust again
    before = commands(pushed)
    world.assert_decisions(api)
    assert commands(pushed) == before


def test_a_silent_channel_is_trusted_for_the_heartbeat_only(api, pushed, world, settings, caplog):
    # A heartbeat long against the machine's load: the first requests run well within it.
    heartbeat = 8 * SOCKET_TIMEOUT
    settings.DRF_LLM_KEYS = {"PUSH_HEARTBEAT": heartbeat}
    settle(api, world)
    wait_until(lambda: get_decision_cache().backend.opened.proven(), 5, "the channel proven")
    pushed.pause()
    started = time.monotonic()
    world.assert_decisions(api)
    assert time.monotonic() - started < SOCKET_TIMEOUT, "within the heartbeat, no request waits for Redis"
    time.sleep(heartbeat)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        world.assert_decisions(api)
    assert time.monotonic() - started >= SOCKET_TIMEOUT, "past the heartbeat, requests should ask Redis"
    assert "cache read failed" in caplog.text
    pushed.resume()
    settle(api, world)
    before = commands(pushed)
    world.assert_decisions(api)
    assert commands(pushed) == before


def test_a_channel_silent_for_ten_heartbeats_is_dropped(api, pushed, world, settings, caplog):
    settings.DRF_LLM_KEYS = {"PUSH_HEARTBEAT": 0.05}
    settle(api, world)
    pushed.pause()
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        api.get(URL.format("protected-bot"), **bearer(world.valid_key))  # sends the ping
        time.sleep(20 * 0.05)  # twice the ten heartbeats
        world.assert_decisions(api)  # from the database: Redis does not answer
    assert "invalidation channel silent, reconnecting" in caplog.text
    pushed.resume()
    world.revoke_valid()
    world.assert_valid_refused(api)


def test_an_idle_spell_longer_than_the_heartbeat_logs_no_warning(api, pushed, world, caplog):
    settle(api, world)
    opened = channel()
    time.sleep(3 * HEARTBEAT)  # nothing asks: no ping is sent, none can be answered
    pushed.pause()  # the ping the next use sends stays unanswered for a while
    try:
        with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
            assert not opened.proven()  # sends the ping
            assert not opened.proven()  # asked again at once: no answer yet
    finally:
        pushed.resume()
    assert "no answer from the invalidation channel" not in caplog.text
    world.revoke_valid()
    world.assert_valid_refused(api)


def test_the_trusted_generations_are_bounded_by_local_entries(api, pushed, world, settings):
    settings.DRF_LLM_KEYS = {"PUSH_HEARTBEAT": HEARTBEAT, "LOCAL_ENTRIES": 2}
    settle(api, world)
    assert 0 < len(channel().current) <= 2
    world.revoke_valid()
    world.assert_valid_refused(api)


def test_the_heartbeat_keeps_an_idle_timeout_from_closing_the_channel(api, pushed, world, caplog):
    # Redis closes clients idle for `timeout` seconds (pub/sub ones excepted): the tracker
    # connection says nothing but its PONGs, and they must keep it open.
    pushed.client().config_set("timeout", 1)
    try:
        settle(api, world)
        with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
            for _ in range(30):  # Redis counts idleness in whole seconds
                api.get(URL.format("protected-bot"), **bearer(world.valid_key))
                time.sleep(HEARTBEAT / 4)
        assert "channel lost" not in caplog.text
    finally:
        pushed.client().config_set("timeout", 0)


def test_a_health_check_interval_in_the_pool_options_does_not_break_the_channel(
    api, pushed, world, settings, caplog
):
    config = cache_config(pushed)
    # Another database number: django-redis keeps one pool per URL, made with its first options.
    config["LOCATION"] = pushed.url.rsplit("/", 1)[0] + "/1"
    config["OPTIONS"]["CONNECTION_POOL_KWARGS"] = {"health_check_interval": 0.05}
    settings.CACHES = {"default": config}
    settle(api, world)
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        for _ in range(6):
            time.sleep(HEARTBEAT / 3)
            world.assert_decisions(api)
    assert "channel lost" not in caplog.text
    before = commands(pushed)
    world.assert_decisions(api)
    assert commands(pushed) == before
    assert_announced(api, world)


def assert_announced(api: Any, world: World) -> None:
    """A generation written by another client reaches this process's decisions."""
    client = get_redis_connection("default")  # the cache's database, on a connection of its pool
    for name in client.keys("*:g:*"):
        client.set(name, "changed elsewhere")
    with CaptureQueriesContext(connection) as queries:
        world.assert_decisions(api)
    assert len(queries) > 0, "the changed generation should have sent the decision to the database"


@pytest.mark.parametrize(
    ("database", "options"),
    [
        # Without hiredis (the README's test command does not install it); with redis-py 8,
        # whose RESP3-only options a RESP2 connection must not be given.
        (2, {"PARSER_CLASS": "redis.connection._RESP2Parser"}),
        # A pool that speaks RESP3: the channel's own connections still speak RESP2.
        (3, {"CONNECTION_POOL_KWARGS": {"protocol": 3}}),
    ],
)
def test_the_channel_works_whatever_the_pool_speaks(api, pushed, world, settings, database, options):
    config = cache_config(pushed)
    config["LOCATION"] = pushed.url.rsplit("/", 1)[0] + f"/{database}"  # a pool of its own
    config["OPTIONS"].update(options)
    settings.CACHES = {"default": config}
    settle(api, world)
    channel()
    before = commands(pushed)
    world.assert_decisions(api)
    assert commands(pushed) == before
    assert_announced(api, world)


def test_a_forked_child_does_not_use_its_parents_channel(api, pushed, world):
    settle(api, world)
    parent = get_decision_cache()
    assert parent.backend.opened is not None
    pid = os.fork()
    if pid == 0:  # the child: its sockets are the parent's
        child = get_decision_cache()
        os._exit(0 if child is not parent and child.backend.opened is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    before = commands(pushed)
    world.assert_decisions(api)  # the parent's channel is intact
    assert commands(pushed) == before


def test_a_new_cache_configuration_gets_a_channel_on_its_own_server(api, pushed, world, settings, tmp_path):
    # channel() checks no configuration: the settings change must drop the old channel.
    settle(api, world)
    first = channel()
    with running_redis(tmp_path) as other:
        settings.CACHES = {"default": cache_config(other)}
        assert not first.alive
        second = channel()
        assert second.epoch != first.epoch
        settle(api, world)
        world.revoke_valid()
        world.assert_valid_refused(api)


# --- caches that cannot announce ---------------------------------------------------------


def test_no_channel_on_a_cache_that_is_not_redis(api, world, settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    backend = get_decision_cache().backend
    assert type(backend) is CacheBackend and not backend.announces and backend.settle_seconds == 0
    world.assert_decisions(api)
    world.revoke_valid()
    world.assert_valid_refused(api)


def hashed_key(key: str, key_prefix: str, version: int) -> str:
    import hashlib

    return hashlib.sha256(f"{key_prefix}:{version}:{key}".encode()).hexdigest()


def test_no_channel_when_the_key_function_keeps_no_common_prefix(pushed, settings, caplog):
    settings.CACHES = {"default": {**cache_config(pushed), "KEY_FUNCTION": hashed_key}}
    with caplog.at_level(logging.INFO, logger="drf_llm_keys"):
        assert get_decision_cache().backend.channel() is None
    assert "KEY_FUNCTION" in caplog.text


def test_no_channel_when_redis_refuses_tracking(api, world, settings, tmp_path, caplog):
    with running_redis(tmp_path, args=("--rename-command", "CLIENT", "")) as server:
        settings.CACHES = {"default": cache_config(server)}
        with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
            world.assert_decisions(api)
            assert get_decision_cache().backend.channel() is None
        assert "Redis refused client tracking" in caplog.text
        world.revoke_valid()
        world.assert_valid_refused(api)


# --- another process ---------------------------------------------------------------------


@both_backends
def test_a_revoke_here_is_refused_there_at_once_every_time(pushed_worker, pushed, make_key, protected_client):
    make_key(protected_client)  # keeps the client protected while the others are revoked
    for _ in range(25):
        api_key, plaintext = make_key(protected_client)  # revocation is final: a new key each time
        for _ in range(3):
            assert pushed_worker.status("protected-bot", plaintext) == 200
        before = commands(pushed)
        assert pushed_worker.status("protected-bot", plaintext) == 200
        assert commands(pushed) == before, "the other process should trust its entry"
        api_key.is_active = False
        api_key.save()
        assert pushed_worker.status("protected-bot", plaintext) == 401


def test_after_a_change_one_process_reloads_and_the_other_takes_its_fills(
    api, pushed_worker, pushed, make_key, protected_client
):
    first, first_key = make_key(protected_client)
    second, second_key = make_key(protected_client)
    for _ in range(3):  # both processes hold both entries, trusted
        for plaintext in (first_key, second_key):
            assert api.get(URL.format("protected-bot"), **bearer(plaintext)).status_code == 200
            assert pushed_worker.status("protected-bot", plaintext) == 200
    first.name = "renamed"  # a change that keeps the keys valid: a new generation
    first.save()
    generation = caches["default"].get(generation_name("protected-bot"))
    for plaintext in (first_key, second_key):  # the worker reads, loads and fills each
        assert pushed_worker.status("protected-bot", plaintext) == 200
    for api_key in (first, second):
        name = decision_name("protected-bot", api_key.prefix)
        wait_until(
            lambda name=name: (caches["default"].get(name) or ("",))[0] == generation,
            5,
            "the worker's fill never reached Redis",
        )
    with CaptureQueriesContext(connection) as queries:
        for plaintext in (first_key, second_key):
            assert api.get(URL.format("protected-bot"), **bearer(plaintext)).status_code == 200
    assert len(queries) == 0, [q["sql"] for q in queries]


def test_a_revoke_during_a_pause_reaches_another_process_within_the_heartbeat(
    pushed_worker, pushed, make_key, protected_client
):
    make_key(protected_client)
    api_key, plaintext = make_key(protected_client)
    for _ in range(3):
        assert pushed_worker.status("protected-bot", plaintext) == 200
    pushed.pause()
    api_key.is_active = False
    api_key.save()  # its invalidation cannot land: it is retried
    # The worker trusts its entry for at most its PUSH_HEARTBEAT (the default, 1 s); then
    # it asks Redis, times out, and decides from the database.
    time.sleep(1.0)
    assert pushed_worker.status("protected-bot", plaintext) == 401
    pushed.resume()
