"""Secrets: after a full key lifecycle, no cache entry, log record or response holds a
plaintext key, a key's secret part or a password hash (docs/design.md, "Invariants")."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.cache import caches
from django.core.cache.backends.filebased import FileBasedCache
from django.core.cache.backends.locmem import LocMemCache
from django.db import connections
from django.test import RequestFactory, override_settings
from django.utils import timezone
from django.views.debug import ExceptionReporter, get_default_exception_reporter_filter
from model_bakery import baker
from rest_framework.request import Request

from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication
from drf_llm_keys.conf import conf
from drf_llm_keys.decisions import store
from drf_llm_keys.models import APIKey, LLMClientAPIKey
from tests.support import bearer
from tests.support.databases import database_outage

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/clients/{}/echo/"
REPORTER_FILTER = "drf_llm_keys.debug.KeyCleansingExceptionReporterFilter"
# Django 6.0 takes ADMINS as addresses and deprecates (name, address) pairs; older versions
# accept only pairs.
ADMINS = ["ops@example.com"] if django.VERSION >= (6, 0) else [("Ops", "ops@example.com")]


def cache_entries() -> dict[str, bytes]:
    """Every entry of the library's cache alias, as raw stored bytes, by key."""
    cache = caches[conf.CACHE_ALIAS]
    if isinstance(cache, LocMemCache):
        return {key: bytes(value) for key, value in cache._cache.items()}
    if isinstance(cache, FileBasedCache):
        return {path.name: path.read_bytes() for path in Path(cache._dir).glob("*")}
    client = cache.client.get_client()  # django-redis
    prefix = cache.make_key("")
    return {key.decode(): client.get(key) or b"" for key in client.scan_iter(f"{prefix}*".encode())}


def readable(raw: bytes) -> str:
    """The entry as text: its bytes and, when it is a pickle, the unpickled value's repr."""
    text = raw.decode("latin-1")
    for start in range(min(len(raw), 8)):  # django-redis stores ints as digits, others pickled
        try:
            return text + repr(pickle.loads(raw[start:]))
        except Exception:
            continue
    return text


class Secrets:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def key(self, plaintext: str) -> str:
        self.values[f"key {plaintext[:17]}"] = plaintext
        self.values[f"secret of {plaintext[:17]}"] = plaintext.partition(".")[2]
        return plaintext

    def password_of(self, user: Any) -> None:
        user.refresh_from_db()
        self.values[f"password hash of {user.get_username()}"] = user.password

    def found_in(self, text: str) -> list[str]:
        return [name for name, value in self.values.items() if value and value in text]


@pytest.fixture
def secrets_seen() -> Secrets:
    return Secrets()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG."""
    # Django's own LOGGING puts "django" at INFO: its SQL records need their level set here.
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="django"):
        yield caplog


@pytest.fixture
def reporter_filter() -> Iterator[None]:
    """The library's error-report filter; Django caches the filter it built first."""
    get_default_exception_reporter_filter.cache_clear()
    with override_settings(DEFAULT_EXCEPTION_REPORTER_FILTER=REPORTER_FILTER):
        yield
    get_default_exception_reporter_filter.cache_clear()


@contextmanager
def sql_logged() -> Iterator[None]:
    """Log the SQL of what runs inside (requests, key writes): the library's queries carry
    no secret. Not around the test's own user writes: Django logs the row, hash included."""
    connection = connections["default"]
    connection.force_debug_cursor = True
    try:
        yield
    finally:
        connection.force_debug_cursor = False


def assert_nothing_leaked(
    secrets_seen: Secrets, logs: pytest.LogCaptureFixture, responses: list[Any]
) -> None:
    entries = cache_entries()
    assert entries, "the lifecycle should have left entries in the cache"
    for key, raw in entries.items():
        text = key + readable(raw)
        assert not secrets_seen.found_in(text), (key, secrets_seen.found_in(text))
        assert "password" not in text, key
    for record in logs.records:
        text = logs.handler.format(record) + str(record.args)
        assert not secrets_seen.found_in(text), (secrets_seen.found_in(text), text[:500])
    for response in responses:
        body = response.content.decode("latin-1") + str(response.headers)
        assert not secrets_seen.found_in(body), (response.status_code, secrets_seen.found_in(body))
    for message in mail.outbox:  # the error reports Django e-mails to ADMINS
        text = message.subject + message.body + "".join(str(a[0]) for a in message.alternatives)
        assert not secrets_seen.found_in(text), (message.subject, secrets_seen.found_in(text))


