from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, ClassVar, cast

import django
from django.apps import apps
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models, router, transaction
from django.db.models import DEFERRED
from django.db.models.base import ModelBase
from django.dispatch import Signal
from django.utils.translation import gettext_lazy as _

from . import crypto, get_client_model
from .conf import conf, install_defaults

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

install_defaults()

# Sent by the library's querysets when a bulk write changes decisions, inside its
# transaction; ``signals`` connects the decision cache's invalidation to it.
# Arguments: client_values (set of client lookup values), using (database alias).
decisions_changed = Signal()

# The key's restrictions, held in its cache entry so that checking them costs nothing.
RESTRICTION_FIELDS = ("scopes", "allowed_models")
# A model pattern ending in it matches every name that starts with the rest.
MODEL_WILDCARD = "*"
# A budget's amount, in DRF_LLM_KEYS["CURRENCY"]: up to a trillion, to a millionth.
BUDGET_DIGITS, BUDGET_DECIMAL_PLACES = 18, 6
# What a budget's amount is spent over, each in UTC (``budgets.period_bounds``).
BUDGET_PERIODS = ("day", "week", "month", "total")


def per_period(period: str) -> str:
    """How a budget's amount reads with its period: "per month", or "in total"."""
    return "in total" if period == "total" else f"per {period}"


def client_lookup_values(clients: models.QuerySet[Any]) -> set[Any]:
    return set(clients.values_list(conf.CLIENT_LOOKUP_FIELD, flat=True))


def lock_for_delete(rows: models.QuerySet[Any]) -> None:
    """Lock the rows a delete removes before Django collects what refers to them.

    A usage write (``KeyUsage``) committed between that collection and the delete's commit
    would fail the delete's foreign-key check (PostgreSQL runs it at commit); locked first,
    the writer waits and then finds the row gone (``drf_llm_keys.usage`` drops such counts).
    """
    if not rows.query.is_sliced:  # a sliced one: delete() says why it cannot
        # In pk order, as every other writer locks several rows of a table: no deadlock
        # between two of them over the order.
        rows = rows.order_by("pk")
    list(rows.select_for_update().values_list("pk", flat=True))


class DeleteLocksFirst(models.Model):
    """``delete()`` of one row locks it first (``lock_for_delete``)."""

    class Meta:
        abstract = True

    def delete(self, using: str | None = None, keep_parents: bool = False) -> tuple[int, dict[str, int]]:
        using = using or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using, savepoint=False):
            lock_for_delete(type(self)._base_manager.using(using).filter(pk=self.pk))
            return super().delete(using=using, keep_parents=keep_parents)


