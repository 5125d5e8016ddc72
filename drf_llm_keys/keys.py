"""Key lifecycle: create-and-map, rotate with a grace period, revoke with the last-key guard.

The one place these operations live: the ``llm_keys`` command and the admin both call them.
Each runs in one transaction and either does all of its work or none of it; the public
signals and the log lines follow once the transaction has committed. Then each waits up to
``PUBLISH_TIMEOUT`` seconds for the change's invalidation to reach the cache, and raises
``InvalidationPending`` if it has not: the change is done in the database, but other
processes may still decide as before it. Locks are taken
clients first, then the key, so two operations never wait on each other in a cycle.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any, NoReturn, TypeVar, cast

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist
from django.db import connections, models, router, transaction
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.dispatch import Signal
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from . import decisions, get_client_model, signals
from .conf import conf
from .decisions import invalidation
from .models import (
    APIKey,
    LLMClientAPIKey,
    OwnerBudget,
    clean_allowed_models,
    clean_budget,
    clean_max_concurrent,
    clean_scopes,
    decision_db,
)

logger = logging.getLogger("drf_llm_keys")

# How long a rotated key keeps working when no grace is given.
DEFAULT_GRACE = timedelta(hours=24)
# Far enough for any key policy, near enough that ``now + duration`` cannot overflow.
MAX_DURATION = timedelta(days=100 * 365)

_DURATION_RE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class KeyLifecycleError(Exception):
    """A refused operation; nothing was changed. The message says why."""


class AlreadyRevoked(KeyLifecycleError):
    """The key was revoked already: nothing changed in the database, and the invalidation
    of its clients was published again (``revoke_key``)."""


class LastActiveKeyError(KeyLifecycleError):
    """Revoking the key would leave ``clients`` with no active key: they would turn public."""

    def __init__(self, api_key: APIKey, clients: Sequence[models.Model]) -> None:
        self.clients = list(clients)
        names = ", ".join(lookup_value(c) for c in clients)
        super().__init__(
            f"Key {api_key.prefix} is the last active key of {names}: revoking it would make "
            "that client public (served to anyone without a key). Create another key for it "
            "first, or set require_api_key on the client."
        )


class InvalidationPending(Exception):
    """The operation is committed, but its invalidation did not reach the cache within
    ``PUBLISH_TIMEOUT``: other processes may keep deciding requests to ``clients`` (lookup
    values) as before it, a revoked key accepted, for up to ``CACHE_TIMEOUT`` seconds.

    ``result`` holds what the operation returns (a new key's plaintext included): it is
    done, and is not to be run again. This process keeps retrying; the clients are also
    kept in the database, and ``llm_keys invalidate`` publishes them again.
    """

    def __init__(self, clients: Sequence[str], result: Any) -> None:
        self.clients = list(clients)
        self.result = result  # kept out of the message and args: it may hold a plaintext
        super().__init__(unpublished_message(self.clients))


def unpublished_message(clients: Sequence[str]) -> str:
    """What to tell an operator whose change is committed but not yet in the cache."""
    target = " ".join(clients) or "--pending"
    return (
        "The change is committed in the database, but the cache could not be reached within "
        f"{conf.PUBLISH_TIMEOUT:g} seconds (PUBLISH_TIMEOUT) to invalidate "
        f"{', '.join(clients) or 'the clients it touched'}: other processes may keep deciding as "
        f"before it (a revoked key still accepted) for up to {conf.CACHE_TIMEOUT} seconds "
        "(CACHE_TIMEOUT) unless the cache is reached. Run "
        f"`manage.py llm_keys invalidate {target}` when it is back."
    )


# --- input ------------------------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``45s``, ``2w`` or ``0``; ValueError with the reason otherwise."""
    text = text.strip()
    if text == "0":
        return timedelta(0)
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"Invalid duration {text!r}: use a whole number with a unit s, m, h, d or w "
            "(45s, 30m, 12h, 90d, 2w), or 0."
        )
    if int(match[1]) > MAX_DURATION / timedelta(**{_UNITS[match[2]]: 1}):
        raise ValueError(f"Invalid duration {text!r}: longer than 100 years.")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def parse_expiry(text: str) -> datetime:
    """An ISO 8601 date and time (a date alone means its midnight); without an offset it is
    read in the current time zone."""
    try:
        value = parse_datetime(text.strip())
        day = parse_date(text.strip()) if value is None else None
    except ValueError:  # well formed but impossible, like February 30
        value = day = None
    if day is not None:  # Python 3.11+ parses a date alone as a datetime; 3.10 does not
        value = datetime.combine(day, time())
    if value is None:
        raise ValueError(f"Invalid date and time {text!r}: use ISO 8601, e.g. 2027-01-31T12:00:00+00:00.")
    if settings.USE_TZ and timezone.is_naive(value):
        value = timezone.make_aware(value)
    # The same bound as a duration's: a later expiry cannot be stored or shown in every
    # time zone (9999-12-31T23:59:59-05:00 is past the last datetime in UTC).
    try:
        too_far = value - timezone.now() > MAX_DURATION
    except OverflowError:
        too_far = True
    if too_far:
        raise ValueError(
            f"Invalid date and time {text!r}: more than 100 years from now. Leave the expiry "
            "out for a key that never expires."
        )
    return value


