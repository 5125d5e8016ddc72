import re
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from model_bakery import baker

from drf_llm_keys import crypto, decisions, keys
from drf_llm_keys.models import APIKey

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("90d", timedelta(days=90)),
        ("2w", timedelta(weeks=2)),
        ("0", timedelta(0)),
        (" 7d ", timedelta(days=7)),
    ],
)
def test_parse_duration_reads_a_number_and_a_unit(text, expected):
    assert keys.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "90", "d", "1.5h", "1h30m", "-1h", "3y", "90D", "5 d", "99999999999d"])
def test_parse_duration_refuses_anything_else(text):
    with pytest.raises(ValueError, match="Invalid duration"):
        keys.parse_duration(text)


def test_parse_expiry_keeps_an_explicit_offset():
    assert keys.parse_expiry("2099-01-31T12:00:00+02:00").isoformat() == "2099-01-31T12:00:00+02:00"


def test_parse_expiry_reads_a_date_alone_as_its_midnight_in_the_current_time_zone(settings):
    settings.TIME_ZONE = "Europe/Paris"
    assert keys.parse_expiry("2099-01-31").isoformat() == "2099-01-31T00:00:00+01:00"


@pytest.mark.parametrize("text", ["", "2099-02-30", "31/01/2099 12:00", "2099-13-01T00:00", "tomorrow"])
def test_parse_expiry_refuses_what_is_not_an_iso_date_and_time(text):
    with pytest.raises(ValueError, match="ISO 8601"):
        keys.parse_expiry(text)


def test_clients_left_public_ignores_clients_that_require_a_key(make_key, protected_client):
    closed = baker.make_recipe("tests.protected_client")
    api_key, _ = make_key(protected_client, closed)
    assert keys.clients_left_public(api_key) == [protected_client]


def race(*operations: Callable[[], Any]) -> list[Any]:
    """Run the operations at the same moment in threads; returns each result or exception."""
    barrier = threading.Barrier(len(operations))
    results: list[Any] = [None] * len(operations)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = operations[index]()
        except (keys.KeyLifecycleError, DatabaseError) as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(operations))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_revokes_of_a_clients_last_two_keys_leave_it_protected(make_key, protected_client):
    first, _ = make_key(protected_client)
    second, _ = make_key(protected_client)
    results = race(lambda: keys.revoke_key(first), lambda: keys.revoke_key(second))
    # The loser is refused by the guard (PostgreSQL waits on the client row lock) or by
    # the database itself (SQLite's writer lock); either way one key stays active.
    assert sum(isinstance(r, Exception) for r in results) == 1, results
    assert APIKey.objects.filter(is_active=True).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_rotations_of_one_client_issue_one_replacement(make_key, protected_client):
    make_key(protected_client)
    results = race(
        lambda: keys.rotate_client_key(protected_client, timedelta(hours=1)),
        lambda: keys.rotate_client_key(protected_client, timedelta(hours=1)),
    )
    assert sum(isinstance(r, Exception) for r in results) == 1, results
    assert APIKey.objects.count() == 2
    assert keys.working_keys(protected_client).count() == 2


def test_rotating_an_expired_key_issues_a_working_replacement_and_keeps_it_expired(
    make_key, protected_client
):
    expired_at = timezone.now() - timedelta(days=1)
    old, _ = make_key(protected_client, expires_at=expired_at)
    new, _ = keys.rotate_key(old, timedelta(days=1))
    old.refresh_from_db()
    assert old.expires_at == expired_at
    assert list(keys.working_keys(protected_client)) == [new]


# --- scopes and allowed models ----------------------------------------------------------


def test_create_key_sets_scopes_and_models_without_duplicates(owner, protected_client):
    api_key, _ = keys.create_key(
        [protected_client],
        user=owner,
        name="ci",
        scopes=["chat", "files", "chat"],
        allowed_models=["gpt-4o*", "echo", "gpt-4o*"],
    )
    api_key.refresh_from_db()
    assert (api_key.scopes, api_key.allowed_models) == (["chat", "files"], ["gpt-4o*", "echo"])


def test_a_key_is_unrestricted_by_default(owner):
    api_key, _ = APIKey.objects.create_key(user=owner, name="ci")
    assert (api_key.scopes, api_key.allowed_models) == ([], [])
    assert api_key.has_scopes("anything") and api_key.allows_model("anything")


