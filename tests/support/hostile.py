"""Hostile requests and the decision table they must meet, shared by
tests/test_hostile_input.py (hypothesis, in CI) and scripts/fuzz.py (100,000+ cases).

Header values are generated as a WSGI server hands them over: any bytes, decoded as
ISO-8859-1 (a real server joins repeated headers with a comma, and so do we here).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from django.utils.encoding import repercent_broken_unicode
from hypothesis import strategies as st

URL = "/clients/{}/echo/"
KEYWORDS = (b"bearer", b"token")
URLSAFE = string.ascii_letters + string.digits + "-_"

MALFORMED = object()


@dataclass
class World:
    """protected-bot and flagged-bot (require_api_key) take ``valid``, protected-bot also
    ``spare``, other-bot ``other_client``; public-bot has no key."""

    valid: str
    valid_prefix: str
    spare: str
    revoked: str
    other_client: str
    # slug -> {plaintext: prefix} of the keys each keyed client accepts
    accepts: dict[str, dict[str, str]]

    @classmethod
    def create(cls) -> World:
        from django.contrib.auth import get_user_model

        from drf_llm_keys.models import APIKey, LLMClient, LLMClientAPIKey

        owner = get_user_model()._default_manager.create(username="hostile-owner")
        clients = {
            slug: LLMClient.objects.create(name=slug, slug=slug, require_api_key=slug == "flagged-bot")
            for slug in ("protected-bot", "flagged-bot", "public-bot", "other-bot")
        }

        def key(*slugs: str, **fields: Any) -> tuple[Any, str]:
            api_key, plaintext = APIKey.objects.create_key(user=owner, name="hostile", **fields)
            for slug in slugs:
                LLMClientAPIKey.objects.create(llm_client=clients[slug], api_key=api_key)
            return api_key, plaintext

        valid, valid_plaintext = key("protected-bot", "flagged-bot")
        spare, spare_plaintext = key("protected-bot")
        other, other_plaintext = key("other-bot")
        return cls(
            valid=valid_plaintext,
            valid_prefix=valid.prefix,
            spare=spare_plaintext,
            revoked=key("protected-bot", is_active=False)[1],
            other_client=other_plaintext,
            accepts={
                "protected-bot": {valid_plaintext: valid.prefix, spare_plaintext: spare.prefix},
                "flagged-bot": {valid_plaintext: valid.prefix},
                "other-bot": {other_plaintext: other.prefix},
            },
        )


# --- strategies -------------------------------------------------------------------------


def wire(values: st.SearchStrategy[bytes]) -> st.SearchStrategy[str]:
    return values.map(lambda raw: raw.decode("iso-8859-1"))


def real_keys(world: World) -> st.SearchStrategy[str]:
    return st.sampled_from([world.valid, world.spare, world.revoked, world.other_client])


def keys(world: World) -> st.SearchStrategy[str]:
    """Things in the place of a key: the real ones, near misses and garbage."""
    prefix = world.valid_prefix
    secret_length = len(world.valid) - len(prefix) - 1
    return st.one_of(
        real_keys(world),
        # A valid prefix with a wrong secret, of the right length and of others.
        st.text(URLSAFE, min_size=secret_length, max_size=secret_length).map(lambda s: f"{prefix}.{s}"),
        st.text(URLSAFE, max_size=80).map(lambda s: f"{prefix}.{s}"),
        # The valid key cut short, or one character changed.
        st.integers(0, len(world.valid) - 1).map(lambda i: world.valid[:i]),
        st.tuples(st.integers(0, len(world.valid) - 1), st.characters(codec="latin-1")).map(
            lambda t: world.valid[: t[0]] + t[1] + world.valid[t[0] + 1 :]
        ),
        st.text(string.printable, max_size=100),
        wire(st.text().map(lambda s: s.encode("utf-8"))),  # unicode, as UTF-8 on the wire
        wire(st.binary(max_size=200)),
        st.integers(1_000, 100_000).map(lambda n: "A" * n),  # huge
    )


def spaces() -> st.SearchStrategy[str]:
    return st.text(" \t", max_size=3)


def authorization_headers(world: World) -> st.SearchStrategy[str | None]:
    keyword = st.one_of(
        st.sampled_from(
            ["Bearer", "bearer", "BEARER", "Token", "token", "Basic", "Digest", "Bearer:", "Bearerx", ""]
        ),
        wire(st.binary(max_size=10)),
    )
    one = st.builds(
        lambda *parts: "".join(parts),
        spaces(),
        keyword,
        st.text(" \t", min_size=1, max_size=3),
        keys(world),
        spaces(),
    )
    return st.one_of(
        st.none(),
        st.builds(lambda k, v: f"{k} {v}", st.sampled_from(["Bearer", "token"]), real_keys(world)),
        one,
        st.builds(lambda k, v: f"{k}{v}", keyword, keys(world)),  # no space at all
        st.lists(one, min_size=2, max_size=3).map(",".join),  # repeated header
        keys(world),  # no keyword
        wire(st.binary(max_size=300)),
    )


def api_key_headers(world: World) -> st.SearchStrategy[str | None]:
    one = st.builds(lambda a, k, b: f"{a}{k}{b}", spaces(), keys(world), spaces())
    return st.one_of(st.none(), real_keys(world), one, st.lists(one, min_size=2, max_size=3).map(",".join))


def slugs() -> st.SearchStrategy[str]:
    """Client slugs as they reach the URL: known ones, unicode, NUL, huge, broken UTF-8."""
    return st.one_of(
        st.sampled_from(["protected-bot", "flagged-bot", "public-bot", "other-bot", "PROTECTED-BOT"]),
        st.text(st.characters(exclude_categories=["Cs"]), max_size=50).map(lambda s: quote(s, safe="")),
        st.binary(max_size=30).map(lambda b: quote(b, safe="")),
        st.integers(101, 5_000).map(lambda n: "p" * n),
        st.sampled_from(["protected-bot%00", "%00", "protected-bot%20", "..", "%2e%2e", "protected%2Fbot"]),
    )


# --- the decision table -----------------------------------------------------------------


def _printable_ascii(value: bytes) -> bool:
    return bool(value) and all(0x21 <= byte <= 0x7E for byte in value)


def credentials(authorization: str | None, api_key: str | None) -> Any:
    """The key a request carries, None for none, MALFORMED for a malformed header of ours."""
    ours = None
    if authorization is not None:
        parts = authorization.encode("iso-8859-1").split()
        if parts and parts[0].lower() in KEYWORDS:
            if len(parts) != 2 or not _printable_ascii(parts[1]):
                return MALFORMED
            ours = parts[1].decode("ascii")
    header = None
    if api_key is not None:
        header = api_key.strip()
        if not _printable_ascii(header.encode("iso-8859-1")):
            return MALFORMED
    if ours and header and ours != header:
        return MALFORMED
    return ours or header


def served_slug(path_slug: str) -> str:
    """The client kwarg Django hands the view for this percent-encoded path segment."""
    return repercent_broken_unicode(unquote_to_bytes(path_slug)).decode()


def stored_slug(slug: str) -> str | None:
    """The client the database names by this spelling (a case-insensitive, pad-space
    collation matches more than one spelling), or None."""
    from drf_llm_keys.models import LLMClient

    if "\x00" in slug:
        return None  # PostgreSQL cannot hold it, so no client has it
    return LLMClient.objects.filter(slug=slug).values_list("slug", flat=True).first()


def expected(
    world: World, path_slug: str, authorization: str | None, api_key: str | None
) -> tuple[str, str | None]:
    """("not found" | "refused" | "anonymous" | "accepted", the accepted key's prefix), as
    docs/design.md's table says."""
    slug = served_slug(path_slug)
    if not slug or "/" in slug:
        return "not found", None  # no such URL: the client kwarg never reaches us
    carried = credentials(authorization, api_key)
    if carried is MALFORMED:
        return "refused", None  # on any client
    stored = stored_slug(slug)
    if stored is None:
        return "not found", None  # no such client: the authentication class's 404
    accepts = world.accepts.get(stored)
    if accepts is None:
        return "anonymous", None  # public: not ours to refuse
    return ("accepted", accepts[carried]) if carried in accepts else ("refused", None)


def check(world: World, api: Any, path_slug: str, authorization: str | None, api_key: str | None) -> str:
    """Send one request; assert the table's answer, never a 5xx. Returns the outcome."""
    headers = {}
    if authorization is not None:
        headers["HTTP_AUTHORIZATION"] = authorization
    if api_key is not None:
        headers["HTTP_X_API_KEY"] = api_key
    response = api.get(URL.format(path_slug), **headers)
    outcome, prefix = expected(world, path_slug, authorization, api_key)
    context = (path_slug[:80], (authorization or "")[:120], (api_key or "")[:120], response.content[:200])
    assert response.status_code < 500, context
    if outcome == "not found":
        assert response.status_code == 404, context
    elif outcome == "refused":
        assert response.status_code == 401, context
        assert response["WWW-Authenticate"] == 'Bearer realm="api"', context
    elif outcome == "anonymous":
        assert response.status_code == 200, context
        assert response.json() == {"user": None, "key": None}, context
    else:
        assert response.status_code == 200, context
        assert response.json() == {"user": "hostile-owner", "key": prefix}, context
    return outcome
