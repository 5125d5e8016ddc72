"""The clients people use, driven against the example in a real server: the official
``anthropic`` package on the Messages endpoint, and LangChain's ``ChatOpenAI`` on the
OpenAI-compatible one."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import anthropic
import openai
import pytest
from langchain_openai import ChatOpenAI

from drf_llm_keys import keys

from .conftest import anthropic_client

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "hello there"}]
MADE_UP_KEY = "llmk_000000000000." + "x" * 43


def chat_openai(base_url: str, slug: str, key: str = "no-key") -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{base_url}/v1/clients/{slug}", api_key=key, model="echo", max_retries=0, timeout=30
    )


# --- anthropic --------------------------------------------------------------------------


def test_anthropic_with_the_clients_key_gets_the_reply(example_server, key):
    _, plaintext = key
    reply = anthropic_client(example_server, "protected-bot", plaintext).messages.create(
        model="echo", max_tokens=64, messages=HELLO
    )
    assert [block.text for block in reply.content if block.type == "text"] == ["echo: hello there"]
    assert (reply.role, reply.stop_reason) == ("assistant", "end_turn")
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (2, 3)


def test_anthropic_on_a_public_client_needs_no_key(example_server, public_client):
    reply = anthropic_client(example_server, "public-bot").messages.create(
        model="echo", max_tokens=64, messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    )
    assert reply.content[0].text == "echo: hi"


def test_anthropic_streams_the_same_reply(example_server, key):
    _, plaintext = key
    client = anthropic_client(example_server, "protected-bot", plaintext)
    with client.messages.stream(model="echo", max_tokens=64, messages=HELLO) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["echo: ", "hello ", "there"]
    assert final.content[0].text == "echo: hello there" and final.usage.output_tokens == 3


@pytest.mark.parametrize("bad_key", [MADE_UP_KEY, "not-a-key"])
def test_anthropic_with_a_bad_key_raises_its_authentication_error(example_server, key, bad_key):
    client = anthropic_client(example_server, "protected-bot", bad_key)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client.messages.create(model="echo", max_tokens=64, messages=HELLO)
    assert refused.value.status_code == 401
    assert refused.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Invalid API key."},
    }
    assert refused.value.response.headers["WWW-Authenticate"] == 'Bearer realm="api"'


def test_anthropic_with_a_revoked_key_is_refused_at_once(example_server, key, make_key, protected_client):
    api_key, plaintext = key
    make_key(protected_client)  # another active key: the client stays protected
    client = anthropic_client(example_server, "protected-bot", plaintext)
    assert client.messages.create(model="echo", max_tokens=64, messages=HELLO).content

    keys.revoke_key(api_key)  # here, in the test process

    with pytest.raises(anthropic.AuthenticationError) as refused:
        client.messages.create(model="echo", max_tokens=64, messages=HELLO)
    assert refused.value.body["error"]["message"] == "API key has been revoked."


def test_anthropic_errors_name_their_type(example_server, public_client):
    client = anthropic_client(example_server, "public-bot")
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-x", max_tokens=64, messages=HELLO)
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model: claude-x"},
    }
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="echo", max_tokens=0, messages=HELLO)
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    assert bad.value.body["error"]["message"].startswith("max_tokens: ")


def test_anthropic_refuses_a_model_outside_the_keys_allowlist(example_server, make_key, protected_client):
    _, plaintext = make_key(protected_client, allowed_models=["gpt-4o*"])
    client = anthropic_client(example_server, "protected-bot", plaintext)
    for stream in (False, True):
        with pytest.raises(anthropic.PermissionDeniedError) as refused:
            client.messages.create(model="echo", max_tokens=64, messages=HELLO, stream=stream)
        assert refused.value.body == {
            "type": "error",
            "error": {"type": "permission_error", "message": "API key may not use model 'echo'."},
        }


def test_anthropic_serves_the_models_of_the_keys_allowlist_only(example_server, make_key, protected_client):
    _, plaintext = make_key(protected_client, allowed_models=["echo"])
    client = anthropic_client(example_server, "protected-bot", plaintext)
    reply = client.messages.create(model="echo", max_tokens=64, messages=HELLO)
    assert reply.content[0].text == "echo: hello there"
    with pytest.raises(anthropic.PermissionDeniedError):  # refused before "no such model"
        client.messages.create(model="claude-x", max_tokens=64, messages=HELLO)


def test_anthropic_without_a_key_is_a_401_in_anthropics_shape(example_server, key):
    request = urllib.request.Request(
        f"{example_server}/anthropic/clients/protected-bot/v1/messages",
        data=json.dumps({"model": "echo", "max_tokens": 8, "messages": HELLO}).encode(),
        headers={"Content-Type": "application/json", "anthropic-version": "2023-06-01"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401
    assert json.load(refused.value) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "This LLM client requires an API key."},
    }


# --- LangChain --------------------------------------------------------------------------


def test_langchain_with_the_clients_key_gets_the_reply(example_server, key):
    _, plaintext = key
    reply = chat_openai(example_server, "protected-bot", plaintext).invoke("hello there")
    assert reply.content == "echo: hello there"


def test_langchain_streams_the_same_reply(example_server, key):
    _, plaintext = key
    pieces = [chunk.content for chunk in chat_openai(example_server, "protected-bot", plaintext).stream("hi")]
    assert "".join(str(piece) for piece in pieces) == "echo: hi"


def test_langchain_with_a_bad_key_raises_openais_authentication_error(example_server, key):
    with pytest.raises(openai.AuthenticationError) as refused:
        chat_openai(example_server, "protected-bot", MADE_UP_KEY).invoke("hello")
    assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"


def test_langchain_with_a_revoked_key_is_refused_at_once(example_server, key, make_key, protected_client):
    api_key, plaintext = key
    make_key(protected_client)
    model = chat_openai(example_server, "protected-bot", plaintext)
    assert model.invoke("hello").content

    keys.revoke_key(api_key)

    with pytest.raises(openai.AuthenticationError) as refused:
        model.invoke("hello")
    assert refused.value.body["message"] == "API key has been revoked."
