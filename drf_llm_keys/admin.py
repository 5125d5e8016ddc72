"""Admin for keys and clients: a new key's plaintext is shown once, digests never.

Creating, rotating and revoking go through ``drf_llm_keys.keys``, like the command. A post
that creates keys redirects to a page that shows their plaintexts once: they wait in the
session (server-side with Django's default engine; the ``signed_cookies`` engine would put
them in a cookie) and are removed from it as that page is rendered, never cached. So a
reload neither creates a key again nor shows one. ``is_active`` is not on the form:
revocation is an action, so the last-key guard cannot be bypassed, and only revoked keys
can be deleted (deleting an active key would bypass it as well).

A change whose invalidation has not reached the cache within ``PUBLISH_TIMEOUT`` is never
reported as a success: the page shows an error saying what it may cost and what to run.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import display_for_value
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import models, router, transaction
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.templatetags.static import static
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html
from django.utils.text import capfirst, format_lazy
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import decisions, get_client_model, keys, prices, usage
from .conf import conf
from .models import APIKey, KeyUsage, LLMClient, LLMClientAPIKey, OwnerBudget, clients_of_owners

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

    # Generic in the stubs only: without django_stubs_ext.monkeypatch() these classes cannot
    # be subscripted at runtime, so the typed bases exist for the type checker alone.
    _APIKeyAddFormBase = forms.ModelForm[APIKey]
    _APIKeyAdminBase = admin.ModelAdmin[APIKey]
    # The parent is the client model, which may be swapped: any model.
    _APIKeyLinkInlineBase = admin.TabularInline[LLMClientAPIKey, models.Model]
    _LLMClientAdminBase = admin.ModelAdmin[models.Model]
    _KeyUsageAdminBase = admin.ModelAdmin[KeyUsage]
    _OwnerBudgetAdminBase = admin.ModelAdmin[OwnerBudget]
else:
    _APIKeyAddFormBase = forms.ModelForm
    _APIKeyAdminBase = admin.ModelAdmin
    _APIKeyLinkInlineBase = admin.TabularInline
    _LLMClientAdminBase = admin.ModelAdmin
    _KeyUsageAdminBase = admin.ModelAdmin
    _OwnerBudgetAdminBase = admin.ModelAdmin

# Where the plaintexts of a request's new keys wait for the response, on the request only.
_NEW_KEYS = "_drf_llm_keys_new_keys"
# Where they wait, in the session, for the page that shows them once.
_SHOW_ONCE = "drf_llm_keys_show_once"
# The clients a form's save touched, for the message if their invalidation is pending.
_CHANGED_CLIENTS = "_drf_llm_keys_changed_clients"

_NAME_SEPARATORS = re.compile(r"[,\n]")


class NameListField(forms.CharField):
    """A list of names as text, one per line or separated by commas; the model's clean()
    checks the names themselves."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 40})

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(map(str, value)) if isinstance(value, (list, tuple)) else value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]  # a list, not a str
        text = super().to_python(value) or ""
        return [name.strip() for name in _NAME_SEPARATORS.split(text) if name.strip()]


def name_list_field(model_field: str) -> NameListField:
    field = cast("models.Field[Any, Any]", APIKey._meta.get_field(model_field))
    return NameListField(
        label=capfirst(field.verbose_name),
        required=False,
        help_text=format_lazy("{} {}", field.help_text, _("One per line, or separated by commas.")),
    )


_KEY_STATES = {
    "active": (_("active"), "icon-yes.svg"),
    "expired": (_("expired"), "icon-alert.svg"),
    "revoked": (_("revoked"), "icon-no.svg"),
}


def key_state(api_key: APIKey) -> str:
    """Active, expired (still keeping its clients protected, but refused) or revoked."""
    state = "revoked" if not api_key.is_active else "expired" if keys.has_expired(api_key) else "active"
    label, icon = _KEY_STATES[state]
    return format_html('<img src="{}" alt=""> {}', static(f"admin/img/{icon}"), label)


class KeyStateFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, StrOrPromise]]:
        return [(state, label) for state, (label, _icon) in _KEY_STATES.items()]

    def queryset(self, request: HttpRequest, queryset: models.QuerySet[Any]) -> models.QuerySet[Any]:
        filtered: models.QuerySet[Any] = queryset
        if self.value() == "active":
            filtered = queryset.filter(keys.unexpired(), is_active=True)
        elif self.value() == "expired":
            filtered = queryset.filter(is_active=True).exclude(keys.unexpired())
        elif self.value() == "revoked":
            filtered = queryset.filter(is_active=False)
        return filtered


class PicksUsersBySearch:
    """The foreign keys to users named in ``user_fields`` are picked with a search of the
    site's user admin (the autocomplete widget) where it has ``search_fields`` and the
    request's user may view users; elsewhere by id (``raw_id_fields``), never from a list of
    every user."""

    user_fields: ClassVar[tuple[str, ...]]
    admin_site: admin.AdminSite

    def get_autocomplete_fields(self, request: HttpRequest) -> Any:
        fields = tuple(super().get_autocomplete_fields(request))  # type: ignore[misc]
        user_model = get_user_model()
        if not self.admin_site.is_registered(user_model):
            return fields
        # AdminSite.get_model_admin() is Django 5.0+; 4.2 has only the registry it reads.
        get_model_admin = getattr(self.admin_site, "get_model_admin", None)
        user_admin = get_model_admin(user_model) if get_model_admin else self.admin_site._registry[user_model]
        if user_admin.get_search_fields(request) and user_admin.has_view_permission(request):
            return fields + self.user_fields
        return fields


class APIKeyForm(_APIKeyAddFormBase):
    scopes = name_list_field("scopes")
    allowed_models = name_list_field("allowed_models")


