import json
import os
import shlex
import signal
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, models
from django.db.models.signals import post_save
from django.test import TestCase
from django.utils import timezone
from model_bakery import baker
from rest_framework.test import APIClient

from drf_llm_keys import crypto, decisions
from drf_llm_keys.decisions.names import generation_name
from drf_llm_keys.models import APIKey, LLMClientAPIKey, PendingInvalidation
from tests.support import bearer, free_port, wait_until
from tests.support.harness import Worker

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    """Run ``llm_keys`` as a committed operation would: on-commit work (invalidation) runs."""
    out, err = StringIO(), StringIO()
    with TestCase.captureOnCommitCallbacks(execute=True):
        call_command("llm_keys", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def snapshot() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (
        list(APIKey.objects.order_by("pk").values()),
        list(LLMClientAPIKey.objects.order_by("pk").values()),
    )


def refused(*args: str) -> str:
    """Run a command that must fail; returns its message after checking nothing changed."""
    before = snapshot()
    with pytest.raises(CommandError) as excinfo:
        run(*args)
    assert snapshot() == before
    return str(excinfo.value)


def status(api: Any, plaintext: str | None, client: str = "protected-bot") -> int:
    headers = bearer(plaintext) if plaintext else {}
    return api.get(f"/clients/{client}/echo/", **headers).status_code


# --- create -----------------------------------------------------------------------------


def test_create_prints_the_plaintext_alone_on_stdout(owner, protected_client):
    out, _err = run("create", "protected-bot", "--user", "owner", "--name", "ci")
    plaintext = out.strip()
    api_key = APIKey.objects.get()
    assert out == plaintext + "\n"
    assert crypto.split_key(plaintext) == api_key.prefix
    assert api_key.digest == crypto.hash_key(plaintext)


def test_create_warns_on_stderr_that_the_key_cannot_be_shown_again(owner, protected_client):
    out, err = run("create", "protected-bot", "--user", "owner", "--name", "ci")
    assert "cannot be shown again" in err
    assert out.strip() not in err


def test_create_maps_the_key_to_the_client_which_then_requires_it(api, owner, protected_client):
    assert status(api, None) == 200
    out, _ = run("create", "protected-bot", "--user", "owner", "--name", "ci")
    api_key = APIKey.objects.get()
    assert api_key.user == owner and api_key.name == "ci" and api_key.expires_at is None
    assert list(LLMClientAPIKey.objects.values_list("llm_client", "api_key")) == [
        (protected_client.pk, api_key.pk)
    ]
    assert status(api, None) == 401
    assert status(api, out.strip()) == 200


@pytest.mark.parametrize(
    ("flag", "expected"),
    [("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("2w", timedelta(weeks=2))],
)
def test_create_expires_in_sets_the_expiry(owner, protected_client, flag, expected):
    run("create", "protected-bot", "--user", "owner", "--name", "ci", "--expires-in", flag)
    expires_at = APIKey.objects.get().expires_at
    assert abs(expires_at - (timezone.now() + expected)) < timedelta(seconds=30)


def test_create_expires_at_takes_an_iso_8601_date_and_time(owner, protected_client):
    run("create", "protected-bot", "--user", "owner", "--name", "ci", "--expires-at", "2099-01-31T12:00:00Z")
    assert APIKey.objects.get().expires_at.isoformat() == "2099-01-31T12:00:00+00:00"


def test_create_expires_at_without_offset_is_read_in_the_current_time_zone(owner, protected_client, settings):
    settings.TIME_ZONE = "Europe/Paris"
    run("create", "protected-bot", "--user", "owner", "--name", "ci", "--expires-at", "2099-01-31T12:00")
    assert APIKey.objects.get().expires_at.isoformat() == "2099-01-31T11:00:00+00:00"


def test_create_json_holds_the_plaintext_and_the_record(owner, protected_client):
    out, _ = run("create", "protected-bot", "--user", "owner", "--name", "ci", "--json")
    document = json.loads(out)
    api_key = APIKey.objects.get()
    assert crypto.hash_key(document["key"]) == api_key.digest
    assert document["prefix"] == api_key.prefix
    assert document["clients"] == ["protected-bot"]
    assert document["owner"] == "owner"
    assert "digest" not in document


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["unknown-bot", "--user", "owner", "--name", "ci"], "No LLM client with slug 'unknown-bot'"),
        (["protected-bot", "--user", "nobody", "--name", "ci"], "No user 'nobody'"),
        (["protected-bot", "--user", "owner", "--name", "  "], "needs a name"),
        (["protected-bot", "--user", "owner", "--name", "ci", "--expires-in", "90"], "Invalid duration '90'"),
        (["protected-bot", "--user", "owner", "--name", "ci", "--expires-in", "3y"], "Invalid duration '3y'"),
        (["protected-bot", "--user", "owner", "--name", "ci", "--expires-in=-5d"], "Invalid duration"),
        (["protected-bot", "--user", "owner", "--name", "ci", "--expires-in", "0"], "at once"),
        (["protected-bot", "--user", "owner", "--name", "ci", "--expires-in", "99999w"], "100 years"),
        (
            ["protected-bot", "--user", "owner", "--name", "ci", "--expires-at", "2001-01-01T00:00Z"],
            "not in the future",
        ),
        (["protected-bot", "--user", "owner", "--name", "ci", "--expires-at", "tomorrow"], "ISO 8601"),
        (
            ["protected-bot", "--user", "owner", "--name", "ci", "--expires-at", "2099-02-30T00:00"],
            "ISO 8601",
        ),
        (
            [
                "protected-bot",
                "--user",
                "owner",
                "--name",
                "ci",
                "--expires-in",
                "1d",
                "--expires-at",
                "2099-01-01T00:00",
            ],
            "not allowed with argument",
        ),
        (["protected-bot", "--name", "ci"], "--user"),
        (["protected-bot", "--user", "owner"], "--name"),
    ],
)
def test_create_bad_input_is_a_command_error_and_changes_nothing(owner, protected_client, args, message):
    assert message in refused("create", *args)


