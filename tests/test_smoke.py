import pytest

from .conftest import bearer

pytestmark = pytest.mark.django_db(transaction=True)


def test_smoke(api, key, make_key, protected_client, public_client):
    api_key, plaintext = key
    make_key(protected_client)
    assert api.get("/clients/public-bot/echo/").status_code == 200
    r = api.get("/clients/protected-bot/echo/")
    assert r.status_code == 401, r.content
    assert r["WWW-Authenticate"] == 'Bearer realm="api"'
    r = api.get("/clients/protected-bot/echo/", **bearer(plaintext))
    assert r.status_code == 200, r.content
    assert r.json() == {"user": "owner", "key": api_key.prefix}
    api_key.is_active = False
    api_key.save()
    r = api.get("/clients/protected-bot/echo/", **bearer(plaintext))
    assert r.status_code == 401, r.content
