"""The ``DRF_LLM_KEYS`` settings dict, read at call time so ``override_settings`` works."""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Alias in CACHES; it must be shared by every process for revocation to reach them.
    "CACHE_ALIAS": "default",
    # Seconds an entry lives; also the worst stale window after a lost invalidation.
    "CACHE_TIMEOUT": 300,
    "CACHE_KEY_PREFIX": "drf_llm_keys",
    # Decision entries each process keeps, checked against the shared generation on use;
    # least recently used dropped first.
    "LOCAL_ENTRIES": 32768,
    # Trust held entries until Redis announces a change (django-redis on Redis 6+ only;
    # drf_llm_keys.decisions.push): a warm request then makes no round trip at all.
    "PUSH_INVALIDATION": True,
    # Seconds: held entries are trusted only while the announcement channel has answered
    # a ping sent within this time, and a change is reported done this long after its
    # write (decisions.wait_published). The same in every process.
    "PUSH_HEARTBEAT": 1.0,
    # Replicas that must acknowledge each new generation (Redis WAIT) before an invalidation
    # counts as written; 0: the master's reply is enough (drf_llm_keys.decisions.redis).
    "INVALIDATION_REPLICAS": 0,
    # Seconds the command, the admin and drf_llm_keys.keys wait for a change's invalidation
    # to reach the cache before they report it as not done (keys.InvalidationPending).
    "PUBLISH_TIMEOUT": 5.0,
    "CLIENT_URL_KWARG": "llm_client",
    "CLIENT_LOOKUP_FIELD": "slug",
    # A URL naming a client that does not exist: 404 from the authentication class; False
    # hands the request to the view (anonymous), which then decides.
    "UNKNOWN_CLIENT_NOT_FOUND": True,
    "AUTH_KEYWORDS": ("Bearer", "Token"),
    "HEADER": "X-API-Key",
    "KEY_PREFIX": "llmk_",
    "REALM": "api",
    # APIKeyRateThrottle: "N/second|minute|hour|day", None for no limit. Per API key:
    "THROTTLE_RATE": None,
    # per client IP, for anonymous requests to public clients:
    "ANONYMOUS_THROTTLE_RATE": None,
    # per client lookup value, overriding both (a client is keyed or public, never both):
    "THROTTLE_RATES": {},
    # TokenRateThrottle: tokens per key and client, "N/second|minute|hour|day", None for no
    # budget; per client lookup value, overriding it:
    "TOKEN_RATE": None,
    "TOKEN_RATES": {},
    # Model name or trailing-"*" pattern -> {"input", "output", "cached_input"}: prices per
    # million tokens, decimals in CURRENCY (drf_llm_keys.prices). Unlisted models are unpriced.
    "PRICES": {},
    "CURRENCY": "USD",
    # Seconds between two writes of a process's usage counts (drf_llm_keys.usage); also
    # what a crash can lose.
    "USAGE_FLUSH_INTERVAL": 10.0,
    # (key, client, day) counters a process keeps waiting at most; beyond, counts are dropped.
    "USAGE_MAX_PENDING": 10000,
    # Requests in flight at once per key and client, across processes, for keys without
    # their own max_concurrent (drf_llm_keys.limits); per client lookup value, overriding it:
    "MAX_CONCURRENT": None,
    "MAX_CONCURRENT_RATES": {},
    # Seconds a reservation of limits.admit() holds if its process never settles it (killed):
    # longer than the longest response, streams included.
    "RESERVATION_LEASE": 900.0,
    # When the cache cannot be reached, budgets and caps refuse (503); True admits instead.
    "LIMITS_FAIL_OPEN": False,
    # Share of a budget whose spending sends signals.budget_threshold_reached, once a period.
    "BUDGET_ALERT_THRESHOLD": 0.8,
}

CLIENT_MODEL_SETTING = "DRF_LLM_KEYS_CLIENT_MODEL"
DEFAULT_CLIENT_MODEL = "drf_llm_keys.LLMClient"


def install_defaults() -> None:
    """Give our two settings defaults, as Django's own defaults do for AUTH_USER_MODEL.

    The migration autodetector reads the swappable setting for every foreign key to the
    client model, in the project's apps too; and a missing ``DRF_LLM_KEYS`` would cost
    an AttributeError inside ``settings`` on every read, on the hot path.
    """
    if not hasattr(settings, CLIENT_MODEL_SETTING):
        setattr(settings, CLIENT_MODEL_SETTING, DEFAULT_CLIENT_MODEL)
    if not hasattr(settings, "DRF_LLM_KEYS"):
        settings.DRF_LLM_KEYS = {}