BAD_RESTRICTIONS = [
    ({"scopes": [""]}, "Invalid scope ''"),
    ({"scopes": ["  "]}, "non-empty name"),
    ({"scopes": ["chat "]}, "remove the spaces around it"),
    ({"scopes": ["chat\n"]}, "remove the spaces around it"),
    ({"scopes": ["a\tb"]}, "no comma or line break"),
    ({"scopes": ["all*"]}, "only in model patterns"),
    ({"scopes": [1]}, "non-empty name"),
    ({"scopes": "chat"}, "must be a list of names, not str"),
    ({"allowed_models": [None]}, "Invalid model None"),
    ({"allowed_models": ["gpt*4"]}, "only at the end of a model pattern"),
    ({"allowed_models": ["**"]}, "only at the end of a model pattern"),
    ({"allowed_models": {"echo": 1}}, "must be a list of names, not dict"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_RESTRICTIONS)
def test_create_key_refuses_bad_scopes_or_models_and_writes_nothing(owner, protected_client, fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        keys.create_key([protected_client], user=owner, name="ci", **fields)
    with pytest.raises(ValidationError, match=re.escape(message)):
        APIKey.objects.create_key(user=owner, name="ci", **fields)
    assert not APIKey.objects.exists()


@pytest.mark.parametrize(("fields", "message"), BAD_RESTRICTIONS)
def test_clean_reports_bad_scopes_or_models_on_their_field(owner, fields, message):
    api_key = APIKey(user=owner, name="ci", prefix="p", digest="d", **fields)
    with pytest.raises(ValidationError) as invalid:
        api_key.full_clean()
    ((field, (text,)),) = invalid.value.message_dict.items()
    assert field == next(iter(fields)) and message in text


def test_clean_removes_duplicates(owner):
    api_key = APIKey(user=owner, name="ci", scopes=["a", "b", "a"], allowed_models=["x*", "x*"])
    api_key.clean()
    assert (api_key.scopes, api_key.allowed_models) == (["a", "b"], ["x*"])


def test_rotation_carries_scopes_and_models(make_key, protected_client):
    old, _ = make_key(protected_client, scopes=["chat"], allowed_models=["echo", "gpt-4o*"])
    new, _ = keys.rotate_key(old, timedelta(0))
    new.refresh_from_db()
    assert (new.scopes, new.allowed_models) == (["chat"], ["echo", "gpt-4o*"])
    _, newer, _ = keys.rotate_client_key(protected_client, timedelta(0))
    assert (newer.scopes, newer.allowed_models) == (["chat"], ["echo", "gpt-4o*"])


def test_update_restrictions_replaces_the_lists_given(make_key, protected_client):
    api_key, _ = make_key(protected_client, scopes=["chat"], allowed_models=["echo"])
    keys.update_restrictions(api_key, scopes=["files", "files"])
    assert (api_key.scopes, api_key.allowed_models) == (["files"], ["echo"])
    api_key.refresh_from_db()
    assert (api_key.scopes, api_key.allowed_models) == (["files"], ["echo"])
    keys.update_restrictions(api_key, allowed_models=[])
    api_key.refresh_from_db()
    assert (api_key.scopes, api_key.allowed_models) == (["files"], [])


@pytest.mark.parametrize(("fields", "message"), BAD_RESTRICTIONS)
def test_update_restrictions_refuses_bad_input_and_changes_nothing(
    make_key, protected_client, fields, message
):
    api_key, _ = make_key(protected_client, scopes=["chat"], allowed_models=["echo"])
    with pytest.raises(ValidationError, match=re.escape(message)):
        keys.update_restrictions(api_key, **fields)
    api_key.refresh_from_db()
    assert (api_key.scopes, api_key.allowed_models) == (["chat"], ["echo"])


# --- a change whose invalidation cannot reach the cache ------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_revoke_the_cache_does_not_take_raises_invalidation_pending_after_committing(
    make_key, protected_client, cache_down
):
    api_key, _ = make_key(protected_client)
    make_key(protected_client)
    with pytest.raises(keys.InvalidationPending) as pending:
        keys.revoke_key(api_key)
    assert not APIKey.objects.get(pk=api_key.pk).is_active  # committed
    assert pending.value.clients == ["protected-bot"]
    assert pending.value.result == []  # what revoke_key returns: no client made public
    message = str(pending.value)
    assert "committed in the database" in message
    assert "up to 300 seconds (CACHE_TIMEOUT)" in message
    assert "`manage.py llm_keys invalidate protected-bot`" in message


@pytest.mark.django_db(transaction=True)
def test_a_created_key_whose_invalidation_is_pending_is_handed_over_but_never_in_the_message(
    owner, protected_client, cache_down
):
    with pytest.raises(keys.InvalidationPending) as pending:
        keys.create_key([protected_client], user=owner, name="ci")
    api_key, plaintext = pending.value.result
    assert APIKey.objects.get(pk=api_key.pk).digest == crypto.hash_key(plaintext)
    assert plaintext not in repr(pending.value) and plaintext not in str(pending.value.args)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("operation", ["rotate_key", "rotate_client_key", "update", "keep_protected"])
def test_every_operation_reports_a_pending_invalidation(make_key, protected_client, cache_down, operation):
    api_key, _ = make_key(protected_client)
    run = {
        "rotate_key": lambda: keys.rotate_key(api_key),
        "rotate_client_key": lambda: keys.rotate_client_key(protected_client),
        "update": lambda: keys.update_restrictions(api_key, scopes=["chat"]),
        "keep_protected": lambda: keys.revoke_key_keep_protected(api_key),
    }[operation]
    with pytest.raises(keys.InvalidationPending) as pending:
        run()
    assert pending.value.clients == ["protected-bot"]


@pytest.mark.django_db(transaction=True)
def test_inside_the_callers_transaction_the_check_is_the_callers(make_key, protected_client, cache_down):
    api_key, _ = make_key(protected_client)
    make_key(protected_client)
    with transaction.atomic():
        keys.revoke_key(api_key)  # nothing published yet: no wait, no raise
    assert not decisions.wait_published(timeout=0)


@pytest.mark.django_db(transaction=True)
def test_an_operation_returns_normally_once_the_cache_takes_it(make_key, protected_client, flaky):
    api_key, _ = make_key(protected_client)
    make_key(protected_client)
    assert keys.revoke_key(api_key) == []
    assert not decisions.pending_invalidations()


def test_the_callers_instance_saves_against_what_an_operation_stored(key):
    api_key, _ = key
    keys.update_restrictions(api_key, scopes=["chat"])
    api_key.scopes = []  # back to what it was before the operation
    api_key.save()
    assert APIKey.objects.get(pk=api_key.pk).scopes == []
