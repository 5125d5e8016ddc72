"""The key and its owner as model instances, rebuilt from a held decision entry: what a
valid key's request gets as ``request.auth`` and ``request.user``, with no query."""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models import DEFERRED

from .decisions.entries import LIMIT_FIELDS
from .decisions.state import HeldKey
from .models import RESTRICTION_FIELDS, APIKey, concrete_attnames

# The key's owner: its field's model is the user model, without get_user_model()'s lookups.
_USER_MODEL = APIKey.user


def api_key_from_entry(entry: Mapping[str, Any], prefix: str, db: str) -> APIKey:
    """The key and its owner rebuilt from a key entry (held, or as loaded) and the key's
    prefix: no query, no secret field.

    New instances on every call (a view may change ``request.user``), with copies of the
    restriction lists (nor ``request.auth.scopes``). The other fields are deferred: reading
    one loads it from the database.
    """
    if type(entry) is not HeldKey:
        entry = HeldKey(entry)
    layout = _key_layout()
    try:
        values = layout.held(entry)
    except AttributeError:  # an entry of an earlier version: what it lacks, as below
        values = tuple(getattr(entry, name, default) for name, default in _KEY_DEFAULTS)
    owner, id_, name, is_active, expires_at, scopes, allowed_models, lineage, budget, max_concurrent = values
    user_model = _USER_MODEL.field.related_model
    user = user_model.from_db(db, concrete_attnames(user_model), _row(user_model, owner))
    row: list[Any] = [*layout.deferred]
    row[layout.id], row[layout.name] = id_, name
    row[layout.is_active], row[layout.expires_at] = is_active, expires_at
    # An entry of a version without the restriction fields leaves them deferred.
    row[layout.scopes], row[layout.allowed_models] = scopes, allowed_models
    row[layout.prefix], row[layout.user_id], row[layout.lineage] = prefix, user.pk, lineage
    if budget is not _NOT_HELD:  # an entry of a version without the limits leaves them deferred
        limit, period = _budget_of(budget) or (None, "")
        row[layout.budget_limit], row[layout.budget_period] = limit, period
        row[layout.max_concurrent] = max_concurrent
    # The entry's values are the row as read: APIKey.from_held takes them as what a save
    # compares with, and gives the instance copies of the lists (only the restrictions are).
    api_key: APIKey = APIKey.from_held(db, row, lists=layout.lists)
    api_key.user = user  # held in the key's fields cache: request.user costs no query
    owner_budget = getattr(entry, "owner_budget", _NOT_HELD)
    if owner_budget is not _NOT_HELD:
        api_key.owner_budget = _budget_of(owner_budget)  # no query to read it
    return api_key


def _budget_of(held: Any) -> tuple[Decimal, str] | None:
    return None if held is None else (Decimal(held[0]), str(held[1]))


# What getattr() finds for a field an entry of an earlier version does not hold.
_NOT_HELD = object()


# The entry's fields api_key_from_entry reads, with what an entry of an earlier version
# that lacks one stands for: its owner and key fields, then the limits.
_KEY_DEFAULTS = (
    ("user", None),
    ("id", DEFERRED),
    ("name", DEFERRED),
    ("is_active", DEFERRED),
    ("expires_at", DEFERRED),
    ("scopes", DEFERRED),  # RESTRICTION_FIELDS
    ("allowed_models", DEFERRED),
    ("lineage", ""),
    ("budget", _NOT_HELD),
    ("max_concurrent", None),
)


class _KeyLayout:
    """Where each of the key's values goes in its row (``concrete_attnames`` order)."""

    def __init__(self) -> None:
        attnames = concrete_attnames(APIKey)
        self.deferred: tuple[Any, ...] = (DEFERRED,) * len(attnames)
        self.held = operator.attrgetter(*(name for name, _ in _KEY_DEFAULTS))
        names = ("id", "name", "is_active", "expires_at", "prefix", "user_id", "lineage")
        for name in (*names, *RESTRICTION_FIELDS, *LIMIT_FIELDS):
            setattr(self, name, attnames.index(name))
        # What may change in place (JSON lists), so that the instance gets copies.
        self.lists = tuple(attnames.index(name) for name in RESTRICTION_FIELDS)

    id: int
    name: int
    is_active: int
    expires_at: int
    scopes: int
    allowed_models: int
    prefix: int
    user_id: int
    lineage: int
    budget_limit: int
    budget_period: int
    max_concurrent: int


@functools.cache
def _key_layout() -> _KeyLayout:
    return _KeyLayout()


def _row(model: type[models.Model], values: dict[str, Any]) -> list[Any]:
    # As a queryset hands from_db() a row: a value for every concrete field, in their order,
    # DEFERRED for those not loaded. Those of ``values`` that are fields: a computed
    # is_active, say, is not one.
    row: list[Any] = [DEFERRED] * len(concrete_attnames(model))
    for position, name in _positions(model, tuple(values)):
        row[position] = values[name]
    return row


@functools.lru_cache(maxsize=64)
def _positions(model: type[models.Model], names: tuple[str, ...]) -> tuple[tuple[int, str], ...]:
    attnames = concrete_attnames(model)
    return tuple((attnames.index(name), name) for name in names if name in attnames)
