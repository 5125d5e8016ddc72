"""Key generation, parsing and hashing.

A key reads ``<KEY_PREFIX><12 hex>.<43 url-safe chars>``, e.g. ``llmk_3f9a2c1b7d4e.Zx...``.
The part before the dot is the public prefix, stored as is and shown by the admin and the
command; the part after it is 256 random bits. Only the SHA-256 digest of the whole key is
stored: the secret is random and long, so a slow password hash would buy nothing and cost
every cold request (djangorestframework-api-key 3.x dropped its PBKDF2 hasher for the same
reason).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from django.core.exceptions import ImproperlyConfigured

PUBLIC_ID_HEX_CHARS = 12
SECRET_BYTES = 32
SECRET_LENGTH = 43  # len(secrets.token_urlsafe(32))
PREFIX_MAX_LENGTH = 40

_PREFIX_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{PREFIX_MAX_LENGTH}}}")
_SECRET_RE = re.compile(rf"[A-Za-z0-9_-]{{{SECRET_LENGTH}}}")
# What KEY_PREFIX may be: what _PREFIX_RE reads back, with room for the hex part.
_KEY_PREFIX_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{PREFIX_MAX_LENGTH - PUBLIC_ID_HEX_CHARS}}}")


def key_prefix_problem(key_prefix: str) -> str | None:
    """Why keys made with ``key_prefix`` could never authenticate, or None."""
    if _KEY_PREFIX_RE.fullmatch(key_prefix):
        return None
    return (
        f"DRF_LLM_KEYS['KEY_PREFIX'] is {key_prefix!r}: it must be 1 to "
        f"{PREFIX_MAX_LENGTH - PUBLIC_ID_HEX_CHARS} ASCII letters, digits, '_' or '-'."
    )


def generate_key(key_prefix: str) -> tuple[str, str]:
    """Return ``(prefix, plaintext)`` for a new random key; ImproperlyConfigured for a
    ``key_prefix`` that would make a key no request can present."""
    problem = key_prefix_problem(key_prefix)
    if problem is not None:
        raise ImproperlyConfigured(problem)
    prefix = key_prefix + secrets.token_hex(PUBLIC_ID_HEX_CHARS // 2)
    return prefix, f"{prefix}.{secrets.token_urlsafe(SECRET_BYTES)}"


def split_key(plaintext: str) -> str | None:
    """The prefix of a well-formed key, or None: a bad key costs no lookup at all."""
    prefix, dot, secret = plaintext.partition(".")
    if dot and _PREFIX_RE.fullmatch(prefix) and _SECRET_RE.fullmatch(secret):
        return prefix
    return None


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("ascii")).hexdigest()


def key_matches(plaintext: str, digest: str | bytes) -> bool:
    """Whether ``plaintext`` hashes to ``digest``: hexadecimal as stored, or its bytes as a
    process holds it; in constant time."""
    hashed = hashlib.sha256(plaintext.encode("ascii"))
    if isinstance(digest, bytes):
        return hmac.compare_digest(hashed.digest(), digest)
    return hmac.compare_digest(hashed.hexdigest(), digest)
