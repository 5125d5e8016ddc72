"""The key operations the demo walks through, on the models.

Each one is what the ``llm_keys`` management command will do (DESIGN.md: ``create``,
``rotate --grace``, ``revoke``); once it lands, these bodies become ``call_command`` calls
and the demo keeps calling these functions.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import models, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from drf_llm_keys import get_client_model
from drf_llm_keys.conf import conf
from drf_llm_keys.models import APIKey, LLMClientAPIKey


def create_key(llm_client: models.Model, user: Any, name: str) -> tuple[APIKey, str]:
    """A new key mapped to ``llm_client``: ``(api_key, plaintext)``. Mapping the first active
    key is what turns a public client into a protected one."""
    with transaction.atomic():
        api_key, plaintext = APIKey.objects.create_key(user=user, name=name)
        LLMClientAPIKey.objects.create(llm_client=llm_client, api_key=api_key)
    return api_key, plaintext


def rotate_key(llm_client: models.Model, user: Any, grace: timedelta) -> tuple[APIKey, str]:
    """A new key for ``llm_client``; its other active keys expire ``grace`` from now, so
    callers have that long to switch. Keys that expire sooner keep their date."""
    ends = timezone.now() + grace
    with transaction.atomic():
        APIKey.objects.filter(client_links__llm_client=llm_client, is_active=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=ends)
        ).update(expires_at=ends)
        return create_key(llm_client, user, name=f"{llm_client} (rotated)")


class LastActiveKey(Exception):
    """Revoking the key would leave a client without an active key: public."""


def revoke_key(prefix: str, make_public: bool = False) -> APIKey:
    """Revoke a key: refused at once by every process that shares the cache.

    Like ``llm_keys revoke``, it refuses to revoke a client's last active key, which would
    serve that client to anyone, unless ``make_public`` says so.
    """
    api_key = APIKey.objects.get(prefix=prefix)
    if not make_public:
        exposed = clients_left_public(api_key)
        if exposed:
            raise LastActiveKey(
                f"{prefix} is the last active key of {', '.join(exposed)}: revoking it makes them public."
            )
    api_key.is_active = False
    # A full save: save(update_fields=...) of an APIKey trips a bug in drf_llm_keys.signals
    # (api_key_post_save reads cache_free_fields from the manager, not the queryset).
    api_key.save()
    return api_key


def clients_left_public(api_key: APIKey) -> list[str]:
    """The clients (by slug) that have no active key but this one and do not require a key."""
    others = APIKey.objects.filter(is_active=True, client_links__llm_client=OuterRef("pk")).exclude(
        pk=api_key.pk
    )
    clients = get_client_model()._default_manager.filter(
        api_key_links__api_key=api_key, require_api_key=False
    )
    return sorted(str(getattr(c, conf.CLIENT_LOOKUP_FIELD)) for c in clients.exclude(Exists(others)))
