"""What a decision entry holds, and how it is loaded from the database.

An entry holds what the decision needs and nothing secret: the client's state, and the
presented key's state with its digest, its restrictions and its owner's secret-free fields.
Every load reads the database that ``decision_db()`` names, never a read replica.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import connections, models
from django.db.models import BooleanField, Exists, F, OuterRef, QuerySet, Value

from .. import get_client_model
from ..conf import conf
from ..models import RESTRICTION_FIELDS, APIKey, LLMClientAPIKey, decision_db
from . import store
from .state import Entry, get_decision_cache
from .store import UNCACHEABLE, UNKNOWN_KEY, lookup

# Fields of the owner that the cache may hold; the password hash is never one of them.
USER_CACHE_FIELDS = ("is_active", "is_staff", "is_superuser")

# The key's fields in an entry, besides its prefix ("user_id" becomes the owner's fields).
KEY_FIELDS = ("id", "digest", "is_active", "expires_at", "name", "user_id", *RESTRICTION_FIELDS, "lineage")
# What the budgets and the cap in flight need (drf_llm_keys.budgets), the owner's included.
LIMIT_FIELDS = ("budget_limit", "budget_period", "max_concurrent")
# The key's columns in the decision query: its is_active is the column "active" (_selects).
_KEY_COLUMNS = tuple(field for field in (*KEY_FIELDS, *LIMIT_FIELDS) if field != "is_active")
OWNER_BUDGET_FIELDS = {
    "owner_budget_limit": "user__llm_budget__limit",
    "owner_budget_period": "user__llm_budget__period",
}


def user_cache_fields() -> list[str]:
    """The owner's secret-free fields kept in a key's entry (pk and username included)."""
    return list(_owner_layout(get_user_model())[0])


def owner_activity_is_computed() -> bool:
    """Whether the user model's ``is_active`` is computed (a property), not a column.

    Its value then depends on fields this library cannot name: the loader asks a loaded
    owner, and any save of a user invalidates its keys.
    """
    return _owner_layout(get_user_model())[1]


@functools.lru_cache(maxsize=8)
def _owner_layout(user_model: Any) -> tuple[tuple[str, ...], bool]:
    # Per user model, which AUTH_USER_MODEL names at call time: what the two above answer.
    names = [user_model._meta.pk.attname, user_model.USERNAME_FIELD, *USER_CACHE_FIELDS]
    fields = []
    for name in dict.fromkeys(names):
        try:
            field = user_model._meta.get_field(name)
        except FieldDoesNotExist:
            continue
        # A column of the user's own table (not a parent's): the one the query joins.
        if field.concrete and field.model._meta.db_table == user_model._meta.db_table and name != "password":
            fields.append(field.attname)
    if _has_field(user_model, "is_active"):
        computed = False
    else:  # AbstractBaseUser's plain ``is_active = True`` is a constant, not a computation.
        computed = not isinstance(inspect.getattr_static(user_model, "is_active", True), bool)
    return tuple(fields), computed


def _owner_is_active(user_id: Any, using: str) -> bool:
    # One more query on the cold path; only the answer is cached, never the row.
    owner = get_user_model()._base_manager.db_manager(using).filter(pk=user_id).first()
    return owner is not None and bool(owner.is_active)


# Every column of the decision's query is named with this prefix: an annotation may not
# share a name with a field of its model, and the client model is the project's.
_COLUMN = "decision_{}"
_CLIENT, _ACTIVE = _COLUMN.format("client"), _COLUMN.format("active")
_KEY_COLUMN_NAMES = tuple((field, _COLUMN.format(f"key_{field}")) for field in _KEY_COLUMNS)


def decision_query(value: str, prefix: str | None, using: str) -> QuerySet[Any, dict[str, Any]]:
    """The client's row and, for a presented prefix, the key's rows: one query.

    The key is found by its prefix whatever client it is mapped to (its digest answers
    "not valid for this LLM client"): two SELECTs under UNION ALL, each with the other's
    columns as NULLs but for the two they share (``_selects``).
    """
    name = conf.CLIENT_LOOKUP_FIELD
    client_only, key_part, client_part = _selects(using, name, get_client_model(), get_user_model())
    query: QuerySet[Any, dict[str, Any]]
    if prefix is None:
        query = client_only.filter(**{name: value})
    else:
        # Unordered: Django 6.1 would order the union by APIKey's Meta.ordering.
        query = key_part.filter(prefix=prefix).union(client_part.filter(**{name: value}), all=True).order_by()
    return query


@functools.lru_cache(maxsize=16)
def _selects(using: str, name: str, client_model: Any, user_model: Any) -> tuple[QuerySet[Any, Any], ...]:
    """The decision query's SELECTs for one database and configuration, without their
    filters: the client's alone, the key's and the client's. Built once: building them
    costs a cold decision more than compiling and running them; each query filters copies.
    """
    mappings = LLMClientAPIKey._base_manager.order_by()
    # Two columns serve both rows (a row is the key's when it has a key_id): the client's pk
    # or the client the key's row is mapped to, and whether the client has an active key
    # or whether the key is active. Each column fewer is one less to compile, three times.
    shared: dict[str, Any] = {
        "client": F("pk"),
        "active": Exists(mappings.filter(llm_client=OuterRef("pk"), api_key__is_active=True)),
    }
    client: dict[str, Any] = {"lookup": F(name)}
    client_fields: dict[str, Any] = {"lookup": _lookup_field(client_model)}
    if _has_field(client_model, "require_api_key"):  # else never protected by it
        client["require_api_key"] = F("require_api_key")
        client_fields["require_api_key"] = client_model._meta.get_field("require_api_key")
    # A row for each client the key is mapped to (a key has few): the entry needs this one.
    key_shared: dict[str, Any] = {"client": F("client_links__llm_client"), "active": F("is_active")}
    key: dict[str, Any] = {f"key_{field}": F(field) for field in _KEY_COLUMNS}
    # LEFT JOINs: a key without an owner, an owner without a budget.
    key.update({name: F(path) for name, path in OWNER_BUDGET_FIELDS.items()})
    # The owner's pk is the key's user_id: not selected twice.
    key.update({f"owner_{field}": F(f"user__{field}") for field in user_cache_fields()[1:]})
    clients = client_model._base_manager.db_manager(using).order_by()
    keys = APIKey._base_manager.db_manager(using).order_by()
    # The key's SELECT comes first: its columns give the union its types (the key's JSON,
    # its datetimes), so the client's NULLs there are typed as the client's fields.
    return (
        clients.values(**_columns(shared), **_columns(client)),
        keys.values(**_columns(key_shared), **_nulls(client_fields), **_columns(key)),
        clients.values(**_columns(shared), **_columns(client), **_nulls(dict.fromkeys(key, BooleanField()))),
    )


def _columns(expressions: dict[str, Any]) -> dict[str, Any]:
    return {_COLUMN.format(name): expression for name, expression in expressions.items()}


def _nulls(fields: dict[str, Any]) -> dict[str, Any]:
    return {_COLUMN.format(name): Value(None, output_field=field) for name, field in fields.items()}


def _lookup_field(client_model: type[models.Model]) -> Any:
    name = conf.CLIENT_LOOKUP_FIELD
    return client_model._meta.pk if name == "pk" else client_model._meta.get_field(name)


def _can_hold(field: Any, value: str, connection: Any) -> bool:
    """Whether the lookup field can hold ``value``: a query for one it cannot would fail."""
    if "\x00" in value:  # PostgreSQL refuses NUL in text: it cannot name a client anyway.
        return False
    try:
        prepared = field.get_db_prep_value(value, connection, prepared=False)
    except (ValueError, TypeError, ValidationError):
        return False
    if isinstance(prepared, int):
        # Out of the column's range: a database error on some backends, a miss in the ORM.
        try:
            low, high = connection.ops.integer_field_range(field.get_internal_type())
        except KeyError:
            low = high = None
        # No integer column holds more than 64 bits (Django 4.2 gives SQLite no range).
        low = -(2**63) if low is None else low
        high = 2**63 - 1 if high is None else high
        return bool(low <= prepared <= high)
    return True


def _held_budget(limit: Any, period: Any) -> list[str] | None:
    # As text: the entry is serialized, and a Decimal is exact only as text.
    return None if limit is None else [str(limit), str(period)]


def load_decision(client_value: str, prefix: str | None, *, using: str | None = None) -> Entry:
    """What a decision needs from the database: one query, on ``using``.

    By default ``decision_db()``: a replica's rows may predate the invalidation that made
    this load happen, and would be cached under the new generation.
    """
    using = using or decision_db()
    unknown: Entry = {"client": {"id": None, UNCACHEABLE: True}, "key": None, UNCACHEABLE: True}
    if not _can_hold(_lookup_field(get_client_model()), client_value, connections[using]):
        return unknown
    rows = list(decision_query(client_value, prefix, using))
    key_id = _COLUMN.format("key_id")
    # The client's row is the one without a key (a client-only query has no key_id).
    row = next((row for row in rows if row.get(key_id) is None), None)
    if row is None:
        # Not cached: under a case-insensitive collation a client created later as "Bot"
        # would answer "bot" too, and its creation invalidates "Bot" only.
        return unknown
    client: Entry = {
        "id": row[_CLIENT],
        "has_active_key": bool(row[_ACTIVE]),
        "require_api_key": bool(row.get(_COLUMN.format("require_api_key"))),
        # The stored spelling, which names the client in settings (THROTTLE_RATES).
        "lookup": str(row[_COLUMN.format("lookup")]),
    }
    decision: Entry = {"client": client, "key": None}
    local = get_decision_cache()
    if client["lookup"] != client_value:
        # The database matched another spelling: "01" for a pk of 1, "BOT " for "bot" under
        # MariaDB's case-insensitive, pad-space collations. Invalidations name the stored
        # value only, so an entry cached under this spelling would outlive them.
        client[UNCACHEABLE] = decision[UNCACHEABLE] = True
    else:  # complete: nothing changes it from here on, so entries may share it
        decision["client"] = store.shared(local, client)
    if prefix is None:
        return decision
    key_rows = [row for row in rows if row[key_id] is not None]
    if not key_rows:
        decision[UNKNOWN_KEY] = True
        return decision
    if not (client["require_api_key"] or client["has_active_key"]):
        return decision  # public: the key decides nothing
    first = key_rows[0]
    key = {field: first[column] for field, column in _KEY_COLUMN_NAMES}
    key["is_active"] = first[_ACTIVE]
    owner_budget = [first[_COLUMN.format(name)] for name in OWNER_BUDGET_FIELDS]
    user_id = key.pop("user_id")
    user = None
    if user_id is not None:
        pk, *fields = user_cache_fields()
        user = {pk: user_id, **{field: first[_COLUMN.format(f"owner_{field}")] for field in fields}}
        if owner_activity_is_computed():
            user["is_active"] = _owner_is_active(user_id, using)
        user = store.shared(local, user)
    # A key's row names the client it is mapped to (None for a key mapped to none).
    mapped = any(row[_CLIENT] == client["id"] for row in key_rows)
    decision["key"] = {
        "id": key["id"],
        "prefix": prefix,
        "digest": key["digest"],
        "is_active": key["is_active"],
        "expires_at": key["expires_at"],
        "name": key["name"],
        "client_ids": [client["id"]] if mapped else [],
        "user": user,
        "scopes": key["scopes"],
        "allowed_models": key["allowed_models"],
        "lineage": key["lineage"],  # rate windows are counted under APIKey.allowance
        "budget": _held_budget(key["budget_limit"], key["budget_period"]),
        "owner_budget": _held_budget(*owner_budget),
        "max_concurrent": key["max_concurrent"],
    }
    return decision


def client_entry(value: Any, refresh: bool = False) -> Entry:
    db = decision_db()
    load = functools.partial(load_decision, using=db)
    return lookup(str(value), None, load, using=db, refresh=refresh).client


def _has_field(model: type[models.Model], name: str) -> bool:
    try:
        model._meta.get_field(name)
    except FieldDoesNotExist:
        return False
    return True