class Settings:
    """One typed property per setting.

    Each is computed on first use and kept (``cached_property``: a plain attribute read from
    then on) until a ``setting_changed`` signal (``override_settings``, pytest-django's
    ``settings``) names ``DRF_LLM_KEYS``: a request reads a dozen settings, and each read
    through Django's lazy settings object cost more than the rest of a warm decision step.
    """

    def _get(self, name: str) -> Any:
        return getattr(settings, "DRF_LLM_KEYS", {}).get(name, DEFAULTS[name])

    def reload(self) -> None:
        """Read the settings again on next use (connected to ``setting_changed``)."""
        self.__dict__.clear()

    @property
    def unknown_names(self) -> list[str]:
        return sorted(set(getattr(settings, "DRF_LLM_KEYS", {})) - set(DEFAULTS))

    @functools.cached_property
    def CACHE_ALIAS(self) -> str:
        return str(self._get("CACHE_ALIAS"))

    @functools.cached_property
    def CACHE_TIMEOUT(self) -> int:
        return int(self._get("CACHE_TIMEOUT"))

    @functools.cached_property
    def CACHE_KEY_PREFIX(self) -> str:
        return str(self._get("CACHE_KEY_PREFIX"))

    @functools.cached_property
    def LOCAL_ENTRIES(self) -> int:
        return int(self._get("LOCAL_ENTRIES"))

    @functools.cached_property
    def PUSH_INVALIDATION(self) -> bool:
        return bool(self._get("PUSH_INVALIDATION"))

    @functools.cached_property
    def PUSH_HEARTBEAT(self) -> float:
        return float(self._get("PUSH_HEARTBEAT"))

    @functools.cached_property
    def INVALIDATION_REPLICAS(self) -> int:
        return int(self._get("INVALIDATION_REPLICAS"))

    @functools.cached_property
    def PUBLISH_TIMEOUT(self) -> float:
        return float(self._get("PUBLISH_TIMEOUT"))

    @functools.cached_property
    def CLIENT_URL_KWARG(self) -> str:
        return str(self._get("CLIENT_URL_KWARG"))

    @functools.cached_property
    def CLIENT_LOOKUP_FIELD(self) -> str:
        return str(self._get("CLIENT_LOOKUP_FIELD"))

    @functools.cached_property
    def UNKNOWN_CLIENT_NOT_FOUND(self) -> bool:
        return bool(self._get("UNKNOWN_CLIENT_NOT_FOUND"))

    @functools.cached_property
    def AUTH_KEYWORDS(self) -> tuple[str, ...]:
        return tuple(self._get("AUTH_KEYWORDS"))

    @functools.cached_property
    def HEADER(self) -> str:
        return str(self._get("HEADER"))

    @functools.cached_property
    def KEY_PREFIX(self) -> str:
        return str(self._get("KEY_PREFIX"))

    @functools.cached_property
    def REALM(self) -> str:
        return str(self._get("REALM"))

    @functools.cached_property
    def THROTTLE_RATE(self) -> str | None:
        rate = self._get("THROTTLE_RATE")
        return None if rate is None else str(rate)

    @functools.cached_property
    def ANONYMOUS_THROTTLE_RATE(self) -> str | None:
        rate = self._get("ANONYMOUS_THROTTLE_RATE")
        return None if rate is None else str(rate)

    @functools.cached_property
    def THROTTLE_RATES(self) -> dict[str, str | None]:
        return {str(client): rate for client, rate in self._get("THROTTLE_RATES").items()}

    @functools.cached_property
    def TOKEN_RATE(self) -> str | None:
        rate = self._get("TOKEN_RATE")
        return None if rate is None else str(rate)

    @functools.cached_property
    def TOKEN_RATES(self) -> dict[str, str | None]:
        return {str(client): rate for client, rate in self._get("TOKEN_RATES").items()}

    @functools.cached_property
    def PRICES(self) -> dict[str, Any]:
        prices: dict[str, Any] = self._get("PRICES")
        return prices

    @functools.cached_property
    def CURRENCY(self) -> str:
        return str(self._get("CURRENCY"))

    @functools.cached_property
    def USAGE_FLUSH_INTERVAL(self) -> float:
        return float(self._get("USAGE_FLUSH_INTERVAL"))

    @functools.cached_property
    def USAGE_MAX_PENDING(self) -> int:
        return int(self._get("USAGE_MAX_PENDING"))

    @functools.cached_property
    def MAX_CONCURRENT(self) -> int | None:
        cap = self._get("MAX_CONCURRENT")
        return None if cap is None else int(cap)

    @functools.cached_property
    def MAX_CONCURRENT_RATES(self) -> dict[str, int | None]:
        return {str(client): cap for client, cap in self._get("MAX_CONCURRENT_RATES").items()}

    @functools.cached_property
    def RESERVATION_LEASE(self) -> float:
        return float(self._get("RESERVATION_LEASE"))

    @functools.cached_property
    def LIMITS_FAIL_OPEN(self) -> bool:
        return bool(self._get("LIMITS_FAIL_OPEN"))

    @functools.cached_property
    def BUDGET_ALERT_THRESHOLD(self) -> float:
        return float(self._get("BUDGET_ALERT_THRESHOLD"))

    @property
    def CLIENT_MODEL(self) -> str:
        return str(getattr(settings, CLIENT_MODEL_SETTING, DEFAULT_CLIENT_MODEL))


conf = Settings()


def _reload(setting: str, **kwargs: Any) -> None:
    if setting == "DRF_LLM_KEYS":
        conf.reload()


# Connected here, not in AppConfig.ready(): before any receiver that reads the settings.
setting_changed.connect(_reload, dispatch_uid="drf_llm_keys.conf.reload")