# --- queries ----------------------------------------------------------------------------


def lookup_value(llm_client: models.Model) -> str:
    return str(getattr(llm_client, conf.CLIENT_LOOKUP_FIELD))


def clients_of(api_key: APIKey) -> models.QuerySet[Any]:
    clients: models.QuerySet[Any] = get_client_model()._default_manager.filter(api_key_links__api_key=api_key)
    return clients


def active_keys(llm_client: models.Model) -> models.QuerySet[APIKey]:
    """Keys that keep the client protected: not revoked (expired ones included)."""
    active: models.QuerySet[APIKey] = APIKey.objects.filter(
        is_active=True, client_links__llm_client=llm_client
    )
    return active


def with_active_key_count(clients: models.QuerySet[Any]) -> models.QuerySet[Any]:
    """``clients``, each with ``active_key_count``: its keys that keep it protected."""
    counts = (
        LLMClientAPIKey.objects.filter(llm_client=OuterRef("pk"), api_key__is_active=True)
        .order_by()
        .values("llm_client")
        .annotate(count=Count("pk"))
        .values("count")
    )
    annotated: models.QuerySet[Any] = clients.annotate(active_key_count=Coalesce(Subquery(counts), 0))
    return annotated


def is_public(llm_client: models.Model, active_key_count: int) -> bool:
    """Served to anyone without a key: no active key, and not ``require_api_key``."""
    return not active_key_count and not getattr(llm_client, "require_api_key", False)


def has_expired(api_key: APIKey) -> bool:
    """Refused for its age: still active (its clients stay protected), but past ``expires_at``."""
    return api_key.expires_at is not None and api_key.expires_at <= timezone.now()


def unexpired() -> Q:
    """Keys not past their expiry, as a filter: the opposite of ``has_expired``."""
    return Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())


def working_keys(llm_client: models.Model) -> models.QuerySet[APIKey]:
    """Active keys that have not expired yet."""
    working: models.QuerySet[APIKey] = active_keys(llm_client).filter(unexpired())
    return working


def clients_left_public(
    api_key: APIKey, clients: Sequence[models.Model] | None = None, using: str | None = None
) -> list[models.Model]:
    """The clients that revoking ``api_key`` would leave with no active key: public.

    Read on ``using``, by default where keys are written: a read replica may not have the
    previous revocation yet, and would let the last key go.
    """
    db = using or decision_db()
    if clients is None:
        clients = list(clients_of(api_key).using(db))
    return [
        c
        for c in clients
        if not getattr(c, "require_api_key", False)
        and not active_keys(c).using(db).exclude(pk=api_key.pk).exists()
    ]


# --- operations -------------------------------------------------------------------------


