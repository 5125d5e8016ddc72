"""docs/usage.md's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.http import StreamingHttpResponse
from rest_framework.test import APIRequestFactory

from drf_llm_keys import usage
from drf_llm_keys.models import KeyUsage
from tests.support import bearer

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
USAGE_DOC = (ROOT / "docs" / "usage.md").read_text()
factory = APIRequestFactory()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def call_the_model(body: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}}


@pytest.fixture
def budget(settings: Any) -> None:
    settings.DRF_LLM_KEYS = {"TOKEN_RATE": "20/hour", "USAGE_FLUSH_INTERVAL": 3600}


def test_the_view_example_records_tokens_and_holds_the_budget(budget, key):
    api_key, plaintext = key
    namespace: dict[str, Any] = {"call_the_model": call_the_model}
    exec(python_blocks(USAGE_DOC)[0], namespace)
    view = namespace["ChatCompletion"].as_view()

    def post() -> int:
        request = factory.post("/", {}, format="json", **bearer(plaintext))
        status: int = view(request, llm_client="protected-bot").status_code
        return status

    assert [post(), post(), post()] == [200, 200, 429]  # 12 tokens each: 24 spent, over the 20
    assert usage.flush()
    row = KeyUsage.objects.get(api_key=api_key)
    # The refused request was made with the key: counted, with no tokens.
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (3, 14, 10)


@pytest.mark.parametrize(("read", "completion"), [(None, 6), (2, 2)])
def test_the_streaming_example_records_tokens_however_the_stream_ends(api, budget, key, read, completion):
    """Read to its end: every piece's tokens. Closed by the server after two chunks (a
    client that left): the first one's, the one it wrote."""
    api_key, plaintext = key
    namespace: dict[str, Any] = {}
    exec(python_blocks(USAGE_DOC)[1], namespace)
    from .views import PerViewEcho

    class Streamed(PerViewEcho):
        def get(self, request: Any, **kwargs: Any) -> StreamingHttpResponse:
            response: StreamingHttpResponse = namespace["streamed"](
                request, [("1", 2), ("2", 2), ("3", 2)], 3
            )
            return response

    response = Streamed.as_view()(factory.get("/", **bearer(plaintext)), llm_client="protected-bot")
    ((figures),) = usage.counter.pending().values()
    assert figures[:3] == (1, 0, 0)  # counted; its tokens come with the end of the body
    chunks = iter(response.streaming_content)
    if read is None:
        assert b"".join(chunks) == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
    else:
        assert [next(chunks) for _ in range(read)] == [b"data: 1\n\n", b"data: 2\n\n"]
    response.close()
    assert usage.flush()
    row = KeyUsage.objects.get(api_key=api_key)
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (1, 3, completion)


def test_the_reading_example_sums_per_key(api, budget, key):
    api_key, plaintext = key
    for _ in range(2):
        api.get("/clients/protected-bot/tokens/?prompt=2&completion=1", **bearer(plaintext))
    namespace: dict[str, Any] = {}
    exec(python_blocks(USAGE_DOC)[6], namespace)
    assert list(namespace["per_key"]) == [{"api_key__prefix": api_key.prefix, "requests": 2, "tokens": 6}]


def test_the_budget_settings_example_is_valid(settings):
    namespace: dict[str, Any] = {}
    exec(python_blocks(USAGE_DOC)[7], namespace)
    settings.DRF_LLM_KEYS = namespace["DRF_LLM_KEYS"]
    from drf_llm_keys.checks import check_throttle_rates

    assert check_throttle_rates() == []
    assert usage.token_budget(usage.Subject(1, 1, "big-bot", "p")) == (2000000, 86400)
    assert usage.token_budget(usage.Subject(1, 1, "internal-bot", "p")) is None
    assert usage.token_budget(usage.Subject(1, 1, "other-bot", "p")) == (100000, 60)


def test_the_prices_example_is_valid_and_costs_what_it_says(api, settings, key):
    api_key, plaintext = key
    namespace: dict[str, Any] = {}
    exec(python_blocks(USAGE_DOC)[3], namespace)
    settings.DRF_LLM_KEYS = {**namespace["DRF_LLM_KEYS"], "USAGE_FLUSH_INTERVAL": 3600}
    from drf_llm_keys.checks import check_prices

    assert check_prices() == []
    request = api.get("/clients/protected-bot/echo/", **bearer(plaintext)).wsgi_request
    exec(python_blocks(USAGE_DOC)[4], {"record_tokens": usage.record_tokens, "request": request})
    assert usage.flush()
    row = KeyUsage.objects.get(api_key=api_key)
    assert (str(row.cost), row.unpriced_tokens) == ("0.011250000", 0)
