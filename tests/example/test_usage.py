"""The example's token accounting in a real server: every completion's tokens are recorded
for the caller's key, streamed ones included, and a key over its budget gets a 429, which
the ``openai`` and ``anthropic`` clients raise as their ``RateLimitError``: the OpenAI
endpoints and Anthropic's Messages endpoint alike."""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO

import anthropic
import openai
import pytest
from django.core.management import call_command

from example_project.llm.server import running_server
from tests.support import harness
from tests.support.usage import figures

from .conftest import anthropic_client, openai_client

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "hello there"}]  # 2 prompt tokens, "echo: hello there" 3 more


@pytest.fixture(scope="module")
def budget_server(example_env: dict[str, str]) -> Iterator[str]:
    env = {**example_env, "LLM_TOKEN_RATE": "12/hour", "LLM_USAGE_FLUSH_INTERVAL": "0.1"}
    with running_server(env) as url:
        yield url


def test_every_completion_is_recorded_streamed_ones_included(budget_server, key):
    api_key, plaintext = key
    client = openai_client(budget_server, "protected-bot", plaintext)
    reply = client.chat.completions.create(model="echo", messages=HELLO)
    assert reply.usage is not None and reply.usage.total_tokens == 5
    stream = client.chat.completions.create(model="echo", messages=HELLO, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == "echo: hello there"
    harness.wait_until(lambda: figures(api_key) == (2, 4, 6), 30, "usage not recorded")


def test_a_key_over_its_token_budget_gets_a_rate_limit_error(budget_server, key):
    api_key, plaintext = key
    client = openai_client(budget_server, "protected-bot", plaintext)
    for _ in range(3):  # 15 tokens: the third is admitted with 10 spent, under the 12
        client.chat.completions.create(model="echo", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="echo", messages=HELLO)
    assert refused.value.status_code == 429
    assert refused.value.body["type"] == "rate_limit_error"
    assert refused.value.body["code"] == "throttled"
    assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 3600
    # The server's last usage write done (the refused request counts as one), so that it
    # cannot meet the flush of the test database (a deadlock on PostgreSQL).
    harness.wait_until(lambda: figures(api_key) == (4, 6, 9), 30, "usage not recorded")


def test_anthropic_messages_are_recorded_and_shown_by_the_usage_command(budget_server, key):
    api_key, plaintext = key
    client = anthropic_client(budget_server, "protected-bot", plaintext)
    reply = client.messages.create(model="echo", max_tokens=64, messages=HELLO)
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (2, 3)
    with client.messages.stream(model="echo", max_tokens=64, messages=HELLO) as stream:
        assert "".join(stream.text_stream) == "echo: hello there"
    harness.wait_until(lambda: figures(api_key) == (2, 4, 6), 30, "usage not recorded")
    out = StringIO()
    call_command("llm_keys", "usage", api_key.prefix, "--json", stdout=out)
    # Echo at 1.00 and 2.00 per million: 4 x 1 + 6 x 2 millionths.
    assert json.loads(out.getvalue())["totals"] == {
        "requests": 2,
        "prompt_tokens": 4,
        "completion_tokens": 6,
        "cost": "0.000016",
        "unpriced_tokens": 0,
    }


def test_anthropic_over_the_token_budget_gets_its_rate_limit_error(budget_server, key):
    api_key, plaintext = key
    client = anthropic_client(budget_server, "protected-bot", plaintext)
    for _ in range(3):  # 15 tokens: the third is admitted with 10 spent, under the 12
        client.messages.create(model="echo", max_tokens=64, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(model="echo", max_tokens=64, messages=HELLO)
    assert refused.value.status_code == 429
    assert refused.value.body["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 3600
    # The server's last usage write done (the refused request counts as one), so that it
    # cannot meet the flush of the test database (a deadlock on PostgreSQL).
    harness.wait_until(lambda: figures(api_key) == (4, 6, 9), 30, "usage not recorded")
