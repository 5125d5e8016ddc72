"""The per-request decision, whatever the front door.

``ClientKeyCheck`` answers one question: may this request reach this client? It finds the
credentials, looks the decision up in ``decisions`` and applies the rules (public or
protected, key valid, mapped, owner active), counts the request's usage and logs and signals
refusals. DRF (``authentication.LLMClientAPIKeyAuthentication``, sync and adrf async views)
and Django Ninja (``ninja.LLMClientAPIKeyAuth``, sync and async operations) are adapters
over it that only find the request's client and turn its answer into their own.

Refusals are DRF's exceptions (``NotAuthenticated``, ``AuthenticationFailed``, ``NotFound``,
``ServiceUnavailable``): the Ninja adapter answers them with the same status and body.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, NoReturn

from asgiref.sync import sync_to_async
from django.db import DatabaseError
from django.db.models import Model
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables
from rest_framework import HTTP_HEADER_ENCODING, exceptions
from rest_framework.request import Request

from . import crypto, signals, usage
from .conf import conf
from .decisions import store
from .decisions.entries import load_decision
from .instances import api_key_from_entry
from .models import APIKey, decision_db

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

logger = logging.getLogger("drf_llm_keys")

# Where the request's client entry is left for later steps (drf_llm_keys.throttling).
CLIENT_ATTRIBUTE = "drf_llm_keys_client"

# Compared against when the prefix is unknown, so both refusals cost one digest comparison.
_DUMMY_DIGEST = bytes.fromhex(crypto.hash_key("unknown"))  # as a held key's

# What a request is: Django's, or DRF's around it.
AnyRequest = HttpRequest | Request


class ServiceUnavailable(exceptions.APIException):
    """The decision needs the database and the database cannot answer."""

    status_code = 503
    default_detail = _("API key verification is temporarily unavailable. Try again later.")
    default_code = "service_unavailable"


class NeedsDatabase(Exception):
    """Raised on the event loop by the loader of ``ClientKeyCheck.acheck``: the decision is
    not held, so it is made again in a thread, where the database may be queried."""


def _load_elsewhere(client_value: str, prefix: str | None) -> Any:
    raise NeedsDatabase


def lookup_value(found: Any) -> str | None:
    """A client as its lookup value: a client instance's ``CLIENT_LOOKUP_FIELD``, or the
    value itself (a slug, a pk); None for none."""
    if isinstance(found, Model):
        found = getattr(found, conf.CLIENT_LOOKUP_FIELD)
    return None if found is None else str(found)


def _printable(value: str) -> bool:
    """A key as a header may carry it: printable ASCII, not empty, no space."""
    return bool(value) and value.isascii() and value.isprintable() and " " not in value


@functools.lru_cache(maxsize=8)
def _keywords(keywords: tuple[str, ...]) -> frozenset[bytes]:
    return frozenset(keyword.lower().encode() for keyword in keywords)


@functools.lru_cache(maxsize=8)
def _loader(db: str) -> store.Loader:
    return functools.partial(load_decision, using=db)


@functools.lru_cache(maxsize=8)
def meta_name(header: str) -> str:
    """The ``META`` name of a request header."""
    return "HTTP_" + header.upper().replace("-", "_")


class ClientKeyCheck:
    """The decision for one request to one client (its lookup value): ``None`` for a
    public client, ``(owner, api_key)`` for a valid key, an exception for the rest.

    ``check`` is for sync code. ``acheck`` is for the event loop: a decision this process
    holds is made there, with no thread hop; one that needs the database is made by
    ``check``, in one thread hop.
    """

    def check(self, request: AnyRequest, client_value: str) -> tuple[Any, APIKey] | None:
        try:
            return self.authenticate_client(request, client_value)
        except (exceptions.NotAuthenticated, exceptions.AuthenticationFailed) as exc:
            self.refused(request, client_value, str(exc.detail))
            raise

    async def acheck(self, request: AnyRequest, client_value: str) -> tuple[Any, APIKey] | None:
        try:
            try:
                return self.authenticate_client(request, client_value, on_event_loop=True)
            except NeedsDatabase:
                return await sync_to_async(self.authenticate_client)(request, client_value)
        except (exceptions.NotAuthenticated, exceptions.AuthenticationFailed) as exc:
            # Receivers of the signal may query: in a thread, as Django runs sync receivers.
            await sync_to_async(self.refused)(request, client_value, str(exc.detail))
            raise

    # Kept out of error reports' frame variables, should something unexpected raise here.
    @sensitive_variables("plaintext")
    def authenticate_client(
        self, request: AnyRequest, client_value: str, on_event_loop: bool = False
    ) -> tuple[Any, APIKey] | None:
        plaintext = self.get_credentials(request)
        prefix = crypto.split_key(plaintext) if plaintext else None
        db = decision_db()
        try:
            load = _load_elsewhere if on_event_loop else _loader(db)
            decision = store.lookup(client_value, prefix, load, using=db)
        except DatabaseError:
            # Neither open (fail closed) nor a 500 with a traceback: the client may retry.
            logger.error("drf_llm_keys: database unavailable, refusing with 503", exc_info=True)
            raise ServiceUnavailable() from None
        client = decision.client
        # On Django's request, which DRF's reads through: a request built again (adrf)
        # still finds it. APIKeyRateThrottle then needs no second lookup.
        django_request = getattr(request, "_request", request)
        setattr(django_request, CLIENT_ATTRIBUTE, client)
        if client["id"] is None:
            self.unknown_client(client_value)
            return None
        if not (client["require_api_key"] or client["has_active_key"]):
            return None  # public: served anonymously, whatever it carries
        if plaintext is None:
            raise exceptions.NotAuthenticated(_("This LLM client requires an API key."))
        key = decision.key
        digest = _DUMMY_DIGEST if key is None else key.digest
        if not crypto.key_matches(plaintext, digest) or key is None or prefix is None:
            self.refuse(_("Invalid API key."))
        if not key.is_active:
            self.refuse(_("API key has been revoked."))
        if key.expires_at is not None and key.expires_at <= timezone.now():
            self.refuse(_("API key has expired."))
        if client["id"] not in key.client_ids:
            self.refuse(_("API key is not valid for this LLM client."))
        owner = key.user
        if owner is None or not owner.get("is_active", True):
            self.refuse(_("API key owner is inactive or deleted."))
        api_key = api_key_from_entry(key, prefix, db)
        # In the process, with last_used_at: no SQL, no round trip (drf_llm_keys.usage).
        usage.count_request(django_request, api_key, client)
        return api_key.user, api_key

    def authenticate_header(self, request: Any) -> str:
        """The ``WWW-Authenticate`` value of a 401."""
        return f'{conf.AUTH_KEYWORDS[0]} realm="{conf.REALM}"'

    # --- hooks --------------------------------------------------------------------

    def get_credentials(self, request: AnyRequest) -> str | None:
        """The key the request carries, None for none; malformed headers of ours raise."""
        meta = self.request_meta(request)
        from_authorization = self._from_authorization(meta)
        from_header = meta.get(meta_name(conf.HEADER))
        if from_header is not None:
            from_header = from_header.strip()
            if not _printable(from_header):
                self.refuse(_("Invalid {header} header.").format(header=conf.HEADER))
        if from_authorization and from_header and from_authorization != from_header:
            self.refuse(_("Conflicting API keys in Authorization and {header}.").format(header=conf.HEADER))
        return from_authorization or from_header

    def request_meta(self, request: AnyRequest) -> dict[str, Any]:
        """Where the headers are read from: Django's ``META``."""
        meta: dict[str, Any] = getattr(request, "_request", request).META  # not through Request.__getattr__
        return meta

    # --- parsing ------------------------------------------------------------------

    def _from_authorization(self, meta: dict[str, Any]) -> str | None:
        header = meta.get("HTTP_AUTHORIZATION", b"")
        # As DRF's get_authorization_header(): the server hands over ISO-8859-1 text.
        parts = (header.encode(HTTP_HEADER_ENCODING) if isinstance(header, str) else header).split()
        if not parts or parts[0].lower() not in _keywords(conf.AUTH_KEYWORDS):
            return None  # another scheme (Basic, ...) belongs to another authenticator
        if len(parts) == 1:
            self.refuse(_("Invalid Authorization header. No credentials provided."))
        if len(parts) > 2:
            self.refuse(_("Invalid Authorization header. The key must not contain spaces."))
        try:
            value = parts[1].decode("ascii")
        except UnicodeDecodeError:
            value = ""
        if not _printable(value):
            # The message is built here only: a lazy translation costs a warm request.
            self.refuse(_("Invalid Authorization header. The key must be printable ASCII."))
        return value

    def unknown_client(self, client_value: str) -> None:
        """A URL that names no client: 404, since a typo'd slug is not a public client;
        ``None`` (the view decides) when ``UNKNOWN_CLIENT_NOT_FOUND`` is off."""
        if conf.UNKNOWN_CLIENT_NOT_FOUND:
            message = _("No LLM client '{client}'.").format(client=client_value)
            raise exceptions.NotFound(message, code="client_not_found")

    def refuse(self, message: StrOrPromise) -> NoReturn:
        raise exceptions.AuthenticationFailed(message)

    @sensitive_variables("plaintext")
    def refused(self, request: AnyRequest, client_value: str, reason: str) -> None:
        """Log and signal a 401. Only the key's public prefix is named, never the key."""
        try:
            plaintext = self.get_credentials(request)
        except exceptions.AuthenticationFailed:
            plaintext = None  # malformed: nothing worth naming
        prefix = crypto.split_key(plaintext) if plaintext else None
        logger.info(
            "drf_llm_keys: authentication refused client=%r prefix=%s reason=%s",
            client_value,
            prefix,
            reason,
            extra={"event": "authentication_refused", "llm_client": client_value, "prefix": prefix},
        )
        signals.authentication_refused.send(
            sender=type(self), request=request, llm_client=client_value, prefix=prefix, reason=reason
        )
