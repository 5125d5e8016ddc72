"""Forwarding to an upstream OpenAI-compatible API, against a local stand-in server."""

from __future__ import annotations

import openai
import pytest

from .conftest import openai_client
from .standin import FAILING_MODEL, MODEL, REFUSED_MODEL

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

HELLO = [{"role": "user", "content": "hello upstream"}]


@pytest.fixture(autouse=True)
def forget_received(standin):
    standin.received.clear()


def test_reply_comes_from_the_upstream(forwarding_server, public_client):
    client = openai_client(forwarding_server, "public-bot")
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0.5)
    assert reply.choices[0].message.content == "standin: hello upstream"


def test_request_is_forwarded_as_sent_with_the_servers_upstream_key(forwarding_server, standin, key):
    _, plaintext = key
    client = openai_client(forwarding_server, "protected-bot", plaintext)
    client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0.5)
    [received] = standin.received
    assert (received.method, received.path) == ("POST", "/v1/chat/completions")
    assert received.body == {"model": MODEL, "messages": HELLO, "temperature": 0.5}
    assert received.headers["authorization"] == "Bearer upstream-secret"
    assert not any(plaintext in value for value in received.headers.values())


def test_refused_key_never_reaches_the_upstream(forwarding_server, standin, key):
    client = openai_client(forwarding_server, "protected-bot", "not-a-key")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert standin.received == []


def test_stream_is_relayed(forwarding_server, public_client):
    client = openai_client(forwarding_server, "public-bot")
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    pieces = [chunk.choices[0].delta.content for chunk in stream]
    assert pieces == ["standin: ", "hello ", "upstream "]


def test_models_come_from_the_upstream(forwarding_server, public_client):
    assert [model.id for model in openai_client(forwarding_server, "public-bot").models.list()] == [MODEL]


def test_upstream_refusal_is_relayed_with_its_status(forwarding_server, public_client):
    client = openai_client(forwarding_server, "public-bot")
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=REFUSED_MODEL, messages=HELLO)
    assert refused.value.body["message"] == "standin refuses this model"
    assert refused.value.body["code"] == "bad_model"


def test_upstream_failure_is_a_bad_gateway(forwarding_server, public_client):
    client = openai_client(forwarding_server, "public-bot")
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model=FAILING_MODEL, messages=HELLO)
    assert failed.value.status_code == 502
    assert failed.value.body["code"] == "upstream_error"


def test_a_model_the_key_may_not_use_never_reaches_the_upstream(
    forwarding_server, standin, make_key, protected_client
):
    _, plaintext = make_key(protected_client, allowed_models=[MODEL])
    client = openai_client(forwarding_server, "protected-bot", plaintext)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=REFUSED_MODEL, messages=HELLO)
    assert standin.received == []
    assert client.chat.completions.create(model=MODEL, messages=HELLO).choices[0].message.content


def test_the_upstreams_models_are_filtered_by_the_key(forwarding_server, make_key, protected_client):
    _, only_other = make_key(protected_client, allowed_models=["gpt-4o*"])
    _, standin_models = make_key(protected_client, allowed_models=["standin-*"])
    assert openai_client(forwarding_server, "protected-bot", only_other).models.list().data == []
    listed = openai_client(forwarding_server, "protected-bot", standin_models).models.list()
    assert [model.id for model in listed] == [MODEL]
