"""What a cold decision costs and keeps: one query, nothing shared for what does not exist,
and bounded state in the process whatever is sent."""

from __future__ import annotations

import datetime
import secrets
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from django.core.cache import caches
from django.db import connection
from django.utils import timezone
from model_bakery import baker

from drf_llm_keys import crypto
from drf_llm_keys.conf import conf
from drf_llm_keys.decisions import get_decision_cache, state
from drf_llm_keys.decisions.entries import load_decision
from drf_llm_keys.decisions.names import decision_name, generation_name
from drf_llm_keys.instances import api_key_from_entry
from drf_llm_keys.models import APIKey, LLMClientAPIKey, OwnerBudget
from tests.support import bearer, databases
from tests.support.redis import commands

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/clients/{}/echo/"


def random_key() -> str:
    """A well-formed key that no row has."""
    return f"{conf.KEY_PREFIX}{secrets.token_hex(6)}.{secrets.token_urlsafe(32)}"


def get(api, slug: str, plaintext: str | None = None):
    return api.get(URL.format(slug), **(bearer(plaintext) if plaintext else {}))


# --- one query -----------------------------------------------------------------------------


def test_a_keys_first_use_runs_one_query(api, key, django_assert_num_queries):
    _, plaintext = key
    with django_assert_num_queries(1):
        assert get(api, "protected-bot", plaintext).status_code == 200


def test_a_request_after_an_invalidation_runs_one_query(api, key, django_assert_num_queries):
    api_key, plaintext = key
    assert get(api, "protected-bot", plaintext).status_code == 200
    api_key.name = "renamed"
    api_key.save()  # a write to the key: a new generation for its client
    with django_assert_num_queries(1):
        assert get(api, "protected-bot", plaintext).status_code == 200


# Server-side binding and prepare_threshold are psycopg 3's; psycopg2 has neither.
ON_PSYCOPG_3 = connection.Database.__name__ == "psycopg"
if "postgresql" in django_settings.DATABASES["default"]["ENGINE"] and ON_PSYCOPG_3:

    def test_decisions_are_the_same_with_psycopg_prepared_statements(
        make_key, protected_client, public_client
    ):
        # What docs/ecosystem.md suggests on PostgreSQL: server-side binding, statements
        # prepared (here at once), and so parameters typed by the server, not spelled out.
        api_key, _ = make_key(protected_client, scopes=["chat"], allowed_models=["gpt-4o-mini"])
        revoked, _ = make_key(protected_client, is_active=False)
        cases = [
            ("protected-bot", api_key.prefix),
            ("protected-bot", revoked.prefix),
            ("protected-bot", "llmk_000000000000"),
            ("protected-bot", None),
            ("public-bot", api_key.prefix),
            ("no-such-bot", None),
            ("a\x00b", None),
        ]
        expected = [load_decision(value, prefix) for value, prefix in cases]
        with databases.psycopg_prepared():
            for _ in range(2):
                assert [load_decision(value, prefix) for value, prefix in cases] == expected
            assert any("UNION ALL" in statement for statement in databases.prepared_statements())


@pytest.mark.parametrize(
    ("slug", "credentials", "status"),
    [
        ("protected-bot", "random", 401),  # an unknown key
        ("protected-bot", None, 401),
        ("public-bot", None, 200),
        ("public-bot", "random", 200),
        ("no-such-bot", "random", 404),  # no such client
    ],
)
def test_every_cold_decision_runs_one_query(
    api, key, public_client, django_assert_num_queries, slug, credentials, status
):
    plaintext = random_key() if credentials == "random" else None
    with django_assert_num_queries(1):
        assert get(api, slug, plaintext).status_code == status


@pytest.mark.parametrize("value", ["abc", "99999999999999999999999", "-99999999999999999999999", "1\x00"])
def test_a_value_the_lookup_field_cannot_hold_names_no_client_without_a_query(
    settings, protected_client, django_assert_num_queries, value
):
    settings.DRF_LLM_KEYS = {"CLIENT_LOOKUP_FIELD": "pk"}
    with django_assert_num_queries(0):
        decision = load_decision(value, None, using="default")
    assert decision["client"]["id"] is None


