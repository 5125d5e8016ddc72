"""Per-client API keys for Django REST framework LLM endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import apps as django_apps
from django.core.exceptions import ImproperlyConfigured

from .conf import conf

if TYPE_CHECKING:
    from django.db.models import Model

__version__ = "0.1.0"
__all__ = ["get_client_model"]


def get_client_model() -> type[Model]:
    """The active LLM client model (``DRF_LLM_KEYS_CLIENT_MODEL``), like ``get_user_model()``."""
    try:
        return django_apps.get_model(conf.CLIENT_MODEL, require_ready=False)
    except (ValueError, LookupError) as exc:
        raise ImproperlyConfigured(
            f"DRF_LLM_KEYS_CLIENT_MODEL refers to {conf.CLIENT_MODEL!r}, which is not an "
            "installed model in the form 'app_label.ModelName'."
        ) from exc