def create_key(
    llm_clients: Sequence[models.Model],
    *,
    user: Any,
    name: str,
    expires_at: datetime | None = None,
    description: str = "",
    scopes: Sequence[str] = (),
    allowed_models: Sequence[str] = (),
    max_concurrent: int | None = None,
    budget_limit: Decimal | str | int | None = None,
    budget_period: str = "",
) -> tuple[APIKey, str]:
    """Create a key mapped to ``llm_clients``; returns ``(api_key, plaintext)``.

    Empty ``scopes`` or ``allowed_models`` leave the key unrestricted in that respect, no
    ``max_concurrent`` leaves its requests in flight uncapped, no ``budget_limit`` its spend
    (see ``set_budget``); invalid ones raise ``ValidationError`` before anything is written.
    """
    check_new_key(user=user, name=name, expires_at=expires_at)
    limit, period = clean_budget(budget_limit, budget_period)
    restrictions = {
        "scopes": clean_scopes(scopes),
        "allowed_models": clean_allowed_models(allowed_models),
        "max_concurrent": clean_max_concurrent(max_concurrent),
        "budget_limit": limit,
        "budget_period": period,
    }
    using = router.db_for_write(APIKey)
    with transaction.atomic(using=using):
        api_key, plaintext = _create_mapped(
            llm_clients, user=user, name=name, description=description, expires_at=expires_at, **restrictions
        )
    _announce(
        "key_created",
        signals.key_created,
        using,
        log={"prefix": api_key.prefix, "llm_clients": _names(llm_clients), "user_id": user.pk},
        api_key=api_key,
        llm_clients=list(llm_clients),
    )
    return published(using, llm_clients, (api_key, plaintext))


def rotate_key(
    api_key: APIKey, grace: timedelta = DEFAULT_GRACE, *, expires_at: datetime | None = None
) -> tuple[APIKey, str]:
    """Issue a replacement (same owner, name, description, clients, scopes, allowed
    models, budget and cap in flight, and the same ``allowance``: both spend one rate
    allowance and one budget; it expires at ``expires_at``, by default never) and make
    ``api_key`` expire after ``grace``.

    Both happen in one transaction. The old key's expiry only ever moves earlier, so
    running this again never extends it; each run issues one more replacement.
    """
    if grace < timedelta(0):
        raise KeyLifecycleError("The grace period cannot be negative.")
    _check_expiry(expires_at)
    using = router.db_for_write(APIKey)
    with transaction.atomic(using=using):
        clients, old = _lock(api_key, using)
        if not old.is_active:
            raise KeyLifecycleError(f"Key {old.prefix} is revoked: create a new key instead of rotating it.")
        # Not ``old.user``: a router may send that read to a replica.
        owner = get_user_model()._base_manager.using(using).filter(pk=old.user_id).first()
        if owner is None or not getattr(owner, "is_active", True):
            raise KeyLifecycleError(
                f"Key {old.prefix} has no active owner, so its replacement would be refused too: "
                "create a new key for another user instead."
            )
        new, plaintext = _create_mapped(
            clients,
            user=owner,
            name=old.name,
            description=old.description,
            expires_at=expires_at,
            scopes=old.scopes,
            allowed_models=old.allowed_models,
            budget_limit=old.budget_limit,
            budget_period=old.budget_period,
            max_concurrent=old.max_concurrent,
            lineage=old.allowance,
        )
        retire_at = timezone.now() + grace
        if old.expires_at is None or old.expires_at > retire_at:
            old.expires_at = retire_at
            old.save(update_fields=["expires_at", "updated_at"])
    _announce(
        "key_rotated",
        signals.key_rotated,
        using,
        log={
            "prefix": new.prefix,
            "old_prefix": old.prefix,
            "old_expires_at": old.expires_at.isoformat() if old.expires_at else None,
            "llm_clients": _names(clients),
        },
        api_key=new,
        old_key=old,
        grace=grace,
        llm_clients=clients,
    )
    return published(using, clients, (new, plaintext))