class SavesChanges(models.Model):
    """A ``save()`` of a row read from the database writes only the fields changed since it
    was read (with the ``auto_now`` ones), and nothing at all (no signal, no invalidation)
    when none did: an instance or an admin form read before another process's change (a
    revocation) cannot write back what it read.

    An explicit ``update_fields``, ``force_insert``, a new row and a save to another
    database than the row's are Django's as usual. The values read are kept as Django's
    "Customizing model loading" shows (``from_db()``).
    """

    class Meta:
        abstract = True

    def save(
        self,
        *,
        force_insert: bool | tuple[ModelBase, ...] = False,
        force_update: bool = False,
        using: str | None = None,
        update_fields: Iterable[str] | None = None,
    ) -> None:
        fields = self.fields_to_write(update_fields, force_insert, using)
        super().save(force_insert=force_insert, force_update=force_update, using=using, update_fields=fields)
        self._remember(fields)

    @classmethod
    def from_db(
        cls, db: str | None, field_names: Collection[str], values: Collection[Any], **kwargs: Any
    ) -> Any:
        instance = super().from_db(db, field_names, values, **kwargs)
        instance.__dict__[_LOADED] = {
            name: _snapshot(v) for name, v in zip(field_names, values, strict=False)
        }
        return instance

    @classmethod
    def from_held(cls, db: str, values: Sequence[Any], lists: Collection[int] | None = None) -> Any:
        """``from_db()`` for a row read earlier and held since, unchanged (a decision entry):
        a value for every concrete field in their order, ``DEFERRED`` for those not held.

        ``values`` must never change in place: they are what a save compares with, taken
        as they are (no copy until a save or a refresh needs one); the instance gets its
        own copies of the lists and dicts among them, at the positions ``lists`` names if
        given (the only ones that can hold one), else wherever they are.
        """
        if lists is None:
            own = [_snapshot(v) if type(v) in _MUTABLE else v for v in values]
        else:
            own = list(values)
            for position in lists:
                if type(own[position]) in _MUTABLE:
                    own[position] = _snapshot(own[position])
        instance = super().from_db(db, concrete_attnames(cls), own)
        instance.__dict__[_LOADED] = values
        return instance

    def refresh_from_db(
        self, using: str | None = None, fields: Iterable[str] | None = None, *args: Any, **kwargs: Any
    ) -> None:
        fields = None if fields is None else list(fields)
        super().refresh_from_db(using, fields, *args, **kwargs)
        self._remember(fields)  # what was read now is what a save compares with
        if fields is None:  # read afresh too: the owner's budget is not a field Django refreshes
            self.__dict__.pop("owner_budget", None)

    def fields_to_write(
        self, update_fields: Iterable[str] | None, force_insert: Any = False, using: str | None = None
    ) -> list[str] | None:
        """What a save writes: ``update_fields`` if given, the fields changed since the row
        was read if it was, else None (every field, as Django saves)."""
        if update_fields is not None:
            return list(update_fields)
        loaded = self.loaded_values()
        if (
            loaded is None
            or force_insert
            or self.pk is None
            or self.pk != loaded.get(self._meta.pk.attname)  # a copy saved as a new row
            or (using or router.db_for_write(type(self), instance=self)) != self._state.db
        ):
            return None
        deferred = self.get_deferred_fields()
        writable = [
            f for f in self._meta.concrete_fields if not f.primary_key and not getattr(f, "generated", False)
        ]
        changed = [
            f.name
            for f in writable
            if f.attname not in deferred
            # Set since the row was read, if not read with it (a deferred field).
            and (f.attname not in loaded or getattr(self, f.attname) != loaded[f.attname])
        ]
        if changed:
            changed += [f.name for f in writable if getattr(f, "auto_now", False) and f.name not in changed]
        return changed

    def loaded_values(self) -> dict[str, Any] | None:
        """The values the row was read with, by attname; None for a row not read."""
        loaded = self.__dict__.get(_LOADED)
        if loaded is not None and not isinstance(loaded, dict):  # held (from_held): as a dict now
            names = concrete_attnames(type(self))
            loaded = {name: v for name, v in zip(names, loaded, strict=True) if v is not DEFERRED}
            self.__dict__[_LOADED] = loaded
        return loaded

    def _remember(self, fields: Iterable[str] | None) -> None:
        """Take what ``fields`` (every field read, for None) now hold as what was read."""
        deferred = self.get_deferred_fields()
        names = None if fields is None else set(fields)
        loaded = dict(self.loaded_values() or {})  # a copy: copy.copy(instance) shares it
        for field in self._meta.concrete_fields:
            if field.attname not in deferred and (names is None or names & {field.name, field.attname}):
                loaded[field.attname] = _snapshot(getattr(self, field.attname))
        self.__dict__[_LOADED] = loaded


# Where ``SavesChanges`` keeps the values a row was read with: by attname, or as held
# (``from_held``) until asked for.
_LOADED = "_loaded_values"
# What a field's value may be that can change in place (a JSONField's).
_MUTABLE = (list, dict)


@functools.lru_cache(maxsize=64)
def concrete_attnames(model: type[models.Model]) -> tuple[str, ...]:
    """The attnames of ``model``'s concrete fields, in the order ``from_db()`` takes values."""
    return tuple(field.attname for field in model._meta.concrete_fields)


def _snapshot(value: Any) -> Any:
    # A list or dict (a JSONField's) may be changed in place: compared with a copy.
    if isinstance(value, list):
        return [_snapshot(item) for item in value]
    if isinstance(value, dict):
        return {key: _snapshot(item) for key, item in value.items()}
    return value