def test_create_for_an_inactive_user_is_refused(protected_client):
    baker.make("auth.User", username="gone", is_active=False)
    assert "active user" in refused("create", "protected-bot", "--user", "gone", "--name", "ci")


# --- list -------------------------------------------------------------------------------


def test_list_shows_prefix_name_owner_clients_and_state(make_key, protected_client):
    api_key, _plaintext = make_key(protected_client)
    out, _ = run("list")
    header, row = out.splitlines()
    assert header.split() == [
        *("PREFIX", "NAME", "OWNER", "CLIENTS", "ACTIVE", "EXPIRES", "LAST", "USED", "SCOPES", "MODELS"),
        *("BUDGET", "MAX", "CONCURRENT"),
    ]
    assert row.split() == [
        *(api_key.prefix, "test", "key", "owner", "protected-bot", "yes", "never", "never", "all", "any"),
        *("-", "-"),
    ]


def test_list_never_shows_a_digest_or_a_plaintext(make_key, protected_client):
    api_key, plaintext = make_key(protected_client)
    out, err = run("list", "--all", "--json")
    text, _ = run("list", "--all")
    for shown in (out, err, text):
        assert api_key.digest not in shown
        assert plaintext.partition(".")[2] not in shown


def test_list_hides_revoked_keys_unless_all(make_key, protected_client):
    live, _ = make_key(protected_client)
    revoked, _ = make_key(protected_client, is_active=False)
    assert [r["prefix"] for r in json.loads(run("list", "--json")[0])] == [live.prefix]
    assert {r["prefix"] for r in json.loads(run("list", "--all", "--json")[0])} == {
        live.prefix,
        revoked.prefix,
    }
    assert "revoked" in run("list", "--all")[0]


def test_list_filters_by_client(make_key, protected_client, public_client):
    mine, _ = make_key(protected_client)
    make_key(public_client)
    records = json.loads(run("list", "protected-bot", "--json")[0])
    assert [r["prefix"] for r in records] == [mine.prefix]


def test_list_json_gives_each_field(make_key, protected_client):
    expires_at = timezone.now() - timedelta(days=1)
    api_key, _ = make_key(protected_client, expires_at=expires_at)
    APIKey.objects.filter(pk=api_key.pk).update(last_used_at=expires_at)
    (record,) = json.loads(run("list", "--json")[0])
    assert record == {
        "prefix": api_key.prefix,
        "name": "test key",
        "owner": "owner",
        "clients": ["protected-bot"],
        "is_active": True,
        "expired": True,
        "expires_at": timezone.localtime(expires_at).isoformat(timespec="seconds"),
        "last_used_at": timezone.localtime(expires_at).isoformat(timespec="seconds"),
        "created_at": timezone.localtime(api_key.created_at).isoformat(timespec="seconds"),
        "scopes": [],
        "allowed_models": [],
        "budget": None,
        "max_concurrent": None,
    }


def test_list_marks_expired_keys(make_key, protected_client):
    make_key(protected_client, expires_at=timezone.now() - timedelta(minutes=1))
    assert "(expired)" in run("list")[0]


@pytest.mark.parametrize(
    "args",
    [
        ("create", "protected-bot", "--user", "owner", "--name", "a\x00b"),
        ("create", "protected-bot\x00", "--user", "owner", "--name", "a"),
        ("list", "protected-bot\x00"),
        ("revoke", "llmk_\x00"),
        ("create", "protected-bot", "--user", "owner", "--name", "a", "--scope", "chat\x00"),
    ],
)
def test_a_nul_character_in_an_argument_is_a_command_error(key, args):
    # No shell passes one, but call_command() does: PostgreSQL refused it with a DataError
    # traceback, SQLite stored it.
    assert "NUL" in refused(*args)


def test_list_of_an_unknown_client_is_a_command_error(db):
    assert "No LLM client" in refused("list", "nope")


# --- rotate -----------------------------------------------------------------------------


def test_rotate_by_prefix_issues_a_replacement_with_the_same_owner_name_and_clients(
    make_key, protected_client, public_client
):
    old, _ = make_key(protected_client, public_client, description="for CI")
    out, _ = run("rotate", old.prefix)
    new = APIKey.objects.get(digest=crypto.hash_key(out.strip()))
    assert new.pk != old.pk
    assert (new.user, new.name, new.description, new.expires_at) == (old.user, old.name, "for CI", None)
    assert set(new.client_links.values_list("llm_client", flat=True)) == {
        protected_client.pk,
        public_client.pk,
    }


