"""What a decision entry holds, and how it is loaded from the database.

An entry holds what the decision needs and nothing secret: the client's state, and the
presented key's state with its digest, its restrictions and its owner's secret-free fields.
Every load reads the database that ``decision_db()`` names, never a read replica.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import weakref
from typing import Any, TypeVar

from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import DatabaseError, connections, models
from django.db.models.base import ModelState
from django.db.models.expressions import Col
from django.db.models.signals import post_init, pre_init
from django.dispatch import Signal
from django.dispatch.dispatcher import NO_RECEIVERS

from .. import get_client_model
from ..conf import conf
from ..models import RESTRICTION_FIELDS, APIKey, LLMClientAPIKey, decision_db
from . import store
from .state import Entry, get_decision_cache
from .store import UNCACHEABLE, UNKNOWN_KEY, lookup

ModelT = TypeVar("ModelT", bound=models.Model)

logger = logging.getLogger("drf_llm_keys")

# PostgreSQL's SQLSTATEs for a prepared statement: not in this session (a pooler moved the
# connection, DISCARD ALL), prepared before a schema change altered its result columns
# ("cached plan must not change result type"), and prepared already.
_NOT_PREPARED, _PLAN_CHANGED, _PREPARED_ALREADY = "26000", "0A000", "42P05"
# PREPAREs per connection at most: one that keeps losing its statement (a transaction pooler
# moving its sessions) runs the plain statement from then on, not a failed EXECUTE each time.
PREPARES_PER_CONNECTION = 2

# The key's owner: its field's model is the user model, without get_user_model()'s lookups.
_USER_MODEL = APIKey.user

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
        # A column of the user's own table (not a parent's): DecisionQuery joins that one.
        if field.concrete and field.model._meta.db_table == user_model._meta.db_table and name != "password":
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


class DecisionQuery:
    """The one statement of a cold decision on one database.

    The client, whether it has an active key, and the presented key with its mapping to
    that client and its owner's secret-free fields, in one query with bound parameters.
    Built once per database and configuration (kept on the ``DecisionCache``, which
    ``decisions.reset()`` and a settings change renew): building and compiling querysets
    would cost the cold path more than running the query. On PostgreSQL it runs prepared
    where that is safe (``_prepares``): planning it costs the server more than running it.
    """

    def __init__(self, using: str) -> None:
        connection = connections[using]
        quote = connection.ops.quote_name
        client_model, user_model = get_client_model(), get_user_model()
        self.lookup = _lookup_field(client_model)
        self.user_fields = user_cache_fields()
        concrete = {field.attname: field for field in user_model._meta.concrete_fields}

        def field(model: type[models.Model], name: str) -> Any:
            return model._meta.pk if name == "pk" else model._meta.get_field(name)

        def column(model: type[models.Model], name: str) -> str:
            return quote(str(field(model, name).column))

        def table(model: type[models.Model]) -> str:
            return quote(model._meta.db_table)

        require = (
            ("c", field(client_model, "require_api_key"))
            if _has_field(client_model, "require_api_key")
            else None  # a client model without it: never protected by it
        )
        # The row: client pk, lookup value, require_api_key, has an active key (at
        # HAS_ACTIVE), the key's KEY_FIELDS, its mapping to this client (at LINK), the
        # owner's fields.
        selected: list[tuple[str, Any] | None] = [
            ("c", field(client_model, "pk")),
            ("c", self.lookup),
            require,
            None,
            *(("k", field(APIKey, name)) for name in KEY_FIELDS),
            ("l", field(LLMClientAPIKey, "llm_client")),  # for its converters
            *(("u", concrete[name]) for name in self.user_fields),
        ]
        self.converters: list[tuple[int, list[Any], Col]] = []
        for index, selection in enumerate(selected):
            if selection is not None:
                expression = Col(selection[0], selection[1])
                functions = connection.ops.get_db_converters(expression)
                functions += selection[1].get_db_converters(connection)
                if functions:
                    self.converters.append((index, functions, expression))
        columns = ["NULL" if c is None else f"{c[0]}.{quote(c[1].column)}" for c in selected]
        link, key, client_pk = LLMClientAPIKey, APIKey, f"c.{column(client_model, 'pk')}"
        # Subqueries of one table each where a join would do: PostgreSQL plans the statement
        # on every run (Django turns psycopg's prepared statements off), and planning a join
        # costs it more than running the whole query. Whether one of the client's keys is
        # active, and the key's mapping to this client only (the entry is this client's):
        columns[HAS_ACTIVE] = (
            f"(SELECT 1 FROM {table(link)} al WHERE al.{column(link, 'llm_client')} = {client_pk} "
            f"AND (SELECT ak.{column(key, 'is_active')} FROM {table(key)} ak "
            f"WHERE ak.{column(key, 'pk')} = al.{column(link, 'api_key')}) = %s LIMIT 1) IS NOT NULL"
        )
        columns[LINK] = (
            f"(SELECT l.{column(link, 'llm_client')} FROM {table(link)} l "
            f"WHERE l.{column(link, 'api_key')} = k.{column(key, 'pk')} "
            f"AND l.{column(link, 'llm_client')} = {client_pk})"
        )
        self.sql = (
            f"SELECT {', '.join(columns)} FROM {table(client_model)} c "
            f"LEFT OUTER JOIN {table(key)} k ON k.{column(key, 'prefix')} = %s "
            f"LEFT OUTER JOIN {table(user_model)} u "
            f"ON u.{column(user_model, 'pk')} = k.{column(key, 'user')} "
            f"WHERE c.{quote(self.lookup.column)} = %s"
        )
        # Named after its text, so a statement of that name in a session is this one.
        self.name = ""
        # Per connection (the driver's): the PREPAREs it ran, and whether one is in force.
        self.prepares: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self.ready: weakref.WeakSet[Any] = weakref.WeakSet()
        if connection.vendor == "postgresql":
            first, *rest = self.sql.split("%s")
            numbered = first + "".join(f"${number}{part}" for number, part in enumerate(rest, 1))
            self.name = f"drf_llm_keys_decision_{hashlib.sha256(numbered.encode()).hexdigest()[:16]}"
            self.prepare_sql = f"PREPARE {self.name} AS {numbered}"
            self.execute_sql = f"EXECUTE {self.name}({', '.join(['%s'] * len(rest))})"

    def run(self, value: str, prefix: str | None, using: str) -> list[Any] | None:
        """The converted row; None when the value can name no client, or none has it."""
        connection = connections[using]
        prepared = _prepared(self.lookup, value, connection)
        if prepared is None:
            return None
        with connection.cursor() as cursor:
            # A prefix of None joins no key: "= NULL" is never true.
            self._execute(cursor, connection, [True, prefix, prepared])
            row = cursor.fetchone()
        if row is None:
            return None
        values = list(row)
        for index, functions, expression in self.converters:
            value = values[index]
            for function in functions:
                value = function(value, expression, connection)
            values[index] = value
        return values

    def _execute(self, cursor: Any, connection: Any, params: list[Any]) -> None:
        if self.name and _prepares(connection):
            raw = connection.connection
            prepares = self.prepares.get(raw, 0)
            if raw not in self.ready and prepares < PREPARES_PER_CONNECTION:
                self.prepares[raw] = prepares + 1
                if self._prepare(cursor):
                    self.ready.add(raw)
            if raw in self.ready:
                try:
                    cursor.execute(self.execute_sql, params)
                    return
                except DatabaseError as exc:
                    code = _sqlstate(exc)
                    if code not in (_NOT_PREPARED, _PLAN_CHANGED):
                        raise
                    self.ready.discard(raw)  # prepared again by the next run, if any is left
                    if code == _PLAN_CHANGED:  # else PREPARE would find the old one
                        cursor.execute(f"DEALLOCATE {self.name}")
        cursor.execute(self.sql, params)

    def _prepare(self, cursor: Any) -> bool:
        try:
            cursor.execute(self.prepare_sql)
        except DatabaseError as exc:
            if _sqlstate(exc) == _PREPARED_ALREADY:  # in this session, by another connection object
                return True
            logger.warning("drf_llm_keys: the decision statement could not be prepared", exc_info=True)
            return False
        return True


def _prepares(connection: Any) -> bool:
    """Whether to run the decision's statement prepared on this connection: only where
    that pays and cannot break anything.

    Not in a transaction (a failed EXECUTE would abort it); only on a connection kept
    across requests (``CONN_MAX_AGE``, or Django's pool), since each new one costs a
    PREPARE; not behind a transaction pooler (Django asks those to set
    ``DISABLE_SERVER_SIDE_CURSORS``), whose sessions move between connections; and not
    with ``server_side_binding``, where psycopg prepares statements itself.
    """
    settings = connection.settings_dict
    options = settings.get("OPTIONS", {})
    return bool(
        conf.PREPARE_DECISION_QUERY
        and connection.get_autocommit()  # False in atomic() too
        and (settings.get("CONN_MAX_AGE") != 0 or options.get("pool"))
        and not settings.get("DISABLE_SERVER_SIDE_CURSORS")
        and not options.get("server_side_binding")
    )


def _sqlstate(exc: BaseException) -> str | None:
    # Django's error wraps the driver's: psycopg 3 names the code sqlstate, psycopg2 pgcode.
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)


# The key's columns in an entry, in this order in DecisionQuery's row, after HAS_ACTIVE.
KEY_FIELDS = ("id", "digest", "is_active", "expires_at", "name", "user", *RESTRICTION_FIELDS, "lineage")
HAS_ACTIVE = 3
LINK = HAS_ACTIVE + 1 + len(KEY_FIELDS)  # the key's mapping to this client


def _lookup_field(client_model: type[models.Model]) -> Any:
    name = conf.CLIENT_LOOKUP_FIELD
    return client_model._meta.pk if name == "pk" else client_model._meta.get_field(name)


def _prepared(field: Any, value: str, connection: Any) -> Any:
    """``value`` as the lookup field's database value; None for one it cannot hold."""
    if "\x00" in value:  # PostgreSQL refuses NUL in text: it cannot name a client anyway.
        return None
    try:
        prepared = field.get_db_prep_value(value, connection, prepared=False)
    except (ValueError, TypeError, ValidationError):
        return None
    if isinstance(prepared, int):
        # Out of the column's range: a database error on some backends, a miss in the ORM.
        try:
            low, high = connection.ops.integer_field_range(field.get_internal_type())
        except KeyError:
            low = high = None
        # No integer column holds more than 64 bits (Django 4.2 gives SQLite no range).
        low = -(2**63) if low is None else low
        high = 2**63 - 1 if high is None else high
        if not low <= prepared <= high:
            return None
    return prepared


def _queries(using: str) -> DecisionQuery:
    queries = get_decision_cache().queries
    key = (using, connections[using].vendor)
    query: DecisionQuery | None = queries.get(key)
    if query is None:
        query = queries[key] = DecisionQuery(using)
    return query


def api_key_from_entry(entry: Entry, db: str) -> APIKey:
    """The key and its owner rebuilt from a key entry: no query, no secret field.

    New instances on every call (a view may change ``request.user``), with copies of the
    restriction lists (nor ``request.auth.scopes``). The other fields are deferred: reading
    one loads it from the database.
    """
    user = _instance(_USER_MODEL.field.related_model, db, entry["user"])
    values = {
        "id": entry["id"],
        "prefix": entry["prefix"],
        "name": entry["name"],
        "is_active": entry["is_active"],
        "expires_at": entry["expires_at"],
        "user_id": user.pk,
        "lineage": entry.get("lineage", ""),  # an entry of a version without it: ""
    }
    for name in RESTRICTION_FIELDS:
        # An entry written by a version without them leaves them deferred.
        if name in entry:
            values[name] = _copied(entry[name])
    api_key = _instance(APIKey, db, values)
    api_key._state.fields_cache["user"] = user
    return api_key


def _copied(value: Any) -> Any:
    # Anything but a list stays as it is: has_scopes() and allows_model() grant it nothing.
    return list(value) if isinstance(value, list) else value


def _instance(model: type[ModelT], db: str, values: dict[str, Any]) -> ModelT:
    """What ``model.from_db(db, ...)`` returns for these fields, without running
    ``__init__`` when nothing would see the difference: it costs more than the decision."""
    concrete = _concrete_attnames(model)
    if not values.keys() <= concrete.keys():  # a computed is_active, say
        values = {name: value for name, value in values.items() if name in concrete}
    if _runs_init_code(model):
        names = [name for name in concrete if name in values]
        built: ModelT = model.from_db(db, names, [values[name] for name in names])
        return built
    instance = model.__new__(model)
    instance.__dict__.update(values)
    state = instance._state = ModelState()
    state.adding, state.db = False, db
    return instance


def _runs_init_code(model: type[models.Model]) -> bool:
    """Whether building an instance runs code of the project's: its own ``__init__``, or a
    receiver of ``pre_init``/``post_init`` (a field tracker, say)."""
    return (
        model.__init__ is not models.Model.__init__
        or _has_receivers(pre_init, model)
        or _has_receivers(post_init, model)
    )


def _has_receivers(signal: Signal, model: type[models.Model]) -> bool:
    # What Signal.send() checks first: its cache of senders known to have no receiver.
    if not signal.receivers or signal.sender_receivers_cache.get(model) is NO_RECEIVERS:
        return False
    return signal.has_listeners(model)


@functools.lru_cache(maxsize=16)
def _concrete_attnames(model: type[models.Model]) -> dict[str, None]:
    # In the order of the model's concrete fields, which from_db() takes its values in.
    return dict.fromkeys(field.attname for field in model._meta.concrete_fields)


def load_decision(client_value: str, prefix: str | None, *, using: str | None = None) -> Entry:
    """What a decision needs from the database: one query, on ``using``.

    By default ``decision_db()``: a replica's rows may predate the invalidation that made
    this load happen, and would be cached under the new generation.
    """
    using = using or decision_db()
    query = _queries(using)
    row = query.run(client_value, prefix, using)
    if row is None:
        # Not cached: under a case-insensitive collation a client created later as "Bot"
        # would answer "bot" too, and its creation invalidates "Bot" only.
        return {"client": {"id": None, UNCACHEABLE: True}, "key": None, UNCACHEABLE: True}
    client: Entry = {
        "id": row[0],
        "has_active_key": bool(row[HAS_ACTIVE]),
        "require_api_key": bool(row[2]),
        # The stored spelling, which names the client in settings (THROTTLE_RATES).
        "lookup": str(row[1]),
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
    pk, digest, is_active, expires_at, name, user_id, scopes, allowed_models, lineage, link = row[
        HAS_ACTIVE + 1 : LINK + 1
    ]
    if pk is None:
        decision[UNKNOWN_KEY] = True
        return decision
    if not (client["require_api_key"] or client["has_active_key"]):
        return decision  # public: the key decides nothing
    user = dict(zip(query.user_fields, row[LINK + 1 :], strict=True)) if user_id is not None else None
    if user is not None:
        if owner_activity_is_computed():
            user["is_active"] = _owner_is_active(user_id, using)
        user = store.shared(local, user)
    decision["key"] = {
        "id": pk,
        "prefix": prefix,
        "digest": digest,
        "is_active": is_active,
        "expires_at": expires_at,
        "name": name,
        "client_ids": [] if link is None else [link],
        "user": user,
        "scopes": scopes,
        "allowed_models": allowed_models,
        "lineage": lineage,  # rate windows are counted under APIKey.allowance
    }
    return decision


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