class InvalidatingQuerySet(models.QuerySet[Any]):
    """Bulk writes that change a decision invalidate like ``save()`` does.

    ``delete()`` invalidates through the ``pre_delete`` receivers in ``signals`` (on
    clients and mappings, which a key's delete cascades to), which keep Django off the
    signal-free fast path; it locks its rows first (``lock_for_delete``).

    Every read here runs on ``self.db`` once the queryset is marked for writing, as
    Django's own ``update()`` does: the database written to, never a read replica that
    may not have the rows yet (``DATABASE_ROUTERS``).
    """

    # Fields whose bulk update changes no decision.
    cache_free_fields: ClassVar[frozenset[str]] = frozenset()

    def affected_clients(self, pks: Iterable[Any]) -> set[Any]:  # pragma: no cover
        """Lookup values of the clients whose decisions these rows take part in."""
        raise NotImplementedError

    def affected_clients_of(self, objs: Iterable[Any]) -> set[Any]:  # pragma: no cover
        """The same for new rows, from the objects (some backends return no pks)."""
        raise NotImplementedError

    def update(self, **kwargs: Any) -> int:
        if set(kwargs) <= self.cache_free_fields:
            return super().update(**kwargs)
        self._for_write = True
        with transaction.atomic(using=self.db, savepoint=False):
            pks = list(self.values_list("pk", flat=True))
            before = self.affected_clients(pks)
            count = super().update(**kwargs)
            # After too: an update can move a row to another client or lookup value.
            self.changed(before | self.affected_clients(pks))
        return count

    update.alters_data = True  # type: ignore[attr-defined]

    def delete(self) -> tuple[int, dict[str, int]]:
        self._for_write = True
        with transaction.atomic(using=self.db, savepoint=False):
            lock_for_delete(self)
            return super().delete()

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]

    def bulk_create(self, objs: Iterable[Any], *args: Any, **kwargs: Any) -> list[Any]:
        self._for_write = True
        with transaction.atomic(using=self.db, savepoint=False):
            created = super().bulk_create(objs, *args, **kwargs)
            self.changed(self.affected_clients_of(created))
        return created

    def bulk_update(  # type: ignore[override]  # fields is read twice: a Sequence, not any Iterable
        self, objs: Iterable[Any], fields: Sequence[str], **kwargs: Any
    ) -> int:
        objs = list(objs)
        if set(fields) <= self.cache_free_fields:
            return super().bulk_update(objs, fields, **kwargs)
        self._for_write = True
        with transaction.atomic(using=self.db, savepoint=False):
            pks = [o.pk for o in objs]
            before = self.affected_clients(pks)
            count = super().bulk_update(objs, fields, **kwargs)
            self.changed(before | self.affected_clients(pks))
        return count

    def changed(self, client_values: set[Any]) -> None:
        decisions_changed.send(sender=self.model, client_values=client_values, using=self.db)


class LLMClientQuerySet(InvalidatingQuerySet):
    def affected_clients(self, pks: Iterable[Any]) -> set[Any]:
        return client_lookup_values(self.model._base_manager.using(self.db).filter(pk__in=list(pks)))

    def affected_clients_of(self, objs: Iterable[Any]) -> set[Any]:
        # A lookup value that was unknown may sit in the cache as "no such client".
        return {getattr(o, conf.CLIENT_LOOKUP_FIELD) for o in objs}


