from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.shortcuts import get_object_or_404
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory, force_authenticate

from drf_llm_keys import get_client_model, keys
from drf_llm_keys.checks import check_throttle_rates
from drf_llm_keys.conf import conf
from drf_llm_keys.models import LLMClientAPIKey
from drf_llm_keys.throttling import APIKeyRateThrottle, parse_rate
from tests.support import bearer

from .views import PerViewEcho, WhoAmI

pytestmark = pytest.mark.django_db

factory = APIRequestFactory()


class ThrottledEcho(PerViewEcho):
    throttle_classes = [APIKeyRateThrottle]


class ThrottledNotAClient(WhoAmI):
    permission_classes = [AllowAny]
    throttle_classes = [APIKeyRateThrottle]


def echo(slug: str, **headers: Any) -> Response:
    response: Response = ThrottledEcho.as_view()(
        factory.get(f"/clients/{slug}/echo/", **headers), llm_client=slug
    )
    return response


def statuses(slug: str, times: int, **headers: Any) -> list[int]:
    return [echo(slug, **headers).status_code for _ in range(times)]


def test_a_key_beyond_its_rate_gets_429_with_retry_after(settings, key):
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "2/hour"}
    _, plaintext = key
    assert statuses("protected-bot", 2, **bearer(plaintext)) == [200, 200]
    refused = echo("protected-bot", **bearer(plaintext))
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 3600


def test_each_key_has_its_own_budget(settings, make_key, protected_client):
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "1/hour"}
    _, first = make_key(protected_client)
    _, second = make_key(protected_client)
    assert statuses("protected-bot", 2, **bearer(first)) == [200, 429]
    assert statuses("protected-bot", 2, **bearer(second)) == [200, 429]


def test_a_rotated_key_and_its_replacement_share_one_rate(settings, key):
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "2/hour"}
    old, old_plaintext = key
    assert statuses("protected-bot", 2, **bearer(old_plaintext)) == [200, 200]
    _, new_plaintext = keys.rotate_key(old)
    assert statuses("protected-bot", 1, **bearer(new_plaintext)) == [429]
    assert statuses("protected-bot", 1, **bearer(old_plaintext)) == [429]  # still in its grace period


def test_a_key_has_one_budget_per_client(settings, make_key, protected_client):
    other = protected_client.__class__.objects.create(name="Other", slug="other-bot")
    _, plaintext = make_key(protected_client, other)
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "1/hour"}
    assert statuses("protected-bot", 2, **bearer(plaintext)) == [200, 429]
    assert statuses("other-bot", 2, **bearer(plaintext)) == [200, 429]


def test_anonymous_requests_to_a_public_client_are_counted_per_ip(settings, public_client):
    settings.DRF_LLM_KEYS = {"ANONYMOUS_THROTTLE_RATE": "2/hour", "THROTTLE_RATE": "100/hour"}
    assert statuses("public-bot", 3, REMOTE_ADDR="10.0.0.1") == [200, 200, 429]
    assert statuses("public-bot", 3, REMOTE_ADDR="10.0.0.2") == [200, 200, 429]


def test_keyed_requests_do_not_spend_the_anonymous_rate(settings, key):
    settings.DRF_LLM_KEYS = {"ANONYMOUS_THROTTLE_RATE": "0/hour"}
    _, plaintext = key
    assert statuses("protected-bot", 3, **bearer(plaintext)) == [200, 200, 200]


def test_a_client_rate_overrides_the_default(settings, key, make_key, public_client):
    settings.DRF_LLM_KEYS = {
        "THROTTLE_RATE": "100/hour",
        "ANONYMOUS_THROTTLE_RATE": "100/hour",
        "THROTTLE_RATES": {"protected-bot": "1/hour", "public-bot": "2/hour"},
    }
    _, plaintext = key
    assert statuses("protected-bot", 2, **bearer(plaintext)) == [200, 429]
    assert statuses("public-bot", 3) == [200, 200, 429]


def test_a_client_rate_of_none_means_no_limit(settings, key):
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "1/hour", "THROTTLE_RATES": {"protected-bot": None}}
    _, plaintext = key
    assert statuses("protected-bot", 3, **bearer(plaintext)) == [200, 200, 200]


def test_without_rates_nothing_is_throttled(key, public_client):
    _, plaintext = key
    assert statuses("protected-bot", 3, **bearer(plaintext)) == [200, 200, 200]
    assert statuses("public-bot", 3) == [200, 200, 200]


def test_views_without_a_client_are_not_throttled(settings):
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "0/hour", "ANONYMOUS_THROTTLE_RATE": "0/hour"}
    view = ThrottledNotAClient.as_view()
    assert [view(factory.get("/whoami/")).status_code for _ in range(2)] == [200, 200]


