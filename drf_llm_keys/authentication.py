"""The per-request decision: public client, protected client, or not an LLM client at all."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, NoReturn

from django.db import DatabaseError
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables
from rest_framework import HTTP_HEADER_ENCODING, exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from . import crypto, signals, usage
from .conf import conf
from .decisions import store
from .decisions.entries import api_key_from_entry, load_decision
from .models import APIKey, decision_db

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

logger = logging.getLogger("drf_llm_keys")

# Where the request's client entry is left for later steps (drf_llm_keys.throttling).
CLIENT_ATTRIBUTE = "drf_llm_keys_client"

# Compared against when the prefix is unknown, so both refusals cost one digest comparison.
_DUMMY_DIGEST = crypto.hash_key("unknown")


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
def _meta_name(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class ServiceUnavailable(exceptions.APIException):
    """The decision needs the database and the database cannot answer."""

    status_code = 503
    default_detail = _("API key verification is temporarily unavailable. Try again later.")
    default_code = "service_unavailable"


class LLMClientAPIKeyAuthentication(BaseAuthentication):
    """Authenticate requests to an LLM client's endpoints with an API key mapped to it.

    Returns ``None`` (anonymous, or another authenticator's turn) for views that are not
    an LLM client's and for public clients; ``(owner, api_key)`` for a valid key; raises
    for everything else on a protected client; 404 for a client that does not exist. List it
    first in ``DEFAULT_AUTHENTICATION_CLASSES``: DRF answers 401 with ``WWW-Authenticate``
    only for the first class.
    """

    def authenticate(self, request: Request) -> tuple[Any, APIKey] | None:
        client_value = self.get_client_lookup_value(request)
        if client_value is None:
            return None
        try:
            return self.authenticate_client(request, client_value)
        except (exceptions.NotAuthenticated, exceptions.AuthenticationFailed) as exc:
            self.refused(request, client_value, str(exc.detail))
            raise

    # Kept out of error reports' frame variables, should something unexpected raise here.
    @sensitive_variables("plaintext")
    def authenticate_client(self, request: Request, client_value: str) -> tuple[Any, APIKey] | None:
        plaintext = self.get_credentials(request)
        prefix = crypto.split_key(plaintext) if plaintext else None
        db = decision_db()
        try:
            decision = store.lookup(client_value, prefix, _loader(db), using=db)
        except DatabaseError:
            # Neither open (fail closed) nor a 500 with a traceback: the client may retry.
            logger.error("drf_llm_keys: database unavailable, refusing with 503", exc_info=True)
            raise ServiceUnavailable() from None
        client = decision["client"]
        setattr(request, CLIENT_ATTRIBUTE, client)  # APIKeyRateThrottle needs no second lookup
        if client["id"] is None:
            self.unknown_client(client_value)
            return None
        if not (client["require_api_key"] or client["has_active_key"]):
            return None  # public: served anonymously, whatever it carries
        if plaintext is None:
            raise exceptions.NotAuthenticated(_("This LLM client requires an API key."))
        key = decision["key"] or {"id": None}
        if not crypto.key_matches(plaintext, key.get("digest", _DUMMY_DIGEST)) or key["id"] is None:
            self.refuse(_("Invalid API key."))
        if not key["is_active"]:
            self.refuse(_("API key has been revoked."))
        if key["expires_at"] is not None and key["expires_at"] <= timezone.now():
            self.refuse(_("API key has expired."))
        if client["id"] not in key["client_ids"]:
            self.refuse(_("API key is not valid for this LLM client."))
        owner = key["user"]
        if owner is None or not owner.get("is_active", True):
            self.refuse(_("API key owner is inactive or deleted."))
        api_key = api_key_from_entry(key, db)
        # In the process, with last_used_at: no SQL, no round trip (drf_llm_keys.usage).
        usage.count_request(request, api_key, client)
        return api_key.user, api_key

    def authenticate_header(self, request: Request) -> str:
        return f'{conf.AUTH_KEYWORDS[0]} realm="{conf.REALM}"'

    # --- hooks --------------------------------------------------------------------

    def get_client_lookup_value(self, request: Request) -> str | None:
        """The request's client as its lookup value, or None when there is none."""
        context = getattr(request, "parser_context", None) or {}
        view = context.get("view")
        if view is not None and hasattr(view, "get_llm_client"):
            llm_client = view.get_llm_client()
            return None if llm_client is None else str(getattr(llm_client, conf.CLIENT_LOOKUP_FIELD))
        value = (context.get("kwargs") or {}).get(conf.CLIENT_URL_KWARG)
        return None if value is None else str(value)

    def get_credentials(self, request: Request) -> str | None:
        """The key the request carries, None for none; malformed headers of ours raise."""
        meta = getattr(request, "_request", request).META  # not through Request.__getattr__
        from_authorization = self._from_authorization(meta)
        from_header = meta.get(_meta_name(conf.HEADER))
        if from_header is not None:
            from_header = from_header.strip()
            if not _printable(from_header):
                self.refuse(_("Invalid {header} header.").format(header=conf.HEADER))
        if from_authorization and from_header and from_authorization != from_header:
            self.refuse(_("Conflicting API keys in Authorization and {header}.").format(header=conf.HEADER))
        return from_authorization or from_header

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
    def refused(self, request: Request, client_value: str, reason: str) -> None:
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