def test_the_pk_as_lookup_field_finds_the_client(settings, protected_client):
    settings.DRF_LLM_KEYS = {"CLIENT_LOOKUP_FIELD": "pk"}
    decision = load_decision(str(protected_client.pk), None, using="default")
    assert decision["client"]["id"] == protected_client.pk
    assert decision["client"]["require_api_key"] is False


def test_a_key_of_another_client_loads_without_this_clients_mapping(make_key, protected_client):
    other = baker.make_recipe("tests.llm_client", slug="other-bot")
    api_key, _ = make_key(other)
    make_key(protected_client)  # protected-bot has a key of its own
    decision = load_decision("protected-bot", api_key.prefix, using="default")
    assert decision["key"]["id"] == api_key.pk
    assert decision["key"]["client_ids"] == []
    assert load_decision("other-bot", api_key.prefix, using="default")["key"]["client_ids"] == [other.pk]


def test_a_key_mapped_to_several_clients_loads_with_this_clients_mapping_only(make_key, protected_client):
    others = [baker.make_recipe("tests.llm_client", slug=f"other-{number}") for number in range(3)]
    api_key, _ = make_key(protected_client, *others)
    decisions = [
        load_decision(slug, api_key.prefix, using="default") for slug in ("protected-bot", "other-1")
    ]
    assert [decision["key"]["client_ids"] for decision in decisions] == [
        [protected_client.pk],
        [others[1].pk],
    ]


def test_a_key_entry_holds_the_rows_values_and_nothing_else(make_key, protected_client, owner):
    expires_at = timezone.now() + datetime.timedelta(days=3)
    api_key, _ = make_key(
        protected_client,
        scopes=["chat"],
        allowed_models=["gpt-4o*"],
        expires_at=expires_at,
        budget_limit=Decimal("25"),
        budget_period="month",
        max_concurrent=3,
    )
    OwnerBudget.objects.create(user=owner, limit=Decimal("100.5"), period="week")
    decision = load_decision("protected-bot", api_key.prefix, using="default")
    stored = APIKey.objects.get(pk=api_key.pk)
    assert decision == {
        "client": {
            "id": protected_client.pk,
            "has_active_key": True,
            "require_api_key": False,
            "lookup": "protected-bot",
        },
        "key": {
            "id": api_key.pk,
            "prefix": api_key.prefix,
            "digest": api_key.digest,
            "is_active": True,
            "expires_at": stored.expires_at,  # as the database keeps it
            "name": "test key",
            "client_ids": [protected_client.pk],
            "user": {
                "id": owner.pk,
                "username": "owner",
                "is_active": True,
                "is_staff": False,
                "is_superuser": False,
            },
            "scopes": ["chat"],
            "allowed_models": ["gpt-4o*"],
            "lineage": stored.lineage,
            "budget": ["25.000000", "month"],
            "owner_budget": ["100.500000", "week"],
            "max_concurrent": 3,
        },
    }
    assert type(decision["key"]["is_active"]) is bool and type(decision["client"]["has_active_key"]) is bool


def test_a_key_rebuilt_from_its_entry_saves_only_what_changed(make_key, protected_client):
    # request.auth comes from a cached entry, which may predate a revocation: a save of
    # another field must not write the entry's is_active back.
    api_key, _ = make_key(protected_client)
    rebuilt = api_key_from_entry(
        load_decision("protected-bot", api_key.prefix, using="default")["key"], api_key.prefix, "default"
    )
    APIKey.objects.filter(pk=api_key.pk).update(is_active=False)
    rebuilt.description = "edited"
    rebuilt.save()
    stored = APIKey.objects.get(pk=api_key.pk)
    assert (stored.description, stored.is_active) == ("edited", False)


