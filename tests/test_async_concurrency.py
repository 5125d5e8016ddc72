"""Hundreds of concurrent requests on one event loop, mixed keys, clients and front doors:
each answer is its own request's (key, client, scopes, refusal), and usage is counted to
the right key and client."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient
from model_bakery import baker

from drf_llm_keys import usage
from drf_llm_keys.models import APIKey
from tests.support import as_headers, bearer

REQUESTS = 300
DOORS = ["/async/clients/{}/echo/", "/ninja/clients/{}/async/", "/ninja/clients/{}/sync/"]


@pytest.mark.django_db(transaction=True)  # committed rows: decisions are held, most made on the loop
def test_concurrent_requests_never_see_each_others_key_client_or_usage(make_key, settings):
    # The counts are read from this process's counter: no background write may take them
    # first, however long the requests take on a loaded machine.
    settings.DRF_LLM_KEYS = {"USAGE_FLUSH_INTERVAL": 3600}
    clients = {slug: baker.make_recipe("tests.llm_client", slug=slug) for slug in ("bot-a", "bot-b", "bot-c")}
    baker.make_recipe("tests.llm_client", slug="open-bot")
    keys = []  # (plaintext, prefix, client slug, scopes)
    for slug, llm_client in clients.items():
        for scopes in (["chat"], ["chat", "files"]):
            api_key, plaintext = make_key(llm_client, scopes=scopes)
            keys.append((plaintext, api_key.prefix, slug, scopes))
    revoked, revoked_plaintext = make_key(clients["bot-a"], is_active=False)

    rng = random.Random(29)
    plan = []  # (door, client, headers, expected)
    for _ in range(REQUESTS):
        door = rng.choice(DOORS)
        plaintext, prefix, slug, scopes = rng.choice(keys)
        case = rng.random()
        if case < 0.6:  # the key's own client
            plan.append((door, slug, bearer(plaintext), (200, prefix, slug, scopes)))
        elif case < 0.75:  # another client's
            other = rng.choice([name for name in clients if name != slug])
            plan.append((door, other, bearer(plaintext), (401, "API key is not valid for this LLM client.")))
        elif case < 0.85:  # a public client: anonymous, whatever it carries
            plan.append((door, "open-bot", bearer(plaintext), (200, None, "open-bot", None)))
        elif case < 0.93:
            plan.append((door, "bot-a", bearer(revoked_plaintext), (401, "API key has been revoked.")))
        else:
            plan.append((door, slug, {}, (401, "This LLM client requires an API key.")))

    async def one(door: str, slug: str, headers: dict[str, str]) -> Any:
        return await AsyncClient().get(door.format(slug), headers=as_headers(headers))

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(*(one(door, slug, headers) for door, slug, headers, _ in plan))

    responses = async_to_sync(all_at_once)()

    wrong = []
    for (door, slug, _, expected), response in zip(plan, responses, strict=True):
        body = response.json()
        if response.status_code == 200:
            seen: tuple[Any, ...] = (200, body["key"], body["client"], body["scopes"])
        else:
            seen = (response.status_code, body["detail"])
        if seen != expected:
            wrong.append((door, slug, expected, seen))
    assert wrong == []

    served = Counter((prefix, slug) for _, slug, _, (status, prefix, *_) in plan if status == 200 and prefix)
    by_pk = dict(APIKey.objects.values_list("pk", "prefix"))
    counted: Counter[tuple[str, str]] = Counter()
    for (key_pk, client_pk, _), (requests, *_) in usage.counter.pending().items():
        slug = next(name for name, llm_client in clients.items() if llm_client.pk == client_pk)
        counted[(by_pk[key_pk], slug)] += requests
    assert counted == served
    assert revoked.prefix not in {prefix for prefix, _ in counted}
