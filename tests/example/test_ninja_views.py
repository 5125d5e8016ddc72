"""The example's Ninja endpoints (``/ninja/v1/...``) answer as its DRF endpoints (``/v1/...``):
the same statuses, the same OpenAI-shaped bodies, the same headers."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from drf_llm_keys import usage
from tests.support import bearer, over_asgi

pytestmark = [pytest.mark.django_db, pytest.mark.urls("example_project.urls")]

HELLO = [{"role": "user", "content": "hi"}]
PREFIXES = ["/v1/clients/{}/", "/ninja/v1/clients/{}/"]


def post(path: str, body: Any, **meta: str) -> Any:
    return over_asgi("post", path, body if isinstance(body, str) else json.dumps(body), **meta)


def get(path: str, **meta: str) -> Any:
    return over_asgi("get", path, **meta)


def both(send: Any, path: str, *args: Any, **meta: str) -> tuple[Any, Any]:
    drf, ninja = (send(prefix + path, *args, **meta) for prefix in PREFIXES)
    return drf, ninja


def assert_same(drf: Any, ninja: Any) -> None:
    assert ninja.status_code == drf.status_code
    assert ninja.json() == drf.json()
    for header in ("WWW-Authenticate", "Retry-After"):
        assert ninja.get(header) == drf.get(header)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "echo", "messages": HELLO}, 401),
        ({"messages": HELLO}, 401),
    ],
)
def test_a_protected_client_without_a_key(key, body, status):
    drf, ninja = both(lambda p, b: post(p.format("protected-bot"), b), "chat/completions", body)
    assert drf.status_code == status
    assert drf.json()["error"]["code"] == "missing_api_key"
    assert_same(drf, ninja)


@pytest.mark.parametrize(
    "body",
    [
        {"messages": HELLO},
        {"model": "echo", "messages": []},
        {"model": "gpt-4o", "messages": HELLO},
        "{not json",
    ],
    ids=["no-model", "no-messages", "unknown-model", "bad-json"],
)
def test_bad_requests_are_the_same_errors(public_client, body):
    drf, ninja = both(lambda p, b: post(p.format("public-bot"), b), "chat/completions", body)
    assert drf.status_code in (400, 404)
    assert_same(drf, ninja)


def test_a_model_the_key_may_not_use_is_the_same_403(make_key, protected_client):
    _, plaintext = make_key(protected_client, allowed_models=["gpt-4o*"])
    body = {"model": "echo", "messages": HELLO}
    drf, ninja = both(
        lambda p, b, **m: post(p.format("protected-bot"), b, **m),
        "chat/completions",
        body,
        **bearer(plaintext),
    )
    assert drf.json()["error"]["type"] == "permission_error"
    assert_same(drf, ninja)


def test_a_revoked_key_is_the_same_401(key, make_key, protected_client):
    api_key, plaintext = key
    make_key(protected_client)
    api_key.is_active = False
    api_key.save()
    drf, ninja = both(lambda p, **m: get(p.format("protected-bot"), **m), "models", **bearer(plaintext))
    assert drf.json()["error"]["message"] == "API key has been revoked."
    assert_same(drf, ninja)


def test_a_spent_token_budget_is_the_same_429(key, settings):
    settings.DRF_LLM_KEYS = {"TOKEN_RATE": "3/hour"}
    _, plaintext = key
    body = {"model": "echo", "messages": HELLO}
    assert (
        post("/ninja/v1/clients/protected-bot/chat/completions", body, **bearer(plaintext)).status_code == 200
    )
    drf, ninja = both(
        lambda p, b, **m: post(p.format("protected-bot"), b, **m),
        "chat/completions",
        body,
        **bearer(plaintext),
    )
    assert ninja.status_code == drf.status_code == 429
    # The wait counts down between the two requests, and may cross a second boundary.
    assert abs(int(ninja["Retry-After"]) - int(drf["Retry-After"])) <= 1
    assert without_wait(ninja.json()) == without_wait(drf.json())


def without_wait(body: dict[str, Any]) -> str:
    return re.sub(r"available in \d+ seconds?", "available in N seconds", json.dumps(body))


def test_the_stream_is_the_same_events_and_counts_its_tokens(key, protected_client):
    api_key, plaintext = key
    body = {"model": "echo", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    response = post("/ninja/v1/clients/protected-bot/chat/completions", body, **bearer(plaintext))
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"

    async def read() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    events = async_to_sync(read)().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: hi"
    ((name, counts),) = usage.counter.pending().items()
    assert name[:2] == (api_key.pk, protected_client.pk)
    assert counts[:3] == (1, 1, 2)  # one request, "hi", "echo: hi"


def test_models_list_only_what_the_key_may_use(make_key, protected_client):
    _, plaintext = make_key(protected_client, allowed_models=["gpt-*"])
    drf, ninja = both(lambda p, **m: get(p.format("protected-bot"), **m), "models", **bearer(plaintext))
    assert ninja.json()["data"] == drf.json()["data"] == []
