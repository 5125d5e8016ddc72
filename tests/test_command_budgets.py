"""``llm_keys budget`` and ``--max-concurrent``, run as an operator runs them."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from drf_llm_keys import usage
from drf_llm_keys.models import APIKey, KeyUsage, OwnerBudget
from tests.test_command import refused, run

pytestmark = pytest.mark.django_db


def test_budget_sets_a_keys_budget_and_shows_it_with_this_periods_spend(make_key, protected_client):
    api_key, _ = make_key(protected_client)
    KeyUsage.objects.create(
        api_key=api_key, llm_client=protected_client, day=usage.today(), cost=Decimal("3.25")
    )
    out, err = run("budget", api_key.prefix, "--limit", "25", "--period", "month")
    api_key.refresh_from_db()
    assert (api_key.budget_limit, api_key.budget_period) == (Decimal(25), "month")
    assert "Applied from the next request on." in err
    line = out.strip()
    assert line.startswith(f"Key {api_key.prefix} (test key): 25 USD per month (UTC); spent 3.25 since ")
    assert "21.75 left; resets at " in line
    assert run("budget", api_key.prefix)[0] == out  # shown alone, the same


def test_budget_json_gives_limit_spend_and_period(make_key, protected_client, owner):
    api_key, _ = make_key(protected_client, budget_limit=Decimal("2"), budget_period="total")
    run("budget", "--owner", "owner", "--limit", "100", "--period", "week")
    document = json.loads(run("budget", api_key.prefix, "--json")[0])
    assert document["budget"] == {
        "limit": "2",
        "period": "total",
        "spent": "0",
        "remaining": "2",
        "period_start": "1970-01-01T00:00:00+00:00",
        "resets_at": None,
    }
    assert (document["owner_budget"]["limit"], document["owner_budget"]["period"]) == ("100", "week")
    assert (document["prefix"], document["owner"], document["currency"]) == (api_key.prefix, "owner", "USD")


def test_budget_limit_alone_keeps_the_period_and_clear_removes_the_budget(make_key, protected_client):
    api_key, _ = make_key(protected_client, budget_limit=Decimal("5"), budget_period="week")
    run("budget", api_key.prefix, "--limit", "7.5")
    api_key.refresh_from_db()
    assert (api_key.budget_limit, api_key.budget_period) == (Decimal("7.5"), "week")
    out, _ = run("budget", api_key.prefix, "--clear")
    api_key.refresh_from_db()
    assert (api_key.budget_limit, api_key.budget_period) == (None, "")
    assert out.strip() == f"Key {api_key.prefix} (test key): no budget."


def test_budget_owner_sets_shows_and_clears_the_budget_of_all_their_keys(owner):
    out, _ = run("budget", "--owner", "owner", "--limit", "100", "--period", "month")
    assert list(OwnerBudget.objects.values_list("user", "limit", "period")) == [
        (owner.pk, Decimal(100), "month")
    ]
    assert out.startswith("Owner owner (all their keys): 100 USD per month (UTC); spent 0 since ")
    run("budget", "--owner", "owner", "--clear")
    assert not OwnerBudget.objects.exists()
    assert run("budget", "--owner", "owner")[0].strip() == "Owner owner (all their keys): no budget."


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Name a key by its PREFIX, or an owner with --owner USERNAME"),
        (["{prefix}", "--owner", "owner"], "Name a key by its PREFIX, or an owner"),
        (["{prefix}", "--limit", "25"], "--limit needs --period: one of day, week, month, total"),
        (["{prefix}", "--period", "month"], "--period goes with --limit"),
        (["{prefix}", "--limit", "25", "--period", "year"], "invalid choice: 'year'"),
        (["{prefix}", "--limit", "-3", "--period", "day"], "Invalid budget amount '-3'"),
        (["{prefix}", "--limit", "1.0000001", "--period", "day"], "at most 6 decimal places"),
        (["{prefix}", "--limit", "ten", "--period", "day"], "not a number"),
        (["{prefix}", "--limit", "1", "--clear"], "not allowed with argument"),
        (["llmk_nope", "--limit", "1", "--period", "day"], "No API key with prefix 'llmk_nope'"),
        (["--owner", "nobody", "--limit", "1", "--period", "day"], "No user 'nobody'"),
    ],
)
def test_budget_bad_input_is_a_command_error_and_changes_nothing(make_key, protected_client, args, message):
    api_key, _ = make_key(protected_client)
    assert message in refused("budget", *(a.format(prefix=api_key.prefix) for a in args))
    assert not OwnerBudget.objects.exists()


def test_create_and_update_set_the_cap_on_requests_in_flight(owner, protected_client):
    document = json.loads(
        run("create", "protected-bot", "--user", "owner", "--name", "ci", "--max-concurrent", "3", "--json")[
            0
        ]
    )
    assert document["max_concurrent"] == 3
    out, _ = run("update", document["prefix"], "--max-concurrent", "5")
    assert "max concurrent 5." in out
    assert APIKey.objects.get().max_concurrent == 5
    run("update", document["prefix"], "--clear-max-concurrent")
    assert APIKey.objects.get().max_concurrent is None


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_cap_below_one_is_a_command_error(make_key, protected_client, value):
    api_key, _ = make_key(protected_client, scopes=["chat"])
    message = refused("update", api_key.prefix, "--scope", "files", "--max-concurrent", value)
    assert "Invalid cap on concurrent requests" in message  # and the scopes are not changed either


def test_list_shows_the_budget_and_the_cap(make_key, protected_client):
    make_key(protected_client, budget_limit=Decimal("12.5"), budget_period="day", max_concurrent=4)
    row = run("list")[0].splitlines()[1].split()
    assert row[-2:] == ["12.5/day", "4"]
    (record,) = json.loads(run("list", "--json")[0])
    assert (record["budget"], record["max_concurrent"]) == ({"limit": "12.5", "period": "day"}, 4)
