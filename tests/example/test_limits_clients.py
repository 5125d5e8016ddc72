"""The official ``openai`` and ``anthropic`` clients against the example's limits, in a real
server: a spent budget stops them at once (no retry), a full in-flight cap is retried after
the server's ``retry-after-ms``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from drf_llm_keys import keys
from example_project.llm.server import running_server

from .standin import MODEL, SLOW_MODEL, StandIn

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def capped_server(example_env: dict[str, str], standin: StandIn) -> Iterator[str]:
    """The example with one request in flight per key, forwarding to the stand-in (whose
    ``slow`` model streams for seconds)."""
    env = {**example_env, "LLM_MAX_CONCURRENT": "1", "LLM_UPSTREAM_URL": standin.url}
    with running_server(env) as url:
        yield url


class Sent:
    """The requests a client sent, each one that reached the server."""

    def __init__(self) -> None:
        self.count = 0
        self.at: list[float] = []

    def __call__(self, request: Any) -> None:
        self.count += 1
        self.at.append(time.monotonic())


def counted(sent: Sent) -> httpx.Client:
    return openai.DefaultHttpxClient(event_hooks={"request": [sent]}, timeout=30)


def test_openai_stops_at_once_on_a_spent_budget(capped_server: str, key: Any) -> None:
    api_key, plaintext = key
    keys.set_budget(api_key, "0.00001", "day")  # less than a completion's worst case
    sent = Sent()
    client = openai.OpenAI(
        base_url=f"{capped_server}/v1/clients/protected-bot",
        api_key=plaintext,
        max_retries=2,
        http_client=counted(sent),
    )
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="echo", messages=HELLO)
    assert sent.count == 1  # x-should-retry: false, although max_retries=2
    assert refused.value.code == "insufficient_quota"
    assert refused.value.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert refused.value.response.headers["x-should-retry"] == "false"


def test_anthropic_stops_at_once_on_a_spent_budget(capped_server: str, key: Any) -> None:
    api_key, plaintext = key
    keys.set_budget(api_key, "0.00001", "day")
    sent = Sent()
    client = anthropic.Anthropic(
        base_url=f"{capped_server}/anthropic/clients/protected-bot",
        api_key=plaintext,
        max_retries=2,
        http_client=anthropic.DefaultHttpxClient(event_hooks={"request": [sent]}, timeout=30),
    )
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(model="echo", max_tokens=64, messages=HELLO)
    assert sent.count == 1
    assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_openai_retries_a_full_cap_after_retry_after_ms(capped_server: str, key: Any) -> None:
    _, plaintext = key
    base_url = f"{capped_server}/v1/clients/protected-bot"
    holder = openai.OpenAI(base_url=base_url, api_key=plaintext, max_retries=0)
    stream = holder.chat.completions.create(model=SLOW_MODEL, messages=HELLO, stream=True)  # holds the slot
    next(iter(stream))
    # The client leaves the stream before the retry: the server's next write fails, the
    # response is closed and its slot freed.
    threading.Timer(0.3, stream.close).start()
    sent = Sent()
    client = openai.OpenAI(base_url=base_url, api_key=plaintext, max_retries=1, http_client=counted(sent))
    reply = client.chat.completions.create(model=MODEL, messages=HELLO)
    assert reply.choices[0].message.content == "standin: hello there"
    assert sent.count == 2
    # The client waited the server's retry-after-ms (1000), not its own first backoff (0.5 s).
    assert sent.at[1] - sent.at[0] >= 0.95


def test_a_key_reads_its_budget_from_the_example(capped_server: str, key: Any) -> None:
    api_key, plaintext = key
    keys.set_budget(api_key, "5", "month")
    reply = httpx.get(
        f"{capped_server}/v1/clients/protected-bot/key",
        headers={"Authorization": f"Bearer {plaintext}"},
        timeout=30,
    )
    assert reply.status_code == 200
    info = reply.json()
    assert (info["budget"]["limit"], info["budget"]["period"], info["max_concurrent"]) == ("5", "month", 1)
    assert httpx.get(f"{capped_server}/v1/clients/protected-bot/key", timeout=30).status_code == 401
