from __future__ import annotations

import math
import re
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured

from . import crypto, get_client_model
from .conf import conf
from .prices import parse_price
from .throttling import parse_rate

AUTHENTICATION_CLASS = "drf_llm_keys.authentication.LLMClientAPIKeyAuthentication"

# Backends whose entries live in one process: a revoke in another process never reaches them.
PER_PROCESS_BACKENDS = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)


@register(Tags.security, Tags.caches)
def check_cache(**kwargs: Any) -> list[CheckMessage]:
    alias = conf.CACHE_ALIAS
    if alias not in settings.CACHES:
        return [
            Error(
                f"DRF_LLM_KEYS['CACHE_ALIAS'] is {alias!r}, which is not in CACHES.",
                id="drf_llm_keys.E001",
            )
        ]
    config: dict[str, Any] = settings.CACHES[alias]
    messages: list[CheckMessage] = []
    if config.get("BACKEND") in PER_PROCESS_BACKENDS:
        messages.append(
            Warning(
                f"The cache {alias!r} ({config['BACKEND']}) is not shared between processes: "
                "a key revoked in one process stays accepted in the others until "
                "DRF_LLM_KEYS['CACHE_TIMEOUT'] runs out.",
                hint="Use Redis (django-redis) or Memcached; on one host FileBasedCache works.",
                id="drf_llm_keys.W001",
            )
        )
    if config.get("OPTIONS", {}).get("IGNORE_EXCEPTIONS") or getattr(
        settings, "DJANGO_REDIS_IGNORE_EXCEPTIONS", False
    ):
        messages.append(
            Warning(
                f"django-redis IGNORE_EXCEPTIONS is on for {alias!r}: a failed invalidation "
                "is dropped silently and cannot be retried.",
                hint="Use a dedicated cache alias without IGNORE_EXCEPTIONS for DRF_LLM_KEYS.",
                id="drf_llm_keys.W002",
            )
        )
    messages.extend(_topology_warnings(alias, config))
    return messages


def _topology_warnings(alias: str, config: dict[str, Any]) -> list[CheckMessage]:
    """Redis set-ups where a restart or a failover could bring back a lost invalidation."""
    options = config.get("OPTIONS", {})
    client_class = str(options.get("CLIENT_CLASS", ""))
    if client_class.endswith("ShardClient"):
        return [
            Warning(
                f"The cache {alias!r} shards keys over several Redis servers (ShardClient): no "
                "push invalidation, and a server restarted from an older RDB/AOF file or failed "
                "over to a replica that missed an invalidation can have a revoked key accepted "
                "for up to DRF_LLM_KEYS['CACHE_TIMEOUT'] seconds.",
                hint="Give DRF_LLM_KEYS a cache alias on one Redis (with replicas or Sentinel if needed).",
                id="drf_llm_keys.W004",
            )
        ]
    location = config.get("LOCATION", "")
    # Both Redis backends split a string LOCATION on "," and ";": the master, then replicas.
    servers = location if isinstance(location, (list, tuple)) else re.split("[;,]", str(location))
    replicated = "SENTINELS" in options or len(servers) > 1
    if replicated and conf.INVALIDATION_REPLICAS <= 0:
        return [
            Warning(
                f"The cache {alias!r} has replicas but DRF_LLM_KEYS['INVALIDATION_REPLICAS'] is 0: "
                "a master cut off from its replicas acknowledges an invalidation that the "
                "failover then loses.",
                hint="Set INVALIDATION_REPLICAS to the number of replicas that must have each "
                "invalidation (Redis WAIT), or silence this check if a partition is not a concern.",
                id="drf_llm_keys.W005",
            )
        ]
    return []


# The numeric settings: (bound, whether the bound itself is allowed). A value outside would
# fail only at request time (a CACHE_TIMEOUT of 0 is Redis's "invalid expire time" on
# every fill, a string a TypeError).
_BOUNDS: dict[str, tuple[float, bool]] = {
    "CACHE_TIMEOUT": (1, True),
    "LOCAL_ENTRIES": (0, True),
    "PUSH_HEARTBEAT": (0, False),
    "INVALIDATION_REPLICAS": (0, True),
    "PUBLISH_TIMEOUT": (0, True),
    "USAGE_FLUSH_INTERVAL": (0, False),
    "USAGE_MAX_PENDING": (1, True),
    "RESERVATION_LEASE": (0, False),
    "BUDGET_ALERT_THRESHOLD": (0, False),
}

LIMITS_MIDDLEWARE = "drf_llm_keys.middleware.LimitsMiddleware"


