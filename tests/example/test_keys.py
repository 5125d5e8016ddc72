"""The key operations of the demo (example_project.llm.keys)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from model_bakery import baker

from drf_llm_keys.models import APIKey, LLMClientAPIKey
from example_project.llm import keys

pytestmark = pytest.mark.django_db


def test_create_key_maps_a_new_key_to_the_client(owner, public_client):
    api_key, plaintext = keys.create_key(public_client, owner, "k")
    assert plaintext.startswith(api_key.prefix + ".")
    assert LLMClientAPIKey.has_active_api_key(public_client, invalidate=True)


def test_rotate_key_maps_a_new_key_and_gives_the_old_one_the_grace_period(owner, protected_client, key):
    old, _ = key
    before = timezone.now()
    new, _ = keys.rotate_key(protected_client, owner, timedelta(minutes=5))
    old.refresh_from_db()
    assert before + timedelta(minutes=5) <= old.expires_at <= timezone.now() + timedelta(minutes=5)
    assert new.is_active and new.expires_at is None
    assert set(APIKey.objects.filter(client_links__llm_client=protected_client)) == {old, new}


def test_rotate_key_keeps_an_earlier_expiry(owner, protected_client, make_key):
    soon = timezone.now() + timedelta(seconds=30)
    old, _ = make_key(protected_client, expires_at=soon)
    keys.rotate_key(protected_client, owner, timedelta(hours=1))
    old.refresh_from_db()
    assert old.expires_at == soon


def test_rotate_key_leaves_other_clients_keys_alone(owner, protected_client, public_client, key, make_key):
    other, _ = make_key(public_client)
    keys.rotate_key(protected_client, owner, timedelta(hours=1))
    other.refresh_from_db()
    assert other.expires_at is None


def test_revoke_key_deactivates_the_key(protected_client, key, make_key):
    api_key, _ = key
    make_key(protected_client)
    keys.revoke_key(api_key.prefix)
    api_key.refresh_from_db()
    assert api_key.is_active is False


def test_revoke_key_refuses_a_clients_last_active_key_without_change(key):
    api_key, _ = key
    with pytest.raises(keys.LastActiveKey, match="protected-bot"):
        keys.revoke_key(api_key.prefix)
    api_key.refresh_from_db()
    assert api_key.is_active is True


def test_revoke_key_makes_a_client_public_when_told_so(protected_client, key):
    api_key, _ = key
    keys.revoke_key(api_key.prefix, make_public=True)
    assert not LLMClientAPIKey.has_active_api_key(protected_client, invalidate=True)


def test_revoke_key_may_revoke_the_last_key_of_a_client_that_requires_one(make_key):
    llm_client = baker.make_recipe("tests.protected_client")
    api_key, _ = make_key(llm_client)
    keys.revoke_key(api_key.prefix)
    api_key.refresh_from_db()
    assert api_key.is_active is False


def test_an_expired_but_active_key_keeps_the_client_protected(protected_client, make_key):
    make_key(protected_client, expires_at=timezone.now() - timedelta(seconds=1))
    api_key, _ = make_key(protected_client)
    keys.revoke_key(api_key.prefix)
    api_key.refresh_from_db()
    assert api_key.is_active is False
