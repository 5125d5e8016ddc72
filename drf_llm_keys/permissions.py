"""What a key may do once it is in: the view's scopes (``HasScopes``) and the models it may
use (``require_model``), both answered from the key's cache entry, at no query.

Only requests authenticated with one of our keys are restricted. An anonymous request to a
public client passes (a public client is public), and so does a request that another
authenticator let in (a session, DRF's token): views that need a key must also require
authentication, e.g. ``permission_classes = [IsAuthenticated, HasScopes]``.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from .models import APIKey


class HasScopes(BasePermission):
    """The key must hold every scope in the view's ``required_scopes``; 403 otherwise."""

    code = "insufficient_scope"

    def has_permission(self, request: Request, view: Any) -> bool:
        required = required_scopes(view)
        api_key = request.auth
        if not isinstance(api_key, APIKey):
            return True
        missing = missing_scopes(api_key, required)
        if missing:
            # DRF builds the permission for each request: this message is this request's.
            self.message = lacks_scopes_message(missing)
            return False
        return True


def missing_scopes(api_key: APIKey, required: list[str] | tuple[str, ...]) -> list[str]:
    """Those of the ``required`` scopes the key does not hold."""
    return [scope for scope in required if not api_key.has_scopes(scope)]


def lacks_scopes_message(missing: list[str]) -> str:
    return f"API key lacks scope(s): {', '.join(missing)}."


def required_scopes(view: Any) -> list[str]:
    """The view's ``required_scopes``. Missing is a mistake in the view, not "none needed"."""
    scopes = getattr(view, "required_scopes", None)
    if isinstance(scopes, str) or not isinstance(scopes, (list, tuple)):
        raise ImproperlyConfigured(
            f"{type(view).__name__} uses HasScopes and needs required_scopes, a list of scope names."
        )
    return list(scopes)


def allows_model(request: Request, name: str) -> bool:
    """Whether the request may use the model ``name``: always, unless one of our keys with
    an allowed-models list authenticated it."""
    api_key = request.auth
    return not isinstance(api_key, APIKey) or api_key.allows_model(name)


def require_model(request: Request, name: str) -> None:
    """Raise ``PermissionDenied`` (403) when the request's key may not use the model ``name``."""
    if not allows_model(request, name):
        raise PermissionDenied(f"API key may not use model '{name}'.", code="model_not_allowed")
