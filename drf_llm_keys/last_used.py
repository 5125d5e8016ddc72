"""When a key was last used: at most one ``last_used_at`` UPDATE per key per
``LAST_USED_RESOLUTION``, across every process, claimed in the shared cache."""

from __future__ import annotations

import logging
import time

from .conf import conf
from .decisions import state
from .decisions.names import key_name

logger = logging.getLogger("drf_llm_keys")


def last_used_name(prefix: str) -> str:
    return key_name("u", prefix)


class LastUseClaims:
    """When this process last claimed each prefix: it asks the cache once per resolution."""

    def __init__(self) -> None:
        self.claimed_at: dict[str, float] = {}

    def claim(self, prefix: str) -> bool:
        """True for the one process, per LAST_USED_RESOLUTION, that should record a use."""
        now, resolution = time.monotonic(), conf.LAST_USED_RESOLUTION
        if now - self.claimed_at.get(prefix, -resolution) < resolution:
            return False
        self.claimed_at[prefix] = now
        try:
            return bool(state.get_cache().add(last_used_name(prefix), 1, resolution))
        except Exception:
            logger.warning("drf_llm_keys: cache write failed", exc_info=True)
            return False

    def reset(self) -> None:
        self.claimed_at.clear()


claims = LastUseClaims()


def claim_last_used(prefix: str) -> bool:
    return claims.claim(prefix)


def reset() -> None:
    """Forget this process's claims (between tests, and when a setting changes)."""
    claims.reset()
