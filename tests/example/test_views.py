"""The example's endpoints in process: request checks, errors in OpenAI's shape, failures of
the upstream. (test_e2e.py runs the same endpoints in a real server.)"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from django.test import override_settings

from tests.support import bearer

pytestmark = [pytest.mark.django_db, pytest.mark.urls("example_project.urls")]

CHAT = "/v1/clients/public-bot/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]


def post(api, body, url=CHAT, **extra):
    return api.post(url, json.dumps(body), content_type="application/json", **extra)


def error_of(response) -> dict:
    return response.json()["error"]


def test_content_parts_are_echoed_as_their_text(api, public_client):
    content = [
        {"type": "text", "text": "two "},
        {"type": "image_url", "image_url": {}},
        {"type": "text", "text": "parts"},
    ]
    response = post(api, {"model": "echo", "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: two parts"


def test_the_last_user_message_is_echoed(api, public_client):
    messages = [{"role": "system", "content": "be brief"}, *HELLO, {"role": "assistant", "content": "x"}]
    response = post(api, {"model": "echo", "messages": messages})
    assert response.json()["choices"][0]["message"]["content"] == "echo: hi"


def test_stream_is_server_sent_events_ending_with_done(api, public_client):
    response = post(api, {"model": "echo", "messages": HELLO, "stream": True})
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    events = b"".join(response.streaming_content).decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": HELLO}, "model", "required"),
        ({"model": "echo"}, "messages", "required"),
        ({"model": "echo", "messages": []}, "messages", "empty"),
        (
            {"model": "echo", "messages": [{"role": "robot", "content": "x"}]},
            "messages.0.role",
            "invalid_choice",
        ),
        ({"model": "echo", "messages": HELLO, "stream": "often"}, "stream", "invalid"),
    ],
)
def test_invalid_request_is_a_400_naming_the_parameter(api, public_client, body, param, code):
    response = post(api, body)
    assert response.status_code == 400
    assert error_of(response) | {"message": None} == {
        "message": None,
        "type": "invalid_request_error",
        "param": param,
        "code": code,
    }
    assert error_of(response)["message"].startswith(f"{param}: ")


def test_invalid_json_is_a_400(api, public_client):
    response = api.post(CHAT, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "parse_error"


def test_a_body_that_is_not_json_is_a_415(api, public_client):
    response = api.post(CHAT, "model=echo", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert error_of(response)["type"] == "invalid_request_error"


def test_wrong_method_is_a_405(api, public_client):
    response = api.get(CHAT)
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"


def test_unknown_path_is_a_404_in_the_same_shape(api):
    response = api.get("/v1/nothing-here")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_unknown_path_under_the_messages_api_is_a_404_in_anthropics_shape(api):
    # What the anthropic package asks for beside messages, e.g. client.models.list().
    response = api.get("/anthropic/clients/public-bot/v1/models")
    assert response.status_code == 404
    assert response.json() == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "No endpoint /anthropic/clients/public-bot/v1/models.",
        },
    }


def test_any_accept_header_gets_json(api, public_client):
    response = post(api, {"model": "echo", "messages": HELLO}, HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"


def test_malformed_authorization_is_a_401_even_on_a_public_client(api, public_client):
    response = post(api, {"model": "echo", "messages": HELLO}, HTTP_AUTHORIZATION="Bearer two parts")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert error_of(response)["code"] == "invalid_api_key"


def test_models_use_the_default_authentication_classes(api, key):
    _, plaintext = key
    assert api.get("/v1/clients/protected-bot/models").status_code == 401
    response = api.get("/v1/clients/protected-bot/models", **bearer(plaintext))
    assert response.status_code == 200
    assert response.json()["data"][0]["id"] == "echo"


# --- the upstream failing ----------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_upstream() -> Iterator[str]:
    """Accepts connections (the kernel does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_unreachable_upstream_is_a_502(api, public_client, closed_port):
    with override_settings(LLM_UPSTREAM_URL=f"http://127.0.0.1:{closed_port}/v1"):
        response = post(api, {"model": "any", "messages": HELLO})
    assert response.status_code == 502
    assert error_of(response)["type"] == "server_error"
    assert error_of(response)["code"] == "upstream_error"


def test_silent_upstream_is_a_504(api, public_client, silent_upstream):
    with override_settings(LLM_UPSTREAM_URL=silent_upstream, LLM_UPSTREAM_TIMEOUT=0.2):
        response = api.get("/v1/clients/public-bot/models")
    assert response.status_code == 504
    assert error_of(response)["code"] == "upstream_timeout"


def test_refused_key_is_answered_before_the_upstream_is_tried(api, key, closed_port):
    with override_settings(LLM_UPSTREAM_URL=f"http://127.0.0.1:{closed_port}/v1"):
        response = post(
            api, {"model": "any", "messages": HELLO}, url="/v1/clients/protected-bot/chat/completions"
        )
    assert response.status_code == 401
