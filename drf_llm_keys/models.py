from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from django.conf import settings
from django.db import models, transaction
from django.utils.translation import gettext_lazy as _

from . import crypto, get_client_model
from .conf import conf, install_defaults
from .decisions import invalidation

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

install_defaults()


def client_lookup_values(clients: models.QuerySet[Any]) -> set[Any]:
    return set(clients.values_list(conf.CLIENT_LOOKUP_FIELD, flat=True))


class InvalidatingQuerySet(models.QuerySet[Any]):
    """Bulk writes that change a decision invalidate like ``save()`` does.

    ``delete()`` needs nothing here: the ``pre_delete`` receivers in ``signals`` (on
    clients and mappings, which a key's delete cascades to) keep Django off the signal-free
    fast path.
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
        with transaction.atomic(using=self.db, savepoint=False):
            pks = list(self.values_list("pk", flat=True))
            before = self.affected_clients(pks)
            count = super().update(**kwargs)
            # After too: an update can move a row to another client or lookup value.
            invalidation.invalidate(before | self.affected_clients(pks), using=self.db)
        return count

    update.alters_data = True  # type: ignore[attr-defined]

    def bulk_create(self, objs: Iterable[Any], *args: Any, **kwargs: Any) -> list[Any]:
        with transaction.atomic(using=self.db, savepoint=False):
            created = super().bulk_create(objs, *args, **kwargs)
            invalidation.invalidate(self.affected_clients_of(created), using=self.db)
        return created

    def bulk_update(  # type: ignore[override]  # fields is read twice: a Sequence, not any Iterable
        self, objs: Iterable[Any], fields: Sequence[str], **kwargs: Any
    ) -> int:
        objs = list(objs)
        if set(fields) <= self.cache_free_fields:
            return super().bulk_update(objs, fields, **kwargs)
        with transaction.atomic(using=self.db, savepoint=False):
            pks = [o.pk for o in objs]
            before = self.affected_clients(pks)
            count = super().bulk_update(objs, fields, **kwargs)
            invalidation.invalidate(before | self.affected_clients(pks), using=self.db)
        return count


class LLMClientQuerySet(InvalidatingQuerySet):
    def affected_clients(self, pks: Iterable[Any]) -> set[Any]:
        return client_lookup_values(self.model._base_manager.filter(pk__in=list(pks)))

    def affected_clients_of(self, objs: Iterable[Any]) -> set[Any]:
        # A lookup value that was unknown may sit in the cache as "no such client".
        return {getattr(o, conf.CLIENT_LOOKUP_FIELD) for o in objs}


class AbstractLLMClient(models.Model):
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


class APIKeyQuerySet(InvalidatingQuerySet):
    cache_free_fields = frozenset({"last_used_at"})

    def affected_clients(self, pks: Iterable[Any]) -> set[Any]:
        links = LLMClientAPIKey._base_manager.filter(api_key__in=list(pks))
        return set(links.values_list(f"llm_client__{conf.CLIENT_LOOKUP_FIELD}", flat=True))

    def affected_clients_of(self, objs: Iterable[Any]) -> set[Any]:
        return set()  # a new key is mapped to no client yet


class APIKeyManager(models.Manager["APIKey"]):
    def get_queryset(self) -> APIKeyQuerySet:
        return APIKeyQuerySet(self.model, using=self._db)

    def create_key(self, *, user: AbstractBaseUser | None, name: str, **fields: Any) -> tuple[APIKey, str]:
        """Create a key and return ``(api_key, plaintext)``; only the digest is stored."""
        prefix, plaintext = crypto.generate_key(conf.KEY_PREFIX)
        api_key = self.create(
            user=user,  # type: ignore[misc]  # the stubs take AUTH_USER_MODEL for the test project's User
            name=name,
            prefix=prefix,
            digest=crypto.hash_key(plaintext),
            **fields,
        )
        return api_key, plaintext


class APIKey(models.Model):
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
        _("active"), default=True, help_text=_("Unset to revoke. A revoked key is refused at once.")
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
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    objects = APIKeyManager()

    class Meta:
        ordering = ("-created_at",)
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"

    def __repr__(self) -> str:
        # The digest stays out of reprs, tracebacks and debug pages.
        return f"<APIKey {self.prefix} active={self.is_active}>"


class LLMClientAPIKeyQuerySet(InvalidatingQuerySet):
    def affected_clients(self, pks: Iterable[Any]) -> set[Any]:
        links = LLMClientAPIKey._base_manager.filter(pk__in=list(pks))
        return set(links.values_list(f"llm_client__{conf.CLIENT_LOOKUP_FIELD}", flat=True))

    def affected_clients_of(self, objs: Iterable[Any]) -> set[Any]:
        clients = get_client_model()._base_manager.filter(pk__in=[o.llm_client_id for o in objs])
        return client_lookup_values(clients)


class LLMClientAPIKey(models.Model):
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
        constraints = [
            models.UniqueConstraint(fields=("llm_client", "api_key"), name="drf_llm_keys_unique_client_key"),
        ]
        verbose_name = _("client API key")
        verbose_name_plural = _("client API keys")

    def __str__(self) -> str:
        return f"{self.api_key_id} -> {self.llm_client_id}"

    @classmethod
    def has_active_api_key(cls, llm_client: models.Model, invalidate: bool = False) -> bool:
        """Whether ``llm_client`` has an active (not revoked) key mapped to it, from the cache.

        ``invalidate=True`` reloads the answer from the database and refreshes the cache.
        """
        # Imported here: the entries are loaded from these models.
        from .decisions.entries import client_entry

        entry = client_entry(getattr(llm_client, conf.CLIENT_LOOKUP_FIELD), refresh=invalidate)
        return bool(entry["has_active_key"])

    @classmethod
    def get_cached_objects(
        cls, invalidate: bool = False, llm_client: models.Model | None = None
    ) -> models.QuerySet[LLMClientAPIKey]:
        """The client's mappings to active keys, with their keys; none for a public client.

        Which case applies comes from the cache, so a public client costs no query; the
        rows themselves are never cached (they would carry the owner and the digest).
        """
        rows: models.QuerySet[LLMClientAPIKey] = cls.objects.filter(api_key__is_active=True).select_related(
            "api_key"
        )
        if llm_client is None:
            return rows
        if not cls.has_active_api_key(llm_client, invalidate=invalidate):
            return cast("models.QuerySet[LLMClientAPIKey]", cls.objects.none())
        return rows.filter(llm_client=llm_client)  # type: ignore[misc,no-any-return]  # swappable client model
