"""The ledger (drf_llm_keys.ledger) and the in-flight cap (drf_llm_keys.limits), on the
local-memory cache and on a private Redis; requests through the real middleware."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_finished
from django.db import DatabaseError, close_old_connections
from django.test import AsyncClient, RequestFactory
from rest_framework.test import APIClient

from drf_llm_keys import keys, ledger, limits, signals, usage
from drf_llm_keys.access import CLIENT_ATTRIBUTE
from drf_llm_keys.decisions import reset
from tests import async_views
from tests.support import race, wait_until
from tests.support.redis import RedisServer, cache_config, in_sync, master_and_replica, running_sentinel

LOCMEM = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "limits"}


@pytest.fixture(params=["locmem", "redis"])
def cache_kind(request: pytest.FixtureRequest, redis_server: RedisServer, settings: Any) -> Iterator[str]:
    """Each test on the local-memory cache and on Redis (the Lua scripts)."""
    if request.param == "redis":
        redis_server.resume()
        redis_server.flush()
        settings.CACHES = {"default": cache_config(redis_server)}
    else:
        settings.CACHES = {"default": LOCMEM}
    reset()
    yield request.param
    redis_server.resume()
    reset()


def account(name: str, limit: int, **fields: Any) -> ledger.Account:
    return ledger.Account(f"drf_llm_keys-test:{name}", limit, **fields)


def test_admits_up_to_the_limit_and_refuses_beyond(cache_kind: str) -> None:
    slots = account("slots", 3)
    held = [ledger.get_ledger().reserve([(slots, 1)], lease=60) for _ in range(3)]
    with pytest.raises(ledger.Refused) as refused:
        ledger.get_ledger().reserve([(slots, 1)], lease=60)
    assert refused.value.used == 3 and refused.value.account == slots
    held[0].settle()
    ledger.get_ledger().reserve([(slots, 1)], lease=60)  # the freed slot
    assert ledger.get_ledger().standing([slots]) == [(None, 3)]  # nothing spent on slots


def test_all_or_none(cache_kind: str) -> None:
    roomy, full = account("roomy", 10), account("full", 1)
    ledger.get_ledger().reserve([(full, 1)], lease=60)
    with pytest.raises(ledger.Refused) as refused:
        ledger.get_ledger().reserve([(roomy, 4), (full, 1)], lease=60)
    assert refused.value.account == full
    assert ledger.get_ledger().standing([roomy, full]) == [(None, 0), (None, 1)]


def test_settles_once_and_adds_the_spend(cache_kind: str) -> None:
    budget = account("budget", 100, ends_at=time.time() + 60, seed=lambda: 0)
    reservation = ledger.get_ledger().reserve([(budget, 40)], lease=60)
    assert ledger.get_ledger().standing([budget]) == [(0, 40)]
    assert reservation.settle({budget.name: 25}) == {}  # no alert raised
    assert reservation.settle({budget.name: 25}) == {}  # a second settlement adds nothing
    assert ledger.get_ledger().standing([budget]) == [(25, 0)]
    with pytest.raises(ledger.Refused) as refused:
        ledger.get_ledger().reserve([(budget, 76)], lease=60)
    assert refused.value.used == 25


def test_a_lease_that_runs_out_frees_its_amount(cache_kind: str) -> None:
    """A process killed before it settles: its reservation ends with its lease."""
    slots = account("leased", 1)
    ledger.get_ledger().reserve([(slots, 1)], lease=0.3)
    with pytest.raises(ledger.Refused):
        ledger.get_ledger().reserve([(slots, 1)], lease=0.3)
    time.sleep(0.4)
    ledger.get_ledger().reserve([(slots, 1)], lease=60)


def test_a_lost_spent_counter_is_seeded_from_the_database_before_admitting(cache_kind: str) -> None:
    seeds = []

    def seed() -> int:
        seeds.append(1)
        return 70

    budget = account("seeded", 100, ends_at=time.time() + 60, seed=seed)
    first = ledger.get_ledger().reserve([(budget, 20)], lease=60)
    assert seeds == [1] and ledger.get_ledger().standing([budget]) == [(70, 20)]
    with pytest.raises(ledger.Refused):  # 70 spent + 20 held + 20 > 100
        ledger.get_ledger().reserve([(budget, 20)], lease=60)
    cache.clear()  # the cache loses everything: a flush, a restart
    # The settlement does not make a counter of its own spend alone: the next seed counts it.
    assert first.settle({budget.name: 5}) == {}
    ledger.get_ledger().reserve([(budget, 30)], lease=60)
    assert seeds == [1, 1] and ledger.get_ledger().standing([budget]) == [(70, 30)]


def test_the_settlement_that_reaches_the_alert_raises_it_once(cache_kind: str) -> None:
    budget = account("alerted", 100, ends_at=time.time() + 60, seed=lambda: 0, alert_at=80)
    below = ledger.get_ledger().reserve([(budget, 10)], lease=60)
    assert not below.near_alert and below.settle({budget.name: 10}) == {}
    near = ledger.get_ledger().reserve([(budget, 75)], lease=60)  # 10 + 75 in use: near 80
    assert near.near_alert
    assert near.settle({budget.name: 72}) == {budget.name: 82}
    after = ledger.get_ledger().reserve([(budget, 5)], lease=60)
    assert not after.near_alert  # raised already: nothing more to wait for
    assert after.settle({budget.name: 5}) == {}
    assert ledger.get_ledger().standing([budget]) == [(87, 0)]


@pytest.mark.parametrize("cache_kind", ["redis"], indirect=True)  # the one that does not wait
def test_an_alert_missed_by_a_settlement_sent_unanswered_comes_with_the_next(cache_kind: str) -> None:
    budget = account("late-alert", 100, ends_at=time.time() + 60, seed=lambda: 0, alert_at=80)
    early = ledger.get_ledger().reserve([(budget, 10)], lease=60)  # 10 in use: far from 80
    late = ledger.get_ledger().reserve([(budget, 75)], lease=60)  # 85: near
    assert not early.near_alert and late.near_alert
    assert late.settle({budget.name: 5}) == {}  # 5 spent: below 80
    assert early.settle({budget.name: 80}) == {}  # costs more than it reserved: 85, unanswered
    assert ledger.get_ledger().standing([budget]) == [(85, 0)]
    following = ledger.get_ledger().reserve([(budget, 1)], lease=60)
    assert following.near_alert and following.settle({budget.name: 1}) == {budget.name: 86}


@pytest.mark.parametrize("cache_kind", ["redis"], indirect=True)
def test_a_cache_set_up_again_leaves_no_settlement_connection_behind(
    cache_kind: str, redis_server: RedisServer
) -> None:
    def settle_once() -> None:
        shared = ledger.get_ledger()
        shared.reserve([(account("reset", 10), 1)], lease=60).settle()

    server = redis_server.client()
    settle_once()
    reset()
    gc.collect()
    before = len(server.client_list())
    for _ in range(5):
        settle_once()
        reset()  # as override_settings does
        gc.collect()
    # Redis frees a client a moment after its socket closes (listed meanwhile with addr "?:0").
    wait_until(lambda: len(server.client_list()) == before, 5, "a settlement connection left open")


@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed by the server"])
def test_settlements_are_sent_without_waiting_and_land_in_order(
    redis_server: RedisServer, settings: Any, closed: bool
) -> None:
    """A settlement that cannot raise an alert is written on the ledger's own connection and
    not waited for; this process then reads it done, also after the server closed that
    connection (opened again before the write)."""
    redis_server.resume()
    redis_server.flush()
    settings.CACHES = {"default": cache_config(redis_server)}
    reset()
    try:
        budget = account("unanswered", 1000, ends_at=time.time() + 60, seed=lambda: 0)
        slots = account("unanswered-slots", 1)
        shared = ledger.get_ledger()
        assert isinstance(shared, ledger.RedisLedger)
        for spent in range(1, 51):
            reservation = shared.reserve([(slots, 1), (budget, 10)], lease=60)
            assert reservation.settle({budget.name: 1}) == {}
            assert shared.standing([slots, budget]) == [(None, 0), (spent, 0)]
            if closed and spent == 25:
                redis_server.client().client_kill_filter(_type="normal", skipme=True)
        assert shared.unanswered.waiting == 0  # replies read before the next reserve
    finally:
        reset()


def test_an_unreachable_cache_is_unavailable_not_admitted(
    redis_server: RedisServer, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.resume()
    settings.CACHES = {"default": cache_config(redis_server, timeout=0.2)}
    reset()
    redis_server.pause()
    try:
        with pytest.raises(ledger.Unavailable):
            ledger.get_ledger().reserve([(account("down", 5), 1)], lease=60)
    finally:
        redis_server.resume()
        reset()


def test_processes_racing_never_admit_more_than_the_limit(redis_server: RedisServer) -> None:
    """4 processes, 60 tries each, at once, for 100 units: exactly 100 admitted."""
    redis_server.resume()
    redis_server.flush()
    context = multiprocessing.get_context("spawn")
    start = context.Manager().Event()
    with context.Pool(4) as pool:
        args = (redis_server.url, ledger._RESERVE, 100, 60, start)
        results = [pool.apply_async(race.reserve_units, args) for _ in range(4)]
        time.sleep(0.5)
        start.set()
        admitted = [result.get(timeout=60) for result in results]
    assert sum(admitted) == 100, admitted


# --- through the middleware, with the in-flight cap --------------------------------------


@pytest.fixture
def capped(cache_kind: str, settings: Any, key: Any) -> tuple[APIClient, str]:
    settings.DRF_LLM_KEYS = {**settings.DRF_LLM_KEYS, "MAX_CONCURRENT": 2}
    api_key, plaintext = key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client, f"/clients/{api_key.client_links.get().llm_client.slug}/admitted/"


def server_closes(response: Any) -> None:
    """``response.close()`` as the server calls it, keeping the test's database connection
    (the ``request_finished`` it sends would close it)."""
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


def test_requests_in_flight_are_capped_and_freed_when_their_response_ends(
    capped: tuple[APIClient, str],
) -> None:
    client, url = capped
    first, second = client.get(url, {"stream": 1, "completion": 3}), client.get(url, {"stream": 1})
    assert first.status_code == second.status_code == 200
    refused = client.get(url)
    assert refused.status_code == 429
    assert refused.json()["detail"].startswith("Too many requests in flight for this key: at most 2 at once.")
    assert 900 < int(refused["retry-after-ms"]) <= 1000 and refused["Retry-After"] == "1"
    assert b"".join(first.streaming_content) == b"xxx"
    server_closes(first)  # as a server does when the stream is sent
    assert client.get(url).status_code == 200  # plain: settled as it returned
    server_closes(second)  # a client that leaves mid-stream: the server closes it too
    assert [client.get(url).status_code for _ in range(3)] == [200, 200, 200]


def test_a_view_that_raises_after_its_admission_frees_its_slot(capped: tuple[APIClient, str]) -> None:
    client, url = capped
    client.raise_request_exception = False
    assert [client.get(url, {"fail": 1}).status_code for _ in range(3)] == [500, 500, 500]
    assert client.get(url).status_code == 200


def test_keys_without_limits_pay_no_call(cache_kind: str, key: Any, django_assert_num_queries: Any) -> None:
    api_key, plaintext = key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    url = f"/clients/{api_key.client_links.get().llm_client.slug}/admitted/"
    assert client.get(url).status_code == 200  # warm the decision
    calls = []
    real = ledger.Ledger.reserve
    ledger.Ledger.reserve = lambda *args, **kwargs: calls.append(args) or real(*args, **kwargs)  # type: ignore[method-assign]
    try:
        assert client.get(url).status_code == 200
    finally:
        ledger.Ledger.reserve = real  # type: ignore[method-assign]
    assert calls == []


@pytest.mark.parametrize("fail_open", [False, True])
def test_limits_fail_closed_when_the_cache_is_down_unless_told_to_open(
    fail_open: bool, redis_server: RedisServer, settings: Any, key: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The decision made (a held one), then the ledger unreachable: 503, or admitted and
    logged with LIMITS_FAIL_OPEN."""
    redis_server.resume()
    settings.CACHES = {"default": cache_config(redis_server, timeout=0.2)}
    settings.DRF_LLM_KEYS = {**settings.DRF_LLM_KEYS, "MAX_CONCURRENT": 2, "LIMITS_FAIL_OPEN": fail_open}
    reset()
    api_key, _ = key
    request = RequestFactory().get("/")
    request.auth = api_key  # type: ignore[attr-defined]
    setattr(request, CLIENT_ATTRIBUTE, {"lookup": api_key.client_links.get().llm_client.slug})
    setattr(request, limits.MIDDLEWARE_ATTRIBUTE, True)
    redis_server.pause()
    try:
        with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
            if fail_open:
                admission = limits.admit(request)
                assert admission is not None and admission.reservation is None
                admission.settle()  # nothing to settle, nothing raised
            else:
                with pytest.raises(limits.LimitsUnavailable) as refused:
                    limits.admit(request)
                assert refused.value.status_code == 503
    finally:
        redis_server.resume()
        reset()
    assert "limits unavailable" in caplog.text


