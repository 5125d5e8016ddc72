"""The key-changing process of the concurrency tests: ``python -m tests.support.mutator CONFIG_JSON``.

Creates keys for the given clients, then rotates them until the duration runs out: a new
key is created and mapped, then an old one is taken out of service in one of the ways that
must take effect at once (revoke by ``save()``, revoke by bulk ``update()``, delete, expire,
unmap). Each client keeps at least one valid key, so it stays protected throughout.

Prints one JSON line per state change with ``begin`` (before the transaction opens) and
``done`` (after ``atomic()`` returned: committed and invalidations published), both
``time.monotonic()``, which is one clock for every process of the host.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import django

RETIREMENTS = ("revoke", "bulk_revoke", "delete", "expire", "unmap")


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def main(config: dict[str, Any]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.server_settings")
    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import OperationalError, connection, transaction
    from django.utils import timezone

    from drf_llm_keys.models import APIKey, LLMClient, LLMClientAPIKey

    rng = random.Random(config["seed"])
    owner = get_user_model()._default_manager.get(username=config["owner"])
    clients = {slug: LLMClient.objects.get(slug=slug) for slug in config["clients"]}
    in_service: dict[str, list[APIKey]] = {slug: [] for slug in clients}

    def committed(change: Callable[[], Any]) -> Any:
        # SQLite before Django 5.1 opens DEFERRED transactions: one that reads, then writes
        # fails at once with "database is locked" when a server process writes meanwhile.
        for attempt in range(20):
            try:
                with transaction.atomic():
                    return change()
            except OperationalError:
                if connection.vendor != "sqlite" or attempt == 19:
                    raise
                time.sleep(0.05)

    def new_key(slug: str) -> tuple[APIKey, str]:
        api_key, plaintext = APIKey.objects.create_key(user=owner, name=f"key for {slug}")
        LLMClientAPIKey.objects.create(llm_client=clients[slug], api_key=api_key)
        return api_key, plaintext

    def create(slug: str) -> None:
        begin = time.monotonic()
        api_key, plaintext = committed(lambda: new_key(slug))
        done = time.monotonic()
        emit(event="created", client=slug, prefix=api_key.prefix, key=plaintext, begin=begin, done=done)
        in_service[slug].append(api_key)

    def take_out_of_service(api_key: APIKey, how: str) -> None:
        if how == "revoke":
            api_key.is_active = False
            api_key.save()
        elif how == "bulk_revoke":
            APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
        elif how == "delete":
            api_key.delete()
        elif how == "expire":
            api_key.expires_at = timezone.now() - timedelta(seconds=1)
            api_key.save()
        else:
            LLMClientAPIKey.objects.filter(api_key=api_key).delete()

    def retire(slug: str, how: str) -> None:
        api_key = in_service[slug].pop(rng.randrange(len(in_service[slug])))
        begin = time.monotonic()
        committed(lambda: take_out_of_service(api_key, how))
        emit(event="retired", client=slug, prefix=api_key.prefix, how=how, begin=begin, done=time.monotonic())

    for slug in clients:
        for _ in range(config.get("keys_per_client", 2)):
            create(slug)
    emit(event="ready")
    deadline = time.monotonic() + config["duration"]
    while time.monotonic() < deadline:
        slug = rng.choice(sorted(clients))
        create(slug)
        if len(in_service[slug]) > 1:
            retire(slug, rng.choice(RETIREMENTS))
        time.sleep(config["interval"])
    emit(event="done")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
