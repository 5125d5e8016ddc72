"""The example under uvicorn, streamed by the official ``openai`` package's ``AsyncOpenAI``
from its DRF endpoints (``/v1/...``) and its Ninja endpoints (``/ninja/v1/...``)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from asgiref.sync import async_to_sync

from drf_llm_keys import keys
from example_project.llm.server import running_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

HELLO = [{"role": "user", "content": "hello there"}]
DOORS = pytest.mark.parametrize("prefix", ["/v1", "/ninja/v1"], ids=["drf", "ninja"])


@pytest.fixture(scope="module")
def asgi_server(example_env: dict[str, str]) -> Iterator[str]:
    with running_server(example_env, asgi=True) as url:
        yield url


@async_to_sync
async def streamed(base_url: str, slug: str, key: str = "no-key") -> tuple[str, int | None]:
    """The reply ``AsyncOpenAI`` streamed, as text, and the tokens the stream reported. A
    client of its own each time: its connections belong to this call's event loop."""
    client = openai.AsyncOpenAI(base_url=f"{base_url}/clients/{slug}", api_key=key, max_retries=0, timeout=30)
    text, total = "", None
    stream = await client.chat.completions.create(
        model="echo", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    async with stream:
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                total = chunk.usage.total_tokens
    return text, total


@DOORS
def test_async_openai_streams_with_a_key(asgi_server, prefix, key):
    _, plaintext = key
    assert streamed(asgi_server + prefix, "protected-bot", plaintext) == ("echo: hello there", 5)


@DOORS
def test_async_openai_streams_from_a_public_client_without_a_key(asgi_server, prefix, public_client):
    assert streamed(asgi_server + prefix, "public-bot") == ("echo: hello there", 5)


@DOORS
def test_a_key_revoked_here_is_refused_there_at_once(asgi_server, prefix, key, make_key, protected_client):
    api_key, plaintext = key
    make_key(protected_client)  # another active key: the client stays protected
    assert (
        streamed(asgi_server + prefix, "protected-bot", plaintext)[0] == "echo: hello there"
    )  # held there now

    keys.revoke_key(api_key)

    with pytest.raises(openai.AuthenticationError) as refused:
        streamed(asgi_server + prefix, "protected-bot", plaintext)
    assert refused.value.body["message"] == "API key has been revoked."
    assert refused.value.response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