class APIKeyAddForm(APIKeyForm):
    # The active client model's manager: a swapped-out LLMClient has none, and this class
    # is built when the admin is imported, at startup.
    llm_clients = forms.ModelMultipleChoiceField(
        queryset=get_client_model()._default_manager.none(), label=_("LLM clients")
    )

    class Meta:
        model = APIKey
        fields = (
            *("name", "user", "llm_clients", "description", "expires_at", "scopes", "allowed_models"),
            *("budget_limit", "budget_period", "max_concurrent"),
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        llm_clients = cast("forms.ModelMultipleChoiceField[models.Model]", self.fields["llm_clients"])
        llm_clients.queryset = get_client_model()._default_manager.all()
        self.fields["user"].required = True

    def clean(self) -> dict[str, Any]:
        # A model form's clean() returns its cleaned_data, never None.
        data = cast("dict[str, Any]", super().clean())
        if not self.errors:
            try:
                keys.check_new_key(user=data["user"], name=data["name"], expires_at=data.get("expires_at"))
            except keys.KeyLifecycleError as exc:
                raise forms.ValidationError(str(exc)) from exc
        return data


class RotateForm(forms.Form):
    grace = forms.CharField(
        label=_("Grace period"),
        initial="24h",
        help_text=_("How long the old keys keep working: 45s, 30m, 12h, 90d, 2w, or 0 for not at all."),
    )

    def clean_grace(self) -> Any:
        try:
            return keys.parse_duration(self.cleaned_data["grace"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc


class RevokeForm(forms.Form):
    allow_public = forms.BooleanField(
        label=_("Also revoke a client's last active key, which makes that client public."),
        required=False,
    )


class ReportsUnpublished:
    """For a model admin whose saves and deletes invalidate: once the view's transaction has
    committed, an invalidation that has not reached the cache is shown as an error."""

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response: HttpResponse = super().changeform_view(request, *args, **kwargs)  # type: ignore[misc]
        self.report_unpublished(request, clients=getattr(request, _CHANGED_CLIENTS, None))
        return response

    def delete_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response: HttpResponse = super().delete_view(request, *args, **kwargs)  # type: ignore[misc]
        self.report_unpublished(request)
        return response

    def report_unpublished(
        self, request: HttpRequest, done: list[str] | None = None, clients: list[str] | None = None
    ) -> None:
        """Show ``done`` as successes once every invalidation is in the cache, else as errors
        with the reason; a response not yet rendered shows the messages too."""
        if request.method != "POST":
            return
        published = decisions.wait_published()
        for note in done or []:
            level = messages.SUCCESS if published else messages.ERROR
            messages.add_message(request, level, note, fail_silently=True)
        if not published:
            message = keys.unpublished_message(sorted(set(clients or [])))
            messages.add_message(request, messages.ERROR, message, fail_silently=True)


class ReadsWhereItWrites:
    """For a model admin: a change or delete page reads its object from the database that
    its save writes to, never from a read replica that may lag behind a change (a
    revocation) and so build the form on what was there before it."""

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Any:
        # ModelAdmin.get_object(), on the write database.
        admin_: Any = self  # a ModelAdmin: its model and get_queryset()
        model = admin_.model
        queryset = admin_.get_queryset(request).using(router.db_for_write(model))
        field = model._meta.pk if from_field is None else model._meta.get_field(from_field)
        try:
            return queryset.get(**{field.name: field.to_python(object_id)})
        except (model.DoesNotExist, ValidationError, ValueError):
            return None


@admin.register(APIKey)
class APIKeyAdmin(ReadsWhereItWrites, PicksUsersBySearch, ReportsUnpublished, _APIKeyAdminBase):
    form = APIKeyForm
    list_display = (
        "prefix",
        "name",
        "user",
        "client_list",
        "state",
        "expires_at",
        "last_used_at",
        "scope_list",
        "model_list",
        "budget",
        "max_concurrent",
    )
    list_filter = (KeyStateFilter,)
    list_select_related = ("user",)
    ordering = ("-created_at",)
    actions = ("rotate_keys", "revoke_keys")
    readonly_fields: ClassVar[tuple[str, ...]] = (
        "prefix",
        "state",
        "client_list",
        "last_used_at",
        "created_at",
        "updated_at",
        "usage_7_days",
        "usage_30_days",
    )
    fields: ClassVar[tuple[str, ...]] = (
        "prefix",
        "name",
        "user",
        "client_list",
        "description",
        "state",
        "expires_at",
        "scopes",
        "allowed_models",
        "budget_limit",
        "budget_period",
        "max_concurrent",
        "last_used_at",
        "created_at",
        "updated_at",
        "usage_7_days",
        "usage_30_days",
    )
    user_fields = raw_id_fields = ("user",)

    def get_search_fields(self, request: HttpRequest) -> tuple[str, ...]:
        return (
            "prefix",
            "name",
            f"user__{get_user_model().USERNAME_FIELD}",
            f"client_links__llm_client__{conf.CLIENT_LOOKUP_FIELD}",
        )

    def get_queryset(self, request: HttpRequest) -> models.QuerySet[APIKey]:
        queryset: models.QuerySet[APIKey] = (
            super().get_queryset(request).prefetch_related("client_links__llm_client")
        )
        return queryset

    def has_delete_permission(self, request: HttpRequest, obj: APIKey | None = None) -> bool:
        # A revoked key, one at a time. Without an object (the changelist's bulk
        # "delete selected" action) the answer is no: it would delete active keys too.
        return obj is not None and not obj.is_active and super().has_delete_permission(request, obj)

    @admin.display(description=_("state"), ordering="is_active")
    def state(self, api_key: APIKey) -> str:
        return key_state(api_key)

    @admin.display(description=_("LLM clients"))
    def client_list(self, api_key: APIKey) -> str:
        return ", ".join(keys.lookup_value(link.llm_client) for link in api_key.client_links.all()) or "-"

    @admin.display(description=_("scopes"))
    def scope_list(self, api_key: APIKey) -> str:
        return ", ".join(map(str, api_key.scopes or [])) or str(_("all"))

    @admin.display(description=_("allowed models"))
    def model_list(self, api_key: APIKey) -> str:
        return ", ".join(map(str, api_key.allowed_models or [])) or str(_("any"))

    @admin.display(description=_("budget"), ordering="budget_limit")
    def budget(self, api_key: APIKey) -> str:
        return budget_text(api_key.budget_limit, api_key.budget_period)

    @admin.display(description=_("usage, last 7 days"))
    def usage_7_days(self, api_key: APIKey) -> str:
        return self.usage_since(api_key, 7)

    @admin.display(description=_("usage, last 30 days"))
    def usage_30_days(self, api_key: APIKey) -> str:
        totals = self.usage_since(api_key, 30)
        try:
            changelist = reverse(f"{self.admin_site.name}:drf_llm_keys_keyusage_changelist")
        except NoReverseMatch:  # a site of the project's own, without the usage list
            return totals
        url = f"{changelist}?api_key__id__exact={api_key.pk}"
        return format_html('{} (<a href="{}">{}</a>)', totals, url, _("by day and client"))

    def usage_since(self, api_key: APIKey, days: int) -> str:
        """Totals of the last ``days`` UTC days, today's included; counts still waiting in
        the server processes (at most USAGE_FLUSH_INTERVAL old) are not in them yet."""
        since = usage.today() - timedelta(days=days - 1)
        totals = KeyUsage.objects.filter(api_key=api_key, day__gte=since).aggregate(
            requests=Sum("requests", default=0),
            prompt_tokens=Sum("prompt_tokens", default=0),
            completion_tokens=Sum("completion_tokens", default=0),
        )
        template = _(
            "%(requests)d requests, %(prompt_tokens)d prompt and %(completion_tokens)d completion tokens"
        )
        return str(template % totals)

    # --- adding: one-time plaintext ----------------------------------------------------

    def get_form(
        self, request: HttpRequest, obj: APIKey | None = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm[APIKey]]:
        if obj is None:
            kwargs["form"] = APIKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: APIKey | None = None) -> tuple[str, ...]:
        return APIKeyAddForm.Meta.fields if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: APIKey | None = None) -> tuple[str, ...]:
        return () if obj is None else self.readonly_fields

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        # ``?llm_clients=1,2`` preselects clients, as the client page's link does.
        initial = super().get_changeform_initial_data(request)
        if "llm_clients" in initial:
            initial["llm_clients"] = str(initial["llm_clients"]).split(",")
        return initial

    def save_model(
        self, request: HttpRequest, obj: APIKey, form: forms.ModelForm[APIKey], change: bool
    ) -> None:
        if change:
            super().save_model(request, obj, form, change)
            setattr(request, _CHANGED_CLIENTS, self.clients_of(obj))
            return
        data = form.cleaned_data
        setattr(request, _CHANGED_CLIENTS, [keys.lookup_value(c) for c in data["llm_clients"]])
        api_key, plaintext = keys.create_key(
            list(data["llm_clients"]),
            user=data["user"],
            name=data["name"],
            description=data["description"],
            expires_at=data["expires_at"],
            scopes=data["scopes"],
            allowed_models=data["allowed_models"],
            max_concurrent=data["max_concurrent"],
            budget_limit=data["budget_limit"],
            budget_period=data["budget_period"],
        )
        # The admin carries on with ``obj`` (to log the addition): make it the saved key.
        for field in APIKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(api_key, field.attname))
        obj._state.adding, obj._state.db = False, api_key._state.db
        setattr(request, _NEW_KEYS, [(api_key, plaintext)])

    def response_add(self, request: HttpRequest, obj: APIKey, post_url_continue: str | None = None) -> Any:
        new_keys = getattr(request, _NEW_KEYS, None)
        if new_keys is None:
            return super().response_add(request, obj, post_url_continue)
        return self.show_once(request, _("API key created"), new_keys)

    def show_once(
        self, request: HttpRequest, title: StrOrPromise, new_keys: list[tuple[APIKey, str]]
    ) -> HttpResponseRedirect:
        """Redirect to the page that shows the new keys' plaintexts, once (Post/Redirect/Get)."""
        waiting = request.session.get(_SHOW_ONCE, {"keys": []})
        request.session[_SHOW_ONCE] = {
            "title": str(title),
            "keys": waiting["keys"] + [[str(api_key.pk), plaintext] for api_key, plaintext in new_keys],
        }
        return HttpResponseRedirect(reverse(f"{self.admin_site.name}:drf_llm_keys_apikey_show_once"))

    def show_once_view(self, request: HttpRequest) -> HttpResponse:
        waiting = request.session.pop(_SHOW_ONCE, None)
        if waiting is None:
            message = _("A new key is shown once only: find it by its prefix in this list.")
            self.message_user(request, message, messages.WARNING)
            changelist = reverse(f"{self.admin_site.name}:drf_llm_keys_apikey_changelist")
            return HttpResponseRedirect(changelist)
        # Where the keys were written: a replica may not have them yet.
        found = APIKey.objects.using(router.db_for_write(APIKey)).in_bulk([pk for pk, _ in waiting["keys"]])
        by_pk = {str(pk): api_key for pk, api_key in found.items()}
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": waiting["title"],
            "new_keys": [(by_pk[pk], plaintext) for pk, plaintext in waiting["keys"] if pk in by_pk],
        }
        response = TemplateResponse(request, "admin/drf_llm_keys/apikey/plaintext.html", context)
        add_never_cache_headers(response)
        return response

    def get_urls(self) -> list[URLPattern]:
        # Before the model admin's own: "<path:object_id>/" would take this path.
        show_once = path(
            "new/",
            self.admin_site.admin_view(self.show_once_view),
            name="drf_llm_keys_apikey_show_once",
        )
        return [show_once, *super().get_urls()]

    # --- actions -----------------------------------------------------------------------

    @admin.action(description=_("Rotate selected API keys"), permissions=["rotate"])
    def rotate_keys(self, request: HttpRequest, queryset: models.QuerySet[APIKey]) -> HttpResponse | None:
        form = RotateForm(request.POST if "confirm" in request.POST else None)
        if not form.is_valid():
            return self.confirm_response(request, list(queryset), form, "rotate_keys", _("Rotate API keys"))
        new_keys = []
        for api_key in queryset:
            try:
                with self.own_transaction():
                    new_keys.append(keys.rotate_key(api_key, form.cleaned_data["grace"]))
            except keys.KeyLifecycleError as exc:
                self.message_user(request, str(exc), messages.ERROR)
        self.report_unpublished(request, clients=[c for new, _ in new_keys for c in self.clients_of(new)])
        if not new_keys:
            return None
        return self.show_once(request, _("API keys rotated"), new_keys)

    def has_rotate_permission(self, request: HttpRequest) -> bool:
        """Rotating issues a working key: it takes the add permission as well as change."""
        return self.has_add_permission(request) and self.has_change_permission(request)

    @admin.action(description=_("Revoke selected API keys"), permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: models.QuerySet[APIKey]) -> HttpResponse | None:
        """Revoke the selection as one decision: all of it or, when the last-key guard
        refuses any part, none of it."""
        selected = list(queryset.order_by("pk"))
        left_public = self.left_public(selected)
        form = RevokeForm(request.POST if "confirm" in request.POST else None)
        if not form.is_valid():
            return self.confirm_response(
                request, selected, form, "revoke_keys", _("Revoke API keys"), left_public
            )
        allow_public = form.cleaned_data["allow_public"]
        if left_public and not allow_public:
            last = [k.prefix for k in selected if k.pk in left_public]
            message = ngettext(
                "Nothing was revoked: %(keys)s is the last active key of %(clients)s, and "
                "revoking it would make that client public (served to anyone without a key). "
                "Tick the box to revoke it anyway, or create another key first.",
                "Nothing was revoked: together, %(keys)s are the last active keys of %(clients)s, "
                "and revoking them would make that client public (served to anyone without a "
                "key). Tick the box to revoke them anyway, or create another key first.",
                len(last),
            ) % {"keys": ", ".join(last), "clients": ", ".join(left_public_clients(left_public))}
            self.message_user(request, message, messages.ERROR)
            return None
        revoked: list[APIKey] = []
        done: list[str] = []
        notes: list[str] = []
        try:
            with self.own_transaction():
                for api_key in selected:
                    try:
                        made_public = keys.revoke_key(api_key, allow_public=allow_public)
                    except keys.AlreadyRevoked as exc:
                        notes.append(str(exc))
                        continue
                    public = ", ".join(keys.lookup_value(c) for c in made_public)
                    note = _(" Now public: %s.") % public if public else ""
                    done.append(_("Revoked %s.") % api_key.prefix + note)
                    revoked.append(api_key)
        except keys.KeyLifecycleError as exc:  # the guard, on what changed since the confirmation
            self.message_user(request, _("Nothing was revoked: %s") % exc, messages.ERROR)
            return None
        for note in notes:
            self.message_user(request, note, messages.WARNING)
        self.report_unpublished(request, done, [c for k in revoked for c in self.clients_of(k)])
        return None

    def own_transaction(self) -> transaction.Atomic:
        # keys.py's operations in a transaction of the admin's, with the wait for their
        # invalidation left to report_unpublished(): once for all the keys.
        return transaction.atomic(using=router.db_for_write(APIKey))

    def clients_of(self, api_key: APIKey) -> list[str]:
        return [keys.lookup_value(c) for c in keys.clients_of(api_key).using(router.db_for_write(APIKey))]

    def confirm_response(
        self,
        request: HttpRequest,
        selected: list[APIKey],
        form: forms.Form,
        action: str,
        title: StrOrPromise,
        left_public: dict[Any, list[str]] | None = None,
    ) -> HttpResponse:
        left_public = left_public or {}
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "form": form,
            "action": action,
            "selected": [(k, left_public.get(k.pk, [])) for k in selected],
            "made_public": left_public_clients(left_public),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/drf_llm_keys/apikey/confirm_action.html", context)

    def left_public(self, selected: list[APIKey]) -> dict[Any, list[str]]:
        """For each selected key, the clients that revoking the whole selection would leave
        with no active key (public). Read where keys are written, like the guard."""
        using = router.db_for_write(APIKey)
        links = list(
            LLMClientAPIKey.objects.using(using)
            .filter(api_key__in=[k.pk for k in selected], api_key__is_active=True)
            .values_list("api_key", "llm_client")
        )
        revoked = Counter(client_pk for _key_pk, client_pk in links)
        clients = keys.with_active_key_count(
            get_client_model()._default_manager.using(using).filter(pk__in=revoked)
        )
        public = {
            c.pk: keys.lookup_value(c)
            for c in clients
            if keys.is_public(c, c.active_key_count - revoked[c.pk])
        }
        left: dict[Any, list[str]] = {}
        for key_pk, client_pk in links:
            if client_pk in public:
                left.setdefault(key_pk, []).append(public[client_pk])
        return left


