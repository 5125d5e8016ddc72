"""The decision per request (docs/design.md, "The decision, per request"), branch by branch."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.utils import timezone
from model_bakery import baker
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication
from tests.support import bearer

pytestmark = pytest.mark.django_db

PER_VIEW = "/clients/{}/echo/"
DEFAULT = "/default/clients/{}/echo/"
ENDPOINTS = pytest.mark.parametrize("url", [PER_VIEW, DEFAULT], ids=["per-view", "default-classes"])


def assert_refused(response, reason: str | None = None) -> None:
    assert response.status_code == 401, response.content
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    if reason is not None:
        assert reason in response.json()["detail"]


# --- public clients -------------------------------------------------------------------


@ENDPOINTS
def test_public_client_is_served_anonymously(api, public_client, url):
    response = api.get(url.format("public-bot"))
    assert response.status_code == 200
    assert response.json() == {"user": None, "key": None}


@ENDPOINTS
def test_public_client_ignores_a_well_formed_unknown_key(api, public_client, url):
    response = api.get(url.format("public-bot"), **bearer("sk-some-other-service-token"))
    assert response.json() == {"user": None, "key": None}


def test_public_client_ignores_another_clients_valid_key(api, public_client, key):
    _, plaintext = key
    response = api.get(PER_VIEW.format("public-bot"), **bearer(plaintext))
    assert response.json() == {"user": None, "key": None}


def test_public_client_leaves_other_schemes_to_other_authenticators(api, public_client):
    response = api.get(PER_VIEW.format("public-bot"), HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz")
    assert response.status_code == 200


def test_public_client_serves_a_session_user_through_the_next_authenticator(api, public_client, owner):
    api.force_login(owner)
    response = api.get(DEFAULT.format("public-bot"))
    assert response.json() == {"user": "owner", "key": None}


def test_client_whose_only_key_is_revoked_is_public(api, make_key, public_client):
    make_key(public_client, is_active=False)
    assert api.get(PER_VIEW.format("public-bot")).json() == {"user": None, "key": None}


# --- protected clients ----------------------------------------------------------------


@ENDPOINTS
def test_protected_client_without_credentials_is_refused(api, key, url):
    response = api.get(url.format("protected-bot"))
    assert_refused(response, "requires an API key")


@ENDPOINTS
def test_protected_client_accepts_its_key_as_bearer(api, key, url):
    api_key, plaintext = key
    response = api.get(url.format("protected-bot"), **bearer(plaintext))
    assert response.status_code == 200
    assert response.json() == {"user": "owner", "key": api_key.prefix}


@pytest.mark.parametrize("keyword", ["Bearer", "bearer", "BEARER", "Token", "token"])
def test_authorization_keywords_are_case_insensitive(api, key, keyword):
    _, plaintext = key
    response = api.get(PER_VIEW.format("protected-bot"), HTTP_AUTHORIZATION=f"{keyword} {plaintext}")
    assert response.status_code == 200


def test_protected_client_accepts_its_key_in_x_api_key(api, key):
    api_key, plaintext = key
    response = api.get(PER_VIEW.format("protected-bot"), HTTP_X_API_KEY=plaintext)
    assert response.json()["key"] == api_key.prefix


def test_the_same_key_in_both_headers_is_accepted(api, key):
    _, plaintext = key
    response = api.get(PER_VIEW.format("protected-bot"), HTTP_X_API_KEY=plaintext, **bearer(plaintext))
    assert response.status_code == 200


def authenticate(slug: str, **headers: str):
    request = Request(
        APIRequestFactory().get("/", **headers), parser_context={"kwargs": {"llm_client": slug}}
    )
    return LLMClientAPIKeyAuthentication().authenticate(request)


def test_success_returns_the_owner_and_the_key(key, owner):
    api_key, plaintext = key
    user, auth = authenticate("protected-bot", **bearer(plaintext))
    assert (user.pk, user.get_username(), user.is_active) == (owner.pk, "owner", True)
    assert (auth.pk, auth.prefix, auth.name, auth.user) == (api_key.pk, api_key.prefix, "test key", user)


def test_public_client_returns_none(public_client):
    assert authenticate("public-bot") is None


def test_unknown_key_is_refused(api, key):
    response = api.get(PER_VIEW.format("protected-bot"), **bearer("llmk_000000000000." + "A" * 43))
    assert_refused(response, "Invalid API key")


def test_key_in_a_foreign_format_is_refused(api, key):
    assert_refused(api.get(PER_VIEW.format("protected-bot"), **bearer("sk-not-ours")), "Invalid API key")


def test_known_prefix_with_a_wrong_secret_is_refused(api, key):
    api_key, plaintext = key
    forged = api_key.prefix + "." + ("B" * 43 if not plaintext.endswith("B" * 43) else "C" * 43)
    assert_refused(api.get(PER_VIEW.format("protected-bot"), **bearer(forged)), "Invalid API key")


def test_revoked_key_is_refused(api, make_key, protected_client):
    make_key(protected_client)  # keeps the client protected
    _, plaintext = make_key(protected_client, is_active=False)
    assert_refused(api.get(PER_VIEW.format("protected-bot"), **bearer(plaintext)), "revoked")


def test_expired_key_is_refused_and_keeps_its_client_protected(api, make_key, protected_client):
    _, plaintext = make_key(protected_client, expires_at=timezone.now() - timedelta(seconds=1))
    assert_refused(api.get(PER_VIEW.format("protected-bot")), "requires an API key")
    assert_refused(api.get(PER_VIEW.format("protected-bot"), **bearer(plaintext)), "expired")


def test_key_expiring_later_is_accepted(api, make_key, protected_client):
    _, plaintext = make_key(protected_client, expires_at=timezone.now() + timedelta(hours=1))
    assert api.get(PER_VIEW.format("protected-bot"), **bearer(plaintext)).status_code == 200


def test_another_clients_key_is_refused(api, make_key, protected_client):
    other = baker.make_recipe("tests.llm_client", slug="other-bot")
    make_key(protected_client)
    _, plaintext = make_key(other)
    assert_refused(api.get(PER_VIEW.format("protected-bot"), **bearer(plaintext)), "not valid for this")


def test_key_mapped_to_two_clients_opens_both(api, make_key, protected_client):
    other = baker.make_recipe("tests.llm_client", slug="other-bot")
    _, plaintext = make_key(protected_client, other)
    for slug in ("protected-bot", "other-bot"):
        assert api.get(PER_VIEW.format(slug), **bearer(plaintext)).status_code == 200


def test_key_of_an_inactive_owner_is_refused(api, make_key, protected_client):
    inactive = baker.make(get_user_model(), username="gone", is_active=False)
    _, plaintext = make_key(protected_client, user=inactive)
    assert_refused(api.get(PER_VIEW.format("protected-bot"), **bearer(plaintext)), "owner")


def test_key_without_an_owner_is_refused(api, make_key, protected_client):
    _, plaintext = make_key(protected_client, user=None)
    assert_refused(api.get(PER_VIEW.format("protected-bot"), **bearer(plaintext)), "owner")


def test_require_api_key_protects_a_client_without_keys(api):
    baker.make_recipe("tests.protected_client", slug="locked")
    assert_refused(api.get(PER_VIEW.format("locked")), "requires an API key")


def test_require_api_key_refuses_every_key_not_mapped_to_it(api, make_key, public_client):
    baker.make_recipe("tests.protected_client", slug="locked")
    _, plaintext = make_key(public_client)
    assert_refused(api.get(PER_VIEW.format("locked"), **bearer(plaintext)), "not valid for this")


def test_require_api_key_client_accepts_its_key(api, make_key):
    locked = baker.make_recipe("tests.protected_client", slug="locked")
    _, plaintext = make_key(locked)
    assert api.get(PER_VIEW.format("locked"), **bearer(plaintext)).status_code == 200


def test_another_scheme_counts_as_no_credentials_on_a_protected_client(api, key):
    response = api.get(PER_VIEW.format("protected-bot"), HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz")
    assert_refused(response, "requires an API key")


def test_session_user_is_refused_on_a_protected_client(api, key, owner):
    api.force_login(owner)
    assert_refused(api.get(DEFAULT.format("protected-bot")), "requires an API key")


# --- malformed headers: 401 on any client ---------------------------------------------

MALFORMED = [
    {"HTTP_AUTHORIZATION": "Bearer"},
    {"HTTP_AUTHORIZATION": "Token"},
    {"HTTP_AUTHORIZATION": "Bearer a b"},
    {"HTTP_AUTHORIZATION": "Bearer llmk_1.x, Bearer llmk_2.y"},
    {"HTTP_AUTHORIZATION": "Bearer caf\u00e9"},
    {"HTTP_AUTHORIZATION": "Bearer \x7fkey"},
    {"HTTP_X_API_KEY": ""},
    {"HTTP_X_API_KEY": "a b"},
    {"HTTP_X_API_KEY": "caf\u00e9"},
]


@pytest.mark.parametrize("headers", MALFORMED, ids=repr)
@pytest.mark.parametrize("slug", ["public-bot", "protected-bot"])
def test_malformed_header_is_refused_on_any_client(api, public_client, key, headers, slug):
    assert_refused(api.get(PER_VIEW.format(slug), **headers))


def test_conflicting_keys_in_both_headers_are_refused(api, key, make_key, protected_client):
    _, plaintext = key
    _, other = make_key(protected_client)
    response = api.get(PER_VIEW.format("protected-bot"), HTTP_X_API_KEY=other, **bearer(plaintext))
    assert_refused(response, "Conflicting")


# --- not an LLM client ----------------------------------------------------------------


def test_view_without_a_client_is_left_to_other_authenticators(api, owner):
    api.force_login(owner)
    assert api.get("/whoami/").json() == {"user": "owner"}


def test_view_without_a_client_ignores_even_malformed_headers(api, owner):
    api.force_login(owner)
    assert api.get("/whoami/", HTTP_AUTHORIZATION="Bearer").status_code == 200


@ENDPOINTS
def test_unknown_client_is_not_found(api, key, url):
    response = api.get(url.format("no-such-bot"))
    assert response.status_code == 404
    assert response.json() == {"detail": "No LLM client 'no-such-bot'."}
    assert "WWW-Authenticate" not in response


def test_unknown_client_is_not_found_whatever_key_it_carries(api, key):
    _, plaintext = key
    assert api.get(PER_VIEW.format("no-such-bot"), **bearer(plaintext)).status_code == 404


def test_unknown_client_is_not_found_for_a_logged_in_user(api, key, owner):
    api.force_login(owner)
    assert api.get(DEFAULT.format("no-such-bot")).status_code == 404


@ENDPOINTS
def test_unknown_client_is_left_to_the_view_when_configured(api, key, url):
    with override_settings(DRF_LLM_KEYS={"UNKNOWN_CLIENT_NOT_FOUND": False}):
        response = api.get(url.format("no-such-bot"))
    assert response.json() == {"user": None, "key": None}


@pytest.mark.parametrize("returns", ["by-method", "by-method-value"])  # the client, or its slug
def test_client_from_get_llm_client(api, key, protected_client, returns):
    _, plaintext = key
    name = protected_client.name
    assert_refused(api.get(f"/{returns}/{name}/echo/"))
    assert api.get(f"/{returns}/{name}/echo/", **bearer(plaintext)).status_code == 200


def test_get_llm_client_404_stays_a_404(api, key):
    assert api.get("/by-method/nobody/echo/").status_code == 404


# --- settings, read at call time ------------------------------------------------------


def test_custom_keywords_and_header(api, key):
    _, plaintext = key
    with override_settings(DRF_LLM_KEYS={"AUTH_KEYWORDS": ["Key"], "HEADER": "X-LLM-Key"}):
        url = PER_VIEW.format("protected-bot")
        assert api.get(url, HTTP_AUTHORIZATION=f"Key {plaintext}").status_code == 200
        assert api.get(url, HTTP_X_LLM_KEY=plaintext).status_code == 200
        response = api.get(url, **bearer(plaintext))
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == 'Key realm="api"'


def test_custom_lookup_field(api, key, protected_client):
    _, plaintext = key
    with override_settings(DRF_LLM_KEYS={"CLIENT_LOOKUP_FIELD": "pk"}):
        url = PER_VIEW.format(protected_client.pk)
        assert_refused(api.get(url))
        assert api.get(url, **bearer(plaintext)).status_code == 200


def test_lookup_value_the_field_cannot_hold_is_an_unknown_client(api, key):
    with override_settings(DRF_LLM_KEYS={"CLIENT_LOOKUP_FIELD": "pk"}):
        assert api.get(PER_VIEW.format("not-a-number")).status_code == 404
