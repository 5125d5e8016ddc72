"""Model signal receivers that keep the cache in step with every write, connected in ``apps``.

Each receiver works out what the write made stale while the rows are still there and hands
it to ``cache.invalidate``, which acts once the transaction commits.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import models
from django.db.models.signals import post_save, pre_delete, pre_save

from . import cache, get_client_model
from .conf import conf
from .models import APIKey, LLMClientAPIKey, client_lookup_values, user_cache_fields

# Attribute on a client instance holding its lookup value as it was before a save.
_OLD_LOOKUP = "_drf_llm_keys_old_lookup"


def _updated(update_fields: Any, fields: set[str]) -> bool:
    return update_fields is None or bool(set(update_fields) & fields)


def _client_decision_fields() -> set[str]:
    return {conf.CLIENT_LOOKUP_FIELD, "require_api_key"}


def client_pre_save(
    sender: type[models.Model],
    instance: models.Model,
    raw: bool,
    using: str,
    update_fields: Any,
    **kwargs: Any,
) -> None:
    if instance.pk is None or instance._state.adding:
        return
    if _updated(update_fields, _client_decision_fields()):
        old = client_lookup_values(sender._base_manager.using(using).filter(pk=instance.pk))
        setattr(instance, _OLD_LOOKUP, old)


def client_post_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    using: str,
    update_fields: Any,
    **kwargs: Any,
) -> None:
    if not (created or _updated(update_fields, _client_decision_fields())):
        return
    # A new client may replace a cached "no such client" for its lookup value.
    old = instance.__dict__.pop(_OLD_LOOKUP, [])
    cache.invalidate(cache.Stale.of(clients=[*old, getattr(instance, conf.CLIENT_LOOKUP_FIELD)]), using)


def client_pre_delete(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    cache.invalidate(cache.Stale.of(clients=[getattr(instance, conf.CLIENT_LOOKUP_FIELD)]), using)


def api_key_post_save(
    sender: type[APIKey], instance: APIKey, created: bool, using: str, update_fields: Any, **kwargs: Any
) -> None:
    if update_fields is not None and set(update_fields) <= APIKey.objects.cache_free_fields:
        return
    cache.invalidate(APIKey.objects.using(using).stale_for([instance.pk]), using)


def api_key_pre_delete(sender: type[APIKey], instance: APIKey, using: str, **kwargs: Any) -> None:
    cache.invalidate(APIKey.objects.using(using).stale_for([instance.pk]), using)


def link_changed(sender: type[LLMClientAPIKey], instance: LLMClientAPIKey, using: str, **kwargs: Any) -> None:
    cache.invalidate(LLMClientAPIKey.objects.using(using).stale_of([instance]), using)


def user_post_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    using: str,
    update_fields: Any,
    **kwargs: Any,
) -> None:
    # A login saves only last_login: no key entry holds it.
    if created or not _updated(update_fields, set(user_cache_fields())):
        return
    _invalidate_keys_of(instance, using)


def user_pre_delete(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    # Deleting the owner nulls APIKey.user with a bulk UPDATE that sends no APIKey signal.
    _invalidate_keys_of(instance, using)


def _invalidate_keys_of(user: models.Model, using: str) -> None:
    prefixes = APIKey._base_manager.using(using).filter(user=user).values_list("prefix", flat=True)
    cache.invalidate(cache.Stale.of(keys=prefixes), using)


def connect() -> None:
    client_model = get_client_model()
    user_model = get_user_model()
    uid = "drf_llm_keys"
    pre_save.connect(client_pre_save, sender=client_model, dispatch_uid=f"{uid}.client_pre_save")
    post_save.connect(client_post_save, sender=client_model, dispatch_uid=f"{uid}.client_post_save")
    pre_delete.connect(client_pre_delete, sender=client_model, dispatch_uid=f"{uid}.client_pre_delete")
    post_save.connect(api_key_post_save, sender=APIKey, dispatch_uid=f"{uid}.api_key_post_save")
    pre_delete.connect(api_key_pre_delete, sender=APIKey, dispatch_uid=f"{uid}.api_key_pre_delete")
    post_save.connect(link_changed, sender=LLMClientAPIKey, dispatch_uid=f"{uid}.link_post_save")
    pre_delete.connect(link_changed, sender=LLMClientAPIKey, dispatch_uid=f"{uid}.link_pre_delete")
    post_save.connect(user_post_save, sender=user_model, dispatch_uid=f"{uid}.user_post_save")
    pre_delete.connect(user_pre_delete, sender=user_model, dispatch_uid=f"{uid}.user_pre_delete")
