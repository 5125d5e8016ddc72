"""Budgets (drf_llm_keys.budgets, keys.set_budget and friends): stored, held in the
decision entry, kept through rotation, and spent as the usage rows say."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from model_bakery import baker

from drf_llm_keys import budgets, keys, usage
from drf_llm_keys.budgets import Budget, budgets_of, period_bounds, spent_in_db
from drf_llm_keys.decisions.entries import load_decision
from drf_llm_keys.instances import api_key_from_entry
from drf_llm_keys.models import APIKey, KeyUsage, OwnerBudget
from tests.support import bearer

pytestmark = pytest.mark.django_db

UTC = datetime.timezone.utc
INFO = "/clients/protected-bot/key/"


def at(*args: int, tz: datetime.tzinfo = UTC) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=tz)


# --- periods --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", at(2026, 12, 6, 9, 30), at(2026, 12, 6), at(2026, 12, 7)),
        ("day", at(2026, 12, 31, 23, 59, 59), at(2026, 12, 31), at(2027, 1, 1)),
        # 2026-12-06 is a Sunday: its ISO week began on Monday the 30th of November.
        ("week", at(2026, 12, 6, 23), at(2026, 11, 30), at(2026, 12, 7)),
        ("week", at(2026, 12, 7), at(2026, 12, 7), at(2026, 12, 14)),
        ("week", at(2027, 1, 1, 12), at(2026, 12, 28), at(2027, 1, 4)),
        ("month", at(2026, 12, 31, 23, 59), at(2026, 12, 1), at(2027, 1, 1)),
        ("month", at(2027, 1, 1), at(2027, 1, 1), at(2027, 2, 1)),
        ("month", at(2028, 2, 29, 12), at(2028, 2, 1), at(2028, 3, 1)),
        ("month", at(2027, 2, 15), at(2027, 2, 1), at(2027, 3, 1)),
        ("total", at(2026, 12, 6), at(1970, 1, 1), None),
    ],
)
def test_period_bounds_are_utc_days_iso_weeks_calendar_months_or_all_time(period, now, start, end):
    assert period_bounds(period, now) == (start, end)


def test_period_bounds_read_another_zone_in_utc_and_a_naive_time_as_utc():
    new_york = datetime.timezone(datetime.timedelta(hours=-5))
    # 19:30 on the 31st in New York is already the 1st of January in UTC.
    assert period_bounds("month", at(2026, 12, 31, 19, 30, tz=new_york)) == (at(2027, 1, 1), at(2027, 2, 1))
    assert period_bounds("day", datetime.datetime(2026, 12, 6, 9)) == (at(2026, 12, 6), at(2026, 12, 7))


def test_an_unknown_period_is_a_value_error():
    with pytest.raises(ValueError, match="Unknown budget period 'year'"):
        period_bounds("year", at(2026, 12, 6))


# --- storing and validating -----------------------------------------------------------------


def test_set_budget_stores_it_and_clearing_removes_it(make_key, protected_client):
    api_key, _ = make_key(protected_client)
    keys.set_budget(api_key, "25", "month")
    stored = APIKey.objects.get(pk=api_key.pk)
    assert (stored.budget_limit, stored.budget_period) == (Decimal("25"), "month")
    assert (api_key.budget_limit, api_key.budget_period) == (Decimal("25"), "month")  # the caller's too
    keys.set_budget(api_key, None)
    stored.refresh_from_db()
    assert (stored.budget_limit, stored.budget_period) == (None, "")


@pytest.mark.parametrize(
    ("limit", "period", "message"),
    [
        ("-1", "month", "from 0 to less than"),
        ("10.1234567", "month", "at most 6 decimal places"),
        ("1e12", "month", "from 0 to less than"),
        ("NaN", "month", "from 0 to less than"),
        ("lots", "month", "not a number"),
        (0.1, "month", "give a decimal number as text"),
        (True, "month", "give a decimal number as text"),
        ("25", "year", "Invalid budget period 'year'"),
        ("25", "", "needs a period"),
        (None, "month", "needs an amount"),
    ],
)
def test_a_bad_budget_is_a_validation_error_and_changes_nothing(
    make_key, protected_client, limit, period, message
):
    api_key, _ = make_key(protected_client, budget_limit=Decimal(5), budget_period="day")
    with pytest.raises(ValidationError, match=message):
        keys.set_budget(api_key, limit, period)
    stored = APIKey.objects.get(pk=api_key.pk)
    assert (stored.budget_limit, stored.budget_period) == (Decimal(5), "day")


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"budget_limit": Decimal(5)}, {"budget_period"}),
        ({"budget_period": "week"}, {"budget_limit"}),
        ({"budget_limit": Decimal(-1), "budget_period": "week"}, {"budget_limit"}),
        ({"max_concurrent": 0}, {"max_concurrent"}),
    ],
)
def test_the_model_wants_an_amount_and_a_period_together(owner, fields, errors):
    api_key = APIKey(user=owner, name="k", prefix="llmk_x", digest="d", **fields)
    with pytest.raises(ValidationError) as excinfo:
        api_key.full_clean()
    assert set(excinfo.value.message_dict) == errors


@pytest.mark.parametrize(
    "fields",
    [
        {"budget_limit": Decimal(5), "budget_period": ""},
        {"budget_limit": None, "budget_period": "week"},
        {"budget_limit": Decimal(5), "budget_period": "year"},
        {"budget_limit": Decimal(-1), "budget_period": "week"},
        {"max_concurrent": 0},
    ],
    ids=["amount alone", "period alone", "unknown period", "negative", "cap of 0"],
)
def test_the_database_refuses_what_clean_refuses(make_key, protected_client, fields):
    """Past the model's validation (a bulk update, raw SQL's ORM twin): the row keeps its
    budget and cap."""
    api_key, _ = make_key(protected_client)
    with pytest.raises(IntegrityError), transaction.atomic():
        APIKey.objects.filter(pk=api_key.pk).update(**fields)
    api_key.refresh_from_db()
    assert (api_key.budget_limit, api_key.budget_period, api_key.max_concurrent) == (None, "", None)


def test_the_database_refuses_an_owner_budget_clean_refuses(owner):
    with pytest.raises(IntegrityError), transaction.atomic():
        OwnerBudget.objects.create(user=owner, limit=Decimal(1), period="year")
    assert not OwnerBudget.objects.exists()


def test_set_max_concurrent_stores_a_cap_and_refuses_anything_but_a_positive_int(make_key, protected_client):
    api_key, _ = make_key(protected_client)
    keys.set_max_concurrent(api_key, 4)
    assert APIKey.objects.get(pk=api_key.pk).max_concurrent == 4
    for bad in (0, -1, 2**31, "4", 4.0, True):
        with pytest.raises(ValidationError, match="Invalid cap on concurrent requests"):
            keys.set_max_concurrent(api_key, bad)
    assert APIKey.objects.get(pk=api_key.pk).max_concurrent == 4
    keys.set_max_concurrent(api_key, None)
    assert APIKey.objects.get(pk=api_key.pk).max_concurrent is None


def test_set_owner_budget_makes_replaces_and_removes_one_row(owner):
    budget = keys.set_owner_budget(owner, "100", "month")
    assert budget is not None and (budget.limit, budget.period) == (Decimal(100), "month")
    keys.set_owner_budget(owner, "80.5", "week")
    assert list(OwnerBudget.objects.values_list("user", "limit", "period")) == [
        (owner.pk, Decimal("80.5"), "week")
    ]
    assert keys.set_owner_budget(owner, None) is None
    assert not OwnerBudget.objects.exists()
    with pytest.raises(ValidationError, match="Invalid budget period"):
        keys.set_owner_budget(owner, "1", "fortnight")


def test_rotation_keeps_the_budget_and_the_cap(make_key, protected_client):
    old, _ = make_key(protected_client, budget_limit=Decimal("25"), budget_period="month", max_concurrent=2)
    new, _ = keys.rotate_key(old)
    assert (new.budget_limit, new.budget_period, new.max_concurrent) == (Decimal("25"), "month", 2)
    assert budgets_of(new) == [Budget("key", old.prefix, Decimal("25"), "month")]


# --- the decision entry ---------------------------------------------------------------------


def test_a_key_rebuilt_from_its_entry_knows_its_budgets_without_a_query(
    make_key, protected_client, owner, django_assert_num_queries
):
    api_key, _ = make_key(
        protected_client, budget_limit=Decimal("25"), budget_period="month", max_concurrent=3
    )
    OwnerBudget.objects.create(user=owner, limit=Decimal("100"), period="week")
    entry = load_decision("protected-bot", api_key.prefix, using="default")["key"]
    with django_assert_num_queries(0):
        rebuilt = api_key_from_entry(entry, api_key.prefix, "default")
        assert budgets_of(rebuilt) == [
            Budget("key", api_key.prefix, Decimal("25"), "month"),
            Budget("owner", str(owner.pk), Decimal("100"), "week"),
        ]
        assert rebuilt.max_concurrent == 3


def test_a_key_without_budgets_has_none_in_its_entry(make_key, protected_client, django_assert_num_queries):
    api_key, _ = make_key(protected_client)
    entry = load_decision("protected-bot", api_key.prefix, using="default")["key"]
    assert (entry["budget"], entry["owner_budget"], entry["max_concurrent"]) == (None, None, None)
    with django_assert_num_queries(0):
        assert budgets_of(api_key_from_entry(entry, api_key.prefix, "default")) == []


def test_a_key_read_from_the_database_finds_its_owners_budget(make_key, protected_client, owner):
    api_key, _ = make_key(protected_client)
    OwnerBudget.objects.create(user=owner, limit=Decimal("7"), period="total")
    assert budgets_of(APIKey.objects.get(pk=api_key.pk)) == [
        Budget("owner", str(owner.pk), Decimal(7), "total")
    ]


def test_refresh_from_db_reads_the_owners_budget_again(make_key, protected_client, owner):
    api_key, _ = make_key(protected_client)
    read = APIKey.objects.get(pk=api_key.pk)
    assert read.owner_budget is None
    keys.set_owner_budget(owner, "7", "total")
    read.refresh_from_db(fields=["description"])  # some fields: the budget as it was read
    assert read.owner_budget is None
    read.refresh_from_db()
    assert read.owner_budget == (Decimal("7"), "total")


# Committed for real: invalidations run once the transaction commits.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ["key budget", "owner budget", "owner budget removed", "cap"])
def test_a_change_is_in_the_next_requests_answer(api, make_key, protected_client, owner, change):
    api_key, plaintext = make_key(protected_client)
    _other, other_plaintext = make_key(protected_client)  # the owner's second key
    keys.set_owner_budget(owner, "1", "day")
    before = [api.get(INFO, **bearer(p)).json() for p in (plaintext, other_plaintext)]  # now held
    assert [info["owner_budget"]["limit"] for info in before] == ["1", "1"]
    if change == "key budget":
        keys.set_budget(api_key, "25", "month")
    elif change == "owner budget":
        keys.set_owner_budget(owner, "100", "week")
    elif change == "owner budget removed":
        keys.set_owner_budget(owner, None)
    else:
        keys.set_max_concurrent(api_key, 5)
    info, other_info = (api.get(INFO, **bearer(p)).json() for p in (plaintext, other_plaintext))
    if change == "key budget":
        assert (info["budget"]["limit"], info["budget"]["period"]) == ("25", "month")
    elif change == "owner budget":
        for answer in (info, other_info):  # every key of the owner
            assert (answer["owner_budget"]["limit"], answer["owner_budget"]["period"]) == ("100", "week")
    elif change == "owner budget removed":
        assert info["owner_budget"] is None and other_info["owner_budget"] is None
    else:
        assert info["max_concurrent"] == 5


@pytest.mark.django_db(transaction=True)
def test_a_bulk_update_of_owner_budgets_is_in_the_next_requests_answer(api, key, owner):
    _, plaintext = key
    keys.set_owner_budget(owner, "1", "day")
    assert api.get(INFO, **bearer(plaintext)).json()["owner_budget"]["limit"] == "1"
    OwnerBudget.objects.filter(user=owner).update(limit=Decimal(2))
    assert api.get(INFO, **bearer(plaintext)).json()["owner_budget"]["limit"] == "2"


# --- spend ----------------------------------------------------------------------------------


def spend(api_key: APIKey, llm_client, day: datetime.date, cost: str) -> None:
    KeyUsage.objects.create(api_key=api_key, llm_client=llm_client, day=day, cost=Decimal(cost))


def test_spent_in_db_sums_the_lineage_since_the_period_start_across_rotation(make_key, protected_client):
    first, _ = make_key(protected_client, budget_limit=Decimal(10), budget_period="month")
    second, _ = keys.rotate_key(first)
    third, _ = keys.rotate_key(second)
    stranger, _ = make_key(protected_client)
    start, _end = period_bounds("month", at(2026, 12, 6))
    spend(first, protected_client, datetime.date(2026, 11, 30), "5")  # the month before
    spend(first, protected_client, datetime.date(2026, 12, 1), "1.5")  # its first day counts
    spend(second, protected_client, datetime.date(2026, 12, 3), "2.25")
    spend(third, protected_client, datetime.date(2026, 12, 6), "0.000000001")
    spend(stranger, protected_client, datetime.date(2026, 12, 6), "100")
    (budget,) = budgets_of(third)
    assert budget == Budget("key", first.prefix, Decimal(10), "month")
    assert spent_in_db(budget, start) == Decimal("3.750000001")


def test_spent_in_db_adds_this_processs_counts_not_written_yet(make_key, protected_client):
    api_key, _ = make_key(protected_client, budget_limit=Decimal(10), budget_period="day")
    (budget,) = budgets_of(api_key)
    start, _ = period_bounds("day", datetime.datetime.now(UTC))
    spend(api_key, protected_client, start.date(), "1")
    subject = usage.Subject(api_key.pk, protected_client.pk, "protected-bot", api_key.allowance)
    usage.counter.add(subject, cost=Decimal("0.5"))
    assert spent_in_db(budget, start) == Decimal("1.5")
    usage.flush()  # written now: counted once, not twice
    assert spent_in_db(budget, start) == Decimal("1.5")


def test_an_owner_budget_is_spent_by_all_the_owners_keys(make_key, protected_client, public_client, owner):
    mine, _ = make_key(protected_client)
    also_mine, _ = make_key(public_client)
    someone = baker.make(get_user_model(), username="someone")
    theirs, _ = make_key(protected_client, user=someone)
    today = datetime.date(2026, 12, 6)
    for api_key, cost in ((mine, "1"), (also_mine, "2"), (theirs, "40")):
        spend(api_key, protected_client, today, cost)
    keys.set_owner_budget(owner, "10", "week")
    budget = next(b for b in budgets_of(APIKey.objects.get(pk=mine.pk)) if b.scope == budgets.OWNER)
    assert spent_in_db(budget, at(2026, 11, 30)) == Decimal(3)


def test_the_key_info_view_answers_budgets_with_spend_and_reset(api, make_key, protected_client, owner):
    api_key, plaintext = make_key(protected_client, budget_limit=Decimal("2"), budget_period="total")
    keys.set_owner_budget(owner, "10", "day")
    spend(api_key, protected_client, usage.today(), "2.5")
    info = api.get(INFO, **bearer(plaintext)).json()
    assert info["budget"] == {
        "limit": "2",
        "period": "total",
        "spent": "2.5",
        "reserved": "0",
        "remaining": "0",
        "resets_at": None,
    }
    tomorrow = usage.today() + datetime.timedelta(days=1)
    assert info["owner_budget"]["spent"] == "2.5"
    assert info["owner_budget"]["remaining"] == "7.5"
    resets_at = datetime.datetime.fromisoformat(info["owner_budget"]["resets_at"])  # in TIME_ZONE
    assert resets_at == datetime.datetime.combine(tomorrow, datetime.time(), tzinfo=UTC)


@pytest.mark.parametrize(("period", "reads"), [("month", "5 per month"), ("total", "5 in total")])
def test_a_budget_reads_with_its_period(period, reads):
    assert str(OwnerBudget(user_id=1, limit=Decimal("5"), period=period)) == f"{reads} for user 1"
