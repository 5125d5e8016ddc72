import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.admin import AdminSite
from django.contrib.admin.widgets import ForeignKeyRawIdWidget
from django.contrib.auth.admin import UserAdmin
from django.test import TestCase
from django.urls import reverse
from django.utils import timezone
from model_bakery import baker

from drf_llm_keys import crypto, keys
from drf_llm_keys.admin import APIKeyAdmin
from drf_llm_keys.models import APIKey, LLMClientAPIKey, OwnerBudget
from tests.support import bearer

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:drf_llm_keys_apikey_changelist")
ADD = reverse("admin:drf_llm_keys_apikey_add")
SHOW_ONCE = reverse("admin:drf_llm_keys_apikey_show_once")
CLIENTS = reverse("admin:drf_llm_keys_llmclient_changelist")
PLAINTEXT = re.compile(r"llmk_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}")


def change_url(api_key: APIKey) -> str:
    return reverse("admin:drf_llm_keys_apikey_change", args=[api_key.pk])


def post(admin_client: Any, url: str, data: dict[str, Any], follow: bool = False) -> Any:
    """POST as a committed request would be: the invalidations it queued run."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        return admin_client.post(url, data, follow=follow)


def add_data(owner: Any, *clients: Any, **fields: Any) -> dict[str, Any]:
    return {
        "name": "from admin",
        "user": owner.pk,
        "llm_clients": [c.pk for c in clients],
        "description": "",
        "expires_at_0": "",
        "expires_at_1": "",
        **fields,
    }


def action(admin_client: Any, name: str, *api_keys: APIKey, follow: bool = False, **data: Any) -> Any:
    return post(
        admin_client,
        CHANGELIST,
        {"action": name, "_selected_action": [k.pk for k in api_keys], **data},
        follow=follow,
    )


def change_data(api_key: APIKey, **fields: Any) -> dict[str, Any]:
    return {
        "name": api_key.name,
        "user": api_key.user_id,
        "description": "",
        "expires_at_0": "",
        "expires_at_1": "",
        "scopes": "\n".join(api_key.scopes),
        "allowed_models": "\n".join(api_key.allowed_models),
        **fields,
    }


def shown_plaintexts(response: Any) -> list[str]:
    return PLAINTEXT.findall(response.content.decode())


# --- adding -----------------------------------------------------------------------------


def test_adding_a_key_redirects_to_its_plaintext_shown_once(admin_client, owner, protected_client):
    response = post(admin_client, ADD, add_data(owner, protected_client))
    assert (response.status_code, response["Location"]) == (302, SHOW_ONCE)
    assert not shown_plaintexts(response)
    shown = admin_client.get(SHOW_ONCE)
    (plaintext,) = shown_plaintexts(shown)
    api_key = APIKey.objects.get()
    assert api_key.digest == crypto.hash_key(plaintext)
    assert "cannot be shown again" in shown.content.decode()
    page = admin_client.get(change_url(api_key)).content.decode()
    assert plaintext not in page and api_key.prefix in page


def test_reloading_the_plaintext_page_shows_no_plaintext_and_creates_no_key(
    admin_client, owner, protected_client
):
    post(admin_client, ADD, add_data(owner, protected_client))
    assert shown_plaintexts(admin_client.get(SHOW_ONCE))
    reloaded = admin_client.get(SHOW_ONCE, follow=True)
    assert reloaded.redirect_chain == [(CHANGELIST, 302)]
    assert not shown_plaintexts(reloaded)
    assert "shown once only" in reloaded.content.decode()
    assert APIKey.objects.count() == 1


def test_the_plaintext_leaves_the_session_as_it_is_shown_and_is_never_cached(
    admin_client, owner, protected_client
):
    response = post(admin_client, ADD, add_data(owner, protected_client))
    secret = str(APIKey.objects.get().prefix)
    assert secret not in str(response.cookies)  # the session's data stays on the server
    shown = admin_client.get(SHOW_ONCE)
    (plaintext,) = shown_plaintexts(shown)
    assert "no-store" in shown["Cache-Control"]
    assert plaintext not in str(shown.cookies)
    assert plaintext.partition(".")[2] not in str(dict(admin_client.session))


def test_an_added_key_is_mapped_and_works(admin_client, api, owner, protected_client, public_client):
    response = post(admin_client, ADD, add_data(owner, protected_client, public_client), follow=True)
    (plaintext,) = shown_plaintexts(response)
    api_key = APIKey.objects.get()
    assert set(api_key.client_links.values_list("llm_client", flat=True)) == {
        protected_client.pk,
        public_client.pk,
    }
    assert api.get("/clients/protected-bot/echo/").status_code == 401
    assert api.get("/clients/protected-bot/echo/", **bearer(plaintext)).status_code == 200


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"llm_clients": []}, "This field is required"),
        ({"name": ""}, "This field is required"),
        ({"user": ""}, "This field is required"),
        ({"expires_at_0": "2001-01-01", "expires_at_1": "00:00:00"}, "not in the future"),
    ],
)
def test_adding_a_key_that_could_not_work_is_a_form_error(
    admin_client, owner, protected_client, fields, message
):
    response = post(admin_client, ADD, add_data(owner, protected_client, **fields))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not APIKey.objects.exists() and not LLMClientAPIKey.objects.exists()


def test_adding_a_key_for_an_inactive_user_is_a_form_error(admin_client, protected_client):
    gone = baker.make("auth.User", username="gone", is_active=False)
    response = post(admin_client, ADD, add_data(gone, protected_client))
    assert "active user" in response.content.decode()
    assert not APIKey.objects.exists()


def test_the_add_form_preselects_clients_from_the_query_string(admin_client, protected_client):
    page = admin_client.get(f"{ADD}?llm_clients={protected_client.pk}").content.decode()
    assert re.search(rf'<option value="{protected_client.pk}" selected>', page)


# --- showing and finding ----------------------------------------------------------------


def test_no_admin_page_shows_a_digest(admin_client, key, protected_client):
    api_key, _ = key
    client_url = reverse("admin:drf_llm_keys_llmclient_change", args=[protected_client.pk])
    for url in (CHANGELIST, change_url(api_key), client_url):
        response = admin_client.get(url)
        assert response.status_code == 200
        assert api_key.digest not in response.content.decode()


def test_the_changelist_searches_by_prefix(admin_client, make_key, protected_client):
    wanted, _ = make_key(protected_client)
    other, _ = make_key(protected_client)
    page = admin_client.get(CHANGELIST, {"q": wanted.prefix}).content.decode()
    assert wanted.prefix in page and other.prefix not in page


def test_the_changelist_searches_by_name(admin_client, make_key, protected_client):
    wanted, _ = make_key(protected_client)
    APIKey.objects.filter(pk=wanted.pk).update(name="billing bot")
    other, _ = make_key(protected_client)
    page = admin_client.get(CHANGELIST, {"q": "billing"}).content.decode()
    assert wanted.prefix in page and other.prefix not in page


def test_a_clients_page_lists_its_keys_inline(admin_client, make_key, protected_client, public_client):
    mine, _ = make_key(protected_client)
    theirs, _ = make_key(public_client)
    page = admin_client.get(reverse("admin:drf_llm_keys_llmclient_change", args=[protected_client.pk]))
    content = page.content.decode()
    assert change_url(mine) in content and theirs.prefix not in content


def test_the_change_form_cannot_revoke(admin_client, key):
    api_key, _ = key
    data = change_data(api_key, name="renamed")
    response = post(admin_client, change_url(api_key), data)  # no is_active: a checkbox left unticked
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert api_key.name == "renamed" and api_key.is_active


def test_an_expiry_set_in_the_change_form_refuses_the_key_at_once(admin_client, api, key):
    api_key, plaintext = key
    assert api.get("/clients/protected-bot/echo/", **bearer(plaintext)).status_code == 200
    past = timezone.localtime(timezone.now() - timedelta(minutes=5))
    data = change_data(
        api_key, expires_at_0=past.strftime("%Y-%m-%d"), expires_at_1=past.strftime("%H:%M:%S")
    )
    assert post(admin_client, change_url(api_key), data).status_code == 302
    assert api.get("/clients/protected-bot/echo/", **bearer(plaintext)).status_code == 401


@pytest.mark.django_db(transaction=True)  # the revoke commits, and is published
def test_a_form_opened_before_a_revoke_and_saved_after_it_leaves_the_key_revoked(
    admin_client, api, key, make_key, protected_client
):
    api_key, plaintext = key
    make_key(protected_client)  # the client stays protected
    opened = admin_client.get(change_url(api_key))
    assert opened.context["original"].is_active
    keys.revoke_key(api_key)
    data = change_data(opened.context["original"], description="edited after the revoke")
    assert admin_client.post(change_url(api_key), data).status_code == 302
    stored = APIKey.objects.get(pk=api_key.pk)
    assert (stored.is_active, stored.description) == (False, "edited after the revoke")
    assert api.get("/clients/protected-bot/echo/", **bearer(plaintext)).status_code == 401


# --- deleting ---------------------------------------------------------------------------


def test_an_active_key_cannot_be_deleted(admin_client, key):
    api_key, _ = key
    delete_url = reverse("admin:drf_llm_keys_apikey_delete", args=[api_key.pk])
    assert admin_client.get(delete_url).status_code == 403
    assert "delete_selected" not in admin_client.get(CHANGELIST).content.decode()


def test_a_revoked_key_can_be_deleted(admin_client, make_key, protected_client):
    api_key, _ = make_key(protected_client, is_active=False)
    delete_url = reverse("admin:drf_llm_keys_apikey_delete", args=[api_key.pk])
    assert post(admin_client, delete_url, {"post": "yes"}).status_code == 302
    assert not APIKey.objects.exists()


# --- rotating ---------------------------------------------------------------------------


def test_rotate_asks_for_the_grace_period_first(admin_client, key):
    api_key, _ = key
    response = action(admin_client, "rotate_keys", api_key)
    assert response.status_code == 200
    assert "Grace period" in response.content.decode()
    assert APIKey.objects.count() == 1


def test_rotate_shows_each_new_plaintext_once(admin_client, api, key):
    old, old_plaintext = key
    response = action(admin_client, "rotate_keys", old, confirm="yes", grace="1h")
    assert (response.status_code, response["Location"]) == (302, SHOW_ONCE)
    shown = admin_client.get(SHOW_ONCE)
    (plaintext,) = shown_plaintexts(shown)
    assert "no-store" in shown["Cache-Control"]
    assert not shown_plaintexts(admin_client.get(SHOW_ONCE, follow=True))
    new = APIKey.objects.get(digest=crypto.hash_key(plaintext))
    assert new.client_links.get().llm_client.slug == "protected-bot"
    old.refresh_from_db()
    assert abs(old.expires_at - (timezone.now() + timedelta(hours=1))) < timedelta(seconds=30)
    assert api.get("/clients/protected-bot/echo/", **bearer(plaintext)).status_code == 200
    assert api.get("/clients/protected-bot/echo/", **bearer(old_plaintext)).status_code == 200


def test_rotate_with_a_bad_grace_is_a_form_error_and_changes_nothing(admin_client, key):
    api_key, _ = key
    response = action(admin_client, "rotate_keys", api_key, confirm="yes", grace="soon")
    assert "Invalid duration" in response.content.decode()
    assert APIKey.objects.count() == 1
    api_key.refresh_from_db()
    assert api_key.expires_at is None


def test_rotate_of_a_revoked_key_is_reported(admin_client, make_key, protected_client):
    api_key, _ = make_key(protected_client, is_active=False)
    response = admin_client.post(
        CHANGELIST,
        {"action": "rotate_keys", "_selected_action": [api_key.pk], "confirm": "yes", "grace": "0"},
        follow=True,
    )
    assert "is revoked" in response.content.decode()
    assert APIKey.objects.count() == 1


# --- revoking ---------------------------------------------------------------------------


def test_revoke_warns_about_a_clients_last_key_before_asking(admin_client, key):
    api_key, _ = key
    page = action(admin_client, "revoke_keys", api_key).content.decode()
    assert "last active keys of protected-bot" in page and "makes that client public" in page
    api_key.refresh_from_db()
    assert api_key.is_active


def test_revoke_of_a_clients_last_key_is_refused_unless_allowed(admin_client, key):
    api_key, _ = key
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = admin_client.post(
            CHANGELIST,
            {"action": "revoke_keys", "_selected_action": [api_key.pk], "confirm": "yes"},
            follow=True,
        )
    assert f"{api_key.prefix} is the last active key of protected-bot" in response.content.decode()
    api_key.refresh_from_db()
    assert api_key.is_active


def test_revoke_of_a_clients_last_key_when_allowed_makes_it_public(admin_client, api, key):
    api_key, _ = key
    action(admin_client, "revoke_keys", api_key, confirm="yes", allow_public="on")
    api_key.refresh_from_db()
    assert not api_key.is_active
    assert api.get("/clients/protected-bot/echo/").status_code == 200


def test_revoke_is_refused_at_once_when_another_key_remains(
    admin_client, api, key, make_key, protected_client
):
    api_key, plaintext = key
    make_key(protected_client)
    assert api.get("/clients/protected-bot/echo/", **bearer(plaintext)).status_code == 200
    action(admin_client, "revoke_keys", api_key, confirm="yes")
    api_key.refresh_from_db()
    assert not api_key.is_active
    assert api.get("/clients/protected-bot/echo/", **bearer(plaintext)).status_code == 401


def staff_with(client: Any, *codenames: str) -> Any:
    staff = baker.make("auth.User", username="staff", is_staff=True, is_active=True)
    staff.user_permissions.add(*staff.user_permissions.model.objects.filter(codename__in=codenames))
    client.force_login(staff)
    return staff


def test_actions_need_the_change_permission(client, key):
    staff_with(client, "view_apikey")
    page = client.get(CHANGELIST).content.decode()
    assert "revoke_keys" not in page and "rotate_keys" not in page


def test_rotate_needs_the_add_permission_too(client, key):
    api_key, _ = key
    staff_with(client, "view_apikey", "change_apikey")
    page = client.get(CHANGELIST).content.decode()
    assert "revoke_keys" in page and "rotate_keys" not in page
    data = {"action": "rotate_keys", "_selected_action": [api_key.pk], "confirm": "yes", "grace": "0"}
    response = client.post(CHANGELIST, data, follow=True)
    assert "No action selected" in response.content.decode()
    assert APIKey.objects.count() == 1 and not shown_plaintexts(client.get(SHOW_ONCE, follow=True))


def test_rotate_is_offered_with_the_add_and_change_permissions(client, key):
    staff_with(client, "view_apikey", "change_apikey", "add_apikey")
    assert "rotate_keys" in client.get(CHANGELIST).content.decode()


def test_revoking_a_clients_last_keys_together_is_refused_as_a_whole(
    admin_client, api, key, make_key, protected_client, public_client
):
    first, plaintext = key
    second, _ = make_key(protected_client)
    other, _ = make_key(public_client)  # its client would keep no key either
    page = action(admin_client, "revoke_keys", first, second).content.decode()
    assert page.count("Among the last active keys of protected-bot") == 2
    response = action(admin_client, "revoke_keys", first, second, other, confirm="yes", follow=True)
    refusal = f"together, {first.prefix}, {second.prefix}, {other.prefix} are the last active keys of "
    assert refusal + "protected-bot, public-bot" in response.content.decode()
    assert APIKey.objects.filter(is_active=True).count() == 3
    assert api.get("/clients/protected-bot/echo/", **bearer(plaintext)).status_code == 200


def test_revoking_a_clients_last_keys_together_when_allowed_revokes_them_all(
    admin_client, api, key, make_key, protected_client
):
    first, _ = key
    second, _ = make_key(protected_client)
    response = action(
        admin_client, "revoke_keys", first, second, confirm="yes", allow_public="on", follow=True
    )
    assert "Now public: protected-bot" in response.content.decode()
    assert not APIKey.objects.filter(is_active=True).exists()
    assert api.get("/clients/protected-bot/echo/").status_code == 200


def test_the_selection_guard_counts_only_the_keys_left_out(admin_client, key, make_key, protected_client):
    first, _ = key
    second, _ = make_key(protected_client)
    make_key(protected_client)  # not selected: the client stays protected
    page = action(admin_client, "revoke_keys", first, second).content.decode()
    assert "last active keys" not in page
    action(admin_client, "revoke_keys", first, second, confirm="yes")
    assert APIKey.objects.filter(is_active=True).count() == 1


def test_a_guard_refusal_after_the_confirmation_revokes_nothing(
    admin_client, key, make_key, protected_client, monkeypatch
):
    first, _ = key
    second, _ = make_key(protected_client)
    # As if the last other key had been revoked between the confirmation and this post.
    monkeypatch.setattr("drf_llm_keys.admin.APIKeyAdmin.left_public", lambda self, selected: {})
    response = action(admin_client, "revoke_keys", first, second, confirm="yes", follow=True)
    assert "Nothing was revoked" in response.content.decode()
    assert APIKey.objects.filter(is_active=True).count() == 2


# --- what the lists say --------------------------------------------------------------------


def test_the_client_list_says_public_or_protected(admin_client, key, public_client, make_key):
    required = baker.make_recipe("tests.llm_client", slug="required-bot", require_api_key=True)
    page = admin_client.get(CLIENTS).content.decode()
    rows = {
        slug: re.search(rf"{slug}.*?field-active_keys\">(\d+)<.*?field-state\">(\w+)<", page, re.S).groups()
        for slug in ("protected-bot", "public-bot", "required-bot")
    }
    assert rows == {
        "protected-bot": ("1", "protected"),
        "public-bot": ("0", "public"),
        "required-bot": ("0", "protected"),
    }
    assert required.require_api_key


def test_the_key_list_marks_expired_and_revoked_keys(admin_client, make_key, protected_client):
    working, _ = make_key(protected_client)
    expired, _ = make_key(protected_client)
    APIKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    revoked, _ = make_key(protected_client, is_active=False)
    page = admin_client.get(CHANGELIST).content.decode()
    states = dict(re.findall(r"(llmk_[0-9a-f]{12})</a>.*?field-state\"><img[^>]*> (\w+)<", page, re.S))
    assert states == {working.prefix: "active", expired.prefix: "expired", revoked.prefix: "revoked"}
    for state, wanted in (("active", working), ("expired", expired), ("revoked", revoked)):
        listed = admin_client.get(CHANGELIST, {"state": state}).content.decode()
        assert set(re.findall(r"llmk_[0-9a-f]{12}(?=</a>)", listed)) == {wanted.prefix}


def test_the_change_form_shows_the_state_without_a_revoke_hint(admin_client, key):
    api_key, _ = key
    page = admin_client.get(change_url(api_key)).content.decode()
    assert "Unset to revoke" not in page
    assert re.search(r"field-state.*?<img[^>]*> active", page, re.S)


def test_a_clients_key_rows_are_captioned_by_name_and_prefix(admin_client, key, protected_client):
    api_key, _ = key
    url = reverse("admin:drf_llm_keys_llmclient_change", args=[protected_client.pk])
    page = admin_client.get(url).content.decode()
    assert f"test key ({api_key.prefix}) on " in page
    assert f"{api_key.pk} -&gt; {protected_client.pk}" not in page


def test_saving_a_client_keeps_its_keys(admin_client, api, key, protected_client):
    _, plaintext = key
    link = LLMClientAPIKey.objects.get()
    url = reverse("admin:drf_llm_keys_llmclient_change", args=[protected_client.pk])
    data = {
        "name": "Renamed",
        "slug": "protected-bot",
        "owner": "",
        "api_key_links-TOTAL_FORMS": "1",
        "api_key_links-INITIAL_FORMS": "1",
        "api_key_links-MIN_NUM_FORMS": "0",
        "api_key_links-MAX_NUM_FORMS": "1000",
        "api_key_links-0-id": str(link.pk),
        "api_key_links-0-llm_client": str(protected_client.pk),
    }
    assert post(admin_client, url, data).status_code == 302
    protected_client.refresh_from_db()
    assert protected_client.name == "Renamed"
    assert LLMClientAPIKey.objects.get() == link
    assert api.get("/clients/protected-bot/echo/").status_code == 401
    assert api.get("/clients/protected-bot/echo/", **bearer(plaintext)).status_code == 200


# --- scopes and allowed models ----------------------------------------------------------


def test_adding_a_key_sets_its_scopes_and_models(admin_client, owner, protected_client):
    data = add_data(owner, protected_client, scopes="chat, files\nchat\n\n", allowed_models="gpt-4o*")
    assert post(admin_client, ADD, data).status_code == 302
    api_key = APIKey.objects.get()
    assert (api_key.scopes, api_key.allowed_models) == (["chat", "files"], ["gpt-4o*"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"allowed_models": "gpt-*-mini"}, "may appear only at the end of a model pattern"),
        ({"scopes": "chat*"}, "may appear only in model patterns"),
    ],
)
def test_adding_a_key_with_bad_scopes_or_models_is_a_form_error(
    admin_client, owner, protected_client, fields, message
):
    response = post(admin_client, ADD, add_data(owner, protected_client, **fields))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not APIKey.objects.exists()


def test_the_change_form_edits_scopes_and_models_which_apply_at_once(
    admin_client, api, make_key, protected_client
):
    api_key, plaintext = make_key(protected_client, scopes=["chat", "files"], allowed_models=["echo"])
    page = admin_client.get(change_url(api_key)).content.decode()
    assert re.search(r"<textarea[^>]*name=\"scopes\"[^>]*>\s*chat\nfiles</textarea>", page)
    assert api.get("/scoped/protected-bot/echo/", **bearer(plaintext)).status_code == 200

    data = change_data(api_key, scopes="chat", allowed_models="echo, gpt-4o*")
    assert post(admin_client, change_url(api_key), data).status_code == 302

    api_key.refresh_from_db()
    assert (api_key.scopes, api_key.allowed_models) == (["chat"], ["echo", "gpt-4o*"])
    assert api.get("/scoped/protected-bot/echo/", **bearer(plaintext)).status_code == 403


def test_the_change_form_refuses_bad_models_and_changes_nothing(admin_client, make_key, protected_client):
    api_key, _ = make_key(protected_client, allowed_models=["echo"])
    response = post(admin_client, change_url(api_key), change_data(api_key, allowed_models="echo\n*gpt"))
    assert response.status_code == 200
    assert "Invalid model &#x27;*gpt&#x27;" in response.content.decode()
    api_key.refresh_from_db()
    assert api_key.allowed_models == ["echo"]


def test_the_changelist_shows_scopes_and_models(admin_client, make_key, protected_client):
    make_key(protected_client, scopes=["chat", "files"], allowed_models=["gpt-4o*"])
    make_key(protected_client)
    page = admin_client.get(CHANGELIST).content.decode()
    assert '<td class="field-scope_list">chat, files</td>' in page
    assert '<td class="field-model_list">gpt-4o*</td>' in page
    assert '<td class="field-scope_list">all</td>' in page
    assert '<td class="field-model_list">any</td>' in page


# --- a change whose invalidation cannot reach the cache ------------------------------------


def shown_messages(response: Any) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in response.context["messages"]]


@pytest.mark.django_db(transaction=True)
def test_a_revoke_the_cache_does_not_take_is_an_error_not_a_success(
    admin_client, key, make_key, protected_client, cache_down
):
    api_key, _ = key
    make_key(protected_client)
    response = admin_client.post(
        CHANGELIST, {"action": "revoke_keys", "_selected_action": [api_key.pk], "confirm": "1"}, follow=True
    )
    shown = shown_messages(response)
    assert ("error", f"Revoked {api_key.prefix}.") in shown
    assert not [text for level, text in shown if level == "success"]
    (window,) = [text for level, text in shown if "committed in the database" in text]
    assert "up to 300 seconds (CACHE_TIMEOUT)" in window
    assert "`manage.py llm_keys invalidate protected-bot`" in window
    assert not APIKey.objects.get(pk=api_key.pk).is_active


@pytest.mark.django_db(transaction=True)
def test_a_revoke_the_cache_takes_is_a_success(admin_client, key, make_key, protected_client, flaky):
    api_key, _ = key
    make_key(protected_client)
    response = admin_client.post(
        CHANGELIST, {"action": "revoke_keys", "_selected_action": [api_key.pk], "confirm": "1"}, follow=True
    )
    assert shown_messages(response) == [("success", f"Revoked {api_key.prefix}.")]


@pytest.mark.django_db(transaction=True)
def test_an_added_key_whose_invalidation_is_pending_is_shown_with_the_error(
    admin_client, owner, protected_client, cache_down
):
    response = admin_client.post(ADD, add_data(owner, protected_client), follow=True)
    (plaintext,) = shown_plaintexts(response)
    assert APIKey.objects.get().digest == crypto.hash_key(plaintext)
    content = response.content.decode()
    assert "committed in the database" in content and "invalidate protected-bot" in content


@pytest.mark.django_db(transaction=True)
def test_a_change_form_save_the_cache_does_not_take_shows_the_error(admin_client, key, cache_down):
    api_key, _ = key
    data = change_data(api_key, expires_at_0="2099-01-01", expires_at_1="00:00:00")
    response = admin_client.post(change_url(api_key), data, follow=True)
    assert any(
        level == "error" and "committed in the database" in text for level, text in shown_messages(response)
    )
    assert APIKey.objects.get(pk=api_key.pk).expires_at is not None


# --- picking the owner ----------------------------------------------------------------------


def autocomplete(client: Any, term: str, model_name: str = "apikey", field_name: str = "user") -> Any:
    query = {"term": term, "app_label": "drf_llm_keys", "model_name": model_name, "field_name": field_name}
    return client.get(reverse("admin:autocomplete"), query)


def test_the_owner_is_picked_by_a_search_of_the_users(admin_client, owner):
    baker.make("auth.User", username="someone-else")
    page = admin_client.get(ADD).content.decode()
    assert re.search(r'<select name="user"[^>]*class="admin-autocomplete', page)
    found = autocomplete(admin_client, "own").json()["results"]
    assert [result["text"] for result in found] == ["owner"]


def test_a_clients_owner_is_picked_by_a_search_too(admin_client, owner):
    page = admin_client.get(reverse("admin:drf_llm_keys_llmclient_add")).content.decode()
    assert re.search(r'<select name="owner"[^>]*class="admin-autocomplete', page)
    found = autocomplete(admin_client, "own", "llmclient", "owner").json()["results"]
    assert [result["text"] for result in found] == ["owner"]


def test_the_owner_is_picked_by_id_where_the_user_admin_cannot_search(admin_client, monkeypatch):
    monkeypatch.setattr(UserAdmin, "search_fields", ())
    page = admin_client.get(ADD).content.decode()
    assert re.search(r'<input[^>]*name="user"[^>]*class="vForeignKeyRawIdAdminField"', page)


def test_the_owner_is_picked_by_id_by_staff_who_may_not_view_users(client):
    staff_with(client, "view_apikey", "add_apikey")
    page = client.get(ADD).content.decode()
    assert re.search(r'<input[^>]*name="user"[^>]*class="vForeignKeyRawIdAdminField"', page)


def test_the_owner_is_picked_by_id_on_a_site_without_a_user_admin(rf, admin_user):
    site = AdminSite(name="keys_only")
    model_admin = APIKeyAdmin(APIKey, site)
    request = rf.get("/")
    request.user = admin_user
    assert model_admin.get_autocomplete_fields(request) == ()
    field = model_admin.formfield_for_dbfield(APIKey._meta.get_field("user"), request)
    assert isinstance(field.widget, ForeignKeyRawIdWidget)


# --- budgets and the cap on requests in flight ------------------------------------------------

OWNER_BUDGETS = reverse("admin:drf_llm_keys_ownerbudget_changelist")
INFO = "/clients/protected-bot/key/"


def test_the_change_form_edits_the_budget_and_the_cap(admin_client, make_key, protected_client):
    api_key, _ = make_key(protected_client)
    data = change_data(api_key, budget_limit="25.50", budget_period="month", max_concurrent="3")
    assert post(admin_client, change_url(api_key), data).status_code == 302
    api_key.refresh_from_db()
    assert (api_key.budget_limit, api_key.budget_period, api_key.max_concurrent) == (
        Decimal("25.5"),
        "month",
        3,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"budget_limit": "25"}, "needs a period"),
        ({"budget_period": "week"}, "needs an amount"),
        ({"budget_limit": "-1", "budget_period": "week"}, "greater than or equal to 0"),
        ({"max_concurrent": "0"}, "greater than or equal to 1"),
    ],
)
def test_the_change_form_refuses_half_a_budget_or_a_zero_cap(
    admin_client, make_key, protected_client, fields, message
):
    api_key, _ = make_key(protected_client)
    response = post(admin_client, change_url(api_key), change_data(api_key, **fields))
    assert response.status_code == 200
    assert message in response.content.decode()
    api_key.refresh_from_db()
    assert (api_key.budget_limit, api_key.budget_period, api_key.max_concurrent) == (None, "", None)


def test_adding_a_key_sets_its_budget_and_cap(admin_client, owner, protected_client):
    data = add_data(owner, protected_client, budget_limit="10", budget_period="day", max_concurrent="2")
    assert post(admin_client, ADD, data).status_code == 302
    api_key = APIKey.objects.get()
    assert (api_key.budget_limit, api_key.budget_period, api_key.max_concurrent) == (Decimal(10), "day", 2)


def test_the_changelist_shows_the_budget_and_the_cap(admin_client, make_key, protected_client):
    make_key(protected_client, budget_limit=Decimal("12.5"), budget_period="week", max_concurrent=4)
    make_key(protected_client, budget_limit=Decimal("3"), budget_period="total")
    page = admin_client.get(CHANGELIST).content.decode()
    assert '<td class="field-budget">12.5 USD per week</td>' in page
    assert '<td class="field-budget">3 USD in total</td>' in page
    assert '<td class="field-max_concurrent">4</td>' in page


@pytest.mark.django_db(transaction=True)
def test_an_owner_budget_added_in_the_admin_applies_to_the_owners_keys_at_once(admin_client, api, key, owner):
    _, plaintext = key
    assert api.get(INFO, **bearer(plaintext)).json()["owner_budget"] is None  # now held
    add = reverse("admin:drf_llm_keys_ownerbudget_add")
    response = admin_client.post(add, {"user": owner.pk, "limit": "100", "period": "month"})
    assert response.status_code == 302
    assert api.get(INFO, **bearer(plaintext)).json()["owner_budget"]["limit"] == "100"
    budget = OwnerBudget.objects.get()
    change = reverse("admin:drf_llm_keys_ownerbudget_change", args=[budget.pk])
    assert 'name="user"' not in admin_client.get(change).content.decode()  # moved, it would stay stale
    assert admin_client.post(change, {"limit": "40", "period": "week"}).status_code == 302
    assert api.get(INFO, **bearer(plaintext)).json()["owner_budget"]["limit"] == "40"
    page = admin_client.get(OWNER_BUDGETS).content.decode()
    assert '<td class="field-budget">40 USD per week</td>' in page
