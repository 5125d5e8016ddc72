"""``llm_keys client create`` and ``llm_keys client list``."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import TestCase
from model_bakery import baker

from drf_llm_keys.models import LLMClient
from tests.support import bearer

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    with TestCase.captureOnCommitCallbacks(execute=True):
        call_command("llm_keys", "client", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def refused(*args: str, model: Any = LLMClient) -> str:
    before = list(model._default_manager.order_by("pk").values())
    with pytest.raises(CommandError) as excinfo:
        run(*args)
    assert list(model._default_manager.order_by("pk").values()) == before
    return str(excinfo.value)


# --- create -----------------------------------------------------------------------------


def test_create_makes_a_public_client(api):
    out = run("create", "support-bot", "--name", "Support bot")
    llm_client = LLMClient.objects.get()
    assert (llm_client.slug, llm_client.name, llm_client.require_api_key, llm_client.owner) == (
        "support-bot",
        "Support bot",
        False,
        None,
    )
    assert "support-bot" in out and "public" in out
    assert api.get("/clients/support-bot/echo/").status_code == 200


def test_create_require_api_key_makes_a_client_that_refuses_every_request_until_keyed(api, owner):
    out = run("create", "support-bot", "--name", "Support bot", "--require-api-key", "--owner", "owner")
    llm_client = LLMClient.objects.get()
    assert llm_client.require_api_key and llm_client.owner == owner
    assert "protected" in out
    assert api.get("/clients/support-bot/echo/").status_code == 401


def test_a_created_client_takes_keys_from_the_key_subcommands(api, owner):
    run("create", "support-bot", "--name", "Support bot")
    key_out = StringIO()
    call_command("llm_keys", "create", "support-bot", "--user", "owner", "--name", "ci", stdout=key_out)
    assert api.get("/clients/support-bot/echo/", **bearer(key_out.getvalue().strip())).status_code == 200


def test_create_json_gives_the_record():
    document = json.loads(run("create", "support-bot", "--name", "Support bot", "--json"))
    assert document == {
        "slug": "support-bot",
        "name": "Support bot",
        "owner": None,
        "require_api_key": False,
        "active_keys": 0,
        "public": True,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not a slug!", "--name", "Bad"], "SLUG: Enter a valid “slug”"),
        (["support-bot", "--name", "Other"], "SLUG: LLM client with this Slug already exists."),
        (["new-bot", "--name", "New", "--owner", "nobody"], "No user 'nobody'."),
        (["new-bot"], "--name: This field cannot be blank."),
        (["new-bot", "--name", "x" * 201], "--name: Ensure this value has at most 200 characters"),
    ],
)
def test_create_bad_input_is_a_command_error_and_changes_nothing(args, message):
    baker.make_recipe("tests.llm_client", slug="support-bot")
    assert message in refused("create", *args)


def test_create_on_a_model_without_the_fields_refuses_them_by_name(settings):
    # A client model with nothing but a unique name: no owner, no require_api_key.
    settings.DRF_LLM_KEYS_CLIENT_MODEL = "auth.Group"
    settings.DRF_LLM_KEYS = {"CLIENT_LOOKUP_FIELD": "name"}
    message = refused("create", "ops", "--require-api-key", model=Group)
    assert message == "The client model auth.Group has no require_api_key field: leave out --require-api-key."
    assert "no owner field: leave out --owner" in refused("create", "ops", "--owner", "owner", model=Group)
    run("create", "ops")
    assert list(Group.objects.values_list("name", flat=True)) == ["ops"]
    assert json.loads(run("list", "--json")) == [
        {"name": "ops", "owner": None, "require_api_key": False, "active_keys": 0, "public": True}
    ]


# --- list -------------------------------------------------------------------------------


def test_list_shows_each_client_public_or_protected(make_key, owner):
    public = baker.make_recipe("tests.llm_client", slug="a-public", name="Public")
    keyed = baker.make_recipe("tests.llm_client", slug="b-keyed", name="Keyed", owner=owner)
    baker.make_recipe("tests.protected_client", slug="c-required", name="Required")
    revoked = baker.make_recipe("tests.llm_client", slug="d-revoked", name="Revoked")
    make_key(keyed)
    make_key(keyed)
    make_key(revoked, is_active=False)
    records = json.loads(run("list", "--json"))
    assert [
        (r["slug"], r["owner"], r["require_api_key"], r["active_keys"], r["public"]) for r in records
    ] == [
        ("a-public", None, False, 0, True),
        ("b-keyed", "owner", False, 2, False),
        ("c-required", None, True, 0, False),
        ("d-revoked", None, False, 0, True),
    ]
    table = run("list").splitlines()
    assert table[0].split() == ["SLUG", "NAME", "OWNER", "REQUIRE", "KEY", "ACTIVE", "KEYS", "STATE"]
    assert table[1].split() == [public.slug, "Public", "-", "no", "0", "public"]
    assert table[2].split() == [keyed.slug, "Keyed", "owner", "no", "2", "protected"]


def test_list_of_no_clients_says_so(capsys):
    err = StringIO()
    call_command("llm_keys", "client", "list", stdout=StringIO(), stderr=err)
    assert err.getvalue().strip() == "No clients."