def test_rotate_keeps_the_old_key_working_for_the_grace_period(api, key):
    old, old_plaintext = key
    assert status(api, old_plaintext) == 200  # warm the cache
    out, err = run("rotate", old.prefix, "--grace", "2h")
    old.refresh_from_db()
    assert abs(old.expires_at - (timezone.now() + timedelta(hours=2))) < timedelta(seconds=30)
    assert "keeps working until" in err
    assert status(api, old_plaintext) == 200
    assert status(api, out.strip()) == 200


def test_rotate_defaults_to_a_24_hour_grace(key):
    old, _ = key
    run("rotate", old.prefix)
    old.refresh_from_db()
    assert abs(old.expires_at - (timezone.now() + timedelta(hours=24))) < timedelta(seconds=30)


def test_rotate_with_grace_0_stops_the_old_key_at_once(api, key):
    old, old_plaintext = key
    assert status(api, old_plaintext) == 200
    out, err = run("rotate", old.prefix, "--grace", "0")
    assert "no longer works" in err
    response = api.get("/clients/protected-bot/echo/", **bearer(old_plaintext))
    assert response.status_code == 401
    assert response.json()["detail"] == "API key has expired."
    assert status(api, out.strip()) == 200


def test_rotate_by_client_replaces_its_one_working_key(key, make_key, protected_client):
    old, _ = key
    make_key(protected_client, is_active=False)
    make_key(protected_client, expires_at=timezone.now() - timedelta(days=1))
    out, err = run("rotate", "protected-bot")
    assert old.prefix in err
    old.refresh_from_db()
    assert old.expires_at is not None
    assert crypto.split_key(out.strip()) in err


def test_rotate_by_client_again_during_the_grace_period_is_refused(key):
    old, _ = key
    run("rotate", "protected-bot")
    message = refused("rotate", "protected-bot")
    assert "2 working keys" in message and old.prefix in message and "PREFIX" in message


def test_rotate_by_client_with_several_keys_is_refused_and_names_them(make_key, protected_client):
    first, _ = make_key(protected_client)
    second, _ = make_key(protected_client)
    message = refused("rotate", "protected-bot")
    assert first.prefix in message and second.prefix in message


def test_rotate_by_client_without_a_working_key_is_refused(make_key, protected_client):
    make_key(protected_client, expires_at=timezone.now() - timedelta(days=1))
    assert "no working key" in refused("rotate", "protected-bot")


def test_rotate_by_prefix_again_issues_another_key_and_never_extends_the_old_one(key):
    old, _ = key
    first, _ = run("rotate", old.prefix, "--grace", "1h")
    old.refresh_from_db()
    retire_at = old.expires_at
    second, _ = run("rotate", old.prefix, "--grace", "2d")
    old.refresh_from_db()
    assert old.expires_at == retire_at
    assert first != second
    assert APIKey.objects.filter(is_active=True).count() == 3


def test_rotate_never_moves_an_earlier_expiry_later(make_key, protected_client):
    soon = timezone.now() + timedelta(minutes=5)
    old, _ = make_key(protected_client, expires_at=soon)
    run("rotate", old.prefix, "--grace", "1d")
    old.refresh_from_db()
    assert old.expires_at == soon


def test_rotate_expires_in_sets_the_new_keys_expiry(key):
    old, _ = key
    out, _ = run("rotate", old.prefix, "--expires-in", "30d")
    new = APIKey.objects.get(digest=crypto.hash_key(out.strip()))
    assert abs(new.expires_at - (timezone.now() + timedelta(days=30))) < timedelta(seconds=30)


def test_rotate_json_holds_the_new_key_and_the_old_one(key):
    old, _ = key
    out, _ = run("rotate", old.prefix, "--json")
    document = json.loads(out)
    assert crypto.hash_key(document["key"]) == APIKey.objects.get(prefix=document["prefix"]).digest
    assert document["old_key"]["prefix"] == old.prefix
    assert document["old_key"]["expires_at"] is not None


def test_rotate_creates_and_expires_in_one_transaction(key, protected_client):
    old, _ = key

    def fail(**kwargs: Any) -> None:
        raise RuntimeError("mapping failed")

    post_save.connect(fail, sender=LLMClientAPIKey, dispatch_uid="test-fail")
    try:
        before = snapshot()
        with pytest.raises(RuntimeError):
            run("rotate", old.prefix)
        assert snapshot() == before
    finally:
        post_save.disconnect(dispatch_uid="test-fail", sender=LLMClientAPIKey)


def test_rotate_a_revoked_key_is_refused(make_key, protected_client):
    old, _ = make_key(protected_client, is_active=False)
    assert "revoked" in refused("rotate", old.prefix)


def test_rotate_a_key_without_an_owner_is_refused(key, owner):
    old, _ = key
    owner.delete()
    assert "no active owner" in refused("rotate", old.prefix)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nothing"], "No API key prefix or LLM client 'nothing'"),
        (["protected-bot", "--grace", "soon"], "Invalid duration 'soon'"),
        (["protected-bot", "--grace=-1h"], "Invalid duration"),
        (["protected-bot", "--expires-in", "0"], "at once"),
        (["protected-bot", "--expires-at", "2001-01-01T00:00Z"], "not in the future"),
    ],
)
def test_rotate_bad_input_is_a_command_error_and_changes_nothing(key, args, message):
    assert message in refused("rotate", *args)


