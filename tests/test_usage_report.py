"""What the stored usage looks like to people: ``llm_keys usage`` and the key's admin page."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import path, reverse
from model_bakery import baker

from drf_llm_keys import usage
from drf_llm_keys.admin import APIKeyAdmin
from drf_llm_keys.models import APIKey, KeyUsage

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(make_key, protected_client):
    """Two keys, two clients, usage today and 5, 20 and 40 days ago."""
    other = baker.make_recipe("tests.llm_client", slug="other-bot")
    first, _ = make_key(protected_client, other)
    second, _ = make_key(protected_client)
    today = usage.today()
    for api_key, llm_client, age, figures in [
        (first, protected_client, 0, (10, 100, 50, "0.0015", 0)),
        (first, other, 0, (1, 10, 5, "0", 15)),
        (first, protected_client, 5, (2, 20, 10, "0.1", 0)),
        (second, protected_client, 0, (3, 30, 15, "0.000000001", 0)),
        (first, protected_client, 20, (100, 0, 0, "0", 0)),
        (first, protected_client, 40, (1000, 1000, 1000, "5", 0)),
    ]:
        KeyUsage.objects.create(
            api_key=api_key,
            llm_client=llm_client,
            day=today - timedelta(days=age),
            requests=figures[0],
            prompt_tokens=figures[1],
            completion_tokens=figures[2],
            cost=Decimal(figures[3]),
            unpriced_tokens=figures[4],
        )
    return first, second


def report(*args: str) -> dict:
    out = StringIO()
    call_command("llm_keys", "usage", *args, "--json", stdout=out)
    document: dict = json.loads(out.getvalue())
    return document


def test_rows_per_key_client_and_day_with_totals(history):
    first, second = history
    document = report()
    today = usage.today()
    assert document["days"] == 30
    assert document["since"] == (today - timedelta(days=29)).isoformat()
    rows = [(r["day"], r["client"], r["prefix"], r["requests"]) for r in document["usage"]]
    assert sorted(rows) == sorted(
        [
            ((today - timedelta(days=5)).isoformat(), "protected-bot", first.prefix, 2),
            (today.isoformat(), "protected-bot", first.prefix, 10),
            (today.isoformat(), "other-bot", first.prefix, 1),
            (today.isoformat(), "protected-bot", second.prefix, 3),
            ((today - timedelta(days=20)).isoformat(), "protected-bot", first.prefix, 100),
        ]
    )
    assert document["totals"] == {
        "requests": 116,
        "prompt_tokens": 160,
        "completion_tokens": 80,
        "cost": "0.101500001",
        "unpriced_tokens": 15,
    }
    assert document["currency"] == "USD"


def test_costs_are_exact_decimal_strings_beside_the_unpriced_tokens(history):
    rows = {
        (r["client"], r["requests"]): (r["cost"], r["unpriced_tokens"])
        for r in report("--days", "1")["usage"]
    }
    assert rows == {
        ("protected-bot", 10): ("0.0015", 0),
        ("other-bot", 1): ("0", 15),  # not free: its 15 tokens have no price
        ("protected-bot", 3): ("0.000000001", 0),
    }


def test_days_narrows_the_period(history):
    assert report("--days", "1")["totals"] == {
        "requests": 14,
        "prompt_tokens": 140,
        "completion_tokens": 70,
        "cost": "0.001500001",
        "unpriced_tokens": 15,
    }
    assert report("--days", "60")["totals"]["requests"] == 1116


def test_a_client_or_a_key_narrows_the_rows(history):
    first, second = history
    assert report("other-bot")["totals"]["requests"] == 1
    assert report(first.prefix)["totals"]["requests"] == 113
    assert {r["prefix"] for r in report("protected-bot")["usage"]} == {first.prefix, second.prefix}


def test_the_table_has_a_total_row(history):
    out = StringIO()
    call_command("llm_keys", "usage", "--days", "1", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "DAY",
        "CLIENT",
        "PREFIX",
        "NAME",
        "REQUESTS",
        "PROMPT",
        "TOKENS",
        "COMPLETION",
        "TOKENS",
        "COST",
        "(USD)",
        "UNPRICED",
        "TOKENS",
    ]
    assert len(lines) == 5
    assert lines[-1].split() == ["total", "14", "140", "70", "0.001500001", "15"]


def test_nothing_recorded_is_an_empty_report(owner):
    out, err = StringIO(), StringIO()
    call_command("llm_keys", "usage", stdout=out, stderr=err)
    assert "No usage recorded since" in err.getvalue()
    assert report()["totals"] == {
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost": "0",
        "unpriced_tokens": 0,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-bot"], "No API key prefix or LLM client 'no-such-bot'."),
        (["--days", "0"], "--days must be a whole number from 1 to 36600, not '0'."),
        (["--days", "week"], "--days must be a whole number from 1 to 36600, not 'week'."),
        (["--days", "-3"], "--days must be a whole number from 1 to 36600, not '-3'."),
    ],
)
def test_bad_input_is_a_command_error(history, args, message):
    with pytest.raises(CommandError) as refused:
        call_command("llm_keys", "usage", *args, stdout=StringIO())
    assert str(refused.value) == message


def test_the_key_page_shows_its_7_and_30_day_totals(admin_client, history):
    first, _ = history
    page = admin_client.get(reverse("admin:drf_llm_keys_apikey_change", args=[first.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "usage, last 7 days" in text.lower() and "usage, last 30 days" in text.lower()
    assert ">13 requests, 130 prompt and 65 completion tokens<" in text  # today and 5 days ago
    assert ">113 requests, 130 prompt and 65 completion tokens (<" in text  # and 20 days ago


def usage_rows(page) -> list[tuple[str, str]]:
    """The (key, client) pairs of the usage changelist's rows, in order."""
    changelist = page.context["cl"]
    return [(row.api_key.prefix, row.llm_client.slug) for row in changelist.result_list]