# --- nothing shared for what does not exist -------------------------------------------------


def test_an_unknown_slug_gets_no_generation(api):
    assert get(api, "no-such-bot", random_key()).status_code == 404
    assert caches["default"].get(generation_name("no-such-bot")) is None
    assert not get_decision_cache().held and not get_decision_cache().unknown_keys


def test_an_unknown_key_is_never_written_to_the_shared_cache(api, key):
    _, plaintext = key
    get(api, "protected-bot", plaintext)
    unknown = random_key()
    assert get(api, "protected-bot", unknown).status_code == 401
    assert caches["default"].get(decision_name("protected-bot", unknown.partition(".")[0])) is None


def test_a_repeated_unknown_key_is_refused_from_the_process(api, key, django_assert_num_queries):
    _, plaintext = key
    get(api, "protected-bot", plaintext)
    unknown = random_key()
    assert get(api, "protected-bot", unknown).status_code == 401
    with django_assert_num_queries(0):
        assert get(api, "protected-bot", unknown).status_code == 401


def test_unknown_keys_are_held_apart_and_bounded(api, key, monkeypatch):
    monkeypatch.setattr(get_decision_cache().unknown_keys, "size", 3)
    _, plaintext = key
    get(api, "protected-bot", plaintext)
    held_before = dict(get_decision_cache().held.entries)
    for _ in range(10):
        assert get(api, "protected-bot", random_key()).status_code == 401
    assert len(get_decision_cache().unknown_keys) == 3
    assert get_decision_cache().held.entries == held_before  # nothing pushed out


def test_a_key_made_later_under_a_refused_prefix_is_served(api, key, owner, protected_client):
    # Its mapping gives the client a new generation, which the held refusal was taken under.
    plaintext = random_key()
    assert get(api, "protected-bot", plaintext).status_code == 401
    assert get_decision_cache().unknown_keys
    api_key = APIKey.objects.create(
        user=owner, name="late", prefix=plaintext.partition(".")[0], digest=crypto.hash_key(plaintext)
    )
    LLMClientAPIKey.objects.create(llm_client=protected_client, api_key=api_key)
    assert get(api, "protected-bot", plaintext).status_code == 200


# --- least recently used ---------------------------------------------------------------------


def test_a_hit_keeps_an_entry_from_being_the_next_dropped(api, make_key, protected_client, settings):
    settings.DRF_LLM_KEYS = {"LOCAL_ENTRIES": 2}
    (_, first), (_, second), (_, third) = (make_key(protected_client) for _ in range(3))
    for plaintext in (first, second, first, third):  # first is used again before third comes
        assert get(api, "protected-bot", plaintext).status_code == 200
    held = get_decision_cache().held
    names = {decision_name("protected-bot", p.partition(".")[0]): p for p in (first, second, third)}
    assert [names[name] for name in held.entries] == [first, third]


# --- hostile traffic on Redis ------------------------------------------------------------------


@pytest.mark.slow
def test_unknown_slugs_and_keys_write_nothing_to_redis_and_push_nothing_out(api, pushed, world):
    for _ in range(3):  # cold, confirmed, warm: every legitimate entry held and trusted
        world.assert_decisions(api)
    local = get_decision_cache()
    held = dict(local.held.entries)
    channel = local.backend.channel()
    assert channel is not None
    keys_before, announced_before = pushed.client().dbsize(), channel.announcements
    for number in range(1000):
        assert get(api, f"unknown-{number}", random_key()).status_code == 404
        assert get(api, "protected-bot", random_key()).status_code == 401
    assert pushed.client().dbsize() == keys_before
    channel.known("")  # reads whatever Redis has announced since
    assert channel.announcements == announced_before
    assert local.held.entries == held
    assert len(local.unknown_keys) <= state.UNKNOWN_KEY_ENTRIES
    before = commands(pushed)
    world.assert_decisions(api)  # still warm: no round trip
    assert commands(pushed) == before