def test_rotate_a_name_that_is_both_a_prefix_and_a_client_is_refused(key):
    old, _ = key
    baker.make_recipe("tests.llm_client", slug=old.prefix)
    assert "both a key prefix and a client" in refused("rotate", old.prefix)


# --- revoke -----------------------------------------------------------------------------


def test_revoke_refuses_a_clients_last_active_key_and_says_why(key):
    api_key, _ = key
    message = refused("revoke", api_key.prefix)
    assert "last active key of protected-bot" in message
    assert "public" in message and "--yes" in message


def test_revoke_yes_revokes_the_last_key_and_the_client_turns_public(api, key):
    api_key, _plaintext = key
    assert status(api, None) == 401
    out, _ = run("revoke", api_key.prefix, "--yes")
    api_key.refresh_from_db()
    assert not api_key.is_active
    assert "protected-bot now has no active key and is PUBLIC: anyone gets in" in out
    assert "refused from now on" not in out
    assert status(api, None) == 200
    assert status(api, _plaintext) == 200  # the revoked key too, as the message says


def test_revoke_takes_effect_at_once(api, key, make_key, protected_client):
    api_key, plaintext = key
    make_key(protected_client)
    assert status(api, plaintext) == 200  # cached as valid
    out, _ = run("revoke", api_key.prefix)
    assert "Revoked" in out
    response = api.get("/clients/protected-bot/echo/", **bearer(plaintext))
    assert response.status_code == 401
    assert response.json()["detail"] == "API key has been revoked."


def test_revoke_needs_no_yes_when_the_client_requires_a_key_anyway(make_key):
    llm_client = baker.make_recipe("tests.protected_client")
    api_key, _ = make_key(llm_client)
    run("revoke", api_key.prefix)
    api_key.refresh_from_db()
    assert not api_key.is_active


def test_revoke_needs_no_yes_when_an_expired_key_keeps_the_client_protected(
    api, key, make_key, protected_client
):
    api_key, _ = key
    make_key(protected_client, expires_at=timezone.now() - timedelta(days=1))
    run("revoke", api_key.prefix)
    assert status(api, None) == 401


@pytest.mark.django_db(transaction=True)  # the writes above publish theirs: the outbox is empty
def test_revoke_an_already_revoked_key_changes_nothing_and_invalidates_its_clients_again(
    make_key, protected_client
):
    api_key, _ = make_key(protected_client, is_active=False)
    assert not PendingInvalidation.objects.exists()
    before, generation = snapshot(), cache.get(generation_name("protected-bot"))
    out, _ = run("revoke", api_key.prefix)
    assert out == (
        f"Key {api_key.prefix} is already revoked; its clients' cached decisions were invalidated again.\n"
    )
    assert snapshot() == before
    assert cache.get(generation_name("protected-bot")) not in (None, generation)


def test_revoke_json_gives_the_record_and_the_clients_made_public(key):
    api_key, _ = key
    document = json.loads(run("revoke", api_key.prefix, "--yes", "--json")[0])
    assert document["prefix"] == api_key.prefix
    assert document["is_active"] is False
    assert document["made_public"] == ["protected-bot"]


def test_revoke_an_unknown_prefix_is_a_command_error(key):
    assert "No API key with prefix 'llmk_nope'" in refused("revoke", "llmk_nope")


def test_revoke_keep_protected_revokes_the_last_key_and_the_client_refuses_it(api, key, protected_client):
    api_key, plaintext = key
    assert status(api, plaintext) == 200  # cached as valid
    out, _ = run("revoke", api_key.prefix, "--keep-protected")
    api_key.refresh_from_db()
    protected_client.refresh_from_db()
    assert not api_key.is_active and protected_client.require_api_key
    assert "refused from now on" in out and "protected-bot" in out and "require_api_key" in out
    assert status(api, plaintext) == 401
    assert status(api, None) == 401


def test_revoke_keep_protected_leaves_a_client_with_other_keys_alone(api, key, make_key, protected_client):
    api_key, plaintext = key
    make_key(protected_client)
    document = json.loads(run("revoke", api_key.prefix, "--keep-protected", "--json")[0])
    protected_client.refresh_from_db()
    assert document["kept_protected"] == [] and document["made_public"] == []
    assert not protected_client.require_api_key
    assert status(api, plaintext) == 401


def test_revoke_keep_protected_json_names_the_clients_kept_protected(key):
    api_key, _ = key
    document = json.loads(run("revoke", api_key.prefix, "--keep-protected", "--json")[0])
    assert document["is_active"] is False
    assert document["kept_protected"] == ["protected-bot"] and document["made_public"] == []


@pytest.mark.django_db(transaction=True)
def test_revoke_keep_protected_of_an_already_revoked_key_changes_nothing(make_key, protected_client):
    api_key, _ = make_key(protected_client, is_active=False)
    assert not PendingInvalidation.objects.exists()
    before, generation = snapshot(), cache.get(generation_name("protected-bot"))
    out, _ = run("revoke", api_key.prefix, "--keep-protected")
    protected_client.refresh_from_db()
    assert "already revoked; its clients' cached decisions were invalidated again" in out
    assert snapshot() == before and not protected_client.require_api_key
    assert cache.get(generation_name("protected-bot")) not in (None, generation)