def test_admit_without_the_middleware_is_a_configuration_error(key: Any) -> None:
    request = RequestFactory().get("/")
    request.auth = key[0]  # type: ignore[attr-defined]
    with pytest.raises(ImproperlyConfigured, match="LimitsMiddleware"):
        limits.admit(request)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_ninja_operations_admit_with_the_same_answers(
    kind: str, cache_kind: str, settings: Any, key: Any
) -> None:
    """A held slot (admitted by a DRF view, its stream open) refuses Ninja's operation too,
    with DRF's body and headers; freed, the operation is admitted."""
    settings.DRF_LLM_KEYS = {**settings.DRF_LLM_KEYS, "MAX_CONCURRENT": 1}
    api_key, plaintext = key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    slug = api_key.client_links.get().llm_client.slug
    holding = client.get(f"/clients/{slug}/admitted/", {"stream": 1})
    refused = client.get(f"/ninja/admitted/{slug}/{kind}/")
    assert refused.status_code == 429
    assert refused.json()["detail"].startswith("Too many requests in flight for this key: at most 1 at once.")
    assert 900 < int(refused["retry-after-ms"]) <= 1000
    server_closes(holding)
    assert client.get(f"/ninja/admitted/{slug}/{kind}/").status_code == 200
    assert client.get(f"/ninja/admitted/{slug}/{kind}/").status_code == 200  # settled when it returned