class ThrottledClientEcho(ThrottledEcho):
    """Finds its client in the database, as real views do (an unknown one is a 404)."""

    def get(self, request: Request, **kwargs: Any) -> Response:
        get_object_or_404(get_client_model(), **{conf.CLIENT_LOOKUP_FIELD: kwargs["llm_client"]})
        return super().get(request, **kwargs)


@pytest.mark.parametrize(
    ("lookup_field", "spelling"),
    [
        ("pk", "0{pk}"),  # an integer field parses "01" as 1, on every database
        ("slug", "PROTECTED-BOT"),  # MariaDB's *_ci collations match "protected-bot"
    ],
)
def test_another_spelling_of_a_client_spends_the_same_budget(
    settings, key, protected_client, lookup_field, spelling
):
    canonical = str(getattr(protected_client, lookup_field))
    spelling = spelling.format(pk=protected_client.pk)
    settings.DRF_LLM_KEYS = {
        "CLIENT_LOOKUP_FIELD": lookup_field,
        "THROTTLE_RATE": "100/hour",
        "THROTTLE_RATES": {canonical: "1/hour"},
    }
    _, plaintext = key
    view = ThrottledClientEcho.as_view()
    assert view(factory.get("/", **bearer(plaintext)), llm_client=canonical).status_code == 200
    again = view(factory.get("/", **bearer(plaintext)), llm_client=spelling)
    assert again.status_code in (429, 404)  # 404: a database that does not match this spelling


def test_the_budget_comes_back_in_the_next_window(settings, key):
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "1/second"}
    _, plaintext = key
    time.sleep(1 - time.time() % 1)  # start a fresh one-second window
    assert statuses("protected-bot", 2, **bearer(plaintext)) == [200, 429]
    time.sleep(1 - time.time() % 1)
    assert echo("protected-bot", **bearer(plaintext)).status_code == 200


@pytest.mark.django_db(transaction=True)  # the threads' own connections see committed rows only
def test_concurrent_requests_never_overspend_the_budget(settings, key, owner, protected_client):
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "10/hour"}
    api_key, _ = key
    assert LLMClientAPIKey.has_active_api_key(protected_client)
    threads, per_thread = 8, 5
    barrier = threading.Barrier(threads)
    allowed: list[bool] = []

    def hammer() -> None:
        barrier.wait()
        for _ in range(per_thread):
            request = factory.get("/clients/protected-bot/echo/")
            force_authenticate(request, user=owner, token=api_key)
            drf_request = Request(request, parser_context={"kwargs": {"llm_client": "protected-bot"}})
            allowed.append(APIKeyRateThrottle().allow_request(drf_request, None))  # type: ignore[arg-type]

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(allowed) == threads * per_thread
    assert allowed.count(True) == 10


def test_an_unreachable_cache_lets_requests_through_and_logs(settings, key, caplog):
    # A real Redis client pointed at a closed port: every cache call fails.
    settings.CACHES = {
        **settings.CACHES,
        "down": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
        },
    }
    settings.DRF_LLM_KEYS = {"CACHE_ALIAS": "down", "THROTTLE_RATE": "1/hour"}
    _, plaintext = key
    with caplog.at_level(logging.WARNING, logger="drf_llm_keys"):
        assert statuses("protected-bot", 2, **bearer(plaintext)) == [200, 200]
    assert "throttle counter unavailable" in caplog.text


@pytest.mark.parametrize(
    ("rate", "expected"),
    [("100/minute", (100, 60)), ("5/s", (5, 1)), ("1/hour", (1, 3600)), ("0/day", (0, 86400)), (None, None)],
)
def test_rates_read_like_drf_rates(rate, expected):
    assert parse_rate(rate) == expected


@pytest.mark.parametrize("rate", ["100", "x/minute", "10/fortnight", "-1/minute", "/minute", ""])
def test_a_malformed_rate_is_a_configuration_error(settings, rate, key):
    with pytest.raises(ImproperlyConfigured, match="Invalid DRF_LLM_KEYS throttle rate"):
        parse_rate(rate)
    settings.DRF_LLM_KEYS = {"THROTTLE_RATES": {"protected-bot": rate}}
    [error] = check_throttle_rates()
    assert error.id == "drf_llm_keys.E004"
    assert "THROTTLE_RATES']['protected-bot']" in error.msg


def test_well_formed_rates_pass_the_check(settings):
    settings.DRF_LLM_KEYS = {
        "THROTTLE_RATE": "10/minute",
        "ANONYMOUS_THROTTLE_RATE": None,
        "THROTTLE_RATES": {"a": "1/day"},
    }
    assert check_throttle_rates() == []