def test_revoke_without_consent_names_both_ways_out(key):
    message = refused("revoke", key[0].prefix)
    assert "--keep-protected" in message and "--yes" in message


def test_revoke_yes_and_keep_protected_together_are_refused(key):
    assert "not allowed with argument" in refused("revoke", key[0].prefix, "--yes", "--keep-protected")


# --- input that a user gets wrong --------------------------------------------------------


@pytest.mark.parametrize("action", [["revoke"], ["rotate"], ["usage"]])
def test_a_whole_key_where_a_prefix_is_expected_is_refused_without_echoing_the_secret(key, action):
    api_key, plaintext = key
    name, *options = action
    message = refused(name, plaintext, *options)
    assert "pass only the part before the dot (the prefix)" in message
    assert api_key.prefix in message
    assert plaintext.split(".", 1)[1] not in message


@pytest.mark.parametrize(
    "args",
    [
        ["list", "KEY"],
        ["create", "KEY", "--user", "owner", "--name", "x"],
        ["client", "create", "KEY", "--name", "x"],
    ],
)
def test_a_whole_key_where_a_client_is_expected_asks_for_the_client(key, args):
    api_key, plaintext = key
    message = refused(*(plaintext if arg == "KEY" else arg for arg in args))
    assert "where a client is expected: pass the client's slug, e.g. support-bot." in message
    assert "part before the dot" not in message
    assert api_key.prefix in message
    assert plaintext.split(".", 1)[1] not in message


def test_a_prefix_with_a_dot_is_refused_as_a_pasted_key(key):
    message = refused("revoke", "llmk_0123.partial-secret")
    assert "part before the dot" in message and "partial-secret" not in message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["create", "protected-bot", "--user", "owner", "--name", "ci", "--expires-in", "-5d"],
            "Invalid duration '-5d'",
        ),
        (["rotate", "protected-bot", "--grace", "-5d"], "Invalid duration '-5d'"),
        (["rotate", "protected-bot", "--expires-in", "-1h"], "Invalid duration '-1h'"),
        (["rotate", "protected-bot", "--grace", "-5"], "Invalid duration '-5'"),
    ],
)
def test_a_negative_duration_reaches_the_command_and_is_refused(key, args, message):
    assert message in refused(*args)


@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31T23:59:59-05:00",
        "9999-12-31T23:59:59",
        "9999-12-31",
        "2200-01-01T00:00Z",
        "0001-01-01T00:00+01:00",
    ],
)
@pytest.mark.parametrize(
    "action", [["create", "protected-bot", "--user", "owner", "--name", "ci"], ["rotate", "protected-bot"]]
)
def test_an_out_of_range_expiry_is_a_command_error(key, settings, action, value):
    settings.TIME_ZONE = "America/New_York"  # a naive 9999-12-31T23:59:59 is past the last UTC time too
    message = refused(*action, "--expires-at", value)
    assert value[:10] in message
    assert "100 years" in message or "not in the future" in message


@pytest.mark.parametrize(
    "action", ["create", "list", "rotate", "revoke", "client create", "client list", "invalidate"]
)
def test_every_subcommand_explains_each_of_its_arguments(action, capsys):
    with pytest.raises(SystemExit):
        call_command("llm_keys", *action.split(), "--help")
    text = capsys.readouterr().out
    lines = text.split("\n\n", 1)[1].splitlines()  # what follows the usage
    # argparse puts a bare name on a line of its own when its help follows on the next line.
    for line, following in zip(lines, [*lines[1:], ""], strict=True):
        if line.startswith("  ") and not line.startswith("   ") and line.strip() not in ("", "ACTION"):
            described = len(line.strip().split("  ")) > 1 or following.startswith("      ")
            assert described, f"{action}: {line.strip()} has no help"


# --- scopes and models ------------------------------------------------------------------

CREATE = ("create", "protected-bot", "--user", "owner", "--name", "ci")


def test_create_sets_scopes_and_models_without_duplicates(owner, protected_client):
    run(
        *CREATE,
        "--scope",
        "chat",
        "--scope",
        "files",
        "--scope",
        "chat",
        "--model",
        "gpt-4o*",
        "--model",
        "echo",
    )
    api_key = APIKey.objects.get()
    assert (api_key.scopes, api_key.allowed_models) == (["chat", "files"], ["gpt-4o*", "echo"])


def test_create_json_and_list_show_scopes_and_models(owner, protected_client):
    document = json.loads(run(*CREATE, "--scope", "chat", "--model", "echo", "--json")[0])
    assert (document["scopes"], document["allowed_models"]) == (["chat"], ["echo"])
    (record,) = json.loads(run("list", "--json")[0])
    assert (record["scopes"], record["allowed_models"]) == (["chat"], ["echo"])
    row = run("list")[0].splitlines()[1].split()
    assert row[-4:-2] == ["chat", "echo"]


