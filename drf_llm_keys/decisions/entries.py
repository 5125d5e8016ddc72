"""What a decision entry holds, and how it is loaded from the database.

An entry holds what the decision needs and nothing secret: the client's state, and the
presented key's state with its digest, its restrictions and its owner's secret-free fields.
Every load reads the database that ``decision_db()`` names, never a read replica.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, TypeVar

from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models
from django.db.models import Exists, OuterRef

from .. import get_client_model
from ..conf import conf
from ..models import RESTRICTION_FIELDS, APIKey, LLMClientAPIKey, decision_db
from .state import Entry
from .store import UNCACHEABLE, lookup

ModelT = TypeVar("ModelT", bound=models.Model)

# Fields of the owner that the cache may hold; the password hash is never one of them.
USER_CACHE_FIELDS = ("is_active", "is_staff", "is_superuser")


def user_cache_fields() -> list[str]:
    """The owner's secret-free fields kept in a key's entry (pk and username included)."""
    user_model = get_user_model()
    names = [user_model._meta.pk.attname, user_model.USERNAME_FIELD, *USER_CACHE_FIELDS]
    fields = []
    for name in dict.fromkeys(names):
        try:
            field = user_model._meta.get_field(name)
        except FieldDoesNotExist:
            continue
        if field.concrete and name != "password":
            fields.append(field.attname)
    return fields


def owner_activity_is_computed() -> bool:
    """Whether the user model's ``is_active`` is computed (a property), not a column.

    Its value then depends on fields this library cannot name: the loader asks a loaded
    owner, and any save of a user invalidates its keys.
    """
    user_model = get_user_model()
    if _has_field(user_model, "is_active"):
        return False
    # AbstractBaseUser's plain ``is_active = True`` is a constant, not a computation.
    return not isinstance(inspect.getattr_static(user_model, "is_active", True), bool)


def _owner_is_active(user_id: Any, using: str) -> bool:
    # One more query on the cold path; only the answer is cached, never the row.
    owner = get_user_model()._base_manager.db_manager(using).filter(pk=user_id).first()
    return owner is not None and bool(owner.is_active)


def load_client_entry(value: str, using: str) -> Entry:
    client_model = get_client_model()
    if "\x00" in value:  # PostgreSQL refuses NUL in text: it cannot name a client anyway.
        return {"id": None, UNCACHEABLE: True}
    active = LLMClientAPIKey.objects.filter(llm_client=OuterRef("pk"), api_key__is_active=True)
    columns = ["pk", "has_active", conf.CLIENT_LOOKUP_FIELD]
    if _has_field(client_model, "require_api_key"):
        columns.append("require_api_key")
    try:
        row = (
            client_model._default_manager.db_manager(using)
            .filter(**{conf.CLIENT_LOOKUP_FIELD: value})
            .annotate(has_active=Exists(active))
            .values_list(*columns)
            .first()
        )
    except (ValueError, TypeError, ValidationError):  # a value the lookup field cannot hold
        row = None
    if row is None:
        # Not cached: under a case-insensitive collation a client created later as "Bot"
        # would answer "bot" too, and its creation invalidates "Bot" only.
        return {"id": None, UNCACHEABLE: True}
    entry = {
        "id": row[0],
        "has_active_key": bool(row[1]),
        "require_api_key": bool(row[3:] and row[3]),
        # The stored spelling, which names the client in settings (THROTTLE_RATES).
        "lookup": str(row[2]),
    }
    if str(row[2]) != value:
        # The database matched another spelling: "01" for a pk of 1, "BOT " for "bot" under
        # MariaDB's case-insensitive, pad-space collations. Invalidations name the stored
        # value only, so an entry cached under this spelling would outlive them.
        entry[UNCACHEABLE] = True
    return entry


def load_key_entry(prefix: str, using: str) -> Entry:
    user_fields = user_cache_fields()
    rows = list(
        APIKey._base_manager.db_manager(using)
        .filter(prefix=prefix)
        .values_list(
            "pk",
            "digest",
            "is_active",
            "expires_at",
            "name",
            "user_id",
            "client_links__llm_client_id",
            *RESTRICTION_FIELDS,
            *(f"user__{name}" for name in user_fields),
        )
    )
    if not rows:
        return {"id": None}
    pk, digest, is_active, expires_at, name, user_id, _, scopes, allowed_models = rows[0][:9]
    user = dict(zip(user_fields, rows[0][9:], strict=True)) if user_id is not None else None
    if user is not None and owner_activity_is_computed():
        user["is_active"] = _owner_is_active(user_id, using)
    return {
        "id": pk,
        "prefix": prefix,
        "digest": digest,
        "is_active": is_active,
        "expires_at": expires_at,
        "name": name,
        "client_ids": sorted({row[6] for row in rows if row[6] is not None}),
        "user": user,
        "scopes": scopes,
        "allowed_models": allowed_models,
    }


def api_key_from_entry(entry: Entry, db: str) -> APIKey:
    """The key and its owner rebuilt from a key entry: no query, no secret field.

    The other fields are deferred: reading one loads it from the database.
    """
    # Copies: a view that changes request.auth.scopes must not change the held entry. An
    # entry written by a version without them leaves them deferred, read from the database.
    restrictions = {name: _copied(entry[name]) for name in RESTRICTION_FIELDS if name in entry}
    user = _from_fields(get_user_model(), db, entry["user"])
    api_key = _from_fields(
        APIKey,
        db,
        {
            "id": entry["id"],
            "prefix": entry["prefix"],
            "name": entry["name"],
            "is_active": entry["is_active"],
            "expires_at": entry["expires_at"],
            "user_id": user.pk,
            **restrictions,
        },
    )
    APIKey._meta.get_field("user").set_cached_value(api_key, user)  # type: ignore[union-attr]
    return api_key


def _copied(value: Any) -> Any:
    # Anything but a list stays as it is: has_scopes() and allows_model() grant it nothing.
    return list(value) if isinstance(value, list) else value


def _from_fields(model: type[ModelT], db: str, values: dict[str, Any]) -> ModelT:
    names = _concrete_order(model, tuple(values))
    instance: ModelT = model.from_db(db, names, [values[name] for name in names])
    return instance


@functools.lru_cache(maxsize=64)
def _concrete_order(model: type[models.Model], names: tuple[str, ...]) -> list[str]:
    # from_db() takes the values in the order of the model's concrete fields.
    return [f.attname for f in model._meta.concrete_fields if f.attname in names]


def load_decision(client_value: str, prefix: str | None, *, using: str | None = None) -> Entry:
    """What a decision needs from the database: at most two queries, on ``using``.

    By default ``decision_db()``: a replica's rows may predate the invalidation that made
    this load happen, and would be cached under the new generation.
    """
    using = using or decision_db()
    client = load_client_entry(client_value, using)
    protected = client["id"] is not None and (client["require_api_key"] or client["has_active_key"])
    key = load_key_entry(prefix, using) if prefix is not None and protected else None
    return {"client": client, "key": key, UNCACHEABLE: client.get(UNCACHEABLE, False)}


def client_entry(value: Any, refresh: bool = False) -> Entry:
    db = decision_db()
    load = functools.partial(load_decision, using=db)
    decision = lookup(str(value), None, load, using=db, refresh=refresh)
    client: Entry = decision["client"]
    return client


def _has_field(model: type[models.Model], name: str) -> bool:
    try:
        model._meta.get_field(name)
    except FieldDoesNotExist:
        return False
    return True
