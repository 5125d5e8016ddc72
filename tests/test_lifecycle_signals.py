import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.test import TestCase

from drf_llm_keys import keys, signals
from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication
from drf_llm_keys.models import APIKey
from tests.support import bearer

pytestmark = pytest.mark.django_db

URL = "/clients/protected-bot/echo/"


class Received(list[dict[str, Any]]):
    def __call__(self, **kwargs: Any) -> None:
        self.append(kwargs)


@pytest.fixture
def received() -> Iterator[dict[str, Received]]:
    public = {
        "key_created": signals.key_created,
        "key_rotated": signals.key_rotated,
        "key_revoked": signals.key_revoked,
        "authentication_refused": signals.authentication_refused,
    }
    receivers = {name: Received() for name in public}
    for name, signal in public.items():
        signal.connect(receivers[name], dispatch_uid=f"test-{name}")
    yield receivers
    for name, signal in public.items():
        signal.disconnect(dispatch_uid=f"test-{name}")


def committed(operation: Any) -> Any:
    with TestCase.captureOnCommitCallbacks(execute=True):
        return operation()


def secrets_of(plaintext: str, api_key: APIKey) -> list[str]:
    return [plaintext, plaintext.partition(".")[2], api_key.digest]


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every message and every extra field logged by drf_llm_keys, as one text."""
    standard = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
    parts = []
    for record in caplog.records:
        if record.name == "drf_llm_keys":
            parts.append(record.getMessage())
            parts += [f"{k}={v}" for k, v in record.__dict__.items() if k not in standard]
    return "\n".join(parts)


def test_key_created_is_sent_with_the_key_and_its_clients(received, owner, protected_client):
    api_key, _ = committed(lambda: keys.create_key([protected_client], user=owner, name="ci"))
    (event,) = received["key_created"]
    assert event["sender"] is APIKey
    assert event["api_key"] == api_key
    assert event["llm_clients"] == [protected_client]


def test_no_signal_is_sent_when_the_transaction_rolls_back(received, owner, protected_client):
    with TestCase.captureOnCommitCallbacks(execute=True), pytest.raises(RuntimeError):
        with transaction.atomic():
            keys.create_key([protected_client], user=owner, name="ci")
            raise RuntimeError("rolled back")
    assert received["key_created"] == []
    assert not APIKey.objects.exists()


def test_key_rotated_is_sent_with_the_new_key_the_old_one_and_the_grace(received, key, protected_client):
    old, _ = key
    new, _ = committed(lambda: keys.rotate_key(old, timedelta(hours=2)))
    (event,) = received["key_rotated"]
    assert event["api_key"] == new
    assert event["old_key"] == old and event["old_key"].expires_at is not None
    assert event["grace"] == timedelta(hours=2)
    assert event["llm_clients"] == [protected_client]
    assert received["key_created"] == []  # a rotation is its own event


def test_key_revoked_is_sent_with_the_clients_made_public(received, key, protected_client):
    api_key, _ = key
    committed(lambda: keys.revoke_key(api_key, allow_public=True))
    (event,) = received["key_revoked"]
    assert event["api_key"] == api_key and not event["api_key"].is_active
    assert event["llm_clients"] == [protected_client]
    assert event["made_public"] == [protected_client]


def test_a_refused_revoke_sends_nothing(received, key):
    api_key, _ = key
    with pytest.raises(keys.LastActiveKeyError):
        committed(lambda: keys.revoke_key(api_key))
    assert received["key_revoked"] == []


def test_authentication_refused_is_sent_with_the_reason_and_the_prefix(
    received, api, make_key, protected_client
):
    api_key, plaintext = make_key(protected_client, is_active=False)
    make_key(protected_client)
    assert api.get(URL, **bearer(plaintext)).status_code == 401
    (event,) = received["authentication_refused"]
    assert event["sender"] is LLMClientAPIKeyAuthentication
    assert event["llm_client"] == "protected-bot"
    assert event["prefix"] == api_key.prefix
    assert event["reason"] == "API key has been revoked."
    assert event["request"].path == URL


def test_authentication_refused_is_sent_for_a_missing_key(received, api, key):
    assert api.get(URL).status_code == 401
    (event,) = received["authentication_refused"]
    assert event["prefix"] is None
    assert event["reason"] == "This LLM client requires an API key."


def test_authentication_refused_is_sent_for_a_malformed_header_without_naming_it(received, api, key):
    assert api.get(URL, HTTP_AUTHORIZATION="Bearer a b").status_code == 401
    (event,) = received["authentication_refused"]
    assert event["prefix"] is None


@pytest.mark.parametrize("path", [URL, "/clients/public-bot/echo/"])
def test_no_refusal_is_signalled_for_a_served_request(received, api, key, public_client, path):
    _, plaintext = key
    assert api.get(path, **bearer(plaintext)).status_code == 200
    assert received["authentication_refused"] == []


def test_lifecycle_log_lines_name_the_event_and_prefix_but_no_secret(caplog, owner, protected_client):
    caplog.set_level(logging.INFO, logger="drf_llm_keys")
    created, created_plaintext = committed(lambda: keys.create_key([protected_client], user=owner, name="ci"))
    rotated, rotated_plaintext = committed(lambda: keys.rotate_key(created, timedelta(0)))
    committed(lambda: keys.revoke_key(rotated, allow_public=True))
    text = logged(caplog)
    events = [r.event for r in caplog.records if r.name == "drf_llm_keys"]
    assert events == ["key_created", "key_rotated", "key_revoked"]
    assert created.prefix in text and rotated.prefix in text and "protected-bot" in text
    created.refresh_from_db()
    rotated.refresh_from_db()
    for secret in secrets_of(created_plaintext, created) + secrets_of(rotated_plaintext, rotated):
        assert secret not in text


def test_a_refusal_log_line_names_the_prefix_but_no_secret(caplog, api, make_key, protected_client):
    caplog.set_level(logging.INFO, logger="drf_llm_keys")
    make_key(protected_client)
    api_key, plaintext = make_key(protected_client, is_active=False)
    assert api.get(URL, **bearer(plaintext)).status_code == 401
    text = logged(caplog)
    assert "authentication refused" in text and api_key.prefix in text and "revoked" in text
    for secret in secrets_of(plaintext, api_key):
        assert secret not in text


def test_an_update_of_scopes_or_models_is_logged_after_commit_without_a_secret(caplog, key):
    caplog.set_level(logging.INFO, logger="drf_llm_keys")
    api_key, plaintext = key
    committed(lambda: keys.update_restrictions(api_key, scopes=["chat"], allowed_models=["gpt-4o*"]))
    (record,) = [r for r in caplog.records if r.name == "drf_llm_keys"]
    assert (record.event, record.prefix, record.scopes, record.allowed_models) == (
        "key_updated",
        api_key.prefix,
        ["chat"],
        ["gpt-4o*"],
    )
    text = logged(caplog)
    for secret in secrets_of(plaintext, api_key):
        assert secret not in text