# --- budgets, through the middleware ------------------------------------------------------

# 1 USD per million tokens either way: a request of P prompt and N max tokens reserves
# (P + N) / 1,000,000 USD.
PRICED = {"PRICES": {"m-*": {"input": "1", "output": "1"}}}


@pytest.fixture
def budgeted(cache_kind: str, settings: Any, key: Any) -> tuple[Any, APIClient, str]:
    """A key with a budget of 0.001 USD a day (1,000 tokens at the test's price)."""
    settings.DRF_LLM_KEYS = {**settings.DRF_LLM_KEYS, **PRICED}
    api_key, plaintext = key
    keys.set_budget(api_key, "0.001", "day")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return api_key, client, f"/clients/{api_key.client_links.get().llm_client.slug}/admitted/"


def spend(client: APIClient, url: str, completion: int = 300, **params: Any) -> Any:
    return client.get(
        url, {"model": "m-1", "prompt": 100, "max_tokens": 400, "completion": completion, **params}
    )


@pytest.mark.parametrize("cache_kind", ["redis"], indirect=True)  # the one with round trips
def test_a_limited_request_waits_for_redis_once(
    budgeted: tuple[Any, APIClient, str], redis_server: RedisServer, settings: Any
) -> None:
    """Admitted with one script whose answer it waits for (EVALSHA); settled with one it does
    not wait for (EVAL, on the ledger's own connection), below the alert threshold."""
    settings.DRF_LLM_KEYS = {**settings.DRF_LLM_KEYS, "MAX_CONCURRENT": 2}
    _, client, url = budgeted
    assert spend(client, url, completion=10, max_tokens=10).status_code == 200  # warm, and connected
    server = redis_server.client()
    server.config_resetstat()
    for _ in range(3):
        assert spend(client, url, completion=10, max_tokens=10).status_code == 200
    calls = {name: stats["calls"] for name, stats in server.info("commandstats").items()}
    assert calls.get("cmdstat_evalsha") == 3  # the admissions
    assert calls.get("cmdstat_eval") == 3  # the settlements, sent without waiting
    assert calls.get("cmdstat_incrby") == 3  # each settlement ran: the spend added


