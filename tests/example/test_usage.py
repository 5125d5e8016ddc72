"""The example's token accounting in a real server: every completion's tokens are recorded
for the caller's key, streamed ones included, and a key over its budget gets OpenAI's 429,
which the ``openai`` client raises as ``RateLimitError``."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from example_project.llm.server import running_server
from tests.support import harness
from tests.support.usage import figures

from .conftest import openai_client

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
    _, plaintext = key
    client = openai_client(budget_server, "protected-bot", plaintext)
    for _ in range(3):  # 15 tokens: the third is admitted with 10 spent, under the 12
        client.chat.completions.create(model="echo", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="echo", messages=HELLO)
    assert refused.value.status_code == 429
    assert refused.value.body["type"] == "rate_limit_error"
    assert refused.value.body["code"] == "throttled"
    assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 3600