def budget_text(limit: Any, period: str) -> str:
    """``25 per month``, in the prices' currency; a dash for no budget."""
    if limit is None:
        return "-"
    per = _("in total") if period == "total" else _("per %s") % period
    return f"{prices.amount_text(limit)} {conf.CURRENCY} {per}"


def left_public_clients(left_public: dict[Any, list[str]]) -> list[str]:
    return sorted({name for names in left_public.values() for name in names})


class APIKeyLinkInline(_APIKeyLinkInlineBase):
    """The client's keys, read-only: keys are created, rotated and revoked on their own page."""

    model = LLMClientAPIKey
    fk_name = "llm_client"
    fields = ("key", "key_name", "key_owner", "key_state", "key_expires_at", "key_last_used_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name = _("API key")
    verbose_name_plural = _("API keys")

    def get_queryset(self, request: HttpRequest) -> models.QuerySet[LLMClientAPIKey]:
        queryset: models.QuerySet[LLMClientAPIKey] = (
            # Read where the client's save writes: its POST checks these rows.
            super()
            .get_queryset(request)
            .using(router.db_for_write(self.model))
            .select_related("api_key__user", "llm_client")
        )
        return queryset

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("prefix"))
    def key(self, link: LLMClientAPIKey) -> str:
        url = reverse("admin:drf_llm_keys_apikey_change", args=[link.api_key_id])
        return format_html('<a href="{}">{}</a>', url, link.api_key.prefix)

    @admin.display(description=_("name"))
    def key_name(self, link: LLMClientAPIKey) -> str:
        return link.api_key.name

    @admin.display(description=_("owner"))
    def key_owner(self, link: LLMClientAPIKey) -> Any:
        return link.api_key.user

    @admin.display(description=_("state"))
    def key_state(self, link: LLMClientAPIKey) -> str:
        return key_state(link.api_key)

    @admin.display(description=_("expires at"))
    def key_expires_at(self, link: LLMClientAPIKey) -> str:
        return display_for_value(link.api_key.expires_at, self.get_empty_value_display())

    @admin.display(description=_("last used at"))
    def key_last_used_at(self, link: LLMClientAPIKey) -> str:
        return display_for_value(link.api_key.last_used_at, self.get_empty_value_display())