BAD_NAMES = [
    (["--scope", ""], "Invalid scope ''"),
    (["--scope", "   "], "Invalid scope '   '"),
    (["--scope", " chat"], "remove the spaces"),
    (["--scope", "chat*"], "only in model patterns"),
    (["--scope", "a,b"], "no comma"),
    (["--model", ""], "Invalid model ''"),
    (["--model", "gpt-4o "], "remove the spaces"),
    (["--model", "gpt-*-mini"], "only at the end of a model pattern"),
    (["--model", "gpt-4o**"], "only at the end of a model pattern"),
    (["--model", "echo", "--model", "*x"], "only at the end of a model pattern"),
]


@pytest.mark.parametrize(("args", "message"), BAD_NAMES)
def test_create_with_bad_scopes_or_models_is_a_command_error_and_changes_nothing(
    owner, protected_client, args, message
):
    assert message in refused(*CREATE, *args)


def test_update_replaces_only_the_lists_given(make_key, protected_client):
    api_key, _ = make_key(protected_client, scopes=["chat"], allowed_models=["echo"])
    out, _ = run("update", api_key.prefix, "--scope", "files", "--scope", "chat")
    api_key.refresh_from_db()
    assert (api_key.scopes, api_key.allowed_models) == (["files", "chat"], ["echo"])
    assert out.strip() == (
        f"Updated key {api_key.prefix} (test key): scopes files,chat; models echo; "
        "max concurrent no cap. Applied from the next request on."
    )
    run("update", api_key.prefix, "--model", "gpt-4o*")
    api_key.refresh_from_db()
    assert (api_key.scopes, api_key.allowed_models) == (["files", "chat"], ["gpt-4o*"])


def test_update_clear_lifts_a_restriction(make_key, protected_client):
    api_key, _ = make_key(protected_client, scopes=["chat"], allowed_models=["echo"])
    document = json.loads(run("update", api_key.prefix, "--clear-scopes", "--clear-models", "--json")[0])
    assert (document["scopes"], document["allowed_models"]) == ([], [])
    api_key.refresh_from_db()
    assert (api_key.scopes, api_key.allowed_models) == ([], [])


def test_update_takes_effect_on_the_next_request(api, make_key, protected_client):
    api_key, plaintext = make_key(protected_client, scopes=["chat", "files"])
    assert api.get("/scoped/protected-bot/echo/", **bearer(plaintext)).status_code == 200
    run("update", api_key.prefix, "--scope", "chat")
    response = api.get("/scoped/protected-bot/echo/", **bearer(plaintext))
    assert response.status_code == 403
    assert response.json() == {"detail": "API key lacks scope(s): files."}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        *BAD_NAMES,
        (["--scope", "chat", "--clear-scopes"], "not allowed with argument"),
        (["--model", "echo", "--clear-models"], "not allowed with argument"),
        ([], "Nothing to update"),
    ],
)
def test_update_bad_input_is_a_command_error_and_changes_nothing(make_key, protected_client, args, message):
    api_key, _ = make_key(protected_client, scopes=["chat"], allowed_models=["echo"])
    assert message in refused("update", api_key.prefix, *args)


def test_update_an_unknown_prefix_is_a_command_error(key):
    assert "No API key with prefix 'llmk_nope'" in refused("update", "llmk_nope", "--scope", "chat")


def test_rotate_carries_scopes_and_models_to_the_new_key(make_key, protected_client):
    api_key, _ = make_key(protected_client, scopes=["chat"], allowed_models=["gpt-4o*"])
    document = json.loads(run("rotate", api_key.prefix, "--json")[0])
    new = APIKey.objects.get(prefix=document["prefix"])
    assert (new.scopes, new.allowed_models) == (["chat"], ["gpt-4o*"])


# --- from a shell -----------------------------------------------------------------------


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    return manage_on(os.environ.get("DRF_LLM_KEYS_TEST_REDIS_URL"), *args)


