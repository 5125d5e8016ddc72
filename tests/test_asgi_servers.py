"""adrf's async views and Django Ninja's operations (sync and async) under a real ASGI server:
uvicorn in another process, on this test's database and cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from model_bakery import baker

from drf_llm_keys import keys
from drf_llm_keys.models import KeyUsage
from tests.support import wait_until
from tests.support.harness import Servers, child_environment, request, worker_environment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SERVER_SETTINGS = {"THROTTLE_RATES": {"limited-bot": "2/minute"}, "USAGE_FLUSH_INTERVAL": 0.2}
# Per door: the echo, the one limited to the scopes chat and files, the one checking ?model=,
# the one that applies the request throttle.
DOORS = {
    "adrf": (
        "/async/clients/{}/echo/",
        "/async/scoped/{}/echo/",
        "/async/models/{}/echo/?model={}",
        "/async/limited/{}/echo/",
    ),
    "ninja-async": (
        "/ninja/clients/{}/async/",
        "/ninja/scoped/{}/",
        "/ninja/models/{}/?model={}",
        "/ninja/limited/{}/async/",
    ),
    "ninja-sync": ("/ninja/clients/{}/sync/", None, None, "/ninja/limited/{}/sync/"),
}


@pytest.fixture
def uvicorn(settings: Any, tmp_path: Any) -> Iterator[Servers]:
    """uvicorn on this test's database, and on a cache this process shares with it."""
    cache_dir = str(tmp_path / "cache")
    worker_environment(settings, cache_dir)  # this process on the same cache
    env = child_environment(cache_dir=cache_dir, DRF_LLM_KEYS_TEST_SETTINGS=json.dumps(SERVER_SETTINGS))
    server = Servers(env, workers=1, asgi=True)
    yield server
    server.stop()


def get(server: Servers, path: str, plaintext: str | None = None) -> tuple[int, Any]:
    reply = request(server.port, path, {} if plaintext is None else {"Authorization": f"Bearer {plaintext}"})
    return reply.status, json.loads(reply.body)


@pytest.mark.parametrize("door", list(DOORS), ids=list(DOORS))
def test_the_decision_under_uvicorn(door, uvicorn, make_key):
    echo, scoped, models, limited = DOORS[door]
    baker.make_recipe("tests.llm_client", slug="open-bot")
    locked = baker.make_recipe("tests.llm_client", slug="locked-bot")
    other = baker.make_recipe("tests.llm_client", slug="other-bot")
    api_key, plaintext = make_key(locked, baker.make_recipe("tests.llm_client", slug="limited-bot"))
    _, restricted = make_key(locked, scopes=["chat"], allowed_models=["gpt-4o*"])
    _, others = make_key(other)

    status, body = get(uvicorn, echo.format("open-bot"), others)
    assert (status, body["key"]) == (200, None)  # public: anonymous, whatever it carries
    reply = request(uvicorn.port, echo.format("locked-bot"))
    assert (reply.status, json.loads(reply.body)) == (401, {"detail": "This LLM client requires an API key."})
    assert reply.headers["www-authenticate"] == 'Bearer realm="api"'
    assert get(uvicorn, echo.format("locked-bot"), others) == (
        401,
        {"detail": "API key is not valid for this LLM client."},
    )
    for _ in range(2):  # cold, then held
        status, body = get(uvicorn, echo.format("locked-bot"), plaintext)
        assert (status, body["key"], body["client"]) == (200, api_key.prefix, "locked-bot")

    if scoped is not None:
        assert get(uvicorn, scoped.format("locked-bot"), restricted) == (
            403,
            {"detail": "API key lacks scope(s): files."},
        )
        assert get(uvicorn, models.format("locked-bot", "gpt-4o-mini"), restricted)[0] == 200
        assert get(uvicorn, models.format("locked-bot", "o1"), restricted) == (
            403,
            {"detail": "API key may not use model 'o1'."},
        )

    statuses = [get(uvicorn, limited.format("limited-bot"), plaintext)[0] for _ in range(3)]
    assert statuses == [200, 200, 429]

    keys.revoke_key(api_key, allow_public=True)  # here: the server refuses the key it holds at once
    assert get(uvicorn, echo.format("locked-bot"), plaintext) == (
        401,
        {"detail": "API key has been revoked."},
    )

    def counted() -> bool:  # the server's usage counts, written by its flush timer
        rows = KeyUsage.objects.filter(api_key=api_key, llm_client=locked)
        return sum(rows.values_list("requests", flat=True)) == 2

    wait_until(counted, 10, "the server's usage counts written")