class AbstractLLMClient(DeleteLocksFirst, SavesChanges):
    """Subclass this to bring your own client model (``DRF_LLM_KEYS_CLIENT_MODEL``)."""

    name = models.CharField(_("name"), max_length=200)
    slug = models.SlugField(_("slug"), max_length=100, unique=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    require_api_key = models.BooleanField(
        _("require API key"),
        default=False,
        help_text=_("Never serve this client anonymously, even while it has no active key."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    objects = LLMClientQuerySet.as_manager()

    class Meta:
        abstract = True
        ordering = ("slug",)
        verbose_name = _("LLM client")
        verbose_name_plural = _("LLM clients")

    def __str__(self) -> str:
        return self.name or self.slug


class LLMClient(AbstractLLMClient):
    class Meta(AbstractLLMClient.Meta):
        swappable = "DRF_LLM_KEYS_CLIENT_MODEL"
        # Bulk writes through ``_base_manager`` invalidate too; a manager that filters no row.
        base_manager_name = "objects"


class ReactivationError(ValueError):
    """A write would make a revoked key active again: revocation is final."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        super().__init__(
            f"Key {', '.join(prefixes)} is revoked, and revocation is final: it cannot be made "
            "active again. Create a new key instead."
        )


def revoked_among(rows: models.QuerySet[Any]) -> dict[Any, str]:
    """Lock ``rows`` for the rest of the transaction, and return the revoked ones (pk:
    prefix): no revoke can commit between this read and the caller's write."""
    locked = rows.order_by("pk").select_for_update().values_list("pk", "prefix", "is_active")
    return {pk: prefix for pk, prefix, active in locked if not active}


class APIKeyQuerySet(InvalidatingQuerySet):
    cache_free_fields = frozenset({"last_used_at"})

    def update(self, **kwargs: Any) -> int:
        """Refuses (``ReactivationError``, nothing written) to set a revoked key's
        ``is_active`` back to True, whatever the value's form (``bulk_update()``'s too)."""
        if kwargs.get("is_active", False) is False:
            return super().update(**kwargs)
        self._for_write = True
        with transaction.atomic(using=self.db):  # a savepoint: a refusal undoes this update only
            revoked = revoked_among(self)
            count = super().update(**kwargs)
            rows = self.model._base_manager.using(self.db)
            if revoked and rows.filter(pk__in=list(revoked), is_active=True).exists():
                raise ReactivationError(sorted(revoked.values()))
        return count

    update.alters_data = True  # type: ignore[attr-defined]

    def bulk_update(  # type: ignore[override]  # as InvalidatingQuerySet's
        self, objs: Iterable[Any], fields: Sequence[str], **kwargs: Any
    ) -> int:
        if "is_active" not in fields:
            return super().bulk_update(objs, fields, **kwargs)
        self._for_write = True
        # Its update() may refuse inside Django's transaction, which a refusal would leave
        # unusable: in a savepoint, the caller's stays usable.
        with transaction.atomic(using=self.db):
            return super().bulk_update(objs, fields, **kwargs)

    def affected_clients(self, pks: Iterable[Any]) -> set[Any]:
        links = LLMClientAPIKey._base_manager.using(self.db).filter(api_key__in=list(pks))
        return set(links.values_list(f"llm_client__{conf.CLIENT_LOOKUP_FIELD}", flat=True))

    def affected_clients_of(self, objs: Iterable[Any]) -> set[Any]:
        return set()  # a new key is mapped to no client yet


def clean_scopes(values: Any) -> list[str]:
    """``values`` as a list of scope names without duplicates; ValidationError otherwise."""
    return _clean_names(values, "scope", wildcard=False)


def clean_allowed_models(values: Any) -> list[str]:
    """The same for model patterns, which may end with one ``*``."""
    return _clean_names(values, "model", wildcard=True)


def _clean_names(values: Any, kind: str, wildcard: bool) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValidationError(f"The {kind}s must be a list of names, not {type(values).__name__}.")
    names: dict[str, None] = {}
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"Invalid {kind} {value!r}: a {kind} is a non-empty name.")
        if value != value.strip():
            raise ValidationError(f"Invalid {kind} {value!r}: remove the spaces around it.")
        # Commas and line breaks separate names in the admin's field and the command's list.
        if "," in value or not value.isprintable():
            raise ValidationError(f"Invalid {kind} {value!r}: a {kind} holds no comma or line break.")
        stem = value.removesuffix(MODEL_WILDCARD) if wildcard else value
        if MODEL_WILDCARD in stem:
            where = "only at the end of a model pattern" if wildcard else "only in model patterns"
            raise ValidationError(f"Invalid {kind} {value!r}: {MODEL_WILDCARD!r} may appear {where}.")
        names[value] = None
    return list(names)


def model_pattern_matches(pattern: str, name: str) -> bool:
    if pattern.endswith(MODEL_WILDCARD):
        return name.startswith(pattern[: -len(MODEL_WILDCARD)])
    return name == pattern


def check_constraint(condition: models.Q, name: str) -> models.CheckConstraint:
    """A check constraint on every supported Django: the argument is ``check`` before 5.1
    and ``condition`` from 5.1, the only one 6.0 takes; the migrations build theirs here too."""
    argument = "condition" if django.VERSION >= (5, 1) else "check"
    options: dict[str, Any] = {argument: condition, "name": name}
    return models.CheckConstraint(**options)


def budget_constraints(
    prefix: str, limit: str, period: str, *, optional: bool
) -> list[models.BaseConstraint]:
    """What ``clean_budget`` checks, held by the database too: an amount of 0 or more with one
    of ``BUDGET_PERIODS`` (or, where ``optional``, neither)."""
    # Not null spelled out: a check whose expression is NULL passes.
    both = models.Q(**{f"{limit}__isnull": False, f"{limit}__gte": 0, f"{period}__in": BUDGET_PERIODS})
    if optional:
        both |= models.Q(**{f"{limit}__isnull": True, period: ""})
    return [check_constraint(both, f"{prefix}_budget")]


def clean_budget(limit: Any, period: Any) -> tuple[Decimal | None, str]:
    """``(limit, period)`` checked: an amount of 0 or more spent over one of
    ``BUDGET_PERIODS``, or ``(None, "")`` for no budget. ValidationError otherwise, with the
    code ``"limit"`` or ``"period"``: which of the two is wrong."""
    if limit is None or limit == "":
        if period:
            raise ValidationError(
                f"A budget period ({period!r}) needs an amount: give both, or neither for no budget.",
                code="limit",
            )
        return None, ""
    amount = clean_budget_amount(limit)
    if not period:
        raise ValidationError(
            f"A budget amount needs a period: one of {', '.join(BUDGET_PERIODS)}.", code="period"
        )
    if period not in BUDGET_PERIODS:
        raise ValidationError(
            f"Invalid budget period {period!r}: use one of {', '.join(BUDGET_PERIODS)}.", code="period"
        )
    return amount, str(period)


def clean_budget_amount(value: Any) -> Decimal:
    """A budget's amount as a Decimal that the column holds exactly; ValidationError otherwise."""
    # A float is not an exact amount (0.1 is not a tenth); True is not an amount at all.
    if isinstance(value, float | bool) or not isinstance(value, int | str | Decimal):
        raise ValidationError(
            f"Invalid budget amount {value!r}: give a decimal number as text, an int or a Decimal.",
            code="limit",
        )
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValidationError(f"Invalid budget amount {value!r}: not a number.", code="limit") from None
    largest = Decimal(10) ** (BUDGET_DIGITS - BUDGET_DECIMAL_PLACES)
    if not amount.is_finite() or amount < 0 or amount >= largest:
        raise ValidationError(
            f"Invalid budget amount {value!r}: from 0 to less than {largest:,}.", code="limit"
        )
    if amount != amount.quantize(Decimal(10) ** -BUDGET_DECIMAL_PLACES):
        raise ValidationError(
            f"Invalid budget amount {value!r}: at most {BUDGET_DECIMAL_PLACES} decimal places.",
            code="limit",
        )
    return amount


def clean_max_concurrent(value: Any) -> int | None:
    """A cap on requests in flight: a whole number of 1 or more, or None for no cap."""
    if value is None:
        return None
    largest = 2**31 - 1  # what a PositiveIntegerField holds on every backend
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
        raise ValidationError(
            f"Invalid cap on concurrent requests {value!r}: a whole number from 1 to {largest}, "
            "or None for no cap."
        )
    return value


def _budget_errors(exc: ValidationError, limit_field: str, period_field: str) -> dict[str, list[str]]:
    field = period_field if exc.code == "period" else limit_field
    return {field: exc.messages}


def budget_amount_field(**options: Any) -> models.DecimalField[Any, Any]:
    """The column of a budget's amount (a key's and an owner's are the same)."""
    return models.DecimalField(
        max_digits=BUDGET_DIGITS,
        decimal_places=BUDGET_DECIMAL_PLACES,
        validators=[MinValueValidator(Decimal(0))],
        **options,
    )


def budget_period_field(**options: Any) -> models.CharField[Any, Any]:
    return models.CharField(
        max_length=max(map(len, BUDGET_PERIODS)),
        choices=[
            ("day", _("day (UTC)")),
            ("week", _("week (UTC, from Monday)")),
            ("month", _("calendar month (UTC)")),
            ("total", _("total")),
        ],
        **options,
    )


def clients_of_owners(users: Any, using: str) -> set[Any]:
    """Lookup values of the clients of every key of ``users`` (pks or a queryset)."""
    links = LLMClientAPIKey._base_manager.using(using).filter(api_key__user__in=users)
    return set(links.values_list(f"llm_client__{conf.CLIENT_LOOKUP_FIELD}", flat=True))


class APIKeyManager(models.Manager["APIKey"]):
    def get_queryset(self) -> APIKeyQuerySet:
        return APIKeyQuerySet(self.model, using=self._db)

    def create_key(self, *, user: AbstractBaseUser | None, name: str, **fields: Any) -> tuple[APIKey, str]:
        """Create a key and return ``(api_key, plaintext)``; only the digest is stored.

        ``scopes`` and ``allowed_models`` are checked first (ValidationError).
        """
        fields["scopes"] = clean_scopes(fields.get("scopes", []))
        fields["allowed_models"] = clean_allowed_models(fields.get("allowed_models", []))
        prefix, plaintext = crypto.generate_key(conf.KEY_PREFIX)
        api_key = self.create(
            user=user,  # type: ignore[misc]  # the stubs take AUTH_USER_MODEL for the test project's User
            name=name,
            prefix=prefix,
            digest=crypto.hash_key(plaintext),
            **fields,
        )
        return api_key, plaintext


class APIKey(DeleteLocksFirst, SavesChanges):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        null=True,
        blank=True,
        # The row must outlive its owner: cascading would silently make its clients public.
        on_delete=models.SET_NULL,
        related_name="llm_api_keys",
    )
    name = models.CharField(_("name"), max_length=200)
    description = models.TextField(_("description"), blank=True, default="")
    prefix = models.CharField(_("prefix"), max_length=crypto.PREFIX_MAX_LENGTH, unique=True, editable=False)
    digest = models.CharField(_("digest"), max_length=64, editable=False)
    is_active = models.BooleanField(
        _("active"), default=True, help_text=_("Cleared when the key is revoked; revocation is final.")
    )
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)
    scopes = models.JSONField(
        _("scopes"),
        default=list,
        blank=True,
        help_text=_("What the key may do, as a list of names. Empty: unrestricted."),
    )
    allowed_models = models.JSONField(
        _("allowed models"),
        default=list,
        blank=True,
        help_text=_('Model names the key may use; a trailing "*" matches a prefix. Empty: any model.'),
    )
    last_used_at = models.DateTimeField(_("last used at"), null=True, blank=True, editable=False)
    # Set by rotation: see ``allowance``.
    lineage = models.CharField(
        _("rotated from"),
        max_length=crypto.PREFIX_MAX_LENGTH,
        blank=True,
        default="",
        editable=False,
        help_text=_("The prefix of the first key this one replaces, through rotations."),
    )
    # Spent under ``allowance``: a key and its replacements spend one budget.
    budget_limit = budget_amount_field(
        verbose_name=_("budget"),
        null=True,
        blank=True,
        help_text=_("What the key may spend per budget period, in the prices' currency. Empty: no budget."),
    )
    budget_period = budget_period_field(
        verbose_name=_("budget period"),
        blank=True,
        default="",
        help_text=_("What the budget is spent over; empty when there is no budget."),
    )
    max_concurrent = models.PositiveIntegerField(
        _("max concurrent requests"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=_("Requests in flight at once with this key, across all processes. Empty: no cap."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    objects = APIKeyManager()

    class Meta:
        base_manager_name = "objects"  # as LLMClient's
        ordering = ("-created_at",)
        constraints = [
            *budget_constraints("drf_llm_keys_apikey", "budget_limit", "budget_period", optional=True),
            check_constraint(
                models.Q(max_concurrent__isnull=True) | models.Q(max_concurrent__gte=1),
                "drf_llm_keys_apikey_max_concurrent",
            ),
        ]
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"

    def __repr__(self) -> str:
        # The digest stays out of reprs, tracebacks and debug pages.
        return f"<APIKey {self.prefix} active={self.is_active}>"

    def save(
        self,
        *,
        force_insert: bool | tuple[ModelBase, ...] = False,
        force_update: bool = False,
        using: str | None = None,
        update_fields: Iterable[str] | None = None,
    ) -> None:
        """Refuses (``ReactivationError``, nothing written) to write ``is_active=True`` over
        a revoked key: one read revoked, or one revoked since it was read."""
        fields = self.fields_to_write(update_fields, force_insert, using)
        save = functools.partial(
            super().save, force_insert=force_insert, force_update=force_update, update_fields=fields
        )
        writes_active = self.is_active and (fields is None or "is_active" in fields)
        if force_insert or self.pk is None or not writes_active:
            save(using=using)
            return
        if (self.loaded_values() or {}).get("is_active") is False:
            raise ReactivationError([self.prefix])
        using = using or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using):
            if revoked_among(type(self)._base_manager.using(using).filter(pk=self.pk)):
                raise ReactivationError([self.prefix])
            save(using=using)

    @property
    def allowance(self) -> str:
        """What the key's rate windows are counted under: one for a key and every key that
        replaces it through rotations (``keys.rotate_key``), which share one allowance."""
        return self.lineage or self.prefix

    @functools.cached_property
    def owner_budget(self) -> tuple[Decimal, str] | None:
        """The owner's budget (``OwnerBudget``), shared by all the owner's keys, as
        ``(limit, period)``; None for none. A key that authenticated a request has it from
        its decision entry: no query. Read once per instance."""
        if self.user_id is None:
            return None
        found = OwnerBudget._base_manager.using(decision_db()).filter(user_id=self.user_id)
        row = found.values_list("limit", "period").first()
        return None if row is None else (row[0], row[1])

    def clean(self) -> None:
        errors = {}
        for field, clean_names in (("scopes", clean_scopes), ("allowed_models", clean_allowed_models)):
            try:
                setattr(self, field, clean_names(getattr(self, field)))
            except ValidationError as exc:
                errors[field] = exc.messages
        try:
            self.budget_limit, self.budget_period = clean_budget(self.budget_limit, self.budget_period)
        except ValidationError as exc:
            errors.update(_budget_errors(exc, "budget_limit", "budget_period"))
        if errors:
            raise ValidationError(errors)

    def has_scopes(self, *names: str) -> bool:
        """Whether the key holds every one of ``names``; a key without scopes holds all."""
        # Anything but a list (written around clean(), by a bulk update) grants nothing.
        return not self.scopes or (isinstance(self.scopes, list) and all(n in self.scopes for n in names))

    def allows_model(self, name: str) -> bool:
        """Whether the key may use the model ``name``; a key without a list may use any."""
        if not self.allowed_models:
            return True
        return (
            isinstance(self.allowed_models, list)
            and isinstance(name, str)
            and any(isinstance(p, str) and model_pattern_matches(p, name) for p in self.allowed_models)
        )


class LLMClientAPIKeyQuerySet(InvalidatingQuerySet):
    def affected_clients(self, pks: Iterable[Any]) -> set[Any]:
        links = LLMClientAPIKey._base_manager.using(self.db).filter(pk__in=list(pks))
        return set(links.values_list(f"llm_client__{conf.CLIENT_LOOKUP_FIELD}", flat=True))

    def affected_clients_of(self, objs: Iterable[Any]) -> set[Any]:
        clients = (
            get_client_model()._base_manager.using(self.db).filter(pk__in=[o.llm_client_id for o in objs])
        )
        return client_lookup_values(clients)


class LLMClientAPIKey(SavesChanges):
    llm_client = models.ForeignKey(
        conf.CLIENT_MODEL,
        verbose_name=_("LLM client"),
        on_delete=models.CASCADE,
        related_name="api_key_links",
    )
    api_key = models.ForeignKey(
        APIKey,
        verbose_name=_("API key"),
        on_delete=models.CASCADE,
        related_name="client_links",
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    objects = LLMClientAPIKeyQuerySet.as_manager()

    class Meta:
        base_manager_name = "objects"  # as LLMClient's
        constraints = [
            models.UniqueConstraint(fields=("llm_client", "api_key"), name="drf_llm_keys_unique_client_key"),
        ]
        verbose_name = _("client API key")
        verbose_name_plural = _("client API keys")

    def __str__(self) -> str:
        return f"{self.api_key} on {self.llm_client}"

    @classmethod
    def has_active_api_key(cls, llm_client: models.Model, invalidate: bool = False) -> bool:
        """Whether ``llm_client`` has an active (not revoked) key mapped to it, from the cache.

        ``invalidate=True`` reloads the answer from the database and refreshes the cache.
        """
        # The decision cache loads its entries from these models: reached through the app.
        decisions = apps.get_app_config("drf_llm_keys").decisions  # type: ignore[attr-defined]
        entry = decisions.client_entry(getattr(llm_client, conf.CLIENT_LOOKUP_FIELD), refresh=invalidate)
        return bool(entry["has_active_key"])

    @classmethod
    def get_cached_objects(
        cls, invalidate: bool = False, llm_client: models.Model | None = None
    ) -> models.QuerySet[LLMClientAPIKey]:
        """The client's mappings to active keys, with their keys; none for a public client.

        Which case applies comes from the cache, so a public client costs no query; the
        rows themselves are never cached (they would carry the owner and the digest).
        """
        # From where the case was decided: a replica may still list a revoked key.
        rows: models.QuerySet[LLMClientAPIKey] = (
            cls.objects.using(decision_db()).filter(api_key__is_active=True).select_related("api_key")
        )
        if llm_client is None:
            return rows
        if not cls.has_active_api_key(llm_client, invalidate=invalidate):
            return cast("models.QuerySet[LLMClientAPIKey]", cls.objects.none())
        return rows.filter(llm_client=llm_client)  # type: ignore[misc,no-any-return]  # swappable client model


class OwnerBudgetQuerySet(InvalidatingQuerySet):
    def affected_clients(self, pks: Iterable[Any]) -> set[Any]:
        owners = OwnerBudget._base_manager.using(self.db).filter(pk__in=list(pks)).values("user")
        return clients_of_owners(owners, self.db)

    def affected_clients_of(self, objs: Iterable[Any]) -> set[Any]:
        return clients_of_owners([o.user_id for o in objs], self.db)


class OwnerBudget(models.Model):
    """A budget of a user, shared by all the keys they own: minting more keys does not
    multiply what they may spend. Held in each key's decision entry, so a change
    invalidates the clients of every key of the owner."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        on_delete=models.CASCADE,
        related_name="llm_budget",
    )
    limit = budget_amount_field(
        verbose_name=_("budget"),
        help_text=_("What all the owner's keys together may spend per period, in the prices' currency."),
    )
    period = budget_period_field(verbose_name=_("budget period"))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    objects = OwnerBudgetQuerySet.as_manager()

    class Meta:
        base_manager_name = "objects"  # as LLMClient's
        constraints = budget_constraints("drf_llm_keys_ownerbudget", "limit", "period", optional=False)
        verbose_name = _("owner budget")
        verbose_name_plural = _("owner budgets")

    def __str__(self) -> str:
        return f"{self.limit} {per_period(self.period)} for user {self.user_id}"

    def clean(self) -> None:
        try:
            limit, self.period = clean_budget(self.limit, self.period)
        except ValidationError as exc:
            raise ValidationError(_budget_errors(exc, "limit", "period")) from None
        if limit is None:
            raise ValidationError({"limit": "An owner budget needs an amount: delete it for no budget."})
        self.limit = limit


class KeyUsage(models.Model):
    """Requests and tokens of one key on one client in one UTC day (see ``drf_llm_keys.usage``).

    Rows are written in batches by each process, adding to the stored figures. They change
    no decision, so writing them invalidates nothing. Deleting a key deletes its history
    (``CASCADE``): revoke a key to keep it.
    """

    api_key = models.ForeignKey(
        APIKey, verbose_name=_("API key"), on_delete=models.CASCADE, related_name="usage"
    )
    llm_client = models.ForeignKey(
        conf.CLIENT_MODEL, verbose_name=_("LLM client"), on_delete=models.CASCADE, related_name="+"
    )
    day = models.DateField(_("day (UTC)"))
    requests = models.PositiveBigIntegerField(_("requests"), default=0)
    prompt_tokens = models.PositiveBigIntegerField(_("prompt tokens"), default=0)
    completion_tokens = models.PositiveBigIntegerField(_("completion tokens"), default=0)
    # In DRF_LLM_KEYS["CURRENCY"], of the tokens whose model has a price (drf_llm_keys.prices).
    cost = models.DecimalField(_("cost"), max_digits=24, decimal_places=9, default=0)
    unpriced_tokens = models.PositiveBigIntegerField(
        _("unpriced tokens"), default=0, help_text=_("Tokens of models without a price: not in the cost.")
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=("api_key", "llm_client", "day"), name="drf_llm_keys_unique_key_usage_day"
            ),
        ]
        ordering = ("-day", "api_key", "llm_client")
        verbose_name = _("key usage")
        verbose_name_plural = _("key usage")

    def __str__(self) -> str:
        return f"{self.api_key_id} on {self.llm_client_id}, {self.day}"


class UsageFlush(models.Model):
    """A usage write that committed, named by the id its process gave it before the first
    try (``drf_llm_keys.usage``). Inserted first in the write's own transaction: a retry of
    a write whose commit went unanswered finds its id taken (or waits for the first try's
    outcome) and adds nothing. Rows older than ``usage.FLUSH_ID_RETENTION`` are deleted.
    """

    id = models.UUIDField(primary_key=True, editable=False)
    written_at = models.DateTimeField(_("written at"), db_index=True)

    class Meta:
        verbose_name = _("usage flush")
        verbose_name_plural = _("usage flushes")

    def __str__(self) -> str:
        return f"{self.id} at {self.written_at}"


class PendingInvalidation(models.Model):
    """A client whose cached decisions a write made stale, kept until its new generation is
    in the cache (``drf_llm_keys.decisions.outbox``).

    Written in the write's own transaction, so that a process that dies between the commit
    and the cache write loses nothing: another process publishes it again.
    """

    # Made here, not by the database: the writer deletes its rows by pk without RETURNING.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    client_value = models.TextField(_("client lookup value"))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("pending invalidation")
        verbose_name_plural = _("pending invalidations")

    def __str__(self) -> str:
        return f"{self.client_value} since {self.created_at}"


def decision_db() -> str:
    """Where decisions are read from: where keys are written (Django's primary), never a
    read replica that may lag behind a revocation."""
    return router.db_for_write(APIKey)
