"""The ``llm_keys`` command and the admin, on a swapped model."""

from __future__ import annotations

import json
import re
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import TestCase
from django.urls import reverse

from drf_llm_keys import usage
from drf_llm_keys.models import APIKey, KeyUsage, LLMClientAPIKey
from tests.support import bearer

pytestmark = pytest.mark.django_db

APIKEY_CHANGELIST = reverse("admin:drf_llm_keys_apikey_changelist")
APIKEY_ADD = reverse("admin:drf_llm_keys_apikey_add")
PLAINTEXT = re.compile(r"llmk_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}")


def run(*args: str) -> str:
    """``llm_keys`` as a committed operation: its invalidations run."""
    out = StringIO()
    with TestCase.captureOnCommitCallbacks(execute=True):
        call_command("llm_keys", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def status(api: Any, plaintext: str | None = None) -> int:
    return api.get("/clients/protected-bot/echo/", **(bearer(plaintext) if plaintext else {})).status_code


# --- the command ------------------------------------------------------------------------


def test_create_maps_a_key_to_the_deployment_which_then_requires_it(api, owner, protected_client):
    assert status(api) == 200
    plaintext = run("create", "protected-bot", "--user", "owner", "--name", "ci").strip()
    api_key = APIKey.objects.get()
    assert list(LLMClientAPIKey.objects.values_list("llm_client", "api_key")) == [
        (protected_client.pk, api_key.pk)
    ]
    assert status(api) == 401
    assert status(api, plaintext) == 200


def test_create_for_an_unknown_deployment_is_a_command_error(owner, protected_client):
    with pytest.raises(CommandError, match="No LLM client with slug 'no-such-bot'"):
        run("create", "no-such-bot", "--user", "owner", "--name", "ci")
    assert not APIKey.objects.exists()


def test_list_shows_the_deployments_keys(make_key, protected_client, public_client):
    api_key, _ = make_key(protected_client)
    make_key(public_client)
    records = json.loads(run("list", "protected-bot", "--json"))
    assert [(r["prefix"], r["clients"]) for r in records] == [(api_key.prefix, ["protected-bot"])]
    table = run("list")
    assert "protected-bot" in table and "public-bot" in table


def test_rotate_by_deployment_issues_a_working_key(api, key):
    _, old_plaintext = key
    new_plaintext = run("rotate", "protected-bot", "--grace", "0").strip()
    assert status(api, new_plaintext) == 200
    assert status(api, old_plaintext) == 401


def test_client_create_and_list_work_on_the_deployment_model(api, owner):
    from tests.swapped_app.models import Deployment

    run("client", "create", "us-bot", "--name", "US bot", "--owner", "owner", "--require-api-key")
    deployment = Deployment.objects.get()
    assert (deployment.slug, deployment.region, deployment.owner, deployment.require_api_key) == (
        "us-bot",
        "eu-west",
        owner,
        True,
    )
    assert status_of(api, "us-bot") == 401
    assert json.loads(run("client", "list", "--json")) == [
        {
            "slug": "us-bot",
            "name": "US bot",
            "owner": "owner",
            "require_api_key": True,
            "active_keys": 0,
            "public": False,
        }
    ]
    with pytest.raises(CommandError, match="already exists"):
        run("client", "create", "us-bot", "--name", "Again")
    assert Deployment.objects.count() == 1


def test_revoke_keep_protected_keeps_the_deployment_protected(api, key, protected_client):
    api_key, plaintext = key
    run("revoke", api_key.prefix, "--keep-protected")
    protected_client.refresh_from_db()
    assert protected_client.require_api_key
    assert status(api, plaintext) == 401 and status(api) == 401


def status_of(api: Any, slug: str) -> int:
    return api.get(f"/clients/{slug}/echo/").status_code


def test_revoke_refuses_the_last_key_then_makes_the_deployment_public_with_yes(api, key):
    api_key, _ = key
    with pytest.raises(CommandError, match="--yes"):
        run("revoke", api_key.prefix)
    assert status(api) == 401
    assert "protected-bot" in run("revoke", api_key.prefix, "--yes")
    assert status(api) == 200


def test_revoke_takes_effect_at_once(api, key, make_key, protected_client):
    api_key, plaintext = key
    make_key(protected_client)
    assert status(api, plaintext) == 200
    run("revoke", api_key.prefix)
    assert status(api, plaintext) == 401


# --- the admin ---------------------------------------------------------------------------


def test_the_key_changelist_loads_and_names_the_deployments(admin_client, key):
    api_key, _ = key
    response = admin_client.get(APIKEY_CHANGELIST)
    assert response.status_code == 200
    page = response.content.decode()
    assert api_key.prefix in page and "protected-bot" in page and api_key.digest not in page


def test_the_key_changelist_searches_by_deployment_slug(
    admin_client, make_key, protected_client, public_client
):
    wanted, _ = make_key(protected_client)
    other, _ = make_key(public_client)
    page = admin_client.get(APIKEY_CHANGELIST, {"q": "protected-bot"}).content.decode()
    assert wanted.prefix in page and other.prefix not in page


def test_the_usage_list_names_and_searches_the_deployments(
    admin_client, key, protected_client, public_client
):
    api_key, _ = key
    for llm_client in (protected_client, public_client):
        KeyUsage.objects.create(api_key=api_key, llm_client=llm_client, day=usage.today(), requests=3)
    url = reverse("admin:drf_llm_keys_keyusage_changelist")
    listed = admin_client.get(url, {"q": "protected-bot"})
    assert listed.status_code == 200
    assert [row.llm_client for row in listed.context["cl"].result_list] == [protected_client]


def test_the_admin_adds_a_key_for_a_deployment(admin_client, api, owner, protected_client):
    data = {
        "name": "from admin",
        "user": owner.pk,
        "llm_clients": [protected_client.pk],
        "description": "",
        "expires_at_0": "",
        "expires_at_1": "",
    }
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = admin_client.post(APIKEY_ADD, data, follow=True)
    (plaintext,) = PLAINTEXT.findall(response.content.decode())
    assert status(api) == 401
    assert status(api, plaintext) == 200


def test_the_deployment_admin_lists_its_keys(admin_client, key, protected_client, public_client):
    api_key, _ = key
    changelist = admin_client.get(reverse("admin:swapped_app_deployment_changelist"))
    assert changelist.status_code == 200
    listed = changelist.content.decode()
    assert f"{APIKEY_ADD}?llm_clients={protected_client.pk}" in listed
    assert re.search(r'field-state">protected<', listed) and re.search(r'field-state">public<', listed)
    page = admin_client.get(reverse("admin:swapped_app_deployment_change", args=[protected_client.pk]))
    assert page.status_code == 200
    assert api_key.prefix in page.content.decode()


def test_the_swapped_out_model_has_no_admin():
    from django.urls import NoReverseMatch

    with pytest.raises(NoReverseMatch):
        reverse("admin:drf_llm_keys_llmclient_changelist")