def test_a_spent_budget_refuses_with_insufficient_quota_and_no_retry(
    budgeted: tuple[Any, APIClient, str],
) -> None:
    _, client, url = budgeted
    # 400 tokens each (0.0004): two fit, and a third's worst case (500) no longer does.
    assert [spend(client, url).status_code for _ in range(2)] == [200, 200]
    refused = spend(client, url)
    assert refused.status_code == 429
    assert refused.json()["detail"] == (
        "This key's budget of 0.001 USD per day has 0.0002 USD left, less than this request can cost."
    )
    assert refused["x-should-retry"] == "false"
    assert "Retry-After" not in refused
    # A smaller request still fits what is left.
    assert spend(client, url, completion=50, max_tokens=50, prompt=50).status_code == 200


def test_reservations_in_flight_count_before_anything_is_spent(budgeted: tuple[Any, APIClient, str]) -> None:
    _, client, url = budgeted
    streams = [spend(client, url, stream=1) for _ in range(2)]  # 0.0005 reserved each, open
    assert [stream.status_code for stream in streams] == [200, 200]
    assert spend(client, url).status_code == 429
    for stream in streams:
        assert b"".join(stream.streaming_content) == b"x" * 300
        server_closes(stream)  # each settles at 0.0004: 0.0002 left
    assert spend(client, url, max_tokens=50, prompt=50, completion=10).status_code == 200
    assert spend(client, url).status_code == 429


