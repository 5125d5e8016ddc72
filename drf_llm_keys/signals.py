"""Public signals, then the model signal receivers that keep the cache in step with every
write (connected in ``apps``).

Each receiver works out what the write made stale while the rows are still there and hands
it to ``decisions.invalidate``, which acts once the transaction commits.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.signals import setting_changed
from django.db import models
from django.db.models.signals import post_save, pre_delete, pre_save
from django.dispatch import Signal

from . import decisions, get_client_model
from .conf import CLIENT_MODEL_SETTING, conf
from .decisions.entries import owner_activity_is_computed, user_cache_fields
from .models import (
    APIKey,
    APIKeyQuerySet,
    LLMClientAPIKey,
    OwnerBudget,
    client_lookup_values,
    clients_of_owners,
    decisions_changed,
)

# --- public signals -------------------------------------------------------------------
# The lifecycle signals are sent by ``drf_llm_keys.keys`` (the command and the admin both go
# through it) once the transaction has committed; ``sender`` is the APIKey class. None of
# them carries a plaintext key or a digest.

# A key was created and mapped to its clients.
# Arguments: api_key (APIKey), llm_clients (list of client instances).
key_created = Signal()

# A key was replaced by a new one with the same owner, name and clients.
# Arguments: api_key (the new APIKey), old_key (the replaced APIKey, now expiring),
# grace (timedelta until old_key expires), llm_clients (list of client instances).
key_rotated = Signal()

# A key was revoked (is_active set to False).
# Arguments: api_key (APIKey), llm_clients (list of client instances it was mapped to),
# made_public (the subset of llm_clients left with no active key, hence public).
key_revoked = Signal()

# The authentication class refused a request to a protected client (a 401); sent by
# ``LLMClientAPIKeyAuthentication``, which is the sender.
# Arguments: request (DRF Request), llm_client (the client's lookup value, str),
# prefix (public part of the key presented, or None), reason (the refusal message, str).
authentication_refused = Signal()

# A budget's spend this period reached BUDGET_ALERT_THRESHOLD of its limit: sent once per
# budget and period across processes, by the process whose settlement crossed it
# (drf_llm_keys.limits); ``sender`` is ``budgets.Budget``.
# Arguments: budget (budgets.Budget: scope "key" or "owner", ident, limit, period),
# spent (Decimal), limit (Decimal).
budget_threshold_reached = Signal()

# --- receivers --------------------------------------------------------------------------

# Set on an instance by pre_save: the clients it touched before the save, as lookup values.
_OLD_CLIENTS = "_drf_llm_keys_old_clients"


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
        setattr(instance, _OLD_CLIENTS, old)


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
    old = instance.__dict__.pop(_OLD_CLIENTS, set())
    decisions.invalidate([*old, getattr(instance, conf.CLIENT_LOOKUP_FIELD)], using)


def client_pre_delete(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    decisions.invalidate([getattr(instance, conf.CLIENT_LOOKUP_FIELD)], using)


def api_key_post_save(
    sender: type[APIKey], instance: APIKey, created: bool, using: str, update_fields: Any, **kwargs: Any
) -> None:
    # A new key is mapped to no client yet; last_used_at is in no decision.
    if created or (update_fields is not None and set(update_fields) <= APIKeyQuerySet.cache_free_fields):
        return
    decisions.invalidate(APIKey.objects.using(using).affected_clients([instance.pk]), using)


def link_pre_save(
    sender: type[LLMClientAPIKey], instance: LLMClientAPIKey, using: str, **kwargs: Any
) -> None:
    if instance.pk is not None and not instance._state.adding:
        # Saving an existing mapping can move it: its old client is affected too.
        setattr(instance, _OLD_CLIENTS, LLMClientAPIKey.objects.using(using).affected_clients([instance.pk]))


def link_changed(sender: type[LLMClientAPIKey], instance: LLMClientAPIKey, using: str, **kwargs: Any) -> None:
    old = instance.__dict__.pop(_OLD_CLIENTS, set())
    decisions.invalidate(old | LLMClientAPIKey.objects.using(using).affected_clients_of([instance]), using)


def user_post_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    using: str,
    update_fields: Any,
    **kwargs: Any,
) -> None:
    # A login saves only last_login: no key entry holds it, unless is_active is computed.
    if created or not (_updated(update_fields, set(user_cache_fields())) or owner_activity_is_computed()):
        return
    _invalidate_keys_of(instance, using)


def user_pre_delete(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    # Deleting the owner nulls APIKey.user with a bulk UPDATE that sends no APIKey signal.
    _invalidate_keys_of(instance, using)


def owner_budget_changed(sender: type[OwnerBudget], instance: OwnerBudget, using: str, **kwargs: Any) -> None:
    # Every key of the owner holds the budget in its entry.
    decisions.invalidate(clients_of_owners([instance.user_id], using), using)


def bulk_changed(sender: Any, client_values: set[Any], using: str, **kwargs: Any) -> None:
    decisions.invalidate(client_values, using)


def _invalidate_keys_of(user: models.Model, using: str) -> None:
    decisions.invalidate(clients_of_owners([user.pk], using), using)


# What this process keeps (held entries, pending invalidations, push channels, prebuilt
# queries) was built under these settings: override_settings must not leave it in force.
_STATE_SETTINGS = frozenset({"DRF_LLM_KEYS", "CACHES", CLIENT_MODEL_SETTING})


def reset_process_state(setting: str, **kwargs: Any) -> None:
    if setting in _STATE_SETTINGS:
        decisions.reset()


def connect() -> None:
    client_model = get_client_model()
    user_model = get_user_model()
    uid = "drf_llm_keys"
    pre_save.connect(client_pre_save, sender=client_model, dispatch_uid=f"{uid}.client_pre_save")
    post_save.connect(client_post_save, sender=client_model, dispatch_uid=f"{uid}.client_post_save")
    pre_delete.connect(client_pre_delete, sender=client_model, dispatch_uid=f"{uid}.client_pre_delete")
    post_save.connect(api_key_post_save, sender=APIKey, dispatch_uid=f"{uid}.api_key_post_save")
    pre_save.connect(link_pre_save, sender=LLMClientAPIKey, dispatch_uid=f"{uid}.link_pre_save")
    post_save.connect(link_changed, sender=LLMClientAPIKey, dispatch_uid=f"{uid}.link_post_save")
    pre_delete.connect(link_changed, sender=LLMClientAPIKey, dispatch_uid=f"{uid}.link_pre_delete")
    post_save.connect(user_post_save, sender=user_model, dispatch_uid=f"{uid}.user_post_save")
    pre_delete.connect(user_pre_delete, sender=user_model, dispatch_uid=f"{uid}.user_pre_delete")
    post_save.connect(owner_budget_changed, sender=OwnerBudget, dispatch_uid=f"{uid}.owner_budget_post_save")
    pre_delete.connect(
        owner_budget_changed, sender=OwnerBudget, dispatch_uid=f"{uid}.owner_budget_pre_delete"
    )
    decisions_changed.connect(bulk_changed, dispatch_uid=f"{uid}.bulk_changed")
    setting_changed.connect(reset_process_state, dispatch_uid=f"{uid}.reset_process_state")
