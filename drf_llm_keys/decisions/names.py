"""The names of everything the library keeps in the shared cache, in one place.

Each name starts with ``CACHE_KEY_PREFIX`` and a kind letter: ``g`` a client's generation,
``d`` a decision entry, ``t`` a throttle counter (``drf_llm_keys.throttling``). (``u``, a
key's last-use marker, is no longer written: ``drf_llm_keys.last_used``.)
"""

from __future__ import annotations

import functools
import hashlib

from ..conf import conf


def client_id(value: str) -> str:
    # Hashed: lookup values may hold characters some backends refuse in keys.
    raw = f"{conf.CLIENT_LOOKUP_FIELD}={value}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:32]


def key_name(kind: str, ident: str) -> str:
    return f"{conf.CACHE_KEY_PREFIX}:2:{kind}:{ident}"


def generation_prefix() -> str:
    return key_name("g", "")


def generation_name(client_value: str) -> str:
    return generation_prefix() + client_id(client_value)


def decision_name(client_value: str, prefix: str | None) -> str:
    return decision_names(client_value, prefix)[1]


def decision_names(client_value: str, prefix: str | None) -> tuple[str, str]:
    """The client's generation and the decision entry's names."""
    return _decision_names(client_value, prefix, conf.CLIENT_LOOKUP_FIELD, conf.CACHE_KEY_PREFIX)


# Every request needs them: the recent ones are kept, a bounded number (hostile values too).
@functools.lru_cache(maxsize=4096)
def _decision_names(client_value: str, prefix: str | None, field: str, key_prefix: str) -> tuple[str, str]:
    ident = client_id(client_value)
    # Prefixes are checked against crypto's pattern before they get here: safe in a key.
    return generation_prefix() + ident, key_name("d", f"{ident}:{prefix or ''}")
