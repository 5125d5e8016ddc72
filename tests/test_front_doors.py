"""One decision, every front door: DRF's sync views, adrf's async views (as adrf runs them
and decided on the event loop), Django Ninja's sync and async operations and a Router's.
Each case is answered by each door with the same status, body and WWW-Authenticate."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from drf_llm_keys.models import APIKey
from tests.support import bearer, over_asgi

pytestmark = pytest.mark.django_db

DRF = "/clients/{}/echo/"
DOORS = {
    "adrf": "/adrf/clients/{}/echo/",
    "adrf-on-loop": "/async/clients/{}/echo/",
    "ninja-sync": "/ninja/clients/{}/sync/",
    "ninja-async": "/ninja/clients/{}/async/",
    "ninja-router": "/ninja-routed/clients/{}/",
}
EACH_DOOR = pytest.mark.parametrize("door", list(DOORS.values()), ids=list(DOORS))


def get(path: str, **meta: str) -> Any:
    return over_asgi("get", path, **meta)


def answer(response: Any) -> tuple[int, Any, str | None]:
    return response.status_code, response.json(), response.get("WWW-Authenticate")


def assert_same_refusal(door: str, client: str, reason: str, **headers: str) -> None:
    drf = Client().get(DRF.format(client), **headers)
    assert answer(drf) == (401, {"detail": reason}, 'Bearer realm="api"')
    assert answer(get(door.format(client), **headers)) == answer(drf)
    if "ninja" in door and "async" not in door:  # a sync operation under WSGI too
        assert answer(Client().get(door.format(client), **headers)) == answer(drf)


@EACH_DOOR
def test_a_public_client_is_served_anonymously(door, public_client, key):
    _, plaintext = key  # another client's key: a public client ignores it
    response = get(door.format("public-bot"), **bearer(plaintext))
    assert response.status_code == 200
    assert response.json()["key"] is None


@EACH_DOOR
def test_a_valid_key_is_served_with_its_key(door, key):
    api_key, plaintext = key
    response = get(door.format("protected-bot"), **bearer(plaintext))
    assert response.status_code == 200, response.content
    assert response.json()["key"] == api_key.prefix
    assert response.json()["client"] == "protected-bot"


@EACH_DOOR
def test_no_key_is_the_same_401(door, key):
    assert_same_refusal(door, "protected-bot", "This LLM client requires an API key.")


@EACH_DOOR
def test_a_wrong_clients_key_is_the_same_401(door, key, make_key, public_client):
    other_client = public_client
    _, other = make_key(other_client)
    assert_same_refusal(door, "protected-bot", "API key is not valid for this LLM client.", **bearer(other))


@EACH_DOOR
def test_an_unknown_key_is_the_same_401(door, key):
    _, plaintext = key
    assert_same_refusal(door, "protected-bot", "Invalid API key.", **bearer(plaintext[:-4] + "abcd"))


@EACH_DOOR
def test_a_malformed_header_is_the_same_401(door, key):
    reason = "Invalid Authorization header. No credentials provided."
    assert_same_refusal(door, "protected-bot", reason, HTTP_AUTHORIZATION="Bearer")


@EACH_DOOR
def test_a_revoked_key_is_the_same_401(door, key, make_key, protected_client):
    api_key, plaintext = key
    make_key(protected_client)  # another key: the client stays protected
    assert get(door.format("protected-bot"), **bearer(plaintext)).status_code == 200  # held now
    APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
    assert_same_refusal(door, "protected-bot", "API key has been revoked.", **bearer(plaintext))


@EACH_DOOR
def test_an_expired_key_is_the_same_401(door, make_key, protected_client):
    _, plaintext = make_key(protected_client, expires_at=timezone.now() - timedelta(seconds=1))
    assert_same_refusal(door, "protected-bot", "API key has expired.", **bearer(plaintext))


@EACH_DOOR
def test_the_x_api_key_header_works_the_same(door, key):
    api_key, plaintext = key
    response = get(door.format("protected-bot"), HTTP_X_API_KEY=plaintext)
    assert response.json()["key"] == api_key.prefix


@EACH_DOOR
def test_an_unknown_client_is_the_same_404(door, db):
    drf = Client().get(DRF.format("nope"))
    assert (drf.status_code, drf.json()) == (404, {"detail": "No LLM client 'nope'."})
    response = get(door.format("nope"))
    assert (response.status_code, response.json()) == (drf.status_code, drf.json())
