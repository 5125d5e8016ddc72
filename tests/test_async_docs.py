"""docs/async.md's examples run as written: the adrf view and the Ninja API."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from ninja.testing import TestAsyncClient
from rest_framework.test import APIRequestFactory

from tests.support import bearer

pytestmark = pytest.mark.django_db

DOC = (Path(__file__).resolve().parent.parent / "docs" / "async.md").read_text()
ADRF_EXAMPLE, NINJA_EXAMPLE = re.findall(r"```python\n(.*?)```", DOC, re.DOTALL)


def run(example: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(example, namespace)
    return namespace


def test_the_adrf_example(make_key, protected_client):
    _, chat = make_key(protected_client, scopes=["chat"], allowed_models=["gpt-4o*"])
    _, files = make_key(protected_client, scopes=["files"])
    view = run(ADRF_EXAMPLE)["ChatCompletion"].as_view()

    def post(plaintext: str | None, model: str) -> Any:
        headers = {} if plaintext is None else bearer(plaintext)
        request = APIRequestFactory().post("/", {"model": model}, format="json", **headers)
        return async_to_sync(view)(request, llm_client="protected-bot")

    assert post(chat, "gpt-4o-mini").data["client"] == "protected-bot"
    assert post(chat, "o1").status_code == 403
    assert post(files, "gpt-4o-mini").status_code == 403
    assert post(None, "gpt-4o-mini").status_code == 401


def test_the_ninja_example(make_key, protected_client, public_client, settings):
    settings.DRF_LLM_KEYS = {"THROTTLE_RATE": "2/minute"}
    api_key, plaintext = make_key(protected_client, allowed_models=["gpt-4o*"])
    client = TestAsyncClient(run(NINJA_EXAMPLE)["api"])

    def post(path: str, **headers: str) -> Any:
        async def send() -> Any:
            return await client.post(path, headers=headers)

        return async_to_sync(send)()

    path = "/clients/protected-bot/chat/completions?model={}"
    auth = {"Authorization": f"Bearer {plaintext}"}
    assert post(path.format("gpt-4o-mini"), **auth).json() == {
        "client": "protected-bot",
        "key": api_key.prefix,
    }
    refused = post(path.format("o1"), **auth)
    assert (refused.status_code, refused.json()) == (403, {"detail": "API key may not use model 'o1'."})
    assert post(path.format("gpt-4o-mini"), **auth).status_code == 429
    unauthenticated = post(path.format("gpt-4o-mini"))
    assert unauthenticated.status_code == 401
    assert unauthenticated["WWW-Authenticate"] == 'Bearer realm="api"'
    public = post("/clients/public-bot/chat/completions?model=o1")
    assert public.json() == {"client": "public-bot", "key": None}