def test_an_owner_budget_is_shared_by_the_owners_keys(
    cache_kind: str, settings: Any, make_key: Any, owner: Any, protected_client: Any
) -> None:
    settings.DRF_LLM_KEYS = {**settings.DRF_LLM_KEYS, **PRICED}
    keys.set_owner_budget(owner, "0.001", "month")
    clients = []
    for _ in range(2):
        _, plaintext = make_key(protected_client)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
        clients.append(client)
    url = f"/clients/{protected_client.slug}/admitted/"
    assert [spend(client, url).status_code for client in clients] == [200, 200]
    refused = spend(clients[0], url)
    assert refused.status_code == 429
    assert refused.json()["detail"].startswith("The key owner's budget of 0.001 USD per month has ")
    assert spend(clients[1], url).status_code == 429


def test_a_budget_admits_only_priced_models(budgeted: tuple[Any, APIClient, str]) -> None:
    _, client, url = budgeted
    refused = client.get(url, {"model": "unpriced", "max_tokens": 10})
    assert refused.status_code == 403
    assert refused.json()["detail"] == "This key has a budget: it may only use a model with a price."


def test_the_threshold_signal_is_sent_once_per_period(budgeted: tuple[Any, APIClient, str]) -> None:
    _, client, url = budgeted
    received = []

    def receiver(sender: Any, budget: Any, spent: Any, limit: Any, **kwargs: Any) -> None:
        received.append((budget.scope, budget.period, spent, limit))

    signals.budget_threshold_reached.connect(receiver)
    try:
        assert spend(client, url, completion=200).status_code == 200  # 0.0003 of 0.001
        assert received == []
        assert spend(client, url, completion=400).status_code == 200  # 0.0008: 80 %
        assert spend(client, url, completion=50, max_tokens=50, prompt=50).status_code == 200  # 0.0009
    finally:
        signals.budget_threshold_reached.disconnect(receiver)
    assert received == [("key", "day", Decimal("0.0008"), Decimal("0.001"))]


def test_a_rotated_key_spends_the_same_budget(budgeted: tuple[Any, APIClient, str]) -> None:
    api_key, client, url = budgeted
    assert spend(client, url).status_code == 200  # 0.0004
    _, plaintext = keys.rotate_key(api_key, grace=timedelta(hours=1))
    rotated = APIClient()
    rotated.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert spend(rotated, url).status_code == 200  # 0.0008 together
    assert spend(rotated, url).status_code == 429
    assert spend(client, url).status_code == 429


def test_a_lost_spend_counter_is_refilled_from_the_written_usage(
    budgeted: tuple[Any, APIClient, str],
) -> None:
    _, client, url = budgeted
    assert [spend(client, url).status_code for _ in range(2)] == [200, 200]
    assert usage.flush()  # 0.0008 written to KeyUsage
    cache.clear()  # the cache loses the counter (and the decision: made again from the rows)
    reset()
    assert spend(client, url).status_code == 429


def test_an_async_stream_holds_its_slot_until_the_handler_closes_it(
    cache_kind: str, settings: Any, key: Any
) -> None:
    """An async operation's stream, through Django's ASGI handler: its slot is held while it
    streams, and freed when the handler closes the response after the last chunk."""
    settings.DRF_LLM_KEYS = {**settings.DRF_LLM_KEYS, "MAX_CONCURRENT": 1}
    api_key, plaintext = key
    url = f"/ninja/admitted/{api_key.client_links.get().llm_client.slug}/stream/"
    headers = {"Authorization": f"Bearer {plaintext}"}
    async_views.STREAM_GATE.clear()

    async def scenario() -> list[Any]:
        client = AsyncClient()
        streaming = asyncio.ensure_future(client.get(url, {"wait": True}, headers=headers))
        await asyncio.sleep(0.3)  # admitted, its first chunk sent, waiting at the gate
        refused = await client.get(url, headers=headers)
        async_views.STREAM_GATE.set()
        done = await asyncio.wait_for(streaming, 10)
        body = b"".join([chunk async for chunk in done.streaming_content])
        after = await client.get(url, headers=headers)
        return [refused.status_code, done.status_code, body, after.status_code]

    try:
        assert async_to_sync(scenario)() == [429, 200, b"xxx", 200]
    finally:
        async_views.STREAM_GATE.set()