def manage_on(redis_url: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """``manage.py llm_keys ARGS`` in a process of its own, on this test database and
    ``redis_url`` (or the local-memory cache)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    env["DRF_LLM_KEYS_TEST_DB_NAME"] = connection.settings_dict["NAME"]
    env.pop("DRF_LLM_KEYS_TEST_REDIS_URL", None)
    if redis_url is not None:
        env["DRF_LLM_KEYS_TEST_REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "django", "llm_keys", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.django_db(transaction=True)
def test_a_refusal_exits_non_zero_with_the_message_on_stderr(owner, protected_client):
    result = manage("create", "unknown-bot", "--user", "owner", "--name", "ci")
    assert result.returncode == 1
    assert "CommandError: No LLM client with slug 'unknown-bot'" in result.stderr
    assert result.stdout == ""
    assert not APIKey.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_shell_can_capture_just_the_key(owner, protected_client):
    result = manage("create", "protected-bot", "--user", "owner", "--name", "ci")
    assert result.returncode == 0, result.stderr
    assert APIKey.objects.get().digest == crypto.hash_key(result.stdout.strip())


# --- a change whose invalidation cannot reach the cache, and invalidate -------------------


def revoke_behind_the_caches_back(api_key: APIKey) -> None:
    """A write that invalidates nothing: Django's plain QuerySet, no signal."""
    models.QuerySet(APIKey).filter(pk=api_key.pk).update(is_active=False)


@pytest.mark.django_db(transaction=True)
def test_revoke_with_the_cache_unreachable_fails_and_names_the_window(
    key, make_key, protected_client, cache_down
):
    api_key, _ = key
    make_key(protected_client)
    out = StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("llm_keys", "revoke", api_key.prefix, stdout=out, stderr=StringIO())
    message = str(failed.value)
    assert "The change is committed in the database" in message
    assert "other processes may keep deciding as before it (a revoked key still accepted)" in message
    assert "up to 300 seconds (CACHE_TIMEOUT)" in message
    assert "`manage.py llm_keys invalidate protected-bot`" in message
    assert "refused from now on" not in out.getvalue()
    assert not APIKey.objects.get(pk=api_key.pk).is_active


@pytest.mark.django_db(transaction=True)
def test_create_with_the_cache_unreachable_prints_the_key_then_fails(owner, protected_client, cache_down):
    out = StringIO()
    with pytest.raises(CommandError, match="committed in the database"):
        call_command("llm_keys", "create", "protected-bot", "--user", "owner", "--name", "ci", stdout=out)
    assert APIKey.objects.get().digest == crypto.hash_key(out.getvalue().strip())


@pytest.mark.django_db(transaction=True)
def test_update_with_the_cache_unreachable_does_not_say_applied(key, cache_down):
    out = StringIO()
    with pytest.raises(CommandError, match="committed in the database"):
        call_command("llm_keys", "update", key[0].prefix, "--scope", "chat", stdout=out)
    assert "Applied" not in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_invalidate_makes_every_process_reload_the_client(api, key, make_key, protected_client):
    api_key, plaintext = key
    make_key(protected_client)
    assert status(api, plaintext) == 200
    revoke_behind_the_caches_back(api_key)
    assert status(api, plaintext) == 200  # the cached decision still holds
    out, _ = run("invalidate", "protected-bot")
    assert out == "Invalidated 1 client(s): every process reloads their decisions.\n"
    assert status(api, plaintext) == 401


@pytest.mark.django_db(transaction=True)
def test_invalidate_all_reaches_every_client(api, make_key, protected_client, public_client, owner):
    keys = [make_key(c) for c in (protected_client, protected_client, public_client, public_client)]
    for (_, plaintext), client in zip(keys, ["protected-bot"] * 2 + ["public-bot"] * 2, strict=True):
        assert status(api, plaintext, client) == 200
    revoke_behind_the_caches_back(keys[0][0])
    revoke_behind_the_caches_back(keys[2][0])
    out, _ = run("invalidate", "--all")
    assert out.startswith("Invalidated 2 client(s)")
    assert status(api, keys[0][1]) == 401
    assert status(api, keys[2][1], "public-bot") == 401


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "No LLM client with slug 'nope'."),
        (["protected-bot", "nope"], "No LLM client with slug 'nope'."),
        ([], "Name the clients to invalidate, or pass --all or --pending (one of the three)."),
        (["protected-bot", "--all"], "Name the clients to invalidate, or pass --all or --pending"),
    ],
)
def test_invalidate_bad_input_is_a_command_error(protected_client, args, message):
    before = cache.get(generation_name("protected-bot"))
    with pytest.raises(CommandError) as failed:
        run("invalidate", *args)
    assert message in str(failed.value)
    assert cache.get(generation_name("protected-bot")) == before  # nothing written


def test_invalidate_all_and_pending_together_are_refused(db):
    with pytest.raises(CommandError, match="not allowed with argument"):
        run("invalidate", "--all", "--pending")


@pytest.mark.django_db(transaction=True)
def test_invalidate_with_the_cache_unreachable_fails(protected_client, cache_down):
    with pytest.raises(CommandError) as failed:
        run("invalidate", "protected-bot")
    assert "could not be reached within 0.1 seconds (PUBLISH_TIMEOUT)" in str(failed.value)
    assert "Run `manage.py llm_keys invalidate protected-bot` again when it is back." in str(failed.value)


def revoke_unpublished(api: Any, api_key: APIKey, plaintext: str, flaky: Any, settings: Any) -> None:
    """Revoke the key with the cache down: committed, left in the outbox, in a process
    that has exited; the key, held as valid, is still accepted."""
    assert status(api, plaintext) == 200
    settings.DRF_LLM_KEYS = {"PUBLISH_TIMEOUT": 0.1}
    flaky.down = True
    with pytest.raises(CommandError):
        run("revoke", api_key.prefix)
    decisions.reset()  # that command's process has exited
    flaky.down = False
    assert status(api, plaintext) == 200  # the window the failure named