def test_the_key_page_links_to_its_usage_by_day_and_client(admin_client, history):
    first, second = history
    page = admin_client.get(reverse("admin:drf_llm_keys_apikey_change", args=[first.pk]))
    link = reverse("admin:drf_llm_keys_keyusage_changelist") + f"?api_key__id__exact={first.pk}"
    assert f'href="{link}"' in page.content.decode().replace("&amp;", "&")
    listed = admin_client.get(link)
    assert listed.status_code == 200
    # Every day of it, newest first (today: both its clients); none of the other key's.
    assert sorted(usage_rows(listed)) == [(first.prefix, "other-bot")] + [(first.prefix, "protected-bot")] * 4
    today = usage.today()
    days = [row.day for row in listed.context["cl"].result_list]
    assert days == [today - timedelta(days=age) for age in (0, 0, 5, 20, 40)]
    assert second.prefix not in listed.content.decode()


def test_the_usage_list_searches_by_client_and_prefix(admin_client, history):
    first, second = history
    url = reverse("admin:drf_llm_keys_keyusage_changelist")
    assert usage_rows(admin_client.get(url, {"q": "other-bot"})) == [(first.prefix, "other-bot")]
    assert usage_rows(admin_client.get(url, {"q": second.prefix})) == [(second.prefix, "protected-bot")]


def test_usage_rows_cannot_be_added_changed_or_deleted_in_the_admin(admin_client, history):
    row = KeyUsage.objects.order_by("pk").first()
    assert admin_client.get(reverse("admin:drf_llm_keys_keyusage_add")).status_code == 403
    change = reverse("admin:drf_llm_keys_keyusage_change", args=[row.pk])
    assert admin_client.post(change, {"requests": 0}).status_code == 403
    delete = reverse("admin:drf_llm_keys_keyusage_delete", args=[row.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    listed = admin_client.get(reverse("admin:drf_llm_keys_keyusage_changelist"))
    assert "delete_selected" not in listed.content.decode()
    row.refresh_from_db()
    assert row.requests > 0 and KeyUsage.objects.count() == 6


def test_the_usage_list_shows_no_digest(admin_client, history):
    first, second = history
    text = admin_client.get(reverse("admin:drf_llm_keys_keyusage_changelist")).content.decode()
    assert first.prefix in text and second.prefix in text
    assert first.digest not in text and second.digest not in text


# A project's own admin site, with the keys and without the usage list.
own_site = admin.AdminSite(name="own")
own_site.register(APIKey, APIKeyAdmin)
urlpatterns = [path("own-admin/", own_site.urls)]


@pytest.mark.urls(__name__)
def test_a_site_without_the_usage_list_shows_the_totals_without_a_link(admin_client, history):
    first, _ = history
    page = admin_client.get(reverse("own:drf_llm_keys_apikey_change", args=[first.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert ">113 requests, 130 prompt and 65 completion tokens<" in text
    assert "keyusage" not in text