@register(Tags.models)
def check_settings(**kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = [
        Error(f"Unknown DRF_LLM_KEYS setting {name!r}.", id="drf_llm_keys.E002")
        for name in conf.unknown_names
    ]
    for name, (bound, allowed) in _BOUNDS.items():
        try:
            value = getattr(conf, name)  # converted as every request converts it
        except (TypeError, ValueError):
            value = math.nan
        if not (value >= bound if allowed else value > bound):
            least = f"at least {bound}" if allowed else f"more than {bound}"
            message = f"DRF_LLM_KEYS[{name!r}] is {conf._get(name)!r}: it must be a number {least}."
            messages.append(Error(message, id="drf_llm_keys.E005"))
    messages += _key_format_errors()
    client_model = get_client_model()
    field: Any  # a Field, or None for no such field
    try:
        # "pk" is no field's name, but the decision looks clients up by it too.
        lookup = conf.CLIENT_LOOKUP_FIELD
        field = client_model._meta.pk if lookup == "pk" else client_model._meta.get_field(lookup)
    except FieldDoesNotExist:
        field = None
    if field is None or not (field.unique or field.primary_key):
        messages.append(
            Error(
                f"DRF_LLM_KEYS['CLIENT_LOOKUP_FIELD'] is {conf.CLIENT_LOOKUP_FIELD!r}, which "
                f"is not a unique field of {client_model._meta.label}.",
                id="drf_llm_keys.E003",
            )
        )
    return messages


def _key_format_errors() -> list[CheckMessage]:
    """KEY_PREFIX and AUTH_KEYWORDS that no request's credentials could match."""
    problems = [crypto.key_prefix_problem(conf.KEY_PREFIX)]
    keywords = conf._get("AUTH_KEYWORDS")
    # A string would be taken letter by letter; a keyword with a space never matches.
    if (
        not isinstance(keywords, (list, tuple))
        or not keywords
        or not all(isinstance(k, str) and k.isascii() and len(k.split()) == 1 for k in keywords)
    ):
        problems.append(
            f"DRF_LLM_KEYS['AUTH_KEYWORDS'] is {keywords!r}: it must be a list of one or more "
            'Authorization keywords without spaces, e.g. ["Bearer", "Token"].'
        )
    return [Error(problem, id="drf_llm_keys.E008") for problem in problems if problem is not None]


@register(Tags.security)
def check_authentication_order(**kwargs: Any) -> list[CheckMessage]:
    classes = list(getattr(settings, "REST_FRAMEWORK", {}).get("DEFAULT_AUTHENTICATION_CLASSES", ()))
    if AUTHENTICATION_CLASS in classes and classes[0] != AUTHENTICATION_CLASS:
        return [
            Warning(
                "LLMClientAPIKeyAuthentication is not first in DEFAULT_AUTHENTICATION_CLASSES: "
                "refusals become 403 without WWW-Authenticate, and a class before it that "
                "authenticates the request (a session, say) skips the key check.",
                hint="List drf_llm_keys.authentication.LLMClientAPIKeyAuthentication first.",
                id="drf_llm_keys.W003",
            )
        ]
    return []


@register()
def check_throttle_rates(**kwargs: Any) -> list[CheckMessage]:
    rates = {
        "DRF_LLM_KEYS['THROTTLE_RATE']": conf.THROTTLE_RATE,
        "DRF_LLM_KEYS['ANONYMOUS_THROTTLE_RATE']": conf.ANONYMOUS_THROTTLE_RATE,
    }
    rates |= {f"DRF_LLM_KEYS['THROTTLE_RATES'][{c!r}]": rate for c, rate in conf.THROTTLE_RATES.items()}
    rates["DRF_LLM_KEYS['TOKEN_RATE']"] = conf.TOKEN_RATE
    rates |= {f"DRF_LLM_KEYS['TOKEN_RATES'][{c!r}]": rate for c, rate in conf.TOKEN_RATES.items()}
    messages: list[CheckMessage] = []
    for name, rate in rates.items():
        try:
            parse_rate(rate)
        except ImproperlyConfigured as exc:
            messages.append(Error(f"{name}: {exc}", id="drf_llm_keys.E004"))
    return messages


@register()
def check_prices(**kwargs: Any) -> list[CheckMessage]:
    if not isinstance(conf.PRICES, dict):
        return [
            Error("DRF_LLM_KEYS['PRICES'] must be a dict of model names to prices.", id="drf_llm_keys.E006")
        ]
    messages: list[CheckMessage] = []
    for pattern, raw in conf.PRICES.items():
        try:
            parse_price(str(pattern), raw)
        except ImproperlyConfigured as exc:
            messages.append(Error(str(exc), id="drf_llm_keys.E006"))
    return messages


@register()
def check_limits(**kwargs: Any) -> list[CheckMessage]:
    caps = {"DRF_LLM_KEYS['MAX_CONCURRENT']": conf._get("MAX_CONCURRENT")}
    caps |= {
        f"DRF_LLM_KEYS['MAX_CONCURRENT_RATES'][{c!r}]": cap
        for c, cap in conf._get("MAX_CONCURRENT_RATES").items()
    }
    messages: list[CheckMessage] = [
        Error(
            f"{name} is {cap!r}: it must be None (no cap) or an integer of at least 1.",
            id="drf_llm_keys.E007",
        )
        for name, cap in caps.items()
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1)
    ]
    if any(cap is not None for cap in caps.values()) and LIMITS_MIDDLEWARE not in settings.MIDDLEWARE:
        messages.append(
            Warning(
                "An in-flight cap is set but LimitsMiddleware is not in MIDDLEWARE: limits.admit() "
                "refuses every request it would count.",
                hint=f"Add {LIMITS_MIDDLEWARE!r} to MIDDLEWARE.",
                id="drf_llm_keys.W006",
            )
        )
    return messages


# Session engines that keep the session's data outside the database: the admin's new-key
# plaintext, waiting there for the page that shows it once, would pass through them.
_SESSION_ELSEWHERE = {
    "django.contrib.sessions.backends.cache": "the cache",
    "django.contrib.sessions.backends.cached_db": "the cache",
    "django.contrib.sessions.backends.signed_cookies": "a cookie",
}


@register(Tags.security)
def check_session_engine(**kwargs: Any) -> list[CheckMessage]:
    if "django.contrib.admin" not in settings.INSTALLED_APPS:
        return []
    where = _SESSION_ELSEWHERE.get(getattr(settings, "SESSION_ENGINE", ""))
    if where is None:
        return []
    return [
        Warning(
            f"SESSION_ENGINE keeps sessions in {where}: a key created in the admin waits there, "
            "in plaintext, until the page that shows it once is opened.",
            hint="Use the database session engine (Django's default), or create keys with the "
            "llm_keys command.",
            id="drf_llm_keys.W007",
        )
    ]