class LLMClientAdmin(ReadsWhereItWrites, PicksUsersBySearch, ReportsUnpublished, _LLMClientAdminBase):
    """Usable for a swapped client model too: ``admin.site.register(MyClient, LLMClientAdmin)``."""

    list_display = ("name", "slug", "owner", "require_api_key", "active_keys", "state", "add_key")
    search_fields = ("name", "slug")
    user_fields = raw_id_fields = ("owner",)
    inlines = (APIKeyLinkInline,)

    def get_queryset(self, request: HttpRequest) -> models.QuerySet[Any]:
        return keys.with_active_key_count(super().get_queryset(request))

    @admin.display(description=_("active keys"), ordering="active_key_count")
    def active_keys(self, llm_client: Any) -> int:
        return int(llm_client.active_key_count)

    @admin.display(description=_("state"))
    def state(self, llm_client: Any) -> str:
        """As ``llm_keys client list`` says it: public (served without a key) or protected."""
        return str(_("public") if keys.is_public(llm_client, llm_client.active_key_count) else _("protected"))

    @admin.display(description=_("new key"))
    def add_key(self, llm_client: models.Model) -> str:
        url = reverse("admin:drf_llm_keys_apikey_add") + f"?llm_clients={llm_client.pk}"
        return format_html('<a href="{}">{}</a>', url, _("Create a key"))