def test_the_key_info_view_answers_what_admit_counts(budgeted: tuple[Any, APIClient, str]) -> None:
    """Spent as settled, and the worst case of a request in flight as reserved."""
    _, client, url = budgeted
    assert spend(client, url).status_code == 200  # 0.0004 settled
    stream = spend(client, url, stream=1)  # 0.0005 reserved while it is open
    info = client.get(url.replace("/admitted/", "/key/")).json()
    assert info["budget"] == {
        "limit": "0.001",
        "period": "day",
        "spent": "0.0004",
        "reserved": "0.0005",
        "remaining": "0.0001",
        "resets_at": info["budget"]["resets_at"],
    }
    assert info["max_concurrent"] is None
    server_closes(stream)


def test_a_spent_budget_refuses_even_a_request_that_claims_to_cost_nothing(
    budgeted: tuple[Any, APIClient, str],
) -> None:
    api_key, client, url = budgeted
    keys.set_budget(api_key, "0.0004", "day")
    assert spend(client, url, max_tokens=300).status_code == 200  # 0.0004: all of it
    assert spend(client, url, prompt=0, max_tokens=0, completion=0).status_code == 429


def test_a_database_error_while_seeding_reserves_nothing(cache_kind: str) -> None:
    """The counter lost and the database failing as it is read again: Unavailable (503, or
    admitted under LIMITS_FAIL_OPEN), and nothing held on any account."""

    def failing_seed() -> int:
        raise DatabaseError("the database went away")

    slots = account("slots-beside", 5)
    budget = account("unseeded", 100, ends_at=time.time() + 60, seed=failing_seed)
    with pytest.raises(ledger.Unavailable, match="went away"):
        ledger.get_ledger().reserve([(slots, 1), (budget, 10)], lease=60)
    assert ledger.get_ledger().standing([slots, budget]) == [(None, 0), (None, 0)]


@pytest.mark.slow
def test_settlements_follow_a_sentinel_failover_to_the_new_master(settings: Any, tmp_path: Any) -> None:
    """Behind Sentinel the ledger's own connection finds the master as the pool's do: after
    the master dies and its replica is promoted, reservations and unanswered settlements go
    to the new master, and nothing is left held there."""
    with (
        master_and_replica(tmp_path) as (master, replica),
        running_sentinel(tmp_path / "s", master) as sentinel,
    ):
        wait_until(lambda: sentinel.replicas() == 1, 15, "Sentinel knows the replica")
        settings.CACHES = {"default": sentinel.cache_config()}
        reset()
        slots = account("sentinel-slots", 1)
        budget = account("sentinel-budget", 1000, ends_at=time.time() + 60, seed=lambda: 0)
        try:
            for _ in range(5):
                ledger.get_ledger().reserve([(slots, 1), (budget, 10)], lease=60).settle({budget.name: 1})
            assert ledger.get_ledger().standing([slots, budget]) == [(None, 0), (5, 0)]
            wait_until(lambda: in_sync(master, replica), 10, "the replica in sync")
            master.kill()
            wait_until(lambda: sentinel.master_port() == replica.port, 30, "Sentinel promoted the replica")

            def settled_on_the_new_master() -> bool:
                try:
                    ledger.get_ledger().reserve([(slots, 1), (budget, 10)], lease=60).settle({budget.name: 1})
                except ledger.Unavailable:  # the pool's connections to the dead master fail once
                    return False
                return True

            wait_until(settled_on_the_new_master, 15, "a reservation on the new master")
            for _ in range(5):
                assert settled_on_the_new_master()
            ((_, held), (spent, reserved)) = ledger.get_ledger().standing([slots, budget])
            assert (held, reserved) == (0, 0) and spent == 11
            assert ledger.get_ledger().unanswered.waiting == 0  # type: ignore[attr-defined]
        finally:
            reset()