@pytest.mark.django_db(transaction=True)
def test_invalidate_pending_republishes_what_a_failed_change_left(
    api, key, make_key, protected_client, flaky, settings
):
    api_key, plaintext = key
    make_key(protected_client)
    revoke_unpublished(api, api_key, plaintext, flaky, settings)
    out, _ = run("invalidate", "--pending")
    assert out == "Republished 1 pending invalidation(s).\n"
    assert status(api, plaintext) == 401
    assert not PendingInvalidation.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "action",
    [
        ["create", "other-bot", "--user", "owner", "--name", "another"],
        ["update", "{other}", "--scope", "chat"],
        ["rotate", "{other}", "--grace", "1h"],
        ["revoke", "{other}"],
        ["client", "create", "new-bot", "--name", "New"],
    ],
)
def test_a_change_publishes_first_what_an_earlier_one_left_unpublished(
    api, make_key, protected_client, flaky, settings, action
):
    api_key, plaintext = make_key(protected_client)
    make_key(protected_client)
    other_client = baker.make_recipe("tests.llm_client", slug="other-bot")
    other, _ = make_key(other_client)  # each change below is to another client
    make_key(other_client)
    revoke_unpublished(api, api_key, plaintext, flaky, settings)
    run(*[arg.format(other=other.prefix) for arg in action])
    assert status(api, plaintext) == 401
    assert not PendingInvalidation.objects.exists()


# --- the same against a real Redis, with another process deciding --------------------------


def revoked_in_the_database(api_key: APIKey) -> bool:
    return not APIKey.objects.get(pk=api_key.pk).is_active


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_revoke_with_redis_unreachable_fails_then_invalidate_closes_the_window(
    pushed_worker, pushed, make_key, protected_client, settings
):
    settings.DRF_LLM_KEYS = {**settings.DRF_LLM_KEYS, "PUBLISH_TIMEOUT": 1.0}
    api_key, plaintext = make_key(protected_client)
    make_key(protected_client)
    assert pushed_worker.status("protected-bot", plaintext) == 200  # cached as valid there
    # Redis unreachable from this host only (the other process still uses it).
    reachable = settings.CACHES
    settings.CACHES = {"default": {**reachable["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}}
    with pytest.raises(CommandError, match=r"committed in the database.*up to 300 seconds \(CACHE_TIMEOUT\)"):
        call_command("llm_keys", "revoke", api_key.prefix, stdout=StringIO(), stderr=StringIO())
    assert revoked_in_the_database(api_key)
    settings.CACHES = reachable  # the command's process exits, its retries with it; Redis is back
    # The window the message names: Redis kept the old generation, the worker its entry.
    assert pushed_worker.status("protected-bot", plaintext) == 200
    call_command("llm_keys", "invalidate", "protected-bot", stdout=StringIO())
    assert pushed_worker.status("protected-bot", plaintext) == 401


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_revoke_run_again_after_its_writer_died_before_publishing_is_refused_there_at_once(
    pushed_env, make_key, protected_client
):
    api_key, plaintext = make_key(protected_client)
    make_key(protected_client)
    server, writer = Worker(pushed_env), Worker(pushed_env)
    try:
        assert server.status("protected-bot", plaintext) == 200  # held there
        assert writer.ask("die-after-commit") == "armed"
        assert writer.manage("llm_keys", "revoke", api_key.prefix) == ""  # no answer: killed
        assert writer.process.wait(timeout=10) == -signal.SIGKILL
        # Committed, not published: the outbox holds the client.
        assert revoked_in_the_database(api_key)
        assert PendingInvalidation.objects.filter(client_value="protected-bot").exists()
        # The operator runs it again.
        out, _ = run("revoke", api_key.prefix)
        assert "already revoked; its clients' cached decisions were invalidated again" in out
        assert server.status("protected-bot", plaintext) == 401
        assert not PendingInvalidation.objects.exists()
    finally:
        server.stop()
        writer.stop()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_revoke_with_redis_stopped_exits_non_zero_with_the_message(pushed, make_key, protected_client):
    api_key, plaintext = make_key(protected_client)
    make_key(protected_client)
    pushed.stop()
    try:
        result = manage_on(pushed.url, "revoke", api_key.prefix)
    finally:
        pushed.start()
    assert result.returncode == 1
    assert "CommandError: The change is committed in the database" in result.stderr
    assert "llm_keys invalidate protected-bot" in result.stderr
    assert "refused from now on" not in result.stdout
    assert revoked_in_the_database(api_key)
    # Redis came back empty: no generation, no entry to trust; the key is refused.
    assert status(APIClient(), plaintext) == 401


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_writer_killed_between_commit_and_publish_loses_nothing(
    pushed_worker, pushed_env, pushed, make_key, protected_client
):
    api_key, plaintext = make_key(protected_client)
    make_key(protected_client)
    assert pushed_worker.status("protected-bot", plaintext) == 200
    writer = Worker(pushed_env)
    pushed.pause()  # the writer commits, then hangs on its cache write
    assert writer.process.stdin is not None
    writer.process.stdin.write(shlex.join(["manage", "llm_keys", "revoke", api_key.prefix]) + "\n")
    writer.process.stdin.flush()
    wait_until(lambda: revoked_in_the_database(api_key), 30, "the writer did not commit")
    writer.process.kill()
    writer.process.wait(10)
    pushed.resume()
    assert list(PendingInvalidation.objects.values_list("client_value", flat=True)) == ["protected-bot"]
    assert pushed_worker.status("protected-bot", plaintext) == 200  # nobody published it
    # Any other process republishes it: here the operator's command.
    assert pushed_worker.manage("llm_keys", "invalidate", "--pending") == "ok"
    assert pushed_worker.status("protected-bot", plaintext) == 401
    assert not PendingInvalidation.objects.exists()