def rotate_client_key(
    llm_client: models.Model, grace: timedelta = DEFAULT_GRACE, *, expires_at: datetime | None = None
) -> tuple[APIKey, APIKey, str]:
    """Rotate the client's one working key; returns ``(old_key, new_key, plaintext)``.

    Refused when the client has no working key or several (a rotation still in its grace
    period leaves two): which one to replace is then the caller's choice, by prefix. So
    running it again during the grace period changes nothing.
    """
    using = router.db_for_write(APIKey)
    with transaction.atomic(using=using):
        # Serializes concurrent rotations of one client: the second sees two working keys.
        get_client_model()._base_manager.using(using).select_for_update().filter(pk=llm_client.pk).first()
        working = list(working_keys(llm_client).using(using).order_by("created_at", "pk"))
        name = lookup_value(llm_client)
        if not working:
            raise KeyLifecycleError(f"Client {name} has no working key to rotate: create one instead.")
        if len(working) > 1:
            listed = ", ".join(_describe(k) for k in working)
            raise KeyLifecycleError(
                f"Client {name} has {len(working)} working keys ({listed}); name the PREFIX of "
                "the one to rotate."
            )
        new, plaintext = rotate_key(working[0], grace, expires_at=expires_at)
        clients = list(clients_of(new).using(using))
    return published(using, clients, (working[0], new, plaintext))


def revoke_key(api_key: APIKey, *, allow_public: bool = False) -> list[models.Model]:
    """Revoke ``api_key``; returns the clients this made public (none unless ``allow_public``).

    Refused with ``LastActiveKeyError`` when a client would be left with no active key
    (and is not ``require_api_key``), unless ``allow_public``. A key revoked already raises
    ``AlreadyRevoked`` once its clients' invalidation is published again: the revoke that
    made it may have committed without publishing (its process killed in between), and
    running it again is how an operator makes sure.
    """
    using = router.db_for_write(APIKey)
    with transaction.atomic(using=using):
        clients, old = _lock(api_key, using)
        already_revoked = not old.is_active
        made_public = [] if already_revoked else clients_left_public(old, clients, using)
        if made_public and not allow_public:
            raise LastActiveKeyError(old, made_public)
        if not already_revoked:
            old.is_active = False
            old.save(update_fields=["is_active", "updated_at"])
    if already_revoked:
        _republish_revoked(old, clients, using)
    _announce(
        "key_revoked",
        signals.key_revoked,
        using,
        log={"prefix": old.prefix, "llm_clients": _names(clients), "made_public": _names(made_public)},
        api_key=old,
        llm_clients=clients,
        made_public=made_public,
    )
    # The caller's instance tells the truth too, and its next save() compares with it.
    api_key.refresh_from_db(using=using, fields=["is_active", "updated_at"])
    return published(using, clients, made_public)


def revoke_key_keep_protected(api_key: APIKey) -> list[models.Model]:
    """Revoke ``api_key`` and turn ``require_api_key`` on for each client that it would
    otherwise leave public, in one transaction: those clients keep refusing requests
    without a valid key, this one included. Returns them.

    Refused, changing nothing, when such a client's model has no ``require_api_key`` field.
    A key revoked already: as ``revoke_key``.
    """
    using = router.db_for_write(APIKey)
    with transaction.atomic(using=using):
        clients, locked = _lock(api_key, using)
        already_revoked = not locked.is_active
        at_risk = [] if already_revoked else clients_left_public(locked, clients, using)
        for llm_client in at_risk:
            require_api_key(llm_client)
        if not already_revoked:
            revoke_key(api_key)  # nested: one commit, and its signal follows it
    if already_revoked:
        _republish_revoked(locked, clients, using)
    return published(using, clients, at_risk)


def require_api_key(llm_client: models.Model) -> None:
    """Keep ``llm_client`` protected while it has no active key; invalidates like any save."""
    try:
        llm_client._meta.get_field("require_api_key")
    except FieldDoesNotExist:
        raise KeyLifecycleError(
            f"The client model {llm_client._meta.label} has no require_api_key field, so "
            f"{lookup_value(llm_client)} cannot be kept protected without a key: create another "
            "key for it first."
        ) from None
    llm_client.require_api_key = True  # type: ignore[attr-defined]
    fields = ["require_api_key"] + [
        f.name for f in llm_client._meta.concrete_fields if f.name == "updated_at"
    ]
    llm_client.save(update_fields=fields)


