"""The example in a real server, driven by the official ``openai`` package."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from drf_llm_keys import keys

from .conftest import openai_client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

HELLO = [{"role": "user", "content": "hello there"}]


def test_public_client_lists_the_echo_model_without_a_key(example_server, public_client):
    assert [model.id for model in openai_client(example_server, "public-bot").models.list()] == ["echo"]


def test_public_client_answers_anonymously(example_server, public_client):
    reply = openai_client(example_server, "public-bot").chat.completions.create(model="echo", messages=HELLO)
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.usage is not None and reply.usage.total_tokens == 5


def test_protected_client_refuses_a_request_without_a_key(example_server, protected_client, key):
    request = urllib.request.Request(f"{example_server}/v1/clients/protected-bot/models")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert json.load(refused.value)["error"]["code"] == "missing_api_key"


def test_protected_client_answers_with_its_key(example_server, key):
    _, plaintext = key
    client = openai_client(example_server, "protected-bot", plaintext)
    reply = client.chat.completions.create(model="echo", messages=HELLO)
    assert reply.choices[0].message.content == "echo: hello there"


def test_protected_client_refuses_another_clients_key(example_server, key, make_key, public_client):
    _, other_plaintext = make_key(public_client)
    client = openai_client(example_server, "protected-bot", other_plaintext)
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model="echo", messages=HELLO)
    assert refused.value.body["message"] == "API key is not valid for this LLM client."
    assert refused.value.response.headers["WWW-Authenticate"] == 'Bearer realm="api"'


def test_protected_client_refuses_a_made_up_key(example_server, key):
    client = openai_client(example_server, "protected-bot", "llmk_000000000000." + "x" * 43)
    with pytest.raises(openai.AuthenticationError) as refused:
        client.models.list()
    assert refused.value.body == {
        "message": "Invalid API key.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }


def test_key_revoked_in_another_process_is_refused_at_once(example_server, key, make_key, protected_client):
    api_key, plaintext = key
    make_key(protected_client)  # another active key: the client stays protected
    client = openai_client(example_server, "protected-bot", plaintext)
    # The server now holds the key's entry in the cache, as valid.
    assert client.chat.completions.create(model="echo", messages=HELLO).choices[0].message.content

    keys.revoke_key(api_key)  # here, in the test process

    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model="echo", messages=HELLO)
    assert refused.value.body["message"] == "API key has been revoked."


def test_bulk_revocation_in_another_process_is_refused_at_once(
    example_server, key, make_key, protected_client
):
    api_key, plaintext = key
    make_key(protected_client)
    client = openai_client(example_server, "protected-bot", plaintext)
    assert client.models.list().data

    type(api_key).objects.filter(pk=api_key.pk).update(is_active=False)

    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_revoking_the_last_key_serves_the_client_to_anyone(example_server, key):
    api_key, plaintext = key
    client = openai_client(example_server, "protected-bot", plaintext)
    assert client.models.list().data

    keys.revoke_key(api_key, allow_public=True)

    anonymous = openai_client(example_server, "protected-bot")
    assert anonymous.chat.completions.create(model="echo", messages=HELLO).choices[0].message.content


def test_streaming_joins_into_the_same_reply(example_server, key):
    _, plaintext = key
    client = openai_client(example_server, "protected-bot", plaintext)
    stream = client.chat.completions.create(
        model="echo", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "echo: hello there"
    assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]) == 3
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_streaming_is_refused_without_the_key(example_server, key):
    client = openai_client(example_server, "protected-bot", "not-a-key")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="echo", messages=HELLO, stream=True)


def test_unknown_client_is_not_found(example_server, db):
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client(example_server, "no-such-bot").models.list()
    assert missing.value.body["code"] == "client_not_found"


def test_unknown_model_is_not_found(example_server, public_client):
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client(example_server, "public-bot").chat.completions.create(model="gpt-4o", messages=HELLO)
    assert missing.value.body["code"] == "model_not_found"


# --- model allowlists --------------------------------------------------------------------


def test_a_key_may_use_only_its_models(example_server, make_key, protected_client):
    _, plaintext = make_key(protected_client, allowed_models=["echo"])
    client = openai_client(example_server, "protected-bot", plaintext)
    assert client.chat.completions.create(model="echo", messages=HELLO).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert refused.value.status_code == 403
    assert refused.value.body == {
        "message": "API key may not use model 'gpt-4o'.",
        "type": "permission_error",
        "param": None,
        "code": "model_not_allowed",
    }
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)


def test_models_lists_only_the_models_the_key_may_use(example_server, make_key, protected_client):
    _, echo_only = make_key(protected_client, allowed_models=["echo"])
    _, gpt_only = make_key(protected_client, allowed_models=["gpt-4o*"])
    assert [m.id for m in openai_client(example_server, "protected-bot", echo_only).models.list()] == ["echo"]
    assert openai_client(example_server, "protected-bot", gpt_only).models.list().data == []


def test_a_model_change_here_applies_on_the_servers_next_request(example_server, make_key, protected_client):
    api_key, plaintext = make_key(protected_client)
    client = openai_client(example_server, "protected-bot", plaintext)
    for _ in range(2):  # the server now holds the key's entry
        assert client.chat.completions.create(model="echo", messages=HELLO).choices[0].message.content

    keys.update_restrictions(api_key, allowed_models=["gpt-4o*"])  # here, in the test process

    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="echo", messages=HELLO)
    assert client.models.list().data == []

    type(api_key).objects.filter(pk=api_key.pk).update(allowed_models=[])
    assert [m.id for m in client.models.list()] == ["echo"]
