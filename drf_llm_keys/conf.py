"""The ``DRF_LLM_KEYS`` settings dict, read at call time so ``override_settings`` works."""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Alias in CACHES; it must be shared by every process for revocation to reach them.
    "CACHE_ALIAS": "default",
    # Seconds an entry lives; also the worst stale window after a lost invalidation.
    "CACHE_TIMEOUT": 300,
    "CACHE_KEY_PREFIX": "drf_llm_keys",
    "CLIENT_URL_KWARG": "llm_client",
    "CLIENT_LOOKUP_FIELD": "slug",
    "AUTH_KEYWORDS": ("Bearer", "Token"),
    "HEADER": "X-API-Key",
    "KEY_PREFIX": "llmk_",
    "LAST_USED_RESOLUTION": 60,
    "REALM": "api",
}

CLIENT_MODEL_SETTING = "DRF_LLM_KEYS_CLIENT_MODEL"
DEFAULT_CLIENT_MODEL = "drf_llm_keys.LLMClient"


def install_client_model_default() -> None:
    """Give the swappable setting its default, as Django's global settings do for
    AUTH_USER_MODEL: the migration autodetector reads it for every foreign key to the
    client model, in the project's apps too."""
    if not hasattr(settings, CLIENT_MODEL_SETTING):
        setattr(settings, CLIENT_MODEL_SETTING, DEFAULT_CLIENT_MODEL)


def install_settings_default() -> None:
    """Give ``DRF_LLM_KEYS`` an empty default when the project sets none.

    Django's ``settings`` remembers the names it finds, not the ones it misses: without a
    default, each read below raised and caught an AttributeError inside ``LazySettings``
    (about 1 µs, a dozen reads per request). ``override_settings`` still replaces it.
    """
    if not hasattr(settings, "DRF_LLM_KEYS"):
        settings.DRF_LLM_KEYS = {}


class Settings:
    def _get(self, name: str) -> Any:
        return getattr(settings, "DRF_LLM_KEYS", {}).get(name, DEFAULTS[name])

    @property
    def unknown_names(self) -> list[str]:
        return sorted(set(getattr(settings, "DRF_LLM_KEYS", {})) - set(DEFAULTS))

    @property
    def CACHE_ALIAS(self) -> str:
        return str(self._get("CACHE_ALIAS"))

    @property
    def CACHE_TIMEOUT(self) -> int:
        return int(self._get("CACHE_TIMEOUT"))

    @property
    def CACHE_KEY_PREFIX(self) -> str:
        return str(self._get("CACHE_KEY_PREFIX"))

    @property
    def CLIENT_URL_KWARG(self) -> str:
        return str(self._get("CLIENT_URL_KWARG"))

    @property
    def CLIENT_LOOKUP_FIELD(self) -> str:
        return str(self._get("CLIENT_LOOKUP_FIELD"))

    @property
    def AUTH_KEYWORDS(self) -> tuple[str, ...]:
        return tuple(self._get("AUTH_KEYWORDS"))

    @property
    def HEADER(self) -> str:
        return str(self._get("HEADER"))

    @property
    def KEY_PREFIX(self) -> str:
        return str(self._get("KEY_PREFIX"))

    @property
    def LAST_USED_RESOLUTION(self) -> int:
        return int(self._get("LAST_USED_RESOLUTION"))

    @property
    def REALM(self) -> str:
        return str(self._get("REALM"))

    @property
    def CLIENT_MODEL(self) -> str:
        return str(getattr(settings, CLIENT_MODEL_SETTING, DEFAULT_CLIENT_MODEL))


conf = Settings()