def update_restrictions(
    api_key: APIKey, *, scopes: Sequence[str] | None = None, allowed_models: Sequence[str] | None = None
) -> APIKey:
    """Replace the key's scopes and/or allowed models (``None``: leave as is; empty: no
    restriction). Every process applies the change on its next request, like a revocation;
    invalid names raise ``ValidationError`` and change nothing."""
    changes = {}
    if scopes is not None:
        changes["scopes"] = clean_scopes(scopes)
    if allowed_models is not None:
        changes["allowed_models"] = clean_allowed_models(allowed_models)
    return _update_key(api_key, changes)


def set_budget(api_key: APIKey, limit: Decimal | str | int | None, period: str = "") -> APIKey:
    """Give the key a budget: ``limit`` (in ``CURRENCY``, 0 or more) per ``period`` (one of
    ``models.BUDGET_PERIODS``), spent by the key and the keys that replace it through
    rotations; ``limit=None`` removes it. Applied like ``update_restrictions``; an invalid
    amount or period raises ``ValidationError`` and changes nothing."""
    budget_limit, budget_period = clean_budget(limit, period)
    return _update_key(api_key, {"budget_limit": budget_limit, "budget_period": budget_period})


def set_max_concurrent(api_key: APIKey, max_concurrent: int | None) -> APIKey:
    """Cap the key's requests in flight at once, across all processes (``None``: no cap).
    Applied like ``update_restrictions``; anything but a whole number of 1 or more raises
    ``ValidationError`` and changes nothing."""
    return _update_key(api_key, {"max_concurrent": clean_max_concurrent(max_concurrent)})


def set_owner_budget(user: Any, limit: Decimal | str | int | None, period: str = "") -> OwnerBudget | None:
    """Give ``user`` a budget shared by all the keys they own, now and later: ``limit`` per
    ``period`` as ``set_budget``'s; ``limit=None`` removes it. Returns the budget (None when
    removed). Every client of the owner's keys applies it on its next request."""
    budget_limit, budget_period = clean_budget(limit, period)
    if getattr(user, "pk", None) is None:
        raise KeyLifecycleError("An owner budget needs a saved user.")
    using = router.db_for_write(OwnerBudget)
    budget: OwnerBudget | None = None
    with transaction.atomic(using=using):
        clients = list(
            get_client_model()._base_manager.using(using).filter(api_key_links__api_key__user=user)
        )
        budgets = OwnerBudget._base_manager.using(using)
        if budget_limit is None:
            # The pre_delete receiver invalidates the owner's clients once this commits.
            budgets.filter(user=user).delete()
        else:
            budget, _created = budgets.update_or_create(
                user=user, defaults={"limit": budget_limit, "period": budget_period}
            )
    log = {"user_id": user.pk, "limit": budget_limit, "period": budget_period}
    _log_on_commit("owner_budget_set", log, using)
    return published(using, clients, budget)


# --- helpers ----------------------------------------------------------------------------


def _update_key(api_key: APIKey, changes: dict[str, Any]) -> APIKey:
    """Write ``changes`` (cleaned field values) to the key, log them, and wait for the
    invalidation of its clients; returns the key as written."""
    if not changes:
        return api_key
    using = router.db_for_write(APIKey)
    with transaction.atomic(using=using):
        clients, locked = _lock(api_key, using)
        for field, value in changes.items():
            setattr(locked, field, value)
        # The post_save receiver invalidates the key's clients once this commits.
        locked.save(update_fields=[*changes, "updated_at"])
    _log_on_commit("key_updated", {"prefix": locked.prefix, **changes}, using)
    # The caller's instance tells the truth too, and its next save() compares with it.
    api_key.refresh_from_db(using=using, fields=[*changes, "updated_at"])
    return published(using, clients, locked)