def test_full_lifecycle_leaves_no_secret_in_the_cache_or_the_logs(
    api, secrets_seen, logs, tmp_path, reporter_filter
):
    user_model = get_user_model()
    owner = user_model._default_manager.create_user(username="owner", password="correct horse battery")
    other_owner = user_model._default_manager.create_user(username="other", password="tr0ub4dor&3")
    secrets_seen.password_of(owner)
    secrets_seen.password_of(other_owner)
    bot = baker.make_recipe("tests.protected_client", slug="bot")
    flagged = baker.make_recipe("tests.protected_client", slug="flagged")
    other_bot = baker.make_recipe("tests.llm_client", slug="other-bot")
    baker.make_recipe("tests.llm_client", slug="public")
    responses: list[Any] = []

    def create(user: Any, *clients: Any) -> tuple[APIKey, str]:
        with sql_logged():
            api_key, plaintext = APIKey.objects.create_key(user=user, name="lifecycle")
            for llm_client in clients:
                LLMClientAPIKey.objects.create(llm_client=llm_client, api_key=api_key)
        return api_key, secrets_seen.key(plaintext)

    def send(slug: str, **headers: str) -> int:
        with sql_logged():
            response = api.get(URL.format(slug), **headers)
        responses.append(response)
        return response.status_code

    first, first_key = create(owner, bot, flagged)
    second, second_key = create(owner, bot)
    other, other_key = create(other_owner, other_bot)

    # In use: accepted, refused every way, malformed headers carrying the key.
    assert send("bot", **bearer(first_key)) == 200
    assert send("bot", HTTP_X_API_KEY=second_key) == 200
    assert send("flagged", HTTP_AUTHORIZATION=f"Token {first_key}") == 200
    assert send("bot", **bearer(other_key)) == 401
    assert send("bot", **bearer(first_key[:-2] + "xy")) == 401
    assert send("bot", HTTP_AUTHORIZATION=f"Bearer {first_key} {second_key}") == 401
    assert send("bot", HTTP_X_API_KEY=first_key, **bearer(second_key)) == 401
    assert send("bot", HTTP_X_API_KEY=f"{first_key}\x00") == 401
    assert send("other-bot", **bearer(first_key)) == 401
    assert send("public", **bearer(first_key)) == 200
    assert send("no-such-bot", **bearer(first_key)) == 404
    assert LLMClientAPIKey.get_cached_objects(llm_client=bot).count() == 2

    # Rotation and every way out of service.
    third, third_key = create(owner, bot)
    first.is_active = False
    first.save()
    assert send("bot", **bearer(first_key)) == 401
    APIKey.objects.filter(pk=second.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert send("bot", **bearer(second_key)) == 401
    LLMClientAPIKey.objects.filter(api_key=other).delete()
    assert send("other-bot", **bearer(other_key)) == 200  # public now: served anonymously
    assert send("bot", **bearer(third_key)) == 200
    owner.set_password("a new password")
    owner.save()
    secrets_seen.password_of(owner)
    assert send("bot", **bearer(third_key)) == 200
    owner.is_active = False
    owner.save()
    assert send("bot", **bearer(third_key)) == 401

    # Faults log warnings and errors with tracebacks: the cache raising, the database gone.
    broken = {**settings.CACHES, "broken": {"BACKEND": "tests.support.caches.BrokenCache"}}
    with override_settings(CACHES=broken, DRF_LLM_KEYS={"CACHE_ALIAS": "broken"}):
        assert send("bot", **bearer(third_key)) == 401
        assert send("flagged", **bearer(first_key)) == 401
        APIKey.objects.filter(pk=third.pk).update(is_active=False)
    # A 5xx e-mails a report of the request to ADMINS (Django's default logging): with the
    # library's filter it shows no key header (Django < 5.0 shows Authorization otherwise).
    with database_outage(tmp_path), override_settings(ADMINS=ADMINS):
        assert send("flagged", **bearer(first_key)) == 503
        assert send("flagged", HTTP_X_API_KEY=first_key) == 503
    assert len(mail.outbox) == 2, "each 503 should have e-mailed its report"
    assert "database unavailable" in logs.text and "cache read failed" in logs.text
    # The library's own queries are in the logs too.
    assert any(
        all(word in r.getMessage() for word in ("SELECT", "digest", "drf_llm_keys_apikey"))
        for r in logs.records
    )

    # The end: keys deleted, the owner deleted (its keys stay, refused).
    _, fourth_key = create(other_owner, flagged)
    assert send("flagged", **bearer(fourth_key)) == 200
    assert_nothing_leaked(secrets_seen, logs, responses)
    second.delete()
    other_owner.delete()
    assert send("flagged", **bearer(fourth_key)) == 401
    assert send("bot", **bearer(third_key)) == 401
    assert_nothing_leaked(secrets_seen, logs, responses)


@pytest.mark.parametrize("header", ["X-API-Key", "X-LLM-Credential"])
def test_error_reports_hide_the_key_headers(key, header, reporter_filter):
    _, plaintext = key
    meta_name = "HTTP_" + header.upper().replace("-", "_")
    request = RequestFactory().get("/", HTTP_AUTHORIZATION=f"Bearer {plaintext}", **{meta_name: plaintext})
    with override_settings(DRF_LLM_KEYS={"HEADER": header}):
        report = ExceptionReporter(request, None, None, None)
        text, html = report.get_traceback_text(), report.get_traceback_html()
    assert "HTTP_AUTHORIZATION" in text and meta_name in text  # shown, with their values hidden
    assert plaintext not in text and plaintext not in html


def test_error_reports_hide_the_key_in_the_authenticators_frames(key, reporter_filter, monkeypatch):
    """An unexpected error inside the decision: the report's frame variables name no key."""
    _, plaintext = key

    def unexpected(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(store, "lookup", unexpected)
    request = RequestFactory().get("/", **bearer(plaintext))
    drf_request = Request(request, parser_context={"kwargs": {"llm_client": "protected-bot"}})
    with pytest.raises(RuntimeError) as raised:
        LLMClientAPIKeyAuthentication().authenticate(drf_request)
    # From the library's frames on: this test's own frame holds the key, of course.
    report = ExceptionReporter(request, raised.type, raised.value, raised.tb.tb_next)
    text, html = report.get_traceback_text(), report.get_traceback_html()
    assert "authenticate_client" in text  # the frame is in the report...
    assert plaintext not in text and plaintext not in html  # ...without the key


def test_the_scan_finds_a_plaintext_key_planted_in_the_cache(secrets_seen, key):
    # The scan above proves nothing unless it can see a secret where one is.
    _, plaintext = key
    secrets_seen.key(plaintext)
    caches[conf.CACHE_ALIAS].set("planted", {"leak": plaintext})
    leaked = [name for name, raw in cache_entries().items() if secrets_seen.found_in(name + readable(raw))]
    assert len(leaked) == 1