@admin.register(KeyUsage)
class KeyUsageAdmin(_KeyUsageAdminBase):
    """Usage by key, client and UTC day, to read only: the server processes write these rows
    (``drf_llm_keys.usage``), and a hand edit would be added to or lost in their next write."""

    list_display = (
        "day",
        "api_key",
        "llm_client",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "unpriced_tokens",
    )
    list_filter = ("api_key__is_active",)
    list_select_related = ("api_key", "llm_client")
    date_hierarchy = "day"
    # No link to a row of its own: its page would show what this list does.
    list_display_links = None

    def get_search_fields(self, request: HttpRequest) -> tuple[str, ...]:
        return ("api_key__prefix", "api_key__name", f"llm_client__{conf.CLIENT_LOOKUP_FIELD}")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: KeyUsage | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: KeyUsage | None = None) -> bool:
        # A key's history goes with the key (CASCADE); revoke a key to keep it.
        return False


@admin.register(OwnerBudget)
class OwnerBudgetAdmin(ReadsWhereItWrites, PicksUsersBySearch, ReportsUnpublished, _OwnerBudgetAdminBase):
    """A user's budget, shared by all the keys they own (see ``keys.set_owner_budget``)."""

    list_display = ("user", "budget", "updated_at")
    list_select_related = ("user",)
    fields = ("user", "limit", "period")
    user_fields = raw_id_fields = ("user",)

    def get_search_fields(self, request: HttpRequest) -> tuple[str, ...]:
        return (f"user__{get_user_model().USERNAME_FIELD}",)

    def get_readonly_fields(self, request: HttpRequest, obj: OwnerBudget | None = None) -> tuple[str, ...]:
        # Moved to another user, the budget would stay in the first one's cached decisions.
        return () if obj is None else ("user",)

    @admin.display(description=_("budget"), ordering="limit")
    def budget(self, owner_budget: OwnerBudget) -> str:
        return budget_text(owner_budget.limit, owner_budget.period)

    def save_model(
        self, request: HttpRequest, obj: OwnerBudget, form: forms.ModelForm[OwnerBudget], change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        # Its post_save receiver invalidates these; named in the message if that is pending.
        clients = clients_of_owners([obj.user_id], router.db_for_write(OwnerBudget))
        setattr(request, _CHANGED_CLIENTS, sorted(map(str, clients)))


if get_client_model() is LLMClient:
    admin.site.register(LLMClient, LLMClientAdmin)