def _log_on_commit(event: str, log: dict[str, Any], using: str) -> None:
    transaction.on_commit(
        lambda: logger.info(
            "drf_llm_keys: %s %s",
            event,
            " ".join(f"{name}={value}" for name, value in log.items()),
            extra={"event": event, **log},
        ),
        using=using,
    )


def _create_mapped(clients: Sequence[models.Model], **fields: Any) -> tuple[APIKey, str]:
    api_key, plaintext = APIKey.objects.create_key(**fields)
    for llm_client in clients:
        LLMClientAPIKey.objects.create(llm_client=llm_client, api_key=api_key)
    return api_key, plaintext


def _lock(api_key: APIKey, using: str) -> tuple[list[models.Model], APIKey]:
    """Lock the key's clients, then the key (always in this order), and reload the key."""
    clients = _lock_clients(api_key, using)
    return clients, APIKey.objects.using(using).select_for_update().get(pk=api_key.pk)


def _lock_clients(api_key: APIKey, using: str) -> list[models.Model]:
    # Two steps, no join: FOR UPDATE on a join would lock the link rows too, and
    # ``select_for_update(of=...)`` is not available on every backend.
    pks = LLMClientAPIKey.objects.using(using).filter(api_key=api_key).values_list("llm_client_id", flat=True)
    clients = get_client_model()._base_manager.using(using).select_for_update().filter(pk__in=list(pks))
    return list(clients.order_by("pk"))


def check_new_key(*, user: Any, name: str, expires_at: datetime | None) -> None:
    """Refuse a key that could never work; the admin's form runs the same checks."""
    if user is None or not getattr(user, "is_active", True):
        raise KeyLifecycleError("The key's owner must be an active user: keys of inactive users are refused.")
    limit = cast("models.CharField[Any, Any]", APIKey._meta.get_field("name")).max_length or 0
    if not name.strip() or len(name) > limit:
        raise KeyLifecycleError(f"The key needs a name of 1 to {limit} characters.")
    _check_expiry(expires_at)


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= timezone.now():
        raise KeyLifecycleError(f"The expiry {expires_at.isoformat()} is not in the future.")


def _names(clients: Sequence[models.Model]) -> list[str]:
    return [lookup_value(c) for c in clients]


def _describe(api_key: APIKey) -> str:
    if api_key.expires_at is None:
        return api_key.prefix
    return f"{api_key.prefix} expiring {timezone.localtime(api_key.expires_at).isoformat(timespec='seconds')}"


def _republish_revoked(api_key: APIKey, clients: Sequence[models.Model], using: str) -> NoReturn:
    """Publish the clients' invalidation again, then raise ``AlreadyRevoked``; or
    ``InvalidationPending`` when the cache does not take it within PUBLISH_TIMEOUT."""
    try:
        invalidation.publish_clients(_names(clients))
    except invalidation.CacheUnreachable:
        pass  # kept and retried by this process: published() waits for it
    published(using, clients, [])
    raise AlreadyRevoked(
        f"Key {api_key.prefix} is already revoked; its clients' cached decisions were invalidated again."
    )


ResultT = TypeVar("ResultT")


def published(using: str, clients: Sequence[models.Model], result: ResultT) -> ResultT:
    """``result`` once the change's invalidation is in the cache; else InvalidationPending.

    Operations run inside a caller's transaction return without waiting: the caller calls
    this once its transaction has committed."""
    if connections[using].in_atomic_block:
        # The caller's transaction has not committed: nothing is published yet. Theirs to
        # check, with decisions.wait_published(), once it has.
        return result
    if not decisions.wait_published():
        raise InvalidationPending(_names(clients), result)
    return result


def _announce(event: str, signal: Signal, using: str, log: dict[str, Any], **arguments: Any) -> None:
    """Log ``event`` and send ``signal`` once the transaction commits; never with a secret."""

    def send() -> None:
        fields = " ".join(f"{name}={value}" for name, value in log.items())
        logger.info("drf_llm_keys: %s %s", event, fields, extra={"event": event, **log})
        signal.send(sender=APIKey, **arguments)

    transaction.on_commit(send, using=using)
